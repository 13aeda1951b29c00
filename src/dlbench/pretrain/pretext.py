"""Classical pretext tasks: rotation, jigsaw, colorization, inpainting, relative location.

Each method invents labels from the images themselves (which rotation, which tile order,
which colours, which missing pixels, which neighbour) and trains the shared backbone with a
small head on top of ``self.encode``, so any timm backbone works. All five share the same
skeleton (``PretextMethod``): a light crop+flip view, ``make_inputs`` (the pretext input and
its target, built batched with tensor indexing, every random draw from ``gen``) and a loss.
``make_inputs`` is public so tests can check what the encoder sees.

Scaling from the papers (ImageNet, 64-225 px patches, hundreds of epochs) to 32 px images,
~8000 unlabeled images and a few CPU epochs: tiles/patches are 7-9 px cut from a 3 x 3 grid of
``H // 3`` cells, patch heads have one hidden layer of 512 (papers: 4096-wide fc layers),
decoders predict 8 x 8 (colour) or 16 x 16 (inpainting) maps, and one backbone pass per image
(or per tile) keeps a step cheap. Each class says what else was scaled.

Tiny patches: a backbone with a fixed input size (timm ViT without ``dynamic_img_size``) resizes
them to that size itself (``Backbone``), and ``min_patch_size`` (default 16) upsamples them for any
backbone (``encode_patches``): a 7 px patch through a ResNet's four stride-2 stages reaches a 1 x 1
map two stages early, and in bf16 its last stage's weights went NaN within 4 epochs.
"""

from __future__ import annotations

import functools
import itertools
import math
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from dlbench.pretrain.base import PretrainMethod, PretrainSetup, mlp, register_method
from dlbench.pretrain.views import ViewConfig, grayscale, make_view
from dlbench.train.engine import Batch

Stats = dict[str, torch.Tensor]
Inputs = dict[str, torch.Tensor]

# keys every pretext method understands: the light view augmentation of its own
VIEW_DEFAULTS: dict[str, Any] = {
    "augment": True,  # False: the pretext transform sees the images as they are (no crop / flip)
    "crop_scale": (0.6, 1.0),
}

# --------------------------------------------------------------------------- shared helpers


def classifier_head(in_dim: int, hidden: int, out: int) -> nn.Module:
    """Linear head (``hidden`` = 0) or one hidden Linear-BN-ReLU layer (``mlp``)."""
    return nn.Linear(in_dim, out) if int(hidden) <= 0 else mlp(in_dim, int(hidden), out, layers=2)


def classification_loss(logits: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, Stats]:
    """Cross-entropy in float32 (bf16 autocast safe) and accuracy; works for N x K and N x K x H x W."""
    logits = logits.float()
    loss = F.cross_entropy(logits, target)
    acc = (logits.detach().argmax(1) == target).float().mean()
    return loss, {"acc": acc}


