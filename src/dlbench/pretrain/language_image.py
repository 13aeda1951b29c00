"""Language-image pretraining: CLIP (Radford et al. 2021) from scratch on a captioned split.

The offline stand-in for OpenAI's and LAION's CLIP: open_clip's own ``CLIP`` class on a tiny config
(``backbones.<name>: {source: open_clip, config: ...}``), trained with the symmetric contrastive
loss on (image, caption) pairs of a captioned split (``caption_split``, default ``web``: the
``shapes`` split that plays CLIP's web data, see ``dlbench.data.shapes``).
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from dlbench.data.augment import AugmentConfig, augment
from dlbench.models.clip import OpenClipNet, clip_loss, tokenize
from dlbench.pretrain.base import PretrainMethod, PretrainSetup, register_method
from dlbench.pretrain.views import ViewConfig
from dlbench.train.engine import Batch


@register_method("clip", family="language-image")
class CLIP(PretrainMethod):
    """CLIP's contrastive pretraining of both towers and the logit scale (init 1/0.07, clamped at 100).

    Views: CLIP trains on a random resized crop of each image only (``crop_scale`` 0.9-1, no flip, no
    colour jitter: the captions name colours); the shared SSL ``views`` settings do not apply.
    Captions are tokenized once (open_clip's bundled BPE, the model's context length); a batch
    reads the captions of its images by their row in the split.
    """

    requires: ClassVar[str | None] = "open_clip"
    needs_captions: ClassVar[bool] = True
    defaults: ClassVar[dict[str, Any]] = {"caption_split": "web", "crop_scale": [0.9, 1.0]}

    def __init__(self, setup: PretrainSetup) -> None:
        super().__init__(setup)
        net = self.backbone.net
        if not isinstance(net, OpenClipNet):
            raise ValueError("pretrain kind 'clip' needs an open_clip backbone (backbones.<name>.source: open_clip)")
        if setup.captions is None:
            raise ValueError("pretrain kind 'clip' needs the captions of its split (params.caption_split)")
        net.text_parameters_trainable(True)
        self.net = net
        self.tokens = tokenize(net, setup.backbone_spec, setup.captions)
        self.aug = AugmentConfig(crop_scale=tuple(self.params["crop_scale"]), flip=False)

    @classmethod
    def input_sides(cls, params: dict[str, Any], views: ViewConfig, side: int) -> list[tuple[str, int]]:
        return [("images", int(side))]

    def training_loss(self, batch: Batch, gen: torch.Generator) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        images = augment(batch.images, self.aug, gen)
        tokens = self.tokens[batch.indices.cpu()].to(images.device)
        scale = self.net.logit_scale
        loss = clip_loss(self.backbone(images), self.net.encode_text(tokens), scale)
        return loss, {"logit_scale": scale.detach()}


@register_method("clip_weights", family="language-image")
class ClipWeights(PretrainMethod):
    """A released CLIP (OpenAI, LAION) as it is: the backbone's ``weights`` file, no training.

    The real-weights path of the section (``configs/clip_cifar10.yaml``, ``configs/clip_domainnet.yaml``):
    the backbone spec names an open_clip model and a local weights file (no hub access at run time),
    and this kind writes it as the pretrained model every adaptation starts from, so the lineage reads
    ``<weights> -> zeroshot -> finetune -> wiseft`` like the offline tiny CLIP's. Config checking
    requires the ``weights`` key.
    """

    requires: ClassVar[str | None] = "open_clip"
    needs_weights: ClassVar[bool] = True
    trains: ClassVar[bool] = False
    knobs: ClassVar[dict[str, str]] = {}

    def training_loss(self, batch: Batch, gen: torch.Generator) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        raise RuntimeError("clip_weights is not trained: it is the released model")
