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
    splits: tuple[str, ...] | None  # the splits it writes (None: data-dependent, not checked at config time)
    image_size: int  # side in pixels of its images (config checks that every view survives a backbone)
    sizes: dict[str, int] | None = None  # images per split (job runtime estimates for the cluster)


DATASETS: Registry[DatasetSpec] = Registry("dataset")


def register_dataset(name: str, *, offline: bool, description: str, splits: dict[str, int] | None,
                     image_size: int) -> Callable[[Builder], Builder]:
    """Decorator on ``build(out, raw_dir)``: ``@register_dataset("shapes", offline=True, description=...,
    splits={"train": 1000, ...}, image_size=32)``. The declared splits (name -> number of images)
    let config checking catch a misspelt split before the dataset is built, and size cluster jobs."""

    def decorator(fn: Builder) -> Builder:
        DATASETS.add(name, DatasetSpec(name=name, build=fn, offline=offline, description=description,
                                       splits=None if splits is None else tuple(splits), image_size=int(image_size),
                                       sizes=None if splits is None else dict(splits)))
        return fn

    return decorator


def load_all() -> Registry[DatasetSpec]:
    """Import every builder module so that its registrations run."""
    from dlbench.data import digits, domainnet, real, shapes  # noqa: F401

    return DATASETS
