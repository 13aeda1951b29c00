"""Masked image modeling: MAE (He et al., 2022) on a timm Vision Transformer.

The encoder is the backbone's network itself (``Backbone.net``): its ``patch_embed``, prefix tokens (class / register),
``pos_embed``, ``pos_drop``, ``norm_pre``, ``blocks`` and ``norm`` run on the visible patches
only, so the weights MAE trains are exactly the weights that probes and fine-tuning load
later through the backbone's normal forward. The method owns only the lightweight decoder
(embedding, mask token, fixed 2-D sin-cos positions, a few ``Block``s, pixel predictor),
which is discarded after pretraining.
"""

from __future__ import annotations

from functools import partial
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from dlbench.pretrain.base import PretrainMethod, PretrainSetup, register_method
from dlbench.pretrain.views import ViewConfig, make_view
from dlbench.train.engine import Batch


def patchify(imgs: torch.Tensor, p: int) -> torch.Tensor:
    """N x C x H x W -> N x L x (p*p*C), patches row-major as timm's ``PatchEmbed`` orders tokens."""
    n, c, h, w = imgs.shape
    if h % p or w % p:
        raise ValueError(f"image size {h}x{w} is not divisible by the patch size {p}")
    gh, gw = h // p, w // p
    x = imgs.reshape(n, c, gh, p, gw, p)
    x = torch.einsum("nchpwq->nhwpqc", x)
    return x.reshape(n, gh * gw, p * p * c)


def unpatchify(x: torch.Tensor, p: int, grid: tuple[int, int], channels: int = 3) -> torch.Tensor:
    """Inverse of ``patchify``: N x L x (p*p*C) -> N x C x (gh*p) x (gw*p)."""
    n = x.shape[0]
    gh, gw = grid
    x = x.reshape(n, gh, gw, p, p, channels)
    x = torch.einsum("nhwpqc->nchpwq", x)
    return x.reshape(n, channels, gh * p, gw * p)


