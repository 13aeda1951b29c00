"""Batched view generation for self-supervised methods (SimCLR/BYOL-style augmentation).

One call makes one augmented view of a whole batch on the training device, driven by an
explicit generator (so a seed fixes every view). Random resized crop + flip reuse the
affine-grid kernel of ``dlbench.data.augment`` and may output a smaller size (multi-crop);
colour jitter, grayscale and solarisation are applied per image with their probabilities.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any

import torch

from dlbench.data.augment import AugmentConfig, color_jitter, random_resized_crop_flip


@dataclass(frozen=True)
class ViewConfig:
    crop_scale: tuple[float, float] = (0.2, 1.0)
    flip: bool = True
    jitter: tuple[float, float, float] = (0.4, 0.4, 0.4)  # brightness, contrast, saturation
    jitter_p: float = 0.8
    grayscale_p: float = 0.2
    solarize_p: float = 0.0
    size: int | None = None  # output side in pixels; None keeps the input size
    # multi-crop (SwAV, DINO): extra small views
    local_crops: int = 0
    local_size: int = 16
    local_scale: tuple[float, float] = (0.05, 0.3)

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> "ViewConfig":
        d = dict(d or {})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown view option(s) {unknown}; known: {sorted(known)}")
        for k in ("crop_scale", "jitter", "local_scale"):
            if k in d:
                d[k] = tuple(d[k])
        return cls(**d)

    def with_(self, **changes: Any) -> "ViewConfig":
        return replace(self, **changes)


def _apply_where(mask: torch.Tensor, new: torch.Tensor, old: torch.Tensor) -> torch.Tensor:
    return torch.where(mask.to(old.device).view(-1, 1, 1, 1), new, old)


def grayscale(x: torch.Tensor) -> torch.Tensor:
    """ITU-R 601 luma, repeated over the channels (input stays 3-channel)."""
    w = torch.tensor([0.299, 0.587, 0.114], device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    return (x * w).sum(1, keepdim=True).expand_as(x)


def make_view(x: torch.Tensor, cfg: ViewConfig, gen: torch.Generator, *, size: int | None = None,
              scale: tuple[float, float] | None = None) -> torch.Tensor:
    """One augmented view of float N x C x H x W in [0, 1]; ``size``/``scale`` override the config (local crops)."""
    n = x.shape[0]
    crop = AugmentConfig(crop_scale=scale or cfg.crop_scale, flip=cfg.flip)
    out_size = size or cfg.size
    v = random_resized_crop_flip(x, crop, gen, out_size=out_size)
    if cfg.jitter_p > 0 and any(cfg.jitter):
        b, c, s = cfg.jitter
        jittered = color_jitter(v, AugmentConfig(brightness=b, contrast=c, saturation=s), gen)
        v = _apply_where(torch.rand(n, generator=gen) < cfg.jitter_p, jittered, v)
    if cfg.grayscale_p > 0 and v.shape[1] == 3:
        v = _apply_where(torch.rand(n, generator=gen) < cfg.grayscale_p, grayscale(v), v)
    if cfg.solarize_p > 0:
        v = _apply_where(torch.rand(n, generator=gen) < cfg.solarize_p, torch.where(v >= 0.5, 1 - v, v), v)
    return v


def make_views(x: torch.Tensor, cfg: ViewConfig, gen: torch.Generator, n_global: int = 2) -> list[torch.Tensor]:
    """``n_global`` full-size views, then ``cfg.local_crops`` small ones (multi-crop)."""
    views = [make_view(x, cfg, gen) for _ in range(n_global)]
    views += [make_view(x, cfg, gen, size=cfg.local_size, scale=cfg.local_scale) for _ in range(cfg.local_crops)]
    return views
