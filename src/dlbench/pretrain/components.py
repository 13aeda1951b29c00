"""Building blocks shared across self-supervised families: momentum teachers, step counters, multi-crop.

MoCo v2 (contrastive) and BYOL / DINO (self-distillation) share the EMA teacher; SwAV and DINO
share multi-crop views; schedules that must survive a checkpoint count steps in a buffer.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import torch
from torch import nn

from dlbench.models.backbones import Backbone
from dlbench.pretrain.base import PretrainSetup
from dlbench.pretrain.views import ViewConfig


@torch.no_grad()
def ema_update(target: nn.Module, online: nn.Module, momentum: float) -> None:
    """target <- momentum * target + (1 - momentum) * online (parameters); buffers copied."""
    for t, o in zip(target.parameters(), online.parameters()):
        t.mul_(momentum).add_(o.detach(), alpha=1 - momentum)
    for t, o in zip(target.buffers(), online.buffers()):
        t.copy_(o)


def cosine_momentum(base: float, step: int, total: int) -> float:
    """BYOL's schedule: momentum rises from ``base`` to 1 along a cosine over training."""
    return 1 - (1 - base) * (math.cos(math.pi * step / max(1, total)) + 1) / 2


class MomentumTeacher(nn.Module):
    """A frozen copy of (backbone, head) that follows the online network by EMA.

    Shared by MoCo v2 (key encoder), BYOL (target) and DINO (teacher). It never receives
    gradients (``requires_grad_(False)``, so the engine's optimiser skips it) and its forward
    runs under ``no_grad``. It stays in the mode the engine sets (train: batch-norm uses batch
    statistics, as in all three papers); its BN running statistics are copied from the online
    network at each update by ``ema_update``.
    """

    def __init__(self, backbone: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.backbone = copy.deepcopy(backbone)
        self.head = copy.deepcopy(head)
        self.requires_grad_(False)

    @torch.no_grad()
    def forward(self, x01: torch.Tensor) -> torch.Tensor:
        """Head output for float images in [0, 1] (the backbone copy normalises, like ``PretrainMethod.encode``)."""
        return self.head(self.backbone(x01))

    @torch.no_grad()
    def update(self, backbone: nn.Module, head: nn.Module, momentum: float) -> None:
        """teacher <- momentum * teacher + (1 - momentum) * online."""
        ema_update(self.backbone, backbone, momentum)
        ema_update(self.head, head, momentum)


class StepCounter(nn.Module):
    """Optimiser steps done so far, as a buffer: schedules (prototype freezing, DINO's
    teacher temperature) survive a checkpoint/resume without relying on Python state."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))

    @property
    def value(self) -> int:
        return int(self.steps)

    def set(self, steps: int) -> None:
        self.steps.fill_(steps)


def local_crop_size(fixed_size: bool, input_side: int, requested: int | None) -> int:
    """Side of multi-crop local views: ``requested``, else half the input (paper 96/224 ~ 0.43).

    A backbone with one input size only (a ViT's fixed position-embedding grid, timm's default
    ``dynamic_img_size=False``) cannot take smaller inputs, so its local views keep the small
    crop *area* but are resampled to the full input side.
    """
    if fixed_size:
        return input_side
    return int(requested) if requested else max(8, input_side // 2)


def multicrop_config(setup: PretrainSetup, backbone: Backbone, local_crops: int,
                     local_size: int | None) -> ViewConfig:
    """The run's ViewConfig with the method's multi-crop settings applied."""
    side = setup.views.size or setup.input_size[0]
    return setup.views.with_(local_crops=int(local_crops),
                             local_size=local_crop_size(backbone.fixed_size, side, local_size))


class MultiCrop:
    """Mixin for methods with ``local_crops``/``local_size`` params (SwAV, DINO): the sides they feed."""

    @classmethod
    def input_sides(cls, params: dict[str, Any], views: ViewConfig, side: int) -> list[tuple[str, int]]:
        p = cls.resolve_params(params)
        glob = int(views.size or side)
        out = [("global views", glob)]
        if int(p["local_crops"]) > 0:
            out.append(("local crops", local_crop_size(False, glob, p["local_size"])))
        return out


def encode_views(encode: Any, views: list[torch.Tensor]) -> list[torch.Tensor]:
    """Run ``encode`` once per run of consecutive same-size views (as DINO's MultiCropWrapper).

    Views of one resolution share one forward pass, so batch norm sees them together.
    """
    out: list[torch.Tensor] = []
    i = 0
    while i < len(views):
        j = i
        while j < len(views) and views[j].shape[-2:] == views[i].shape[-2:]:
            j += 1
        feats = encode(torch.cat(views[i:j]))
        out += list(feats.chunk(j - i))
        i = j
    return out


