"""Adaptation protocols: how a pretrained backbone becomes a classifier (registry + shared context).

One job adapts one pretrained backbone with every configured protocol, because they share
work: the frozen features of the labeled split are computed once for the linear probe and
kNN, and LP-FT starts from the linear probe's head. Each protocol still writes its own
model directory, evaluated by the one evaluate path like any other model.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from dlbench.models.backbones import Classifier
from dlbench.registry import Registry


@dataclass
class AdaptContext:
    """Inputs shared by the protocols of one adapt job."""

    backbone_state: dict[str, torch.Tensor]  # pretrained backbone weights (fresh copies per protocol)
    build_backbone: Callable[[], nn.Module]
    num_classes: int
    train_images: torch.Tensor  # uint8 N x H x W x C
    train_labels: torch.Tensor
    val_images: torch.Tensor
    val_labels: torch.Tensor
    device: torch.device
    seed: int
    recipe: dict[str, Any]
    features: dict[str, torch.Tensor] = field(default_factory=dict)  # frozen features, filled once
    done: dict[str, Classifier] = field(default_factory=dict)  # models of protocols already run

    def pretrained_backbone(self) -> nn.Module:
        backbone = self.build_backbone()
        backbone.load_state_dict(self.backbone_state)
        return backbone.to(self.device)

    def frozen_features(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Train and val features of the frozen pretrained backbone, computed once per job."""
        if not self.features:
            from dlbench.pretrain.run import embed

            backbone = self.pretrained_backbone()
            self.features["train"] = embed(backbone, self.train_images, self.device)
            self.features["val"] = embed(backbone, self.val_images, self.device)
        return self.features["train"], self.features["val"]


@dataclass(frozen=True)
class Protocol:
    name: str
    run: Callable[[AdaptContext, dict[str, Any]], tuple[Classifier, dict[str, Any]]]
    needs: tuple[str, ...] = ()  # protocols whose result this one starts from
    description: str = ""


PROTOCOLS: Registry[Protocol] = Registry("adapt protocol")


def register_protocol(name: str, *, needs: tuple[str, ...] = (), description: str = ""):
    """Decorator on ``run(ctx, params) -> (classifier, info)``; ``info`` goes into model.json."""

    def decorator(fn):
        PROTOCOLS.add(name, Protocol(name=name, run=fn, needs=needs, description=description))
        return fn

    return decorator


def load_all() -> Registry[Protocol]:
    """Import every module of this package (discovery: a new protocol is one new module)."""
    import importlib
    import pkgutil

    import dlbench.adapt as package

    for info in pkgutil.iter_modules(package.__path__):
        importlib.import_module(f"dlbench.adapt.{info.name}")
    return PROTOCOLS


def run_order(names: list[str]) -> list[str]:
    """Protocols in dependency order; a needed protocol that was not requested runs too (not saved)."""
    protocols = load_all()
    order: list[str] = []

    def visit(name: str) -> None:
        if name in order:
            return
        for dep in protocols.get(name).needs:
            visit(dep)
        order.append(name)

    for name in names:
        visit(name)
    return order
