"""CIFAR-10-C out-of-distribution corruptions, batched and deterministic, in torch.

A re-implementation of the corruptions of Hendrycks & Dietterich (ICLR 2019), "Benchmarking
Neural Network Robustness to Common Corruptions and Perturbations". The severity constants
are the 32x32 (CIFAR-10-C) ones, copied from the authors' generator script
``ImageNet-C/create_c/make_cifar_c.py`` in github.com/hendrycks/robustness; the code is our own.

Why a re-implementation: the original runs one PIL image at a time through numpy, skimage,
scipy, OpenCV and ImageMagick (wand) with the global numpy RNG. Here every corruption works
on a whole ``N x C x H x W`` float batch in torch (only JPEG goes through PIL per image,
since it is a codec), so the suite is computed on the fly from a clean split instead of being
stored, and it is reproducible: all randomness comes from one CPU ``torch.Generator`` seeded
from ``(seed, name, severity)`` and random tensors are drawn on the CPU and then moved, so CPU
and GPU give the same result up to float error.

The target is the published data, i.e. what the reference script did when it ran, not what
its code seems to intend. Checked against the reference: ``pixelate`` and ``jpeg_compression``
are byte-identical to PIL, ``zoom_blur`` and the Gaussian filters agree with scipy to float
error, and ``glass_blur``'s shuffle gives exactly the reference loop's result for the same
displacements, including its quirk: the loop's "swap" assigns numpy views, which copies
(numpy issue 14428), so each pixel takes a neighbour's value and the neighbour keeps it.
Output is quantised by truncation, as the reference's final ``np.uint8(...)``. Deviations
(all small, see each function's docstring):

* random numbers come from torch, not numpy's global RNG, so no image is byte-identical
  to the published CIFAR-10-C files (the distributions are the same);
* truncation counts a value less than 1e-4 of a step below an integer as that integer (a
  guard against float32 error on exact ``k / 255`` values, see ``_quantize``);
* ``motion_blur``/``snow`` use a torch port of ImageMagick's ``MotionBlurImage`` kernel
  (ImageMagick itself is not used);
* ``defocus_blur`` and ``elastic_transform`` use float arithmetic where OpenCV uses
  fixed point (``warpAffine`` interpolates at 1/32 pixel);
* ``frost`` (needs the authors' frost photographs) is not implemented.

Not every type gets monotonically further from the clean image with severity, because the
published constants are not monotone: ``glass_blur``'s sigma goes 0.4 -> 0.25 from severity
3 to 4, ``elastic_transform``'s affine jitter shrinks as its elastic field grows, and
``motion_blur`` 3 -> 4 only widens taps that weigh < 1e-9.

Sizes other than 32x32 use the same constants; the ones the reference ties to the image
size (``elastic_transform``'s ``IMSIZE``, ``fog``'s fractal map size, ``pixelate``'s target
size) are scaled to the actual size.
"""

from __future__ import annotations

import hashlib
import io
import math
from collections.abc import Callable, Sequence
from typing import TypeVar

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from dlbench.registry import Registry

CorruptionFn = Callable[[torch.Tensor, int, torch.Generator], torch.Tensor]
"""``fn(x, severity, gen)``: ``x`` float N x C x H x W in [0, 1] -> same shape, in [0, 1]."""

CORRUPTIONS: Registry[CorruptionFn] = Registry("corruption")
_ORDER: list[str] = []  # registration order = the order of the reference script

SEVERITIES = (1, 2, 3, 4, 5)
_T = TypeVar("_T")


def _register(name: str) -> Callable[[CorruptionFn], CorruptionFn]:
    def decorator(fn: CorruptionFn) -> CorruptionFn:
        CORRUPTIONS.add(name, fn)
        _ORDER.append(name)
        return fn

    return decorator


def corruption_names() -> list[str]:
    """Registered corruption names, in the order of the CIFAR-10-C reference script."""
    return list(_ORDER)


def _check_severity(severity: object) -> int:
    if isinstance(severity, bool) or not isinstance(severity, (int, np.integer)) or not 1 <= int(severity) <= 5:
        raise ValueError(f"severity must be an integer in 1..5, got {severity!r}")
    return int(severity)


