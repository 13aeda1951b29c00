"""The on-disk dataset contract: ``data/<name>/<split>.npz`` + ``meta.json``.

Each split is an *uncompressed* ``.npz`` holding ``images`` (uint8, N x H x W x C) and
``labels`` (int64, N; -1 where unlabeled), optionally ``captions`` (unicode strings).
Because the zip members are stored, not deflated, large splits are memory-mapped
straight out of the archive instead of being read into RAM.
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from dlbench.io import atomic_path, read_json, write_json

SHIFT_KINDS = ("id", "corruption", "style", "natural", "domain")


class DatasetError(RuntimeError):
    """A dataset file is missing, truncated or inconsistent with its meta.json."""


@dataclass
class Split:
    """One split held in memory (or memory-mapped): uint8 images and int64 labels."""

    images: np.ndarray
    labels: np.ndarray
    captions: np.ndarray | None = None
    info: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.images.shape[0])


def write_split(root: str | Path, split: str, images: np.ndarray, labels: np.ndarray,
                captions: list[str] | np.ndarray | None = None) -> Path:
    """Validate dtypes/shapes and write ``<root>/<split>.npz`` atomically."""
    images = np.ascontiguousarray(images)
    labels = np.asarray(labels)
    if images.dtype != np.uint8 or images.ndim != 4:
        raise ValueError(f"split {split!r}: images must be uint8 N x H x W x C, got {images.dtype} {images.shape}")
    if labels.shape != (images.shape[0],):
        raise ValueError(f"split {split!r}: {labels.shape[0] if labels.ndim else '?'} labels for {images.shape[0]} images")
    arrays: dict[str, np.ndarray] = {"images": images, "labels": labels.astype(np.int64)}
    if captions is not None:
        caps = np.asarray(captions, dtype=str)
        if caps.shape != (images.shape[0],):
            raise ValueError(f"split {split!r}: {caps.shape} captions for {images.shape[0]} images")
        arrays["captions"] = caps
    path = Path(root) / f"{split}.npz"
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)
    return path


def write_meta(root: str | Path, meta: dict[str, Any]) -> None:
    """Write meta.json last, so its presence marks a complete dataset."""
    for key in ("name", "classes", "splits"):
        if key not in meta:
            raise ValueError(f"meta.json needs {key!r}")
    for split, info in meta["splits"].items():
        if info.get("shift", "id") not in SHIFT_KINDS:
            raise ValueError(f"split {split!r}: shift must be one of {SHIFT_KINDS}")
    write_json(Path(root) / "meta.json", meta)


def read_meta(root: str | Path) -> dict[str, Any]:
    path = Path(root) / "meta.json"
    if not path.exists():
        raise DatasetError(f"{path}: missing; is dataset {Path(root).name!r} built or pulled?")
    try:
        return read_json(path)
    except ValueError as e:
        raise DatasetError(str(e)) from None


def _mmap_member(path: Path, zf: zipfile.ZipFile, name: str) -> np.ndarray:
    """Memory-map one stored (uncompressed) .npy member of an .npz archive."""
    info = zf.getinfo(name)
    if info.compress_type != zipfile.ZIP_STORED:
        return np.load(zf.open(name), allow_pickle=False)
    with open(path, "rb") as f:
        f.seek(info.header_offset)
        local = f.read(30)
        name_len = int.from_bytes(local[26:28], "little")
        extra_len = int.from_bytes(local[28:30], "little")
        data_start = info.header_offset + 30 + name_len + extra_len
        f.seek(data_start)
        version = np.lib.format.read_magic(f)
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran, dtype = read_header(f)
        offset = f.tell()
    if dtype.hasobject:
        raise DatasetError(f"{path}: member {name} holds Python objects; refusing to unpickle")
    return np.memmap(path, dtype=dtype, mode="r", shape=shape, offset=offset,
                     order="F" if fortran else "C")


def load_split(root: str | Path, split: str, mmap: bool = False) -> Split:
    """Load one split, failing with the file's name if it is missing, truncated or corrupt."""
    root = Path(root)
    meta = read_meta(root)
    if split not in meta["splits"]:
        raise DatasetError(f"dataset {meta['name']!r} has no split {split!r}; splits: {sorted(meta['splits'])}")
    path = root / f"{split}.npz"
    if not path.exists():
        raise DatasetError(f"{path}: missing (dataset incomplete; delete {root} and rerun)")
    try:
        with zipfile.ZipFile(path) as zf:
            names = set(zf.namelist())
            if mmap:
                arrays = {n[:-4]: _mmap_member(path, zf, n) for n in names}
            else:
                arrays = {n[:-4]: np.load(zf.open(n), allow_pickle=False) for n in names}
    except (zipfile.BadZipFile, EOFError, ValueError, OSError) as e:
        raise DatasetError(f"{path}: truncated or corrupt ({e}); delete {root} and rerun to restore it") from None
    if "images" not in arrays or "labels" not in arrays:
        raise DatasetError(f"{path}: needs arrays 'images' and 'labels', has {sorted(arrays)}")
    images, labels = arrays["images"], arrays["labels"]
    expected = meta["splits"][split].get("n")
    if images.dtype != np.uint8 or images.ndim != 4 or len(labels) != len(images):
        raise DatasetError(f"{path}: images {images.dtype} {images.shape} / labels {labels.shape} break the contract")
    if expected is not None and len(images) != expected:
        raise DatasetError(f"{path}: has {len(images)} images, meta.json says {expected}")
    return Split(images=images, labels=labels.astype(np.int64, copy=False),
                 captions=arrays.get("captions"), info=dict(meta["splits"][split]))
