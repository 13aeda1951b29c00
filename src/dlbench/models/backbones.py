"""Backbones from timm by name, plus the classifier that every stage trains and evaluates.

Config names a backbone as ``{timm: <timm model name>, kwargs: {...}, cifar_stem: bool}``;
``cifar_stem`` swaps a ResNet's 7x7/stride-2 stem and max-pool for one 3x3 conv (stride
``stem_stride``, default 1),
the usual change for 32x32 inputs (as in SimCLR's and solo-learn's CIFAR recipes).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


class UnknownBackboneError(ValueError):
    pass


def check_backbone_spec(name: str, spec: dict[str, Any]) -> None:
    """Fail early, naming the config key, when the timm model does not exist."""
    import timm

    arch = spec.get("timm")
    if not arch or not timm.is_model(arch):
        raise UnknownBackboneError(
            f"backbones.{name}.timm: unknown timm model {arch!r} (see timm.list_models())")
    if spec.get("cifar_stem") and not arch.startswith(("resnet", "resnext", "wide_resnet")):
        raise UnknownBackboneError(f"backbones.{name}.cifar_stem: only ResNet-family models have the stem to replace")


def build_backbone(spec: dict[str, Any]) -> nn.Module:
    """A headless timm model (``num_classes=0``) whose forward returns pooled features."""
    import timm

    kwargs = dict(spec.get("kwargs") or {})
    for key, value in list(kwargs.items()):
        if isinstance(value, list):
            kwargs[key] = tuple(value)
    model = timm.create_model(spec["timm"], pretrained=False, num_classes=0, **kwargs)
    if spec.get("cifar_stem"):
        out_ch = model.conv1.out_channels if isinstance(model.conv1, nn.Conv2d) else model.bn1.num_features
        stride = int(spec.get("stem_stride", 1))
        model.conv1 = nn.Conv2d(3, out_ch, kernel_size=3, stride=stride, padding=1, bias=False)
        model.maxpool = nn.Identity()
    return model


class Classifier(nn.Module):
    """Backbone + head (linear unless given); ``features`` exposes the embedding for probes and t-SNE."""

    def __init__(self, backbone: nn.Module, num_classes: int, head: nn.Module | None = None) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head if head is not None else nn.Linear(backbone.num_features, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))


def build_classifier(spec: dict[str, Any], num_classes: int) -> Classifier:
    return Classifier(build_backbone(spec), num_classes)
