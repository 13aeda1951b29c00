"""Provenance recorded beside every artifact: package versions and dataset hashes from dvc.lock."""

from __future__ import annotations

import platform
from importlib import metadata
from pathlib import Path
from typing import Any

import yaml

PACKAGES = ("dlbench", "torch", "torchvision", "timm", "open_clip_torch", "numpy", "pandas", "pyarrow",
            "snakemake", "dvc", "scikit-learn", "safetensors", "seaborn")


def package_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def dataset_hashes(lock_path: str | Path = "dvc.lock") -> dict[str, str]:
    """Map each DVC stage (one per dataset) to the md5 of its output, as pinned in dvc.lock."""
    path = Path(lock_path)
    if not path.exists():
        return {}
    lock = yaml.safe_load(path.read_text()) or {}
    hashes = {}
    for stage, info in (lock.get("stages") or {}).items():
        outs = info.get("outs") or []
        if outs:
            hashes[stage] = str(outs[0].get("md5", ""))
    return hashes


def provenance(dataset: str | None = None) -> dict[str, Any]:
    hashes = dataset_hashes()
    return {"versions": package_versions(), "data_hash": hashes.get(dataset, "") if dataset else hashes,
            "host": platform.node(), "platform": platform.platform()}
