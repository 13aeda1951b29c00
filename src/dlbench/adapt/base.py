"""Adaptation kinds: how a pretrained backbone becomes a classifier (registry + shared context).

Each kind is registered under its config name with its family, its parameters (defaults; an
unknown key fails at config time), the knobs a sweep may vary, and its *job*:

* ``frozen`` kinds (linear probe, kNN) never change the backbone: all frozen variants of one
  pretrained backbone run in one job, on one pass of frozen features;
* ``train`` kinds (fine-tuning, LP-FT ...) run one job per variant, so changing one variant's
  recipe retrains that variant only, and a crash in one never touches another's model.

A kind with ``of`` starts from another variant's model (LP-FT from a linear probe, WiSE-FT from a
fine-tune): that model is the job's input and its parent in the lineage. ``of`` lists the kinds it
may start from; with ``of_optional`` a variant may also start from the pretrained backbone (a CLIP
fine-tune starts from the zero-shot model, a ResNet fine-tune from the backbone).

A kind with the ``fraction`` and ``shots`` parameters (``FRACTION``: linear, knn, finetune, lpft,
lipsum) trains on a class-balanced fraction of the labeled train split (label efficiency), or on
``shots`` images per class (``dlbench.data.loader.class_shots_subset``; CLIP's data-efficiency curve): the stage picks the subset
(``dlbench.data.loader.label_fraction_subset``, the same images for every method and protocol of one
seed) and sets ``AdaptContext.train_index``; a kind reads its images through ``ctx.train_x``,
``ctx.train_y`` and ``ctx.frozen_features()``. Val is never subsampled.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from dlbench.models.backbones import Backbone, Classifier
from dlbench.models.inference import embed
from dlbench.registry import Registry
from dlbench.stage import Labeled

JOBS = ("frozen", "train")
FRACTION = {"fraction": 1.0, "shots": None}  # the parameters (default: the whole train split) ...
FRACTION_KNOB = {"fraction": "fraction", "shots": "shots"}  # ... and their knobs (metrics columns; sweepable)


@dataclass
class AdaptContext:
    """Inputs of one adapt job."""

    load_backbone: Callable[[], Backbone]  # a fresh copy of the pretrained backbone
    data: Labeled
    device: torch.device
    seed: int
    checkpoint: Path | None = None
    fingerprint: str = ""
    start: Classifier | None = None  # the ``of`` variant's model (LP-FT: the linear probe)
    start_card: dict[str, Any] | None = None  # its card (WiSE-FT reads the lineage)
    # a model of the lineage by id (WiSE-FT's other endpoint: the model its fine-tune started from)
    load_ancestor: Callable[[str], tuple[Classifier, dict[str, Any]]] | None = None
    features: dict[str, torch.Tensor] = field(default_factory=dict)  # frozen features, computed once
    # the variant's labeled images: indices into data.train_* (its ``fraction``, see
    # dlbench.data.loader.label_fraction_subset); None: the whole train split. Val stays whole.
    train_index: torch.Tensor | None = None

    @property
    def num_classes(self) -> int:
        return len(self.data.classes)

    @property
    def train_x(self) -> torch.Tensor:
        """The variant's labeled train images (its ``fraction`` of the train split)."""
        return self.data.train_x if self.train_index is None else self.data.train_x[self.train_index]

    @property
    def train_y(self) -> torch.Tensor:
        return self.data.train_y if self.train_index is None else self.data.train_y[self.train_index]

    def pretrained_backbone(self) -> Backbone:
        return self.load_backbone().to(self.device)

    def frozen_features(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Features of the frozen pretrained backbone: the variant's train images (matching ``train_y``)
        and the whole val split. The whole train split's features are computed once per job (the
        ``features`` dict is shared by the job's variants); a ``fraction`` variant indexes into them."""
        if not self.features:
            backbone = self.pretrained_backbone()
            self.features["train"] = embed(backbone, self.data.train_x, device=self.device)
            self.features["val"] = embed(backbone, self.data.val_x, device=self.device)
        train = self.features["train"]
        return (train if self.train_index is None else train[self.train_index]), self.features["val"]


RunFn = Callable[[AdaptContext, dict[str, Any]], tuple[Classifier, dict[str, Any]]]


@dataclass(frozen=True)
class AdaptKind:
    name: str
    family: str  # report grouping: "probe", "finetune", ...
    job: str  # "frozen" or "train" (see module doc)
    # (context, params) -> (classifier, info for the card; "history", "trainable_params" and "ancestors" (cards of
    # parents besides the job's source, listed before it) are lifted out)
    run: RunFn
    defaults: dict[str, Any]  # every parameter and its default (None where ``required``)
    required: tuple[str, ...] = ()
    knobs: dict[str, str] = field(default_factory=dict)  # sweepable name -> dotted path in params
    of: tuple[str, ...] = ()  # kinds of the variant this one starts from (a variant's ``of`` names one)
    of_optional: bool = False  # True: a variant may leave ``of`` out (it starts from the pretrained backbone)
    requires: str | None = None  # "open_clip": only on CLIP backbones; "open_clip_vit": CLIP with a ViT image tower
    # (both checked at config time)
    description: str = ""


KINDS: Registry[AdaptKind] = Registry("adapt kind")


def register_kind(name: str, *, family: str, job: str, defaults: dict[str, Any], required: tuple[str, ...] = (),
                  knobs: dict[str, str] | None = None, of: str | tuple[str, ...] = (), of_optional: bool = False,
                  requires: str | None = None, description: str = "") -> Callable[[RunFn], RunFn]:
    """Decorator on ``run(ctx, params) -> (classifier, info)``; ``of``: a kind or a tuple of kinds."""
    if job not in JOBS:
        raise ValueError(f"adapt kind {name!r}: job must be one of {JOBS}")

    def decorator(fn: RunFn) -> RunFn:
        KINDS.add(name, AdaptKind(name=name, family=family, job=job, run=fn, defaults=dict(defaults),
                                  required=tuple(required), knobs=dict(knobs or {}),
                                  of=(of,) if isinstance(of, str) else tuple(of), of_optional=of_optional,
                                  requires=requires, description=description))
        return fn

    return decorator


def load_all() -> Registry[AdaptKind]:
    """Import every module of this package (discovery: a new kind is one new module)."""
    import importlib
    import pkgutil

    import dlbench.adapt as package

    for info in pkgutil.iter_modules(package.__path__):
        importlib.import_module(f"dlbench.adapt.{info.name}")
    return KINDS