def rotate_batch(x: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Rotate image i of N x C x H x W by ``k[i]`` * 90 degrees counter-clockwise (``torch.rot90`` sense)."""
    if x.shape[-1] != x.shape[-2]:
        raise ValueError(f"rotation needs square images, got {tuple(x.shape[-2:])}")
    rots = torch.stack([torch.rot90(x, r, dims=(2, 3)) for r in range(4)])
    return rots[k.to(x.device), torch.arange(x.shape[0], device=x.device)]


def grid_positions(n: int, height: int, width: int, gap: int, jitter: int, gen: torch.Generator,
                   grid: int = 3) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Top-left corners of a ``grid`` x ``grid`` layout of square patches, per image.

    The image is cut into cells of side ``min(H, W) // grid`` (the grid's origin drawn in the
    leftover border); each patch has side ``cell - gap`` and sits at ``(gap - jitter) // 2``
    plus a uniform jitter in ``[0, jitter]`` inside its cell, so neighbours are at least
    ``gap - jitter`` px apart (the papers' gaps against edge-continuation shortcuts).
    Returns ys, xs (N x grid^2, row-major cell order, int64 on CPU) and the patch side.
    """
    cell = min(height, width) // grid
    patch = cell - gap
    if patch < 1:
        raise ValueError(f"gap {gap} leaves no patch in {cell}-px cells of a {height}x{width} image")
    if not 0 <= jitter <= gap:
        raise ValueError(f"patch jitter must be in [0, gap={gap}], got {jitter}")
    k = grid * grid
    oy = torch.randint(0, height - grid * cell + 1, (n, 1), generator=gen)
    ox = torch.randint(0, width - grid * cell + 1, (n, 1), generator=gen)
    jy = torch.randint(0, jitter + 1, (n, k), generator=gen)
    jx = torch.randint(0, jitter + 1, (n, k), generator=gen)
    base = (gap - jitter) // 2 + torch.arange(grid) * cell
    ys = oy + base.repeat_interleave(grid)[None] + jy
    xs = ox + base.repeat(grid)[None] + jx
    return ys, xs, patch


def crop_patches(x: torch.Tensor, ys: torch.Tensor, xs: torch.Tensor, size: int) -> torch.Tensor:
    """Square crops of side ``size`` at top-left (ys, xs) (N x K each): N x K x C x size x size, one gather."""
    dev = x.device
    ar = torch.arange(size, device=dev)
    rows = (ys.to(dev)[..., None] + ar)[:, :, :, None]  # N x K x s x 1
    cols = (xs.to(dev)[..., None] + ar)[:, :, None, :]  # N x K x 1 x s
    batch = torch.arange(x.shape[0], device=dev)[:, None, None, None]
    # advanced indices around a slice: the broadcast index dims come first, channels last
    return x[batch, :, rows, cols].permute(0, 1, 4, 2, 3)


def standardize_patches(p: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, min_std: float = 0.05) -> torch.Tensor:
    """Per patch and channel, zero mean / unit std after the backbone's normalisation by ``mean``/``std``
    (1 x C x 1 x 1; Noroozi's per-tile normalisation against low-level statistic shortcuts);
    ``min_std`` keeps flat tiles from blowing noise up."""
    m = p.mean(dim=(-2, -1), keepdim=True)
    s = p.std(dim=(-2, -1), keepdim=True).clamp_min(min_std)
    return (p - m) / s * std.to(p) + mean.to(p)


@functools.lru_cache(maxsize=8)
def _maximal_hamming(num: int, length: int, seed: int) -> torch.Tensor:
    # length x L layout: the per-step distance is a sum over contiguous rows (~2 ms for 9! perms)
    all_perms = torch.tensor(list(itertools.permutations(range(length))), dtype=torch.int8).T.contiguous()
    total = all_perms.shape[1]
    if not 1 <= num <= total:
        raise ValueError(f"cannot choose {num} distinct permutations of {length} (there are {total})")
    gen = torch.Generator().manual_seed(seed)
    j = int(torch.randint(total, (1,), generator=gen))
    chosen = [j]
    min_d = torch.full((total,), length + 1, dtype=torch.int32)
    sum_d = torch.zeros(total, dtype=torch.int32)
    big = num * (length + 1)  # > any sum of distances: the min distance dominates, the sum breaks ties
    for _ in range(num - 1):
        d = (all_perms != all_perms[:, j:j + 1]).sum(0, dtype=torch.int32)
        torch.minimum(min_d, d, out=min_d)
        sum_d += d
        # chosen ones have min distance 0, so they score < big and are never picked again
        j = int(torch.add(sum_d, min_d, alpha=big).argmax())
        chosen.append(j)
    return all_perms[:, chosen].T.long()


def maximal_hamming_permutations(num: int, length: int = 9, seed: int = 0) -> torch.Tensor:
    """Noroozi & Favaro's greedy maximal-Hamming permutation set: ``num`` x ``length`` int64.

    Start from one permutation drawn with a fixed ``seed`` (independent of training seeds, so
    every run and checkpoint uses the same set), then repeatedly add the permutation farthest
    from the set. The paper ranks candidates by their *mean* distance to the set, which leaves
    the minimum pairwise distance at 2 (as random sampling); ranking by the *minimum* distance
    first, the mean breaking ties, keeps the paper's mean (8.08 for 100 of 9) and lifts the
    minimum to 6, so no two puzzles differ by a single swap.
    """
    return _maximal_hamming(int(num), int(length), int(seed)).clone()


def min_pairwise_hamming(perms: torch.Tensor) -> int:
    d = (perms[:, None, :] != perms[None, :, :]).sum(-1)
    d.fill_diagonal_(perms.shape[1] + 1)
    return int(d.min())


class SpatialDecoder(nn.Module):
    """Feature vector -> ``out_channels`` x S x S map (Pathak's fc bottleneck + up-convolution).

    Linear to a ``width`` x ceil(S/2)^2 grid, nearest upsampling x2, conv3x3-BN-ReLU, conv1x1;
    resampled to exactly S when S is odd.
    """

    def __init__(self, in_dim: int, out_channels: int, out_size: int, width: int) -> None:
        super().__init__()
        self.out_size, self.width = int(out_size), int(width)
        self.s0 = max(1, (self.out_size + 1) // 2)
        self.fc = nn.Sequential(nn.Linear(in_dim, self.width * self.s0 ** 2, bias=False),
                                nn.BatchNorm1d(self.width * self.s0 ** 2), nn.ReLU(inplace=True))
        self.conv = nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"),
                                  nn.Conv2d(self.width, self.width, 3, padding=1, bias=False),
                                  nn.BatchNorm2d(self.width), nn.ReLU(inplace=True),
                                  nn.Conv2d(self.width, out_channels, 1))

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        h = self.conv(self.fc(f).view(f.shape[0], self.width, self.s0, self.s0))
        if h.shape[-1] != self.out_size:
            h = F.interpolate(h, size=(self.out_size, self.out_size), mode="bilinear", align_corners=False)
        return h


class PretextMethod(PretrainMethod):
    """Skeleton shared by the five tasks: own light view, ``make_inputs`` then ``loss``.

    The view is random-resized-crop + flip only (``crop_scale`` param; flip from the run's
    views): colour jitter / grayscale would corrupt the colorization target and are not part
    of the other papers' pipelines either; ``augment: False`` skips the view altogether.
    """

    def __init__(self, setup: PretrainSetup) -> None:
        super().__init__(setup)
        self.view_cfg = ViewConfig(crop_scale=tuple(self.params["crop_scale"]), flip=setup.views.flip,
                                   jitter_p=0.0, grayscale_p=0.0, solarize_p=0.0, size=None)

    def view(self, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        return make_view(x, self.view_cfg, gen) if self.params["augment"] else x

    @classmethod
    def input_sides(cls, params: dict[str, Any], views: ViewConfig, side: int) -> list[tuple[str, int]]:
        return [("views", int(side))]  # the task's own crop of the image, at the image size

    def encode_patches(self, patches: torch.Tensor) -> torch.Tensor:
        """Features of M x C x t x t patches, upsampled to ``min_patch_size`` (param); a fixed-size
        backbone (ViT) resizes them to its size itself."""
        side = patches.shape[-1]
        target = max(side, int(self.params.get("min_patch_size", 0)))
        if target != side and not self.backbone.fixed_size:
            patches = F.interpolate(patches, size=(target, target), mode="bilinear", align_corners=False)
        return self.encode(patches)

    def make_inputs(self, x: torch.Tensor, gen: torch.Generator) -> Inputs:
        raise NotImplementedError

    def loss(self, inputs: Inputs) -> tuple[torch.Tensor, Stats]:
        raise NotImplementedError

    def training_loss(self, batch: Batch, gen: torch.Generator) -> tuple[torch.Tensor, Stats]:
        return self.loss(self.make_inputs(batch.images, gen))


def _check_grid(name: str, setup: PretrainSetup, gap: int, jitter: int) -> None:
    """Fail at construction, not at the first step, when the grid does not fit the input size."""
    h, w = setup.input_size
    try:
        grid_positions(1, int(h), int(w), gap, jitter, torch.Generator().manual_seed(0))
    except ValueError as e:
        raise ValueError(f"{name}: {e}") from None


# --------------------------------------------------------------------------- rotation


@register_method("rotation", family="pretext")
class Rotation(PretextMethod):
    """RotNet (Gidaris et al. 2018): predict which of 0/90/180/270 degrees the image was rotated by.

    Scaled: one rotation drawn per image (one backbone pass per image); ``all_rotations``
    gives the paper's setting (all four rotations of every image in the batch, 4x the cost).
    Linear 4-way head on the pooled features (the paper's classifier on the network's last layer).
    """

    defaults: ClassVar[dict[str, Any]] = {**VIEW_DEFAULTS, "all_rotations": False, "head_hidden": 0}

    def __init__(self, setup: PretrainSetup) -> None:
        super().__init__(setup)
        self.head = classifier_head(self.feature_dim, self.params["head_hidden"], 4)
        self.model["head"] = self.head

    def make_inputs(self, x: torch.Tensor, gen: torch.Generator) -> Inputs:
        v = self.view(x, gen)
        n = v.shape[0]
        if self.params["all_rotations"]:
            k = torch.arange(4).repeat_interleave(n)
            v = v.repeat(4, 1, 1, 1)
        else:
            k = torch.randint(0, 4, (n,), generator=gen)
        return {"input": rotate_batch(v, k), "target": k.to(x.device)}

    def loss(self, inputs: Inputs) -> tuple[torch.Tensor, Stats]:
        return classification_loss(self.head(self.encode(inputs["input"])), inputs["target"])


# --------------------------------------------------------------------------- jigsaw


@register_method("jigsaw", family="pretext")
class Jigsaw(PretextMethod):
    """Jigsaw puzzles (Noroozi & Favaro 2016): which of a fixed permutation set shuffled the 3x3 tiles.

    Each image's grid of ``H//3`` cells gives 9 tiles of ``H//3 - tile_gap`` px placed anywhere
    in their cell (paper: 64 px tiles in 75 px cells); all N*9 tiles go through the shared
    backbone in one pass, their features are concatenated in the shuffled order and an MLP
    (hidden 512; paper fc7 4096) picks the permutation. Scaled: 100 permutations (paper 1000)
    from ``maximal_hamming_permutations``. ``tile_normalize`` standardises each tile as the
    paper does (off by default: flat backgrounds of synthetic images make it noisy).
    """

    defaults: ClassVar[dict[str, Any]] = {**VIEW_DEFAULTS, "num_permutations": 100, "tile_gap": 1,
                                          "tile_normalize": False, "head_hidden": 512, "min_patch_size": 16}
    grid = 3

    @classmethod
    def input_sides(cls, params: dict[str, Any], views: ViewConfig, side: int) -> list[tuple[str, int]]:
        p = cls.resolve_params(params)
        return [("tiles", max(side // cls.grid - int(p["tile_gap"]), int(p["min_patch_size"])))]

    def __init__(self, setup: PretrainSetup) -> None:
        super().__init__(setup)
        _check_grid(self.name, setup, int(self.params["tile_gap"]), int(self.params["tile_gap"]))
        self.perms = maximal_hamming_permutations(int(self.params["num_permutations"]), self.grid ** 2)
        self.head = classifier_head(self.grid ** 2 * self.feature_dim, self.params["head_hidden"],
                                    self.perms.shape[0])
        self.model["head"] = self.head

    def make_inputs(self, x: torch.Tensor, gen: torch.Generator) -> Inputs:
        """Tiles in grid (row-major) order, N x 9 x C x t x t, and the permutation index per image."""
        v = self.view(x, gen)
        gap = int(self.params["tile_gap"])
        ys, xs, t = grid_positions(v.shape[0], v.shape[-2], v.shape[-1], gap, gap, gen, self.grid)
        target = torch.randint(0, self.perms.shape[0], (v.shape[0],), generator=gen)
        return {"tiles": crop_patches(v, ys, xs, t), "target": target.to(x.device)}

    def shuffle(self, tiles: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Puzzle position i of image n holds tile ``perms[target[n], i]``."""
        order = self.perms.to(tiles.device)[target]
        return tiles[torch.arange(tiles.shape[0], device=tiles.device)[:, None], order]

    def loss(self, inputs: Inputs) -> tuple[torch.Tensor, Stats]:
        tiles = self.shuffle(inputs["tiles"], inputs["target"])
        n, k = tiles.shape[:2]
        flat = tiles.flatten(0, 1)
        if self.params["tile_normalize"]:
            flat = standardize_patches(flat, self.backbone.mean, self.backbone.std)
        feats = self.encode_patches(flat).reshape(n, k * self.feature_dim)
        return classification_loss(self.head(feats), inputs["target"])


# --------------------------------------------------------------------------- colorization


def chroma_classes(x: torch.Tensor, size: int, bins: int) -> torch.Tensor:
    """Quantised colour of float N x 3 x H x W in [0, 1] at ``size`` x ``size``: N x size x size int64.

    YUV chroma (U = 0.492 (B - Y), V = 0.877 (R - Y), Y the ITU-R 601 luma the input keeps),
    averaged over each output cell, each axis cut into ``bins`` equal bins over its full range
    (odd ``bins`` put grey at a bin centre); class = bin_u * bins + bin_v.
    """
    x = x.float()
    y = (x * torch.tensor([0.299, 0.587, 0.114], device=x.device).view(1, 3, 1, 1)).sum(1)
    uv = torch.stack([0.492 * (x[:, 2] - y) / 0.436, 0.877 * (x[:, 0] - y) / 0.615], 1)  # in [-1, 1]
    uv = F.adaptive_avg_pool2d(uv, size)
    idx = ((uv + 1) / 2 * bins).floor().long().clamp_(0, bins - 1)
    return idx[:, 0] * bins + idx[:, 1]


@register_method("colorization", family="pretext")
class Colorization(PretextMethod):
    """Colorization (Zhang et al. 2016), scaled down: the colours of a grayscale image.

    Input: the view's luma repeated over 3 channels (any backbone works, no colour left).
    Target: quantised YUV chroma, ``color_bins`` x ``color_bins`` classes per pixel of a
    ``target_size`` x ``target_size`` map, cross-entropy as the paper (classification, not
    regression, which averages to sepia). Scaled: YUV instead of CIE Lab, 9x9 = 81 bins
    (paper 313 in-gamut Lab bins), 8 x 8 output (paper 56 x 56, 1/4 resolution: 8 = 32/4),
    predicted from the pooled features by ``SpatialDecoder`` (the method may only use pooled
    features, the paper decodes conv maps); no soft-encoding and no class rebalancing.
    """

    defaults: ClassVar[dict[str, Any]] = {**VIEW_DEFAULTS, "target_size": 8, "color_bins": 9, "decoder_width": 64}

    def __init__(self, setup: PretrainSetup) -> None:
        super().__init__(setup)
        bins = int(self.params["color_bins"])
        if bins < 2:
            raise ValueError(f"colorization: color_bins must be >= 2, got {bins}")
        self.decoder = SpatialDecoder(self.feature_dim, bins * bins, int(self.params["target_size"]),
                                      int(self.params["decoder_width"]))
        self.model["decoder"] = self.decoder

    def make_inputs(self, x: torch.Tensor, gen: torch.Generator) -> Inputs:
        v = self.view(x, gen)
        target = chroma_classes(v, int(self.params["target_size"]), int(self.params["color_bins"]))
        return {"input": grayscale(v).contiguous(), "target": target}

    def loss(self, inputs: Inputs) -> tuple[torch.Tensor, Stats]:
        return classification_loss(self.decoder(self.encode(inputs["input"])), inputs["target"])


# --------------------------------------------------------------------------- inpainting


@register_method("inpainting", family="pretext")
class Inpainting(PretextMethod):
    """Context encoder (Pathak et al. 2016), L2 only (no adversarial loss): fill in a hidden square.

    A square of ``mask_frac`` of the area (1/4 as the paper's central region) is filled with
    the backbone's normalisation mean (exactly 0 after its normalisation), the masked image is
    encoded, and ``SpatialDecoder`` predicts the square's normalised pixels from the pooled
    features; the loss is the mean squared error over the square. ``mask``: "center" (paper's
    central region) or "random" (a random square per image). ``overlap`` > 0 is the paper's
    overlap: the hidden part shrinks by that many px per side, the prediction keeps the full
    square and the visible border counts ``overlap_weight`` times (paper 10). ``out_size`` 0
    predicts at the square's resolution, else at a downsampled ``out_size`` (area-averaged target).
    """

    defaults: ClassVar[dict[str, Any]] = {**VIEW_DEFAULTS, "mask": "center", "mask_frac": 0.25, "overlap": 0,
                                          "overlap_weight": 10.0, "out_size": 0, "decoder_width": 64}

    def __init__(self, setup: PretrainSetup) -> None:
        super().__init__(setup)
        p = self.params
        if p["mask"] not in ("center", "random"):
            raise ValueError(f"inpainting: mask must be 'center' or 'random', got {p['mask']!r}")
        h, w = setup.input_size
        self.side = int(round(min(h, w) * math.sqrt(float(p["mask_frac"]))))
        if not 1 <= self.side <= min(h, w) or not 0 <= 2 * int(p["overlap"]) < self.side:
            raise ValueError(f"inpainting: mask_frac {p['mask_frac']} / overlap {p['overlap']} give no hidden square "
                             f"in {h}x{w} images")
        self.out_size = int(p["out_size"]) or self.side
        self.decoder = SpatialDecoder(self.feature_dim, 3, self.out_size, int(p["decoder_width"]))
        self.model["decoder"] = self.decoder

    def make_inputs(self, x: torch.Tensor, gen: torch.Generator) -> Inputs:
        """Masked input, target square (in [0, 1]), its per-pixel loss weights and the hidden mask."""
        v = self.view(x, gen)
        n, c, h, w = v.shape
        s, o = self.side, int(self.params["overlap"])
        if self.params["mask"] == "random":
            top = torch.randint(0, h - s + 1, (n,), generator=gen)
            left = torch.randint(0, w - s + 1, (n,), generator=gen)
        else:
            top, left = torch.full((n,), (h - s) // 2), torch.full((n,), (w - s) // 2)
        top, left = top.to(v.device), left.to(v.device)
        rows = torch.arange(h, device=v.device)[None, :, None]
        cols = torch.arange(w, device=v.device)[None, None, :]
        hidden = ((rows >= (top + o)[:, None, None]) & (rows < (top + s - o)[:, None, None])
                  & (cols >= (left + o)[:, None, None]) & (cols < (left + s - o)[:, None, None]))[:, None]
        masked = torch.where(hidden, self.backbone.mean.to(v), v)
        target = crop_patches(v, top[:, None], left[:, None], s)[:, 0]
        weight = torch.full((1, 1, s, s), float(self.params["overlap_weight"]), device=v.device)
        weight[..., o:s - o, o:s - o] = 1.0
        if self.out_size != s:
            target = F.interpolate(target, size=(self.out_size, self.out_size), mode="area")
            weight = F.interpolate(weight, size=(self.out_size, self.out_size), mode="area")
        return {"input": masked, "target": target, "weight": weight, "hidden": hidden}

    def reconstruction_loss(self, pred: torch.Tensor, target: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """Weighted mean squared error in the backbone's normalised pixel units over the predicted square."""
        err = (pred.float() - self.backbone.normalize(target.float())) ** 2
        return (err * weight).sum() / (weight.sum() * err.shape[0] * err.shape[1])

    def loss(self, inputs: Inputs) -> tuple[torch.Tensor, Stats]:
        pred = self.decoder(self.encode(inputs["input"]))
        loss = self.reconstruction_loss(pred, inputs["target"], inputs["weight"])
        # unweighted error in [0, 1] pixel units, comparable across normalisations and overlaps
        std, mean = self.backbone.std.float(), self.backbone.mean.float()
        pixel_mse = ((pred.detach().float() * std + mean - inputs["target"].float()) ** 2).mean()
        return loss, {"pixel_mse": pixel_mse}


# --------------------------------------------------------------------------- relative location

# label l <-> the l-th of the 8 cells around the centre (row-major, centre skipped)
NEIGHBOURS = (0, 1, 2, 3, 5, 6, 7, 8)
NEIGHBOUR_OFFSETS = tuple((g // 3 - 1, g % 3 - 1) for g in NEIGHBOURS)  # (dy, dx) in cells


def drop_colors(p: torch.Tensor, gen: torch.Generator, noise: float = 0.01) -> torch.Tensor:
    """Doersch's colour dropping: each patch keeps one random channel; the two others become
    that channel's mean plus Gaussian noise of ``noise`` times its std (no chromatic-aberration cue)."""
    m = p.shape[0]
    keep = torch.randint(0, 3, (m,), generator=gen).to(p.device)
    kept = p[torch.arange(m, device=p.device), keep][:, None]  # M x 1 x t x t
    eps = torch.randn(p.shape, generator=gen).to(p.device, p.dtype)
    filler = kept.mean((-2, -1), keepdim=True) + eps * noise * kept.std((-2, -1), keepdim=True)
    is_kept = torch.arange(3, device=p.device)[None, :, None, None] == keep[:, None, None, None]
    return torch.where(is_kept, p, filler)


@register_method("relative_location", family="pretext")
class RelativeLocation(PretextMethod):
    """Context prediction (Doersch et al. 2015): where is the second patch relative to the centre one?

    A 3x3 grid of ``H//3`` cells; patches of ``H//3 - patch_gap`` px with ``patch_jitter`` px of
    jitter, so neighbours are 2-4 px apart at 32 px (paper: 96 px patches, 48 px gap, 7 px
    jitter). The centre patch and one of its 8 neighbours (drawn per image) go through the
    shared backbone in one pass, their features are concatenated (centre first) and an MLP
    (hidden 512; paper fc 4096) predicts the 8-way position. ``color_dropping`` enables the
    paper's defence against chromatic aberration (off: synthetic images have none).
    """

    defaults: ClassVar[dict[str, Any]] = {**VIEW_DEFAULTS, "patch_gap": 3, "patch_jitter": 1, "head_hidden": 512,
                                          "color_dropping": False, "min_patch_size": 16}

    @classmethod
    def input_sides(cls, params: dict[str, Any], views: ViewConfig, side: int) -> list[tuple[str, int]]:
        p = cls.resolve_params(params)
        return [("patches", max(side // 3 - int(p["patch_gap"]), int(p["min_patch_size"])))]

    def __init__(self, setup: PretrainSetup) -> None:
        super().__init__(setup)
        _check_grid(self.name, setup, int(self.params["patch_gap"]), int(self.params["patch_jitter"]))
        self.head = classifier_head(2 * self.feature_dim, self.params["head_hidden"], len(NEIGHBOURS))
        self.model["head"] = self.head

    def make_inputs(self, x: torch.Tensor, gen: torch.Generator) -> Inputs:
        """Patches N x 2 x C x p x p (centre, neighbour), the label and both patches' top-left corners."""
        v = self.view(x, gen)
        n = v.shape[0]
        ys, xs, p = grid_positions(n, v.shape[-2], v.shape[-1], int(self.params["patch_gap"]),
                                   int(self.params["patch_jitter"]), gen)
        target = torch.randint(0, len(NEIGHBOURS), (n,), generator=gen)
        which = torch.stack([torch.full((n,), 4), torch.tensor(NEIGHBOURS)[target]], 1)
        ys, xs = ys.gather(1, which), xs.gather(1, which)
        patches = crop_patches(v, ys, xs, p)
        if self.params["color_dropping"] and v.shape[1] == 3:
            patches = drop_colors(patches.flatten(0, 1), gen).view_as(patches)
        return {"patches": patches, "target": target.to(x.device), "ys": ys, "xs": xs}

    def loss(self, inputs: Inputs) -> tuple[torch.Tensor, Stats]:
        patches = inputs["patches"]
        n = patches.shape[0]
        feats = self.encode_patches(patches.flatten(0, 1)).reshape(n, 2 * self.feature_dim)
        return classification_loss(self.head(feats), inputs["target"])
