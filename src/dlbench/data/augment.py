"""Batched augmentation on the training device: one kernel launch per op for the whole batch.

Per-sample PIL/torchvision pipelines cost a Python round trip per image; here random
resized crop + horizontal flip are one ``affine_grid``/``grid_sample`` over the batch and
colour jitter is a few broadcast ops, all driven by an explicit ``torch.Generator`` so the
same seed gives the same augmented batch. Normalisation is not here: it belongs to the model
(``dlbench.models.backbones.Backbone``), which knows its own statistics.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class AugmentConfig:
    crop_scale: tuple[float, float] = (0.6, 1.0)  # area fraction kept by the random resized crop
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip: bool = True
    brightness: float = 0.0
    contrast: float = 0.0
    saturation: float = 0.0

    @classmethod
    def from_dict(cls, d: dict | None) -> "AugmentConfig":
        d = dict(d or {})
        for k in ("crop_scale", "crop_ratio"):
            if k in d:
                d[k] = tuple(d[k])
        return cls(**d)

    @property
    def is_identity(self) -> bool:
        return (self.crop_scale == (1.0, 1.0) and not self.flip and not self.brightness
                and not self.contrast and not self.saturation)


def _uniform(n: int, lo: float, hi: float, gen: torch.Generator) -> torch.Tensor:
    return torch.rand(n, generator=gen) * (hi - lo) + lo


def random_resized_crop_flip(x: torch.Tensor, cfg: AugmentConfig, gen: torch.Generator,
                             out_size: int | None = None) -> torch.Tensor:
    """Crop a random box (area in ``crop_scale``, aspect in ``crop_ratio``) per image, resize to
    ``out_size`` x ``out_size`` (default: the input size)."""
    n = x.shape[0]
    area = _uniform(n, *cfg.crop_scale, gen)
    log_r = _uniform(n, math.log(cfg.crop_ratio[0]), math.log(cfg.crop_ratio[1]), gen)
    ratio = torch.exp(log_r)
    w = torch.sqrt(area * ratio).clamp(max=1.0)
    h = torch.sqrt(area / ratio).clamp(max=1.0)
    cx = (torch.rand(n, generator=gen) * 2 - 1) * (1 - w)
    cy = (torch.rand(n, generator=gen) * 2 - 1) * (1 - h)
    sign = torch.where(torch.rand(n, generator=gen) < 0.5, -1.0, 1.0) if cfg.flip else torch.ones(n)
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0] = w * sign
    theta[:, 0, 2] = cx
    theta[:, 1, 1] = h
    theta[:, 1, 2] = cy
    shape = list(x.shape) if out_size is None else [n, x.shape[1], out_size, out_size]
    grid = F.affine_grid(theta.to(x.device, x.dtype), shape, align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


def color_jitter(x: torch.Tensor, cfg: AugmentConfig, gen: torch.Generator) -> torch.Tensor:
    """Brightness, contrast and saturation factors drawn per image, as torchvision's ColorJitter.

    The three adjustments are linear in the image, so they are fused into one
    ``a * x + b * grey + c`` per image (3 passes instead of ~10). Unlike torchvision, the
    order is fixed (brightness, contrast, saturation) and clamping happens once, at the end.
    """
    n = x.shape[0]
    ones = torch.ones(n)
    b = _uniform(n, 1 - cfg.brightness, 1 + cfg.brightness, gen) if cfg.brightness else ones
    c = _uniform(n, 1 - cfg.contrast, 1 + cfg.contrast, gen) if cfg.contrast else ones
    s = _uniform(n, 1 - cfg.saturation, 1 + cfg.saturation, gen) if cfg.saturation else ones
    if x.shape[1] == 3:
        weights = torch.tensor([0.299, 0.587, 0.114], device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
        grey = (x * weights).sum(dim=1, keepdim=True)
    else:
        grey, s = x, ones
    mean = grey.mean(dim=(1, 2, 3)).cpu()  # contrast pivots on the mean grey level, as torchvision
    # brightness: x*b; contrast: (x - m) * c + m with m = b*mean; saturation: (x - g) * s + g
    a_coef = (s * c * b).to(x).view(n, 1, 1, 1)
    g_coef = ((1 - s) * c * b).to(x).view(n, 1, 1, 1)
    const = ((1 - c) * b * mean).to(x).view(n, 1, 1, 1)
    return torch.addcmul(const, a_coef, x).addcmul_(g_coef, grey).clamp_(0, 1)


def to_float(images_uint8_nhwc: torch.Tensor, device: torch.device | str | None = None) -> torch.Tensor:
    """uint8 N x H x W x C -> float N x C x H x W in [0, 1] on ``device`` (transfer as uint8: 4x less)."""
    x = images_uint8_nhwc.to(device, non_blocking=True) if device is not None else images_uint8_nhwc
    return x.permute(0, 3, 1, 2).float().div_(255)


def augment(x: torch.Tensor, cfg: AugmentConfig, gen: torch.Generator) -> torch.Tensor:
    """Apply the configured augmentations to a float N x C x H x W batch in [0, 1]."""
    if cfg.crop_scale != (1.0, 1.0) or cfg.flip:
        x = random_resized_crop_flip(x, cfg, gen)
    if cfg.brightness or cfg.contrast or cfg.saturation:
        x = color_jitter(x, cfg, gen)
    return x
