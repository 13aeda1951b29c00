"""Registry of dataset builders, keyed by the name used in config.yaml and dvc.yaml.

A builder writes the array format of ``dlbench.data.store`` into ``out``. Offline
builders need nothing; real-data builders download their original files into
``raw_dir`` (or read them from there when they are already present) and convert them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from dlbench.registry import Registry

Builder = Callable[[Path, "Path | None"], None]


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    build: Builder
    offline: bool
    description: str


DATASETS: Registry[DatasetSpec] = Registry("dataset")


def register_dataset(name: str, *, offline: bool, description: str) -> Callable[[Builder], Builder]:
    """Decorator: ``@register_dataset("shapes", offline=True, description=...)`` on ``build(out, raw_dir)``."""

    def decorator(fn: Builder) -> Builder:
        DATASETS.add(name, DatasetSpec(name=name, build=fn, offline=offline, description=description))
        return fn

    return decorator


def load_all() -> Registry[DatasetSpec]:
    """Import every builder module so that its registrations run."""
    from dlbench.data import digits, real, shapes  # noqa: F401

    return DATASETS
