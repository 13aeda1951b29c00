"""The backbone every stage trains: a source's network wrapped with its own preprocessing.

A :class:`Backbone` takes float images in [0, 1] and owns everything between them and the
network: normalisation with *its* mean and std (ImageNet's for a random timm init, CLIP's for
CLIP) and, for networks that accept one input size only (a ViT's position grid), the resize to
it. So objectives, probes and evaluation feed raw [0, 1] batches and never know the statistics.
``input_size`` is the resolution the backbone was trained at; evaluation resizes to it.

The feature width is measured from the network's real pooled output, not taken from an
attribute: timm's ``num_features`` is the width *before* a conv head on MobileNetV3 and
EfficientNet-style models (960 vs the 1280 that the pooled output has).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from dlbench.models.sources import BackboneSpecError, check_spec, source_of

__all__ = ["Backbone", "BackboneSpecError", "Classifier", "build_backbone", "build_classifier", "check_spec"]


class Backbone(nn.Module):
    """Preprocessing + a headless network: ``forward(x in [0, 1]) -> N x num_features``."""

    def __init__(self, net: nn.Module, mean: tuple[float, ...], std: tuple[float, ...],
                 input_size: tuple[int, int], fixed_size: bool = False, spec: dict[str, Any] | None = None) -> None:
        super().__init__()
        self.net = net
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.input_size = (int(input_size[0]), int(input_size[1]))
        self.fixed_size = bool(fixed_size)
        self.spec = dict(spec or {})
        self.num_features = self._measure_width()

    @torch.no_grad()
    def _measure_width(self) -> int:
        """Width of the pooled output, by shape inference on the meta device (no compute), else a real pass."""
        was_training = self.training
        self.eval()
        try:
            meta = {k: torch.empty_like(v, device="meta") for k, v in
                    [*self.net.named_parameters(), *self.net.named_buffers()]}
            out = torch.func.functional_call(self.net, meta, (torch.empty(1, 3, *self.input_size, device="meta"),))
        except (RuntimeError, NotImplementedError, TypeError):
            out = self(torch.zeros(1, 3, *self.input_size))
        finally:
            self.train(was_training)
        return int(out.shape[1])

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fixed_size and tuple(x.shape[-2:]) != self.input_size:
            x = F.interpolate(x, size=self.input_size, mode="bilinear", antialias=True, align_corners=False)
        return self.net(self.normalize(x))

    def preprocess_spec(self) -> dict[str, Any]:
        """What a model card records so that ``load_model`` rebuilds the same preprocessing."""
        return {"mean": [float(v) for v in self.mean.flatten()], "std": [float(v) for v in self.std.flatten()],
                "input_size": list(self.input_size), "fixed_size": self.fixed_size}


def build_backbone(spec: dict[str, Any], input_size: tuple[int, int] | None = None,
                   preprocess: dict[str, Any] | None = None) -> Backbone:
    """Build the backbone a spec describes.

    ``input_size``: the training images' size (used unless the spec or the network fixes one);
    ``preprocess``: a model card's recorded preprocessing, which wins over everything (reload).
    """
    built = source_of(spec).build(spec)
    pre = dict(preprocess or {})
    mean = tuple(pre.get("mean") or spec.get("mean") or built.mean)
    std = tuple(pre.get("std") or spec.get("std") or built.std)
    size = pre.get("input_size") or spec.get("input_size") or built.fixed_size or input_size
    if size is None:
        raise BackboneSpecError(f"backbone {spec.get('model')!r}: no input size (give the training images' size)")
    fixed = bool(pre.get("fixed_size", built.fixed_size is not None))
    return Backbone(built.net, mean, std, tuple(size), fixed_size=fixed, spec=spec)


class Classifier(nn.Module):
    """Backbone + head (linear unless given); ``features`` exposes the embedding for probes and t-SNE."""

    def __init__(self, backbone: Backbone, num_classes: int, head: nn.Module | None = None) -> None:
        super().__init__()
        self.backbone = backbone
        self.num_classes = int(num_classes)
        self.head = head if head is not None else nn.Linear(backbone.num_features, num_classes)

    @property
    def input_size(self) -> tuple[int, int]:
        return self.backbone.input_size

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))


def build_classifier(spec: dict[str, Any], num_classes: int, input_size: tuple[int, int] = (32, 32)) -> Classifier:
    return Classifier(build_backbone(spec, input_size), num_classes)
