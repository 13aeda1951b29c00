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
