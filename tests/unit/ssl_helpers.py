"""Shared helpers for the self-supervised unit tests: tiny backbones, toy data, method builders.

One place for them so the per-family test files differ only in what they assert.
``TINY_SPEC`` and ``make_colour_dataset`` are also used by test_adapt.py and test_backbone_families.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
import torch

from dlbench.data.store import write_meta, write_split
from dlbench.models.backbones import Backbone, build_backbone
from dlbench.pretrain.base import PretrainSetup, load_all
from dlbench.pretrain.views import ViewConfig
from dlbench.train.engine import Batch, TrainConfig, fit

# a 4-stage ResNet 8..64 wide: every SSL test builds dozens of these
TINY_SPEC = {"source": "timm", "model": "resnet18",
             "kwargs": {"layers": [1, 1, 1, 1], "channels": [8, 16, 32, 64], "stem_width": 8},
             "cifar_stem": True, "stem_stride": 2}
# a 2-block ViT on a 4 x 4 grid of 8 px patches (fixed input size 32: timm's strict_img_size), for MAE
VIT_SPEC = {"source": "timm", "model": "vit_tiny_patch16_224",
            "kwargs": {"img_size": 32, "patch_size": 8, "embed_dim": 48, "depth": 2, "num_heads": 3}}
# a tiny CLIP (open_clip's CLIP class): 1-block towers, 16-token image grid, 16-token captions
CLIP_SPEC = {"source": "open_clip", "config": {
    "embed_dim": 16, "vision_cfg": {"image_size": 32, "patch_size": 8, "width": 32, "layers": 1, "head_width": 16},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}}
SIDE = 32  # the training images' side in the in-process tests
BATCH = 16
N_IMAGES = 64
# small heads keep every test fast; each entry is also the "override via setup.params" case.
# Every registered kind must have an entry (test_ssl_methods checks it), under its family.
SMALL: dict[str, dict[str, dict[str, Any]]] = {
    "pretext": {
        "rotation": {"head_hidden": 16},
        "jigsaw": {"num_permutations": 10, "head_hidden": 32},
        "colorization": {"decoder_width": 8, "color_bins": 5},
        "inpainting": {"decoder_width": 8},
        "relative_location": {"head_hidden": 32},
    },
    "contrastive": {
        "simclr": {"proj_hidden": 32, "proj_dim": 16},
        "moco_v2": {"proj_hidden": 32, "proj_dim": 16, "queue_size": 64},
        "swav": {"proj_hidden": 32, "proj_dim": 16, "num_prototypes": 10},
        "deepcluster": {"num_clusters": 8, "pca_dim": 8},
    },
    "self_distillation": {
        "byol": {"proj_hidden": 32, "proj_dim": 16, "pred_hidden": 32},
        "simsiam": {"proj_hidden": 32, "proj_dim": 32, "pred_hidden": 8},
        "barlow_twins": {"proj_hidden": 32, "proj_dim": 32},
        "vicreg": {"proj_hidden": 32, "proj_dim": 32},
        "dino": {"head_hidden": 32, "bottleneck": 16, "out_dim": 64},
    },
    "masked": {
        "mae": {"decoder_dim": 32, "decoder_depth": 1, "decoder_heads": 2},
    },
    "language-image": {
        "clip": {"crop_scale": [0.8, 1.0]},
        "clip_weights": {},
    },
    "baseline": {
        "random": {},
    },
}
SMALL_PARAMS = {name: p for family in SMALL.values() for name, p in family.items()}
FAMILY_OF = {name: family for family, methods in SMALL.items() for name in methods}
# the params that set the output width of some head layer (a Linear's out_features or a conv's out_channels)
WIDTH_KEYS = ("proj_dim", "out_dim", "num_prototypes", "num_clusters", "head_hidden", "num_permutations",
              "decoder_width", "decoder_dim")
PALETTE = np.array([[220, 40, 40], [40, 200, 40], [40, 40, 220], [220, 220, 40]])


def spec_for(name: str) -> dict[str, Any]:
    """The tiny backbone spec a kind runs on: the ViT for ViT-only kinds (MAE), the tiny CLIP for CLIP,
    else the ResNet."""
    return {"vit": VIT_SPEC, "open_clip": CLIP_SPEC}.get(load_all().get(name).requires or "", TINY_SPEC)


COLOURS = ("red", "green", "blue", "yellow", "white")
SHAPES = ("circle", "square", "star")


def captions_for(n: int) -> list[str]:
    """``n`` short captions of a few distinct kinds (language-image methods train on them)."""
    return [f"a {COLOURS[i % len(COLOURS)]} {SHAPES[i % len(SHAPES)]}" for i in range(n)]


def images_uint8(n: int = N_IMAGES, seed: int = 0, size: int = SIDE) -> torch.Tensor:
    """N x H x W x 3 uniform-noise uint8 images, deterministic by ``seed``."""
    return torch.randint(0, 256, (n, size, size, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def tiny_backbone(spec: dict[str, Any] | None = None, side: int = SIDE) -> Backbone:
    return build_backbone(TINY_SPEC if spec is None else spec, (side, side))


def make(name: str, params: dict[str, Any] | None = None, images: torch.Tensor | None = None,
         epochs: int = 2, steps_per_epoch: int = 4, spec: dict[str, Any] | None = None,
         views: ViewConfig | None = None, prepare: bool = True):
    """The registered method ``name`` on a fresh tiny backbone (seeded init), ready for ``training_loss``.

    ``params`` default to the small heads of ``SMALL_PARAMS``. With ``prepare``, methods with
    ``before_epoch`` (DeepCluster's clustering) get it called once, as the engine does before any
    step; tests that fit pass ``prepare=False`` so that the engine's own call is what counts.
    """
    images = images_uint8() if images is None else images
    spec = spec_for(name) if spec is None else spec
    side = (int(images.shape[1]), int(images.shape[2]))
    torch.manual_seed(0)  # backbone and head initialisation
    cls = load_all().get(name)
    setup = PretrainSetup(backbone=build_backbone(spec, side), backbone_spec=spec,
                          params=dict(SMALL_PARAMS[name] if params is None else params),
                          views=ViewConfig() if views is None else views, input_size=side, images=images,
                          captions=captions_for(len(images)) if cls.needs_captions else None,
                          epochs=epochs, steps_per_epoch=steps_per_epoch)
    method = cls(setup)
    if prepare and hasattr(method, "before_epoch"):
        method.before_epoch(0, torch.Generator().manual_seed(1))
    return method


def as_batch(images_uint8_nhwc: torch.Tensor, indices: torch.Tensor | None = None) -> Batch:
    """A batch as the engine hands it over: float NCHW in [0, 1], unlabeled (-1), its row indices."""
    n = len(images_uint8_nhwc)
    x = images_uint8_nhwc.permute(0, 3, 1, 2).float().div(255)
    return Batch(images=x, labels=torch.full((n,), -1, dtype=torch.long),
                 indices=torch.arange(n) if indices is None else indices)


def float_batch(x: torch.Tensor, indices: torch.Tensor | None = None) -> Batch:
    """A batch of float N x C x H x W images in [0, 1] (unlabeled; rows 0..N-1 unless given)."""
    n = x.shape[0]
    return Batch(images=x, labels=torch.full((n,), -1, dtype=torch.long),
                 indices=torch.arange(n) if indices is None else indices)


def first_batch(method) -> Batch:
    """The first ``BATCH`` images of the method's set, as the engine hands them over (rows 0..BATCH-1)."""
    return as_batch(method.setup.images[:BATCH])


def loss_of(method, seed: int = 0):
    """``(loss, stats)`` of the first batch, views drawn from a generator seeded with ``seed``."""
    return method.training_loss(first_batch(method), torch.Generator().manual_seed(seed))


def sgd_step(method, lr: float = 0.1) -> None:
    """One optimiser step as the engine does it: backward, step."""
    opt = torch.optim.SGD([p for p in method.model.parameters() if p.requires_grad], lr=lr)
    loss, _ = loss_of(method)
    opt.zero_grad()
    loss.backward()
    opt.step()


def quiet_fit(method, images: torch.Tensor, cfg: TrainConfig, **kw) -> list[dict]:
    labels = torch.full((len(images),), -1, dtype=torch.long)
    return fit(method, images, labels, cfg, device=torch.device("cpu"), progress=False, log=lambda s: None, **kw)


def fit_resumed(make: Callable[[], Any], images: torch.Tensor, tmp_path: Path) -> tuple[list, dict, list, dict]:
    """(history, state) of an uninterrupted 2-epoch fit and of one killed after epoch 1 and resumed."""
    cfg = TrainConfig(epochs=2, batch_size=BATCH, optimizer="adamw", lr=1e-3, checkpoint_min_seconds=0)
    whole = make()
    h_whole = quiet_fit(whole, images, cfg)
    ckpt = tmp_path / "ckpt.pt"
    epochs_seen = []

    def stop_in_epoch_2() -> dict:
        epochs_seen.append(1)
        if len(epochs_seen) == 2:
            raise KeyboardInterrupt  # after epoch 1's checkpoint, before epoch 2's end
        return {}

    with pytest.raises(KeyboardInterrupt):
        quiet_fit(make(), images, cfg, checkpoint_path=ckpt, validate=stop_in_epoch_2)
    assert ckpt.exists()
    resumed = make()
    h_resumed = quiet_fit(resumed, images, cfg, checkpoint_path=ckpt)
    strip = lambda h: [{k: v for k, v in r.items() if k not in ("seconds", "images_per_s")} for r in h]  # noqa: E731
    return strip(h_whole), whole.model.state_dict(), strip(h_resumed), resumed.model.state_dict()


def make_colour_dataset(root: Path, sizes: dict[str, int], name: str = "toy", size: int = 16) -> Path:
    """4 classes told apart by colour (+ pixel noise); labels cycle 0,1,2,3 so every split is balanced."""
    rng = np.random.default_rng(0)
    out = root / name
    out.mkdir(parents=True)
    splits = {}
    for split, n in sizes.items():
        y = np.arange(n) % 4
        x = np.clip(PALETTE[y][:, None, None, :] + rng.integers(-30, 31, (n, size, size, 3)), 0, 255).astype(np.uint8)
        write_split(out, split, x, np.full(n, -1) if split == "unlabeled" else y)
        splits[split] = {"n": n, "shift": "id"}
    write_meta(out, {"name": name, "classes": ["red", "green", "blue", "yellow"], "splits": splits})
    return root