def _level(table: Sequence[_T], severity: int) -> _T:
    """The published constant for ``severity`` (1-based), after checking its range."""
    return table[_check_severity(severity) - 1]


def _stream_seed(seed: int, name: str, severity: int) -> int:
    """Stable 63-bit seed; not Python's ``hash()``, which is salted per process for strings."""
    digest = hashlib.blake2b(f"dlbench.corruptions|{int(seed)}|{name}|{int(severity)}".encode(), digest_size=8)
    return int.from_bytes(digest.digest(), "little") & (2**63 - 1)


def corrupt(images: torch.Tensor, name: str, severity: int, seed: int, batch_size: int = 512) -> torch.Tensor:
    """Apply corruption ``name`` at ``severity`` to uint8 N x C x H x W ``images`` (any device).

    Returns uint8 N x C x H x W on the same device. The same ``(images, name, severity, seed,
    batch_size)`` always gives identical bytes; the batch is processed in chunks of
    ``batch_size`` to bound memory, with one generator drawn from chunk after chunk.
    """
    if not isinstance(name, str) or name not in CORRUPTIONS:
        raise ValueError(f"unknown corruption name {name!r}; known: {', '.join(corruption_names())}")
    severity = _check_severity(severity)
    if not isinstance(images, torch.Tensor) or images.dtype != torch.uint8 or images.dim() != 4:
        desc = (f"{images.dtype} tensor of shape {tuple(images.shape)}" if isinstance(images, torch.Tensor)
                else type(images).__name__)
        raise ValueError(f"images must be a uint8 N x C x H x W tensor, got {desc}")
    if images.shape[1] not in (1, 3):
        raise ValueError(f"images must have 1 or 3 channels (N x C x H x W), got C={images.shape[1]}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    fn = CORRUPTIONS.get(name)
    gen = torch.Generator(device="cpu")
    gen.manual_seed(_stream_seed(seed, name, severity))
    out = torch.empty(images.shape, dtype=torch.uint8, device=images.device)
    for start in range(0, images.shape[0], batch_size):
        x = images[start:start + batch_size].contiguous().to(torch.float32).div_(255.0)
        out[start:start + batch_size] = _quantize(fn(x, severity, gen))
    return out


def _quantize(y: torch.Tensor) -> torch.Tensor:
    """Float [0, 1] -> uint8 by truncation, as the reference's final ``np.uint8(corruption(...))``.

    Plain truncation would turn exact outputs (JPEG, pixelate, unchanged pixels: ``k / 255``
    in float32) into ``k - 1`` wherever float error puts ``y * 255`` a hair below ``k``, so
    1e-4 is added first: float32 error at 255 is ~3e-5, and only a value within 1e-4 of a
    step below an integer is moved. Computed in float64 on the CPU (MPS has no float64), so
    every device quantises the same floats identically. Returns a CPU tensor.
    """
    return torch.floor(y.detach().to("cpu", torch.float64) * 255.0 + 1e-4).clamp_(0, 255).to(torch.uint8)


# ---- helpers --------------------------------------------------------------------------------

def _rand(shape: Sequence[int], gen: torch.Generator, device: torch.device,
          dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Uniform [0, 1) drawn on the CPU generator, then moved (same numbers on every device)."""
    return torch.rand(tuple(shape), generator=gen, dtype=dtype).to(device)


def _randn(shape: Sequence[int], gen: torch.Generator, device: torch.device,
           dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.randn(tuple(shape), generator=gen, dtype=dtype).to(device)


def _pad_index(n: int, r: int, mode: str) -> torch.Tensor:
    """Source indices of a length-``n`` axis padded by ``r`` on both sides (works for ``r >= n``).

    ``nearest``: edge repeated (scipy 'nearest', ImageMagick edge); ``reflect``: half-sample
    symmetric ``dcba|abcd|dcba`` (scipy/skimage 'reflect'); ``mirror``: ``dcb|abcd|cba``
    (OpenCV BORDER_REFLECT_101, torch 'reflect').
    """
    i = torch.arange(-r, n + r)
    if mode == "nearest" or n == 1:
        return i.clamp(0, n - 1)
    if mode == "reflect":
        p = i % (2 * n)
        return torch.where(p < n, p, 2 * n - 1 - p)
    if mode == "mirror":
        p = i % (2 * n - 2)
        return torch.where(p < n, p, 2 * n - 2 - p)
    raise ValueError(f"unknown padding mode {mode!r}")


def _take(x: torch.Tensor, index: torch.Tensor, dim: int) -> torch.Tensor:
    """``x.index_select(dim, index)`` by advanced indexing, which is much faster on the CPU for the last dims."""
    return x[(slice(None),) * dim + (index.to(x.device),)]


def _correlate(x: torch.Tensor, k: torch.Tensor, mode: str) -> torch.Tensor:
    """Correlate every channel of N x C x H x W ``x`` with the odd 2-D kernel ``k`` (``cv2.filter2D``).

    A sum of shifted slices: for the small kernels used here it is several times faster on
    the CPU than ``conv2d`` with one input channel.
    """
    kh, kw = k.shape
    rh, rw = kh // 2, kw // 2
    h, w = x.shape[-2:]
    xp = _take(_take(x, _pad_index(h, rh, mode), 2), _pad_index(w, rw, mode), 3)
    out = torch.zeros_like(x)
    for i, row in enumerate(k.tolist()):
        for j, weight in enumerate(row):
            if weight != 0.0:
                out.add_(xp[..., i:i + h, j:j + w], alpha=weight)
    return out


def _separable(x: torch.Tensor, k: torch.Tensor, mode: str) -> torch.Tensor:
    """Correlate every channel of N x C x H x W ``x`` with the odd 1-D kernel ``k`` along H, then W."""
    r = k.numel() // 2
    weights = k.tolist()
    if r == 0:
        return x * weights[0]
    h, w = x.shape[-2:]
    xp = _take(x, _pad_index(h, r, mode), 2)
    tmp = torch.zeros_like(x)
    for i, weight in enumerate(weights):
        tmp.add_(xp[..., i:i + h, :], alpha=weight)
    tp = _take(tmp, _pad_index(w, r, mode), 3)
    out = torch.zeros_like(x)
    for j, weight in enumerate(weights):
        out.add_(tp[..., j:j + w], alpha=weight)
    return out


def _gaussian_kernel1d(sigma: float, truncate: float) -> torch.Tensor:
    """scipy.ndimage's sampled Gaussian: radius ``int(truncate * sigma + 0.5)``, normalised."""
    r = int(truncate * float(sigma) + 0.5)
    t = torch.arange(-r, r + 1, dtype=torch.float64)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    return k / k.sum()


def _gaussian_filter(x: torch.Tensor, sigma: float, mode: str, truncate: float = 4.0) -> torch.Tensor:
    """``skimage.filters.gaussian`` over H and W of every channel (sigma 0 is the identity)."""
    if sigma <= 0:
        return x
    return _separable(x, _gaussian_kernel1d(sigma, truncate), mode)


def _clipped_zoom(x: torch.Tensor, zoom: float) -> torch.Tensor:
    """The reference's ``clipped_zoom``: centre crop of ``ceil(size / zoom)``, linear zoom, centre trim.

    ``scipy.ndimage.zoom(order=1)`` maps output ``i`` to input ``i * (in - 1) / (out - 1)``,
    which is ``interpolate(..., align_corners=True)``; output size is ``round(in * zoom)``.
    """
    h, w = x.shape[-2:]
    ch, cw = int(math.ceil(h / zoom)), int(math.ceil(w / zoom))
    top, left = (h - ch) // 2, (w - cw) // 2
    crop = x[..., top:top + ch, left:left + cw]
    oh, ow = int(round(ch * zoom)), int(round(cw * zoom))
    if (oh, ow) != (ch, cw):
        crop = F.interpolate(crop, size=(oh, ow), mode="bilinear", align_corners=True)
    th, tw = (oh - h) // 2, (ow - w) // 2
    return crop[..., th:th + h, tw:tw + w]


def _motion_blur(x: torch.Tensor, radius: float, sigma: float, angles: torch.Tensor) -> torch.Tensor:
    """ImageMagick ``MotionBlurImage`` (used through wand by the reference), one angle per image.

    ImageMagick blurs along a one-sided line: width ``2 * ceil(radius) + 1`` taps with weights
    ``exp(-i^2 / (2 sigma^2))``, tap ``i`` reading the pixel at offset
    ``(ceil(i cos(a) - 0.5), ceil(i sin(a) - 0.5))`` (x right, y down) with edge pixels
    repeated outside the image. Taps whose normalised weight is below 1e-6 are skipped
    (they cannot change an 8-bit output). ``angles`` are degrees, float64 on the CPU.
    """
    width = int(2 * math.ceil(radius) + 1)
    i = torch.arange(width, dtype=torch.float64)
    k = torch.exp(-(i**2) / (2.0 * max(sigma, 1e-12) ** 2))
    k = k / k.sum()
    a = torch.deg2rad(angles.to(torch.float64))
    ox = torch.ceil(i[None] * torch.cos(a)[:, None] - 0.5).long()  # N x width
    oy = torch.ceil(i[None] * torch.sin(a)[:, None] - 0.5).long()
    n, c, h, w = x.shape
    rows = torch.arange(h).view(1, h, 1)
    cols = torch.arange(w).view(1, 1, w)
    flat = x.reshape(n, c, h * w)
    out = torch.zeros_like(flat)
    for t in range(width):
        if k[t] < 1e-6:
            continue
        src = (rows + oy[:, t, None, None]).clamp_(0, h - 1) * w + (cols + ox[:, t, None, None]).clamp_(0, w - 1)
        idx = src.reshape(n, 1, h * w).to(x.device).expand(n, c, h * w)
        out.add_(flat.gather(2, idx), alpha=float(k[t]))
    return out.reshape(n, c, h, w)


def _disk(radius: float, alias_blur: float) -> torch.Tensor:
    """The reference's anti-aliased disk kernel (``cv2.GaussianBlur`` of an aliased disk), cropped to its support."""
    if radius <= 8:
        coords, ksize = torch.arange(-8, 9, dtype=torch.float64), 3
    else:
        coords, ksize = torch.arange(-radius, radius + 1, dtype=torch.float64), 5
    yy, xx = torch.meshgrid(coords, coords, indexing="ij")
    disk = ((xx**2 + yy**2) <= radius**2).to(torch.float64)
    disk = disk / disk.sum()
    t = torch.arange(ksize, dtype=torch.float64) - (ksize - 1) / 2  # cv2.getGaussianKernel(ksize, sigma)
    g = torch.exp(-(t**2) / (2 * alias_blur**2))
    disk = _separable(disk[None, None], g / g.sum(), "mirror")[0, 0]
    nz = torch.nonzero(disk > 0)
    r = int(max((nz - disk.shape[0] // 2).abs().max().item(), 0))
    mid = disk.shape[0] // 2
    return disk[mid - r:mid + r + 1, mid - r:mid + r + 1]


def _pil_box_weights(n_in: int, n_out: int) -> torch.Tensor:
    """``n_out x n_in`` resampling matrix of PIL's BOX filter (``precompute_coeffs`` in Resample.c)."""
    scale = n_in / n_out
    filterscale = max(scale, 1.0)
    support = 0.5 * filterscale
    m = torch.zeros(n_out, n_in, dtype=torch.float64)
    for o in range(n_out):
        center = (o + 0.5) * scale
        lo = max(int(center - support + 0.5), 0)
        hi = min(int(center + support + 0.5), n_in)
        for j in range(lo, hi):
            u = (j - center + 0.5) / filterscale
            if -0.5 < u <= 0.5:
                m[o, j] = 1.0
        total = m[o].sum()
        if total > 0:
            m[o] /= total
    return m


def _resample(x: torch.Tensor, m: torch.Tensor, dim: int) -> torch.Tensor:
    """``m @ x`` along ``dim`` for a banded resampling matrix, as a few gathers (a dense matmul is far slower)."""
    taps = int((m > 0).sum(dim=1).max().item())
    weights, index = m.topk(taps, dim=1)  # n_out x taps; zero weights pad short rows
    shape = [1] * x.dim()
    shape[dim] = m.shape[0]
    out = torch.zeros(1, dtype=x.dtype, device=x.device)
    for t in range(taps):
        out = out + _take(x, index[:, t], dim) * weights[:, t].to(x.device, x.dtype).view(shape)
    return out


# ---- corruptions, in the order of make_cifar_c.py -----------------------------------------------

@_register("gaussian_noise")
def gaussian_noise(x: torch.Tensor, severity: int, gen: torch.Generator) -> torch.Tensor:
    """Additive i.i.d. N(0, c^2) noise per pixel and channel."""
    c = _level([0.04, 0.06, .08, .09, .10], severity)
    return (x + c * _randn(x.shape, gen, x.device)).clamp_(0, 1)


@_register("shot_noise")
def shot_noise(x: torch.Tensor, severity: int, gen: torch.Generator) -> torch.Tensor:
    """Poisson photon noise, ``Poisson(x * c) / c``; sampled on the CPU so every device agrees."""
    c = _level([500, 250, 100, 75, 50], severity)
    counts = torch.poisson(x.detach().cpu().to(torch.float32) * c, generator=gen)
    return (counts / c).to(x.device, x.dtype).clamp_(0, 1)


@_register("impulse_noise")
def impulse_noise(x: torch.Tensor, severity: int, gen: torch.Generator) -> torch.Tensor:
    """Salt-and-pepper noise like ``skimage.util.random_noise(mode='s&p', amount=c)``.

    Each value (pixel and channel independently) is replaced with probability ``c``, by 1 or
    0 with equal odds.
    """
    c = _level([.01, .02, .03, .05, .07], severity)
    flipped = _rand(x.shape, gen, x.device) < c
    salted = _rand(x.shape, gen, x.device) < 0.5
    out = x.clone()
    out[flipped & salted] = 1.0
    out[flipped & ~salted] = 0.0
    return out


@_register("defocus_blur")
def defocus_blur(x: torch.Tensor, severity: int, gen: torch.Generator) -> torch.Tensor:
    """Convolution with the reference's anti-aliased disk, border reflect-101 as ``cv2.filter2D``."""
    radius, alias_blur = _level([(0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1, 0.2), (1.5, 0.1)], severity)
    return _correlate(x, _disk(radius, alias_blur), "mirror").clamp_(0, 1)


def _glass_shuffle(x: torch.Tensor, d: np.ndarray, delta: int) -> torch.Tensor:
    """The reference's glass-blur pixel loop on N x C x H x W ``x``, with given displacements.

    ``d`` is iterations x steps x 2 x N: ``(dx, dy)`` per pass, per step and per image, in the
    reference's order, pixels ``(h, w)`` from ``(H - delta, W - delta)`` down to
    ``(delta + 1, delta + 1)``, row by row. The reference's line
    ``x[h, w], x[h', w'] = x[h', w'], x[h, w]`` looks like a swap, but its right-hand side
    holds views of the H x W x 3 array, so it copies (numpy issue 14428): ``(h, w)`` takes
    the value ``(h', w')`` holds at that moment (which may already have been overwritten in
    this pass, if the displacement points to a processed pixel) and ``(h', w')`` keeps it.
    The published data was made that way; a true swap lets pixels travel further and makes
    the corruption 15-56% stronger. The copies run once per batch on a pixel-index table
    (``src[p] = src[q]``), then one ``gather`` applies it to every image.
    """
    n, c, h, w = x.shape
    targets = np.array([hh * w + ww for hh in range(h - delta, delta, -1) for ww in range(w - delta, delta, -1)],
                       dtype=np.int64)
    if d.shape[1:] != (len(targets), 2, n):
        raise ValueError(f"displacements must be iterations x {len(targets)} x 2 x {n}, got {d.shape}")
    src = np.repeat(np.arange(h * w, dtype=np.int64)[:, None], n, axis=1)  # src[p, i]: where image i's p comes from
    images = np.arange(n)
    for moves in d.astype(np.int64):  # one pass
        reads = targets[:, None] + moves[:, 1] * w + moves[:, 0]  # steps x N
        for p, q in zip(targets, reads):
            src[p] = src[q, images]
    idx = torch.from_numpy(np.ascontiguousarray(src.T)).to(x.device)
    return x.reshape(n, c, h * w).gather(2, idx[:, None, :].expand(n, c, h * w)).reshape(n, c, h, w)


@_register("glass_blur")
def glass_blur(x: torch.Tensor, severity: int, gen: torch.Generator) -> torch.Tensor:
    """Gaussian blur, local pixel shuffling (``_glass_shuffle``), Gaussian blur again.

    Displacements ``dx, dy`` are uniform in ``[-delta, delta)`` (numpy's ``randint`` excludes
    the top, so with delta 1 pixels only read from up/left), one per image and pixel. The
    intermediate 8-bit truncation of the reference is kept. Blur: skimage ``gaussian`` (mode
    'nearest', truncate 4).
    """
    sigma, delta, iterations = _level([(0.05, 1, 1), (0.25, 1, 1), (0.4, 1, 1), (0.25, 1, 2), (0.4, 1, 2)], severity)
    n, _, h, w = x.shape
    y = _gaussian_filter(x, sigma, "nearest").clamp(0, 1)
    y = torch.floor(y * 255.0 + 1e-3).div_(255.0)  # np.uint8(... * 255)
    steps = max(h - 2 * delta, 0) * max(w - 2 * delta, 0)
    d = torch.randint(-delta, delta, (iterations, steps, 2, n), generator=gen).numpy()
    return _gaussian_filter(_glass_shuffle(y, d, delta), sigma, "nearest").clamp_(0, 1)


@_register("motion_blur")
def motion_blur(x: torch.Tensor, severity: int, gen: torch.Generator) -> torch.Tensor:
    """ImageMagick motion blur (radius, sigma) at a uniform random angle in (-45, 45) degrees per image."""
    radius, sigma = _level([(6, 1), (6, 1.5), (6, 2), (8, 2), (9, 2.5)], severity)
    angles = torch.rand(x.shape[0], generator=gen, dtype=torch.float64) * 90.0 - 45.0
    return _motion_blur(x, radius, sigma, angles).clamp_(0, 1)


@_register("zoom_blur")
def zoom_blur(x: torch.Tensor, severity: int, gen: torch.Generator) -> torch.Tensor:
    """Mean of the image and its centre zooms by each factor of ``np.arange(1, end, 0.01)``.

    The factor lists are built with ``np.arange`` exactly as published, float quirks included
    (severity 1 has 7 factors, 1.00..1.06).
    """
    end = _level([1.06, 1.11, 1.16, 1.21, 1.26], severity)
    factors = np.arange(1, end, 0.01)
    out = x.clone()
    for z in factors:
        out.add_(_clipped_zoom(x, float(z)))
    return out.div_(len(factors) + 1).clamp_(0, 1)


@_register("snow")
def snow(x: torch.Tensor, severity: int, gen: torch.Generator) -> torch.Tensor:
    """Zoomed, thresholded Gaussian snow layer, motion-blurred at (-135, -45) degrees, added twice (rot 180).

    The image is first whitened towards ``1.5 * gray + 0.5`` (gray = ITU-R 601 luma, as
    ``cv2.COLOR_RGB2GRAY``). The layer's 8-bit round trips (PIL, PNG) are kept.
    """
    loc, scale, zoom, threshold, mb_radius, mb_sigma, blend = _level([
        (0.1, 0.2, 1, 0.6, 8, 3, 0.95),
        (0.1, 0.2, 1, 0.5, 10, 4, 0.9),
        (0.15, 0.3, 1.75, 0.55, 10, 4, 0.9),
        (0.25, 0.3, 2.25, 0.6, 12, 6, 0.85),
        (0.3, 0.3, 1.25, 0.65, 14, 12, 0.8)], severity)
    n, c, h, w = x.shape
    layer = torch.randn((n, 1, h, w), generator=gen, dtype=torch.float64) * scale + loc
    layer = _clipped_zoom(layer, zoom)
    layer = torch.where(layer < threshold, torch.zeros_like(layer), layer)
    layer = torch.floor(layer.clamp(0, 1) * 255.0).div_(255.0)  # PIL 'L' image of np.uint8
    angles = torch.rand(n, generator=gen, dtype=torch.float64) * 90.0 - 135.0
    layer = torch.round(_motion_blur(layer, mb_radius, mb_sigma, angles) * 255.0) / 255.0  # 8-bit PNG
    layer = layer.to(x.device, x.dtype)
    gray = x if c == 1 else (0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3])
    y = blend * x + (1 - blend) * torch.maximum(x, gray * 1.5 + 0.5)
    return (y + layer + torch.rot90(layer, 2, dims=(2, 3))).clamp_(0, 1)


def _plasma_fractal(n: int, mapsize: int, wibbledecay: float, gen: torch.Generator) -> torch.Tensor:
    """The reference's diamond-square heightmap for ``n`` maps at once: n x mapsize x mapsize in [0, 1].

    Kept as published, including the noise amplitude ``wibble * U(-wibble, wibble)``.
    """
    m = torch.zeros(n, mapsize, mapsize, dtype=torch.float64)
    step = mapsize
    wibble = 100.0

    def wibbled_mean(a: torch.Tensor) -> torch.Tensor:
        u = torch.rand(a.shape, generator=gen, dtype=torch.float64) * (2 * wibble) - wibble
        return a / 4 + wibble * u

    while step >= 2:
        half = step // 2
        corner = m[:, 0::step, 0::step]
        sq = corner + torch.roll(corner, -1, 1)
        sq = sq + torch.roll(sq, -1, 2)
        m[:, half::step, half::step] = wibbled_mean(sq)
        dr = m[:, half::step, half::step]
        ul = m[:, 0::step, 0::step]
        m[:, 0::step, half::step] = wibbled_mean(dr + torch.roll(dr, 1, 1) + ul + torch.roll(ul, -1, 2))
        m[:, half::step, 0::step] = wibbled_mean(dr + torch.roll(dr, 1, 2) + ul + torch.roll(ul, -1, 1))
        step //= 2
        wibble /= wibbledecay
    m = m - m.amin(dim=(1, 2), keepdim=True)
    return m / m.amax(dim=(1, 2), keepdim=True)


@_register("fog")
def fog(x: torch.Tensor, severity: int, gen: torch.Generator) -> torch.Tensor:
    """Adds ``c0 *`` a plasma fractal (one per image), then rescales by ``max / (max + c0)``.

    The reference's map is 32x32 for CIFAR; here it is the next power of two >= max(H, W)
    (at least 32), cropped to H x W.
    """
    amount, decay = _level([(.2, 3), (.5, 3), (0.75, 2.5), (1, 2), (1.5, 1.75)], severity)
    n, _, h, w = x.shape
    mapsize = max(32, 1 << (max(h, w) - 1).bit_length())
    plasma = _plasma_fractal(n, mapsize, decay, gen)[:, None, :h, :w].to(x.device, x.dtype)
    max_val = x.amax(dim=(1, 2, 3), keepdim=True)
    return ((x + amount * plasma) * max_val / (max_val + amount)).clamp_(0, 1)


@_register("brightness")
def brightness(x: torch.Tensor, severity: int, gen: torch.Generator) -> torch.Tensor:
    """HSV value shift ``V' = clip(V + c)`` with hue and saturation kept.

    RGB is linear in V at fixed H and S, so the HSV round trip is ``x * V' / V`` (and gray
    ``V'`` where ``V == 0``, as skimage sets S = 0 there). One channel is the value itself.
    """
    c = _level([.05, .1, .15, .2, .3], severity)
    v = x.amax(dim=1, keepdim=True)
    v_new = (v + c).clamp(0, 1)
    scaled = x * (v_new / v.clamp_min(1e-12))
    return torch.where(v > 0, scaled, v_new.expand_as(x)).clamp_(0, 1)


@_register("contrast")
def contrast(x: torch.Tensor, severity: int, gen: torch.Generator) -> torch.Tensor:
    """``(x - mean) * c + mean`` with the per-image, per-channel spatial mean."""
    c = _level([.75, .5, .4, .3, 0.15], severity)
    means = x.mean(dim=(2, 3), keepdim=True)
    return ((x - means) * c + means).clamp_(0, 1)


@_register("elastic_transform")
def elastic_transform(x: torch.Tensor, severity: int, gen: torch.Generator) -> torch.Tensor:
    """Random affine (corner jitter ``c2``) then a smooth random displacement field (alpha ``c0``, sigma ``c1``).

    As the reference: ``cv2.warpAffine`` (bilinear, BORDER_REFLECT_101 = ``grid_sample``
    reflection with ``align_corners=True``), then ``map_coordinates(order=1, mode='reflect')``
    (= reflection with ``align_corners=False``) with fields ``gaussian(U(-1, 1), c1,
    mode='reflect', truncate=3) * c0``. ``IMSIZE`` (32 for CIFAR) is min(H, W).
    """
    n, c, h, w = x.shape
    s = float(min(h, w))
    alpha, sigma, affine = _level([(s * 0, s * 0, s * 0.08),
                                   (s * 0.05, s * 0.2, s * 0.07),
                                   (s * 0.08, s * 0.06, s * 0.06),
                                   (s * 0.1, s * 0.04, s * 0.05),
                                   (s * 0.1, s * 0.03, s * 0.03)], severity)
    # random affine mapping three reference points pts1 -> pts2; sample the source at M^-1(dst)
    cx, cy, sq = float(w // 2), float(h // 2), float(min(h, w) // 3)
    pts1 = torch.tensor([[cx + sq, cy + sq], [cx + sq, cy - sq], [cx - sq, cy - sq]], dtype=torch.float64)
    pts2 = pts1 + (torch.rand((n, 3, 2), generator=gen, dtype=torch.float64) * 2 - 1) * affine
    inv = torch.linalg.solve(torch.cat([pts2, torch.ones(n, 3, 1, dtype=torch.float64)], dim=2), pts1.expand(n, 3, 2))
    yy, xx = torch.meshgrid(torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64), indexing="ij")
    dst = torch.stack([xx, yy, torch.ones_like(xx)], dim=-1).reshape(h * w, 3)
    src = dst @ inv  # n x HW x 2, (x, y) pixel coordinates
    grid = torch.stack([2 * src[..., 0] / max(w - 1, 1) - 1, 2 * src[..., 1] / max(h - 1, 1) - 1], dim=-1)
    y = F.grid_sample(x, grid.reshape(n, h, w, 2).to(x.device, x.dtype), mode="bilinear",
                      padding_mode="reflection", align_corners=True)
    if alpha > 0:
        field = torch.rand((n, 2, h, w), generator=gen, dtype=torch.float64) * 2 - 1  # dx, then dy
        field = _gaussian_filter(field, sigma, "reflect", truncate=3.0) * alpha
        col, row = xx + field[:, 0], yy + field[:, 1]
        grid = torch.stack([(2 * col + 1) / w - 1, (2 * row + 1) / h - 1], dim=-1)
        y = F.grid_sample(y, grid.to(x.device, x.dtype), mode="bilinear", padding_mode="reflection",
                          align_corners=False)
    return y.clamp_(0, 1)


@_register("pixelate")
def pixelate(x: torch.Tensor, severity: int, gen: torch.Generator) -> torch.Tensor:
    """PIL BOX resize to ``int(size * c)`` and back, as resampling matrices; matches PIL byte for byte.

    PIL rounds each pass (horizontal, then vertical) to 8 bits; that is kept.
    """
    c = _level([0.95, 0.9, 0.85, 0.75, 0.65], severity)
    h, w = x.shape[-2:]
    sh, sw = int(h * c), int(w * c)

    def q(t: torch.Tensor) -> torch.Tensor:  # PIL rounds each (horizontal, then vertical) pass to 8 bits
        return torch.floor(t * 255.0 + 0.5 + 1e-7) / 255.0

    y = x.detach().cpu().to(torch.float64)  # float64 on the CPU: exact 8-bit rounding on every device
    y = q(_resample(y, _pil_box_weights(w, sw), 3))
    y = q(_resample(y, _pil_box_weights(h, sh), 2))
    y = q(_resample(y, _pil_box_weights(sw, w), 3))
    y = q(_resample(y, _pil_box_weights(sh, h), 2))
    return y.to(x.device, x.dtype).clamp_(0, 1)


@_register("jpeg_compression")
def jpeg_compression(x: torch.Tensor, severity: int, gen: torch.Generator) -> torch.Tensor:
    """PIL JPEG encode/decode at the published quality, one image at a time (it is a codec)."""
    quality = _level([80, 65, 58, 50, 40], severity)
    arr = x.detach().mul(255.0).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    out = np.empty_like(arr)
    for i in range(arr.shape[0]):
        img = Image.fromarray(arr[i, :, :, 0] if arr.shape[3] == 1 else arr[i])  # 2-D -> "L", H x W x 3 -> "RGB"
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=quality)
        buf.seek(0)
        dec = np.asarray(Image.open(buf))
        out[i] = dec[..., None] if dec.ndim == 2 else dec
    return torch.from_numpy(out).permute(0, 3, 1, 2).to(x.device, x.dtype).div_(255.0)
