"""FLYP (Goyal et al. 2022, "Finetune like you pretrain"): fine-tune both CLIP towers with CLIP's own
contrastive loss, each image paired with a prompt of its class name.

Every step, each image's text is its class name in one of the dataset's prompt templates (drawn per
image from the step's generator, so a resumed run draws the same), and the loss is CLIP's symmetric
InfoNCE over the batch, where two images of one class are negatives of each other, as in the paper.
The image tower, the text tower and the logit scale train; the classifier's head is the zero-shot
head rebuilt from the current text tower after every epoch (so validation and the saved model use
it, and WiSE-FT interpolates it with the zero-shot model's like any head). Starts from a zero-shot
model (``of``); the recipe is the ``finetune`` one (the paper's AdamW with weight decay 0.1 and a
cosine schedule, scaled to the embedded default's epochs).
"""

from __future__ import annotations

import copy
from typing import Any

import torch

from dlbench.adapt.base import AdaptContext, register_kind
from dlbench.adapt.finetune import TRAINED, TRAINED_KNOBS, train
from dlbench.classify import SupervisedObjective
from dlbench.data.augment import AugmentConfig, augment
from dlbench.models.backbones import Classifier
from dlbench.models.clip import OpenClipNet, clip_loss, tokenize, zeroshot_weights
from dlbench.train.engine import Batch


class FlypObjective(SupervisedObjective):
    """Contrastive loss of (image, class prompt) pairs; the head follows the text tower every epoch."""

    def __init__(self, model: Classifier, aug: AugmentConfig, label_smoothing: float, *, spec: dict[str, Any],
                 classes: list[str], templates: list[str]) -> None:
        super().__init__(model, aug, label_smoothing)
        net = model.backbone.net
        if not isinstance(net, OpenClipNet):
            raise ValueError("flyp needs a CLIP backbone (backbones.<name>.source: open_clip)")
        if not templates:
            raise ValueError("flyp pairs images with class prompts: the dataset's meta.json has no prompt_templates")
        self.net, self.spec, self.classes, self.templates = net, spec, list(classes), list(templates)
        # K x T x context: every class in every template, tokenized once
        self.prompts = torch.stack([tokenize(net, spec, [t.format(c) for t in templates]) for c in classes])

    def training_loss(self, batch: Batch, gen: torch.Generator) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        views = augment(batch.images, self.aug, gen)
        template = torch.randint(0, len(self.templates), (len(batch.labels),), generator=gen)
        tokens = self.prompts[batch.labels.cpu(), template].to(views.device)
        scale = self.net.logit_scale
        loss = clip_loss(self.model.backbone(views), self.net.encode_text(tokens), scale)
        return loss, {"logit_scale": scale.detach()}

    def after_epoch(self, epoch: int) -> None:
        refresh_head(self.model, self.spec, self.classes, self.templates)


def refresh_head(model: Classifier, spec: dict[str, Any], classes: list[str], templates: list[str]) -> None:
    """Set the cosine head to the zero-shot head of the model's current text tower and logit scale."""
    net: OpenClipNet = model.backbone.net
    device = model.head.weight.device
    with torch.no_grad():
        weights = zeroshot_weights(net, spec, classes, templates, device)
        model.head.weight.copy_(weights.to(model.head.weight.dtype) * float(net.logit_scale))
        model.head.bias.zero_()


@register_kind("flyp", family="finetune", job="train", defaults=dict(TRAINED), required=("train",),
               knobs=TRAINED_KNOBS, of="zeroshot", requires="open_clip",
               description="FLYP: fine-tune both towers contrastively on class prompts (Goyal et al. 2022)")
def flyp(ctx: AdaptContext, params: dict[str, Any]) -> tuple[Classifier, dict[str, Any]]:
    if ctx.start is None:
        raise ValueError("flyp fine-tunes from a zero-shot model: the job needs the `of` model")
    torch.manual_seed(ctx.seed)
    backbone = ctx.pretrained_backbone()
    backbone.net.text_parameters_trainable(True)
    head = copy.deepcopy(ctx.start.head).to(ctx.device)
    head.requires_grad_(False)  # rebuilt from the text tower, never a gradient step
    model = Classifier(backbone, ctx.num_classes, head)
    classes, templates = list(ctx.data.classes), list(ctx.data.templates)

    def objective(m: Classifier, aug: AugmentConfig, label_smoothing: float) -> FlypObjective:
        return FlypObjective(m, aug, label_smoothing, spec=backbone.spec, classes=classes, templates=templates)

    model, info = train(ctx, model, params, objective)
    refresh_head(model, backbone.spec, classes, templates)  # also after a run of 0 epochs / a resume at the end
    backbone.net.text_parameters_trainable(False)  # the saved classifier's usual state
    return model, info
