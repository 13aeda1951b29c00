"""The one batched-inference function: uint8 images in, float32 outputs out, batch by batch.

Evaluation (logits), embedding extraction (probes, t-SNE, the pretraining monitor) and
DeepCluster's re-clustering all go through :func:`infer`, so every path feeds a model the same
way: uint8 N x H x W x C moved to the device one batch at a time (a 224 px set need not fit),
[0, 1] floats resized to the model's ``input_size`` when they differ, eval mode, the shared
autocast policy, float32 results on the CPU. Normalisation is the model's own (``Backbone``).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from dlbench.data.augment import to_float
from dlbench.device import autocast


@torch.no_grad()
def infer(fn: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor, *, device: torch.device | str = "cpu",
          batch_size: int = 512, input_size: tuple[int, int] | None = None,
          modules: tuple[nn.Module, ...] = ()) -> torch.Tensor:
    """``fn`` on every batch of uint8 N x H x W x C ``images``; float32 on the CPU.

    ``modules`` are put in eval mode for the call and restored afterwards (a monitor called
    in the middle of training must not leave batch norm in eval mode).
    """
    device = torch.device(device)
    modes = [m.training for m in modules]
    for m in modules:
        m.eval()
    out = []
    try:
        for i in range(0, len(images), batch_size):
            x = to_float(images[i:i + batch_size], device)
            if input_size is not None and tuple(x.shape[-2:]) != tuple(input_size):
                x = F.interpolate(x, size=tuple(input_size), mode="bilinear", antialias=True, align_corners=False)
            with autocast(device):
                out.append(fn(x).float().cpu())
    finally:
        for m, mode in zip(modules, modes):
            m.train(mode)
    return torch.cat(out) if out else torch.empty(0)


def predict_logits(model: nn.Module, images: torch.Tensor, *, device: torch.device | str = "cpu",
                   batch_size: int = 512) -> torch.Tensor:
    """Logits of a classifier (``Classifier``) at its own input size."""
    return infer(model, images, device=device, batch_size=batch_size, input_size=model.input_size, modules=(model,))


def predict_shared(backbone: nn.Module, heads: list[nn.Module], images: torch.Tensor, *,
                   device: torch.device | str = "cpu", batch_size: int = 512) -> list[torch.Tensor]:
    """Logits of several classifiers that share one backbone (the frozen-feature variants of one
    pretrained model): one backbone pass per batch, every head on its output. Each result equals
    ``predict_logits`` of ``Classifier(backbone, head)`` exactly: same batches, same autocast."""
    widths = []

    def fn(x: torch.Tensor) -> torch.Tensor:
        feats = backbone(x)
        outs = [head(feats) for head in heads]
        widths[:] = [o.shape[1] for o in outs]
        return torch.cat(outs, dim=1)

    logits = infer(fn, images, device=device, batch_size=batch_size, input_size=backbone.input_size,
                   modules=(backbone, *heads))
    return list(torch.split(logits, widths, dim=1)) if widths else [logits for _ in heads]


def embed(backbone: nn.Module, images: torch.Tensor, *, device: torch.device | str = "cpu",
          batch_size: int = 512) -> torch.Tensor:
    """Pooled features of a ``Backbone`` (or anything with ``input_size``) at its own input size."""
    return infer(backbone, images, device=device, batch_size=batch_size, input_size=backbone.input_size,
                 modules=(backbone,))