def sincos_1d(dim: int, pos: torch.Tensor) -> torch.Tensor:
    """Transformer sin-cos code of positions ``pos`` (M,) -> M x dim: [sin(pos*w), cos(pos*w)]."""
    if dim % 2:
        raise ValueError(f"sin-cos embedding dim must be even, got {dim}")
    omega = torch.arange(dim // 2, dtype=torch.float64) / (dim / 2.0)
    omega = 1.0 / 10000 ** omega
    out = pos.reshape(-1).to(torch.float64)[:, None] * omega[None, :]
    return torch.cat([out.sin(), out.cos()], dim=1)


def sincos_2d(dim: int, grid: tuple[int, int]) -> torch.Tensor:
    """Fixed 2-D sin-cos positions (MAE's ``get_2d_sincos_pos_embed``): (gh*gw) x dim, float32.

    Tokens are row-major; the first half of the channels encodes the column, the second the
    row (the layout of the MAE reference code).
    """
    if dim % 4:
        raise ValueError(f"2-D sin-cos embedding dim must be divisible by 4, got {dim}")
    gh, gw = grid
    rows, cols = torch.meshgrid(torch.arange(gh), torch.arange(gw), indexing="ij")
    emb = torch.cat([sincos_1d(dim // 2, cols), sincos_1d(dim // 2, rows)], dim=1)
    return emb.float()


def random_masking(x: torch.Tensor, mask_ratio: float, gen: torch.Generator
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-sample random masking by argsort of uniform noise drawn from ``gen`` (on CPU).

    Returns the visible tokens N x K x D (K = round(L * (1 - ratio)), at least 1, at most L-1),
    the binary mask N x L (1 = masked, in the original order) and ``ids_restore`` N x L, which
    puts [visible, masked] tokens back into the original order.
    """
    n, length, d = x.shape
    keep = min(length - 1, max(1, int(round(length * (1 - mask_ratio)))))
    noise = torch.rand(n, length, generator=gen).to(x.device)
    ids_shuffle = torch.argsort(noise, dim=1)
    ids_restore = torch.argsort(ids_shuffle, dim=1)
    ids_keep = ids_shuffle[:, :keep]
    visible = torch.gather(x, 1, ids_keep.unsqueeze(-1).expand(-1, -1, d))
    mask = torch.ones(n, length, device=x.device)
    mask[:, :keep] = 0
    mask = torch.gather(mask, 1, ids_restore)
    return visible, mask, ids_restore


def mae_loss(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, norm_pix: bool) -> torch.Tensor:
    """Mean squared error over the masked patches only (mean over pixels, then over masked patches).

    ``norm_pix``: each target patch is normalised by its own mean and variance (paper default),
    which the paper found gives better representations than raw pixels.
    """
    pred, target, mask = pred.float(), target.float(), mask.float()
    if norm_pix:
        mean = target.mean(dim=-1, keepdim=True)
        var = target.var(dim=-1, keepdim=True)
        target = (target - mean) / (var + 1e-6) ** 0.5
    per_patch = ((pred - target) ** 2).mean(dim=-1)
    return (per_patch * mask).sum() / mask.sum()


class MAEDecoder(nn.Module):
    """Lightweight decoder: embed, insert mask tokens, add fixed sin-cos positions, Blocks, predict pixels."""

    def __init__(self, embed_dim: int, dim: int, depth: int, heads: int, mlp_ratio: float,
                 patch_pixels: int, num_prefix_tokens: int) -> None:
        super().__init__()
        from timm.models.vision_transformer import Block

        if dim % heads:
            raise ValueError(f"mae: decoder_dim {dim} is not divisible by decoder_heads {heads}")
        self.dim = dim
        self.num_prefix_tokens = num_prefix_tokens
        self.embed = nn.Linear(embed_dim, dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.blocks = nn.Sequential(*[
            Block(dim, heads, mlp_ratio=mlp_ratio, qkv_bias=True, norm_layer=_layer_norm) for _ in range(depth)])
        self.norm = _layer_norm(dim)
        self.pred = nn.Linear(dim, patch_pixels)
        self._pos_cache: dict[tuple[int, int], torch.Tensor] = {}
        nn.init.normal_(self.mask_token, std=0.02)
        self.apply(_init_weights)

    def pos_embed(self, grid: tuple[int, int], device: torch.device) -> torch.Tensor:
        """Fixed positions, computed per grid (not a buffer, so the state dict does not depend on the image size)."""
        if grid not in self._pos_cache:
            self._pos_cache[grid] = sincos_2d(self.dim, grid)
        return self._pos_cache[grid].to(device).unsqueeze(0)

    def forward(self, latent: torch.Tensor, ids_restore: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """Encoder output N x (P + K) x D -> predicted pixels N x L x patch_pixels (prefix tokens dropped)."""
        x = self.embed(latent)
        n, length = ids_restore.shape
        npt = self.num_prefix_tokens
        prefix, visible = x[:, :npt], x[:, npt:]
        masks = self.mask_token.to(x.dtype).expand(n, length - visible.shape[1], -1)
        tokens = torch.cat([visible, masks], dim=1)
        tokens = torch.gather(tokens, 1, ids_restore.unsqueeze(-1).expand(-1, -1, x.shape[-1]))
        tokens = tokens + self.pos_embed(grid, x.device).to(tokens.dtype)
        x = torch.cat([prefix, tokens], dim=1)  # prefix tokens get zero position (as MAE's cls token)
        x = self.norm(self.blocks(x))
        return self.pred(x[:, npt:])


_layer_norm = partial(nn.LayerNorm, eps=1e-6)  # MAE's norm; a partial so timm can pass device/dtype


def _init_weights(m: nn.Module) -> None:
    """MAE's decoder init: xavier-uniform Linear, zero bias, unit LayerNorm."""
    if isinstance(m, nn.Linear):
        nn.init.xavier_uniform_(m.weight)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)


@register_method("mae", family="masked")
class MAE(PretrainMethod):
    """Masked autoencoder: reconstruct the pixels of 75% randomly masked patches from the rest.

    Paper defaults kept: mask ratio 0.75, per-patch normalised pixel targets, MSE on masked
    patches only, RandomResizedCrop(0.2, 1) + flip and no colour augmentation. Scaled for
    32x32 images and a CPU budget: the decoder is 64-dim, 2 blocks, 4 heads (paper: 512-dim,
    8 blocks, 16 heads). The encoder keeps the backbone's own (learnable) positional
    embedding rather than MAE's fixed sin-cos one, so the backbone is unchanged for later stages.
    """

    requires: ClassVar[str | None] = "vit"
    defaults: ClassVar[dict[str, Any]] = {
        "mask_ratio": 0.75,
        "norm_pix_loss": True,
        "decoder_dim": 64,
        "decoder_depth": 2,
        "decoder_heads": 4,
        "decoder_mlp_ratio": 4.0,
        "crop_scale": (0.2, 1.0),
    }

    def __init__(self, setup: PretrainSetup) -> None:
        super().__init__(setup)
        from timm.models.vision_transformer import VisionTransformer

        bb = self.backbone.net
        if not isinstance(bb, VisionTransformer):
            raise ValueError(f"pretrain method 'mae' needs a timm VisionTransformer backbone, "
                             f"got {type(bb).__name__}")
        ratio = float(self.params["mask_ratio"])
        if not 0.0 < ratio < 1.0:
            raise ValueError(f"mae: mask_ratio must be in (0, 1), got {ratio}")
        ps = tuple(bb.patch_embed.patch_size)
        if ps[0] != ps[1]:
            raise ValueError(f"mae: needs square patches, got {ps}")
        self.patch_size = int(ps[0])
        self.in_chans = int(bb.patch_embed.proj.in_channels)
        p = self.params
        self.decoder = MAEDecoder(
            embed_dim=int(bb.embed_dim), dim=int(p["decoder_dim"]), depth=int(p["decoder_depth"]),
            heads=int(p["decoder_heads"]), mlp_ratio=float(p["decoder_mlp_ratio"]),
            patch_pixels=self.patch_size ** 2 * self.in_chans, num_prefix_tokens=int(bb.num_prefix_tokens))
        self.model["decoder"] = self.decoder
        # RRC + flip only: colour jitter, grayscale and solarisation are off whatever ``setup.views`` says
        self.view_cfg = ViewConfig(crop_scale=tuple(p["crop_scale"]), flip=setup.views.flip,
                                   jitter_p=0.0, grayscale_p=0.0, solarize_p=0.0, size=None)

    @classmethod
    def input_sides(cls, params: dict[str, Any], views: ViewConfig, side: int) -> list[tuple[str, int]]:
        return [("views", int(side))]  # its own crop at the image size (``view_cfg`` ignores ``views.size``)

    def _embed_patches(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """Normalised images -> patch tokens N x L x D with their positions added, and the grid."""
        bb = self.backbone.net
        x = bb.patch_embed(x)
        if x.ndim == 4:  # dynamic_img_size: PatchEmbed returns NHWC
            grid = (x.shape[1], x.shape[2])
            x = x.reshape(x.shape[0], -1, x.shape[-1])
        else:
            gs = bb.patch_embed.grid_size
            grid = (int(gs[0]), int(gs[1]))
        if bb.pos_embed is not None:
            npt = 0 if bb.no_embed_class else bb.num_prefix_tokens
            pos = bb.pos_embed
            if grid != tuple(bb.patch_embed.grid_size):
                from timm.layers import resample_abs_pos_embed

                pos = resample_abs_pos_embed(pos, new_size=grid, old_size=bb.patch_embed.grid_size,
                                             num_prefix_tokens=npt)
            x = x + pos[:, npt:]
        return x, grid

    def _prefix_tokens(self, n: int, dtype: torch.dtype) -> list[torch.Tensor]:
        """Class / register tokens, with their positions when the ViT embeds them (``no_embed_class`` False)."""
        bb = self.backbone.net
        tokens = [t.expand(n, -1, -1) for t in (bb.cls_token, bb.reg_token) if t is not None]
        if not tokens:
            return []
        prefix = torch.cat(tokens, dim=1)
        if bb.pos_embed is not None and not bb.no_embed_class:
            prefix = prefix + bb.pos_embed[:, :bb.num_prefix_tokens]
        return [prefix.to(dtype)]

    def forward_encoder(self, x: torch.Tensor, gen: torch.Generator
                        ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, tuple[int, int]]:
        """The backbone's own ``forward_features`` on the visible patches only.

        Returns the latent N x (prefix + K) x D, the mask N x L, ``ids_restore`` and the patch grid.
        """
        bb = self.backbone.net
        tokens, grid = self._embed_patches(x)
        visible, mask, ids_restore = random_masking(tokens, float(self.params["mask_ratio"]), gen)
        h = torch.cat(self._prefix_tokens(visible.shape[0], visible.dtype) + [visible], dim=1)
        h = bb.norm_pre(bb.pos_drop(h))
        h = bb.norm(bb.blocks(h))
        return h, mask, ids_restore, grid

    def reconstruct(self, x01: torch.Tensor, gen: torch.Generator
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Predicted patches, mask and target patches (normalised pixels) of float images in [0, 1], no augmentation.

        Images are first resampled to the ViT's input size when it accepts only that one, as
        ``Backbone.forward`` does (this path feeds ``patch_embed`` directly, bypassing it).
        """
        bb = self.backbone
        if bb.fixed_size and tuple(x01.shape[-2:]) != bb.input_size:
            x01 = F.interpolate(x01, size=bb.input_size, mode="bilinear", antialias=True, align_corners=False)
        x = bb.normalize(x01)
        latent, mask, ids_restore, grid = self.forward_encoder(x, gen)
        pred = self.decoder(latent, ids_restore, grid)
        return pred, mask, patchify(x, self.patch_size)

    def training_loss(self, batch: Batch, gen: torch.Generator) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        view = make_view(batch.images, self.view_cfg, gen)
        pred, mask, target = self.reconstruct(view, gen)
        loss = mae_loss(pred, target, mask, bool(self.params["norm_pix_loss"]))
        return loss, {}
