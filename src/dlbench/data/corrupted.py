"""The corruption suite of a dataset, computed once and cached in the array format.

Rule ``corruptions`` runs this once per dataset: each (corruption, severity) of the config's
suite becomes one split ``<source>.<corruption>-<severity>`` of a derived dataset directory
(uint8, deterministic by seed, with its ``shift``/``corruption``/``severity`` tags in
``meta.json``), which every evaluate job then reads instead of recomputing it.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from dlbench.data.corruptions import corrupt
from dlbench.data.loader import balanced_subset, load_tensors
from dlbench.data.store import read_meta, write_meta, write_split


def split_name(source: str, corruption: str, severity: int) -> str:
    return f"{source}.{corruption}-{int(severity)}"


def write_corrupted(data_root: str | Path, dataset: str, source: str, types: list[str], severities: list[int],
                    out: str | Path, max_images: int | None = None, seed: int = 0,
                    log=lambda s: print(s, file=sys.stderr, flush=True)) -> None:
    """Corrupt ``dataset:source`` (a class-balanced ``max_images`` subset, if given) with every type x severity."""
    images, labels, _ = load_tensors(data_root, dataset, source)
    if max_images and max_images < len(labels):
        keep = balanced_subset(labels, max_images)
        images, labels = images[keep], labels[keep]
    meta = read_meta(Path(data_root) / dataset)
    nchw = images.permute(0, 3, 1, 2)
    splits = {}
    for t in types:
        t0 = time.perf_counter()
        for s in severities:
            name = split_name(source, t, s)
            corrupted = corrupt(nchw, t, int(s), seed=seed).permute(0, 2, 3, 1).contiguous()
            write_split(out, name, corrupted.numpy(), labels.numpy())
            splits[name] = {"n": int(len(labels)), "shift": "corruption", "corruption": t, "severity": int(s),
                            "source_split": source, "labeled": True}
        log(f"{dataset}:{source} {t}: {len(severities)} severities x {len(labels)} images "
            f"({time.perf_counter() - t0:.1f}s)")
    write_meta(out, {"name": dataset, "classes": meta["classes"], "splits": splits,
                     "source": f"{dataset}:{source} corrupted by dlbench.data.corruptions (seed {seed})",
                     "license": meta.get("license", "")})
