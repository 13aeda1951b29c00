"""Lipsum-FT (Nam et al., ICLR 2024): fine-tune CLIP's image tower with a regulariser that keeps its
vision-language connection, measured on random text.

Loss = cross-entropy + λ·R. For M random texts t_m (token sequences of L ids drawn uniformly from the
BPE vocabulary below the start token, between start and end tokens, resampled every step, from the
step's generator so a resumed run draws the same texts), encoded by the frozen zero-shot text tower:

    R = mean over the batch of  Σ_m (s·cos(f(x), t_m) - s·cos(f₀(x), t_m))² / (2M)

where f is the image tower being fine-tuned, f₀ the frozen zero-shot image tower (a frozen reference
module of the engine: eval mode, no gradients, outside checkpoints) and s the zero-shot logit scale.
Defaults are the paper's: M = 80, L = 8, λ = 1. The fine-tune starts from the zero-shot head
(``of`` a zero-shot variant), as in the paper and as WiSE-FT needs.

The reference tower is in eval mode; for a tower with batch norm (the embedded default's ResNet)
R at the first step is therefore not exactly 0 (batch statistics against running ones), for a ViT it is.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from dlbench.adapt.base import AdaptContext, register_kind
from dlbench.adapt.finetune import TRAINED, TRAINED_KNOBS, train
from dlbench.classify import SupervisedObjective
from dlbench.data.augment import AugmentConfig, augment
from dlbench.models.backbones import Backbone, Classifier
from dlbench.models.clip import OpenClipNet, tokenizer_for
from dlbench.train.engine import Batch

LIPSUM = {"lipsum_lambda": 1.0, "random_texts": 80, "random_text_length": 8}


def random_tokens(gen: torch.Generator, count: int, length: int, sot: int, eot: int,
                  context_length: int) -> torch.Tensor:
    """``count`` x ``context_length`` token ids: start, ``length`` ids uniform in [0, sot), end, padding 0."""
    if length + 2 > context_length:
        raise ValueError(f"random texts of {length} tokens need a context length of at least {length + 2}, "
                         f"the text tower has {context_length}")
    tokens = torch.zeros(count, context_length, dtype=torch.long)
    tokens[:, 0] = sot
    tokens[:, 1:length + 1] = torch.randint(0, sot, (count, length), generator=gen)
    tokens[:, length + 1] = eot
    return tokens


def lipsum_regulariser(features: torch.Tensor, reference: torch.Tensor, texts: torch.Tensor,
                       scale: float | torch.Tensor) -> torch.Tensor:
    """R: the batch mean of Σ_m (s·cos(f, t_m) − s·cos(f₀, t_m))² / (2M) (features N x D, texts M x D)."""
    t = F.normalize(texts.float(), dim=-1)
    gap = (F.normalize(features.float(), dim=-1) - F.normalize(reference.float(), dim=-1)) @ t.T * scale
    return gap.pow(2).sum(1).mean() / (2 * texts.shape[0])


class LipsumObjective(SupervisedObjective):
    """Cross-entropy + λ·R on the same augmented view; R and the CE part are logged in the history."""

    def __init__(self, model: Classifier, aug: AugmentConfig, label_smoothing: float, *, reference: Backbone,
                 tokens: dict[str, int], weight: float, texts: int, text_length: int) -> None:
        super().__init__(model, aug, label_smoothing)
        if not isinstance(reference.net, OpenClipNet):
            raise ValueError("lipsum needs a CLIP backbone (backbones.<name>.source: open_clip)")
        self.frozen = nn.ModuleDict({"zeroshot": reference})
        self.tokens, self.weight, self.texts, self.text_length = tokens, float(weight), int(texts), int(text_length)

    def training_loss(self, batch: Batch, gen: torch.Generator) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        views = augment(batch.images, self.aug, gen)
        features = self.model.backbone(views)
        loss, stats = self.classification_loss(self.model.head(features).float(), batch.labels)
        reference: Backbone = self.frozen["zeroshot"]
        tokens = random_tokens(gen, self.texts, self.text_length, self.tokens["sot"], self.tokens["eot"],
                               reference.net.context_length).to(views.device)
        with torch.no_grad():
            texts = reference.net.encode_text(tokens)
            ref = reference(views)
        reg = lipsum_regulariser(features, ref, texts, reference.net.logit_scale.detach().float())
        return loss + self.weight * reg, {**stats, "ce": loss.detach(), "lipsum_reg": reg.detach()}


@register_kind("lipsum", family="finetune", job="train", defaults={**TRAINED, **LIPSUM}, required=("train",),
               knobs=TRAINED_KNOBS, of="zeroshot", requires="open_clip",
               description="Lipsum-FT: fine-tuning + random-text logit matching to zero-shot CLIP (Nam et al. 2024)")
def lipsum(ctx: AdaptContext, params: dict[str, Any]) -> tuple[Classifier, dict[str, Any]]:
    if ctx.start is None:
        raise ValueError("lipsum fine-tunes from a zero-shot model: the job needs the `of` model")
    for key in ("random_texts", "random_text_length"):
        if int(params[key]) < 1:
            raise ValueError(f"lipsum {key} must be >= 1, got {params[key]}")
    if float(params["lipsum_lambda"]) < 0:
        raise ValueError(f"lipsum lipsum_lambda must be >= 0, got {params['lipsum_lambda']}")
    torch.manual_seed(ctx.seed)
    backbone = ctx.pretrained_backbone()
    reference = copy.deepcopy(backbone)
    tokenizer = tokenizer_for(reference.net, backbone.spec)
    tokens = {"sot": int(tokenizer.sot_token_id), "eot": int(tokenizer.eot_token_id)}
    model = Classifier(backbone, ctx.num_classes, copy.deepcopy(ctx.start.head).to(ctx.device))

    def objective(m: Classifier, aug: AugmentConfig, label_smoothing: float) -> LipsumObjective:
        return LipsumObjective(m, aug, label_smoothing, reference=reference, tokens=tokens,
                               weight=float(params["lipsum_lambda"]), texts=int(params["random_texts"]),
                               text_length=int(params["random_text_length"]))

    return train(ctx, model, params, objective)
