"""Shared helpers for the self-supervised unit tests: a tiny backbone, toy data, method builders.

One place for them so the per-family test files differ only in what they assert.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
import torch

from dlbench.data.store import write_meta, write_split
from dlbench.models.backbones import build_backbone
from dlbench.pretrain.base import METHODS, PretrainSetup
from dlbench.pretrain.views import ViewConfig
from dlbench.train.engine import TrainConfig, fit

# a 4-stage ResNet 8..64 wide: every SSL test builds dozens of these
TINY_SPEC = {"timm": "resnet18", "kwargs": {"layers": [1, 1, 1, 1], "channels": [8, 16, 32, 64], "stem_width": 8},
             "cifar_stem": True, "stem_stride": 2}
BATCH = 16
N_IMAGES = 64
# small heads keep every test fast; each entry is also the "override via setup.params" case
SMALL: dict[str, dict[str, dict[str, Any]]] = {
    "contrastive": {
        "simclr": {"proj_hidden": 32, "proj_dim": 16},
        "moco_v2": {"proj_hidden": 32, "proj_dim": 16, "queue_size": 64},
        "swav": {"proj_hidden": 32, "proj_dim": 16, "num_prototypes": 10},
        "deepcluster": {"num_clusters": 8, "pca_dim": 8},
    },
    "distillation": {
        "byol": {"proj_hidden": 32, "proj_dim": 16, "pred_hidden": 32},
        "simsiam": {"proj_hidden": 32, "proj_dim": 32, "pred_hidden": 8},
        "barlow_twins": {"proj_hidden": 32, "proj_dim": 32},
        "vicreg": {"proj_hidden": 32, "proj_dim": 32},
        "dino": {"head_hidden": 32, "bottleneck": 16, "out_dim": 64},
    },
}
SMALL_PARAMS = {name: p for family in SMALL.values() for name, p in family.items()}
WIDTH_KEYS = ("proj_dim", "out_dim", "num_prototypes", "num_clusters")  # the output width of each head
PALETTE = np.array([[220, 40, 40], [40, 200, 40], [40, 40, 220], [220, 220, 40]])


def images_uint8(n: int = N_IMAGES, seed: int = 0, size: int = 32) -> torch.Tensor:
    """N x H x W x 3 uniform-noise uint8 images, deterministic by ``seed``."""
    return torch.randint(0, 256, (n, size, size, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def make(name: str, params: dict[str, Any] | None = None, images: torch.Tensor | None = None,
         epochs: int = 2, steps_per_epoch: int = 4):
    """The registered method ``name`` on a fresh tiny backbone (seeded init), ready for ``training_loss``.

    ``params`` default to the small heads of ``SMALL_PARAMS``.
    """
    torch.manual_seed(0)  # backbone and head initialisation
    setup = PretrainSetup(backbone=build_backbone(TINY_SPEC), backbone_spec=TINY_SPEC,
                          params=dict(SMALL_PARAMS[name] if params is None else params), views=ViewConfig(),
                          input_size=(32, 32), images=images_uint8() if images is None else images,
                          epochs=epochs, steps_per_epoch=steps_per_epoch)
    method = METHODS.get(name)(setup)
    if getattr(method, "wants_indices", False):
        method.before_epoch(0, torch.Generator().manual_seed(1))  # DeepCluster: pseudo-labels before any step
    return method


def first_batch(method) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``BATCH`` images as the engine hands them over: float NCHW in [0, 1], plus labels/indices."""
    x = method.setup.images[:BATCH].permute(0, 3, 1, 2).float().div(255)
    labels = torch.arange(BATCH) if getattr(method, "wants_indices", False) else torch.full((BATCH,), -1)
    return x, labels


def loss_of(method, seed: int = 0):
    """``(loss, stats)`` of the first batch, views drawn from a generator seeded with ``seed``."""
    x, labels = first_batch(method)
    return method.training_loss(x, labels, torch.Generator().manual_seed(seed))


def sgd_step(method, lr: float = 0.1) -> None:
    """One optimiser step as the engine does it: backward, step."""
    opt = torch.optim.SGD([p for p in method.model.parameters() if p.requires_grad], lr=lr)
    loss, _ = loss_of(method)
    opt.zero_grad()
    loss.backward()
    opt.step()


def fit_resumed(make: Callable[[], Any], images: torch.Tensor, tmp_path: Path) -> tuple[list, dict, list, dict]:
    """(history, state) of an uninterrupted 2-epoch fit and of one killed after epoch 1 and resumed."""
    labels = torch.full((len(images),), -1, dtype=torch.long)
    cfg = TrainConfig(epochs=2, batch_size=BATCH, optimizer="adamw", lr=1e-3, checkpoint_min_seconds=0)
    kw = {"device": torch.device("cpu"), "progress": False, "log": lambda s: None}
    whole = make()
    h_whole = fit(whole, images, labels, cfg, **kw)
    ckpt = tmp_path / "ckpt.pt"
    epochs_seen = []

    def stop_in_epoch_2() -> dict:
        epochs_seen.append(1)
        if len(epochs_seen) == 2:
            raise KeyboardInterrupt  # after epoch 1's checkpoint, before epoch 2's end
        return {}

    with pytest.raises(KeyboardInterrupt):
        fit(make(), images, labels, cfg, checkpoint_path=ckpt, validate=stop_in_epoch_2, **kw)
    resumed = make()
    h_resumed = fit(resumed, images, labels, cfg, checkpoint_path=ckpt, **kw)
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
