"""The cached outputs of evaluation, read and written without torch (the report layer reads them).

Per model: ``logits.parquet`` (columns ``split``, ``label``, ``logit_<c>``; each split's shift
tags and the class names in the file's key-value metadata), ``costs.json``, and
``embeddings.parquet`` (the features of a fixed class-balanced subset of an ID split: t-SNE).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from dlbench.io import atomic_path


def write_logits(path: str | Path, results: list[tuple[str, np.ndarray, np.ndarray, dict[str, Any]]],
                 classes: list[str] | None = None) -> None:
    """One Parquet per model from ``(split name, logits N x K, labels N, tags)`` per split."""
    splits = [np.full(len(labels), name) for name, _, labels, _ in results]
    logits = np.concatenate([r[1] for r in results]).astype(np.float32)
    cols: dict[str, pa.Array] = {
        "split": pa.array(np.concatenate(splits)).dictionary_encode(),
        "label": pa.array(np.concatenate([r[2] for r in results]).astype(np.int64)),
    }
    for c in range(logits.shape[1]):
        cols[f"logit_{c}"] = pa.array(logits[:, c])
    info = {name: meta for name, _, _, meta in results}
    meta = {"dlbench_splits": json.dumps(info, sort_keys=True), "dlbench_classes": json.dumps(list(classes or []))}
    table = pa.table(cols).replace_schema_metadata(meta)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)


def read_logits(path: str | Path) -> dict[str, tuple[np.ndarray, np.ndarray, dict[str, Any]]]:
    """``{split: (logits N x K, labels N, tags)}`` from a file written by ``write_logits``."""
    table = pq.read_table(path)
    info = json.loads((table.schema.metadata or {}).get(b"dlbench_splits", b"{}"))
    names = sorted((n for n in table.column_names if n.startswith("logit_")), key=lambda n: int(n.split("_")[1]))
    logits = np.stack([table.column(n).to_numpy() for n in names], axis=1)
    labels = table.column("label").to_numpy()
    split_col = np.asarray(table.column("split").to_pylist())
    return {name: (logits[split_col == name], labels[split_col == name], tags) for name, tags in info.items()}


def write_embeddings(path: str | Path, features: np.ndarray, labels: np.ndarray, classes: list[str],
                     split: str) -> None:
    """Features N x D of the cached subset, with labels and class names (legends show names)."""
    cols = {"label": pa.array(labels.astype(np.int64)),
            "class": pa.array([classes[int(y)] if 0 <= int(y) < len(classes) else str(int(y)) for y in labels]),
            "features": pa.FixedSizeListArray.from_arrays(pa.array(features.astype(np.float32).ravel()),
                                                          features.shape[1])}
    table = pa.table(cols).replace_schema_metadata({"dlbench_split": split})
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)


def read_embeddings(path: str | Path) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(features N x D float32, labels N, class name per row)."""
    table = pq.read_table(path)
    feats = table.column("features").combine_chunks()
    dim = feats.type.list_size
    return (feats.values.to_numpy(zero_copy_only=False).reshape(-1, dim), table.column("label").to_numpy(),
            table.column("class").to_pylist())
