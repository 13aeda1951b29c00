"""Load dataset splits into memory as uint8 torch tensors (the training engine's input format)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from dlbench.data.store import Split, load_split, read_meta


def dataset_dir(data_root: str | Path, name: str) -> Path:
    return Path(data_root) / name


def load_tensors(data_root: str | Path, dataset: str, split: str) -> tuple[torch.Tensor, torch.Tensor, Split]:
    """(uint8 N x H x W x C images, int64 labels, the Split) — copied out of the memory map once."""
    s = load_split(dataset_dir(data_root, dataset), split, mmap=True)
    images = torch.from_numpy(np.array(s.images, copy=True))
    labels = torch.from_numpy(np.array(s.labels, dtype=np.int64, copy=True))
    return images, labels, s


def dataset_meta(data_root: str | Path, dataset: str) -> dict:
    return read_meta(dataset_dir(data_root, dataset))


def balanced_subset(labels: torch.Tensor, n: int) -> torch.Tensor:
    """The first n/K indices of every class in dataset order (the first n % K classes one more),
    so exactly ``n`` when every class has enough images; deterministic, class-balanced."""
    classes = torch.unique(labels)
    per, extra = divmod(max(n, len(classes)), len(classes))
    idx = torch.cat([torch.nonzero(labels == c).flatten()[:per + (i < extra)] for i, c in enumerate(classes)])
    return idx.sort().values


# The label-fraction subsets (adapt kinds' ``fraction``) draw from torch.Generator(LABEL_FRACTION_SEED + model seed).
LABEL_FRACTION_SEED = 20_250_101


def label_fraction_subset(labels: torch.Tensor, fraction: float, seed: int) -> torch.Tensor:
    """Sorted indices of a class-balanced ``fraction`` of a labeled split (label-efficiency experiments).

    Per class (ascending label), ``max(1, round(fraction * n_c))`` of its ``n_c`` images (Python's
    ``round``, half to even), the prefix of a random permutation of that class drawn from one
    ``torch.Generator`` seeded with ``LABEL_FRACTION_SEED + seed`` (``seed``: the model's seed). The
    permutations do not depend on ``fraction``, so for one seed the subsets are nested (1% in 10% in
    100%); they depend on the labels, the fraction and the seed only, so every pretraining method and
    protocol with the same seed and fraction trains on the same images.
    """
    fraction = float(fraction)
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    if len(labels) == 0 or fraction == 1:
        return torch.arange(len(labels))
    gen = torch.Generator().manual_seed(LABEL_FRACTION_SEED + int(seed))
    parts = []
    for c in torch.unique(labels).tolist():  # sorted
        members = torch.nonzero(labels == c).flatten()
        order = torch.randperm(len(members), generator=gen)
        parts.append(members[order[:max(1, round(fraction * len(members)))]])
    return torch.cat(parts).sort().values


def class_shots_subset(labels: torch.Tensor, shots: int, seed: int) -> torch.Tensor:
    """Sorted indices of ``shots`` images per class (all of a class with fewer; data efficiency, k-shot).

    The same per-class permutations as ``label_fraction_subset`` (one generator seeded with
    ``LABEL_FRACTION_SEED + seed``, classes in ascending order): the k-shot subsets of one seed are
    nested (1 in 2 in 4 ...), and every method and protocol with the same seed and shots trains on
    the same images.
    """
    shots = int(shots)
    if shots < 1:
        raise ValueError(f"shots must be >= 1, got {shots}")
    gen = torch.Generator().manual_seed(LABEL_FRACTION_SEED + int(seed))
    parts = []
    for c in torch.unique(labels).tolist():  # sorted
        members = torch.nonzero(labels == c).flatten()
        order = torch.randperm(len(members), generator=gen)
        parts.append(members[order[:shots]])
    return torch.cat(parts).sort().values if parts else torch.zeros(0, dtype=torch.long)


def labeled_splits(data_root: str | Path, dataset: str, train_split: str, val_split: str | None,
                   val_fraction: float = 0.1) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(train images, labels, val images, labels); without a val split (STL-10), a class-balanced
    ``val_fraction`` of the train split is held out (the first images of each class, deterministic)."""
    x, y, _ = load_tensors(data_root, dataset, train_split)
    if (y < 0).any():
        raise ValueError(f"{dataset}:{train_split} has unlabeled images; this stage needs labels")
    if val_split:
        vx, vy, _ = load_tensors(data_root, dataset, val_split)
        return x, y, vx, vy
    held = balanced_subset(y, max(len(torch.unique(y)), int(len(y) * val_fraction)))
    keep = torch.ones(len(y), dtype=torch.bool)
    keep[held] = False
    return x[keep], y[keep], x[held], y[held]
