"""`digits`: scikit-learn's bundled handwritten digits (UCI optdigits test set), no download.

The 8x8 images with 17 grey levels are upsampled to the common 32x32 RGB uint8 format, so
the same backbones and corruptions apply. Split: fixed, stratified, from a seed.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from dlbench.data.registry import register_dataset
from dlbench.data.store import write_meta, write_split

SEED = 0
SIZE = 32
N_TEST = 500
N_VAL = 200


def _upsample(images8: np.ndarray) -> np.ndarray:
    """8x8 values 0..16 -> 32x32x3 uint8 via bilinear resize (deterministic, CPU)."""
    x = torch.from_numpy(images8.astype(np.float32) / 16.0)[:, None]
    x = F.interpolate(x, size=(SIZE, SIZE), mode="bilinear", align_corners=False)
    x = (x.clamp(0, 1) * 255).round().to(torch.uint8)
    return x.repeat(1, 3, 1, 1).permute(0, 2, 3, 1).contiguous().numpy()


@register_dataset("digits", offline=True, description="scikit-learn handwritten digits, 10 classes, upsampled to 32x32",
                  splits={"train": 1097, "val": 200, "test": 500}, image_size=32)
def build(out: Path, raw_dir: Path | None = None) -> None:
    from sklearn.datasets import load_digits

    ds = load_digits()
    images, labels = _upsample(ds.images), ds.target.astype(np.int64)
    rng = np.random.default_rng(SEED)
    test_idx, val_idx, train_idx = [], [], []
    for c in range(10):  # stratified: each class split in the same proportions
        idx = rng.permutation(np.flatnonzero(labels == c))
        n_test = round(len(idx) * N_TEST / len(labels))
        n_val = round(len(idx) * N_VAL / len(labels))
        test_idx += list(idx[:n_test])
        val_idx += list(idx[n_test:n_test + n_val])
        train_idx += list(idx[n_test + n_val:])
    out.mkdir(parents=True, exist_ok=True)
    splits = {}
    for split, idx in (("train", train_idx), ("val", val_idx), ("test", test_idx)):
        idx = np.sort(np.asarray(idx))
        write_split(out, split, images[idx], labels[idx])
        splits[split] = {"n": len(idx), "shift": "id", "labeled": True}
    write_meta(out, {
        "name": "digits",
        "classes": [str(d) for d in range(10)],
        "splits": splits,
        "image_size": [SIZE, SIZE, 3],
        "prompt_templates": ["a photo of the digit {}.", "a handwritten {}.", "the number {}."],
        "source": "sklearn.datasets.load_digits (UCI optdigits)",
        "license": "CC BY 4.0 (UCI ML repository)",
    })
