"""The ``adapt`` stage: a pretrained backbone (or an ``of`` model) -> one classifier per variant.

One call runs either every frozen variant of one backbone (they share one feature pass) or one
trained variant. Each variant writes its own model directory; its parent is the pretrained
backbone, or the model of the variant it starts from (LP-FT: the linear probe). A variant with a
``fraction`` below 1 trains on that class-balanced subset of the train split (``train_subset``); the
frozen variants of one job still share one feature pass over the whole split.
"""

from __future__ import annotations

import copy
import sys
import time
from pathlib import Path
from typing import Any

import torch

from dlbench.adapt.base import AdaptContext, load_all
from dlbench.data.loader import class_shots_subset, label_fraction_subset
from dlbench.device import pick_device
from dlbench.ids import NONE, ModelId
from dlbench.models.checkpoint import load_backbone, load_model
from dlbench.stage import fingerprint, load_labeled, write_model
from dlbench.train.engine import remove_checkpoint


def train_subset(labels: torch.Tensor, params: dict[str, Any], seed: int) -> torch.Tensor | None:
    """Indices of a variant's labeled train images: its ``shots`` per class (``class_shots_subset``) or its
    ``fraction`` (``label_fraction_subset``), seeded by the model seed; None for the whole split
    (fraction 1 and no shots, or a kind without the parameters)."""
    fraction, shots = params.get("fraction"), params.get("shots")
    if shots is not None:
        if fraction is not None and float(fraction) < 1:
            raise ValueError(f"a variant trains on a fraction ({fraction}) or on shots per class ({shots}), not both")
        return class_shots_subset(labels, int(shots), seed)
    if fraction is None or float(fraction) >= 1:
        return None
    return label_fraction_subset(labels, float(fraction), seed)


def starts_from_model(recipe: dict[str, Any]) -> bool:
    """Whether the job's source is another variant's model (``of``) rather than the pretrained backbone."""
    return ModelId.parse(recipe["source"]).adapt != NONE


def models_root(source_dir: str | Path, source_id: str) -> Path | None:
    """The directory that holds every model directory: ``source_dir`` minus its id's path (None when the
    directory is not laid out by id, e.g. a model copied elsewhere by hand)."""
    path, parts = Path(source_dir), tuple(str(source_id).split("/"))
    return path.parents[len(parts) - 1] if path.parts[-len(parts):] == parts else None


def _ancestor_loader(root: Path | None, source_dir: str | Path):
    def load(model_id: str):
        if root is None:
            raise ValueError(f"{source_dir} is not under a models directory laid out by model id, so its "
                             f"ancestor {model_id} cannot be found")
        return load_model(root / model_id)
    return load


def adapt(recipes: list[dict[str, Any]], source_dir: str | Path, data_root: str | Path, out_dirs: list[str | Path],
          checkpoint_dir: str | Path | None = None, device: str = "auto",
          log=lambda s: print(s, file=sys.stderr, flush=True)) -> list[dict[str, Any]]:
    """Run each variant recipe on the model in ``source_dir`` and write it to the matching ``out_dirs`` entry.

    ``source_dir`` is the pretrained backbone, or for a kind with ``of`` the model it starts from.
    """
    if len(recipes) != len(out_dirs):
        raise ValueError(f"{len(recipes)} recipes but {len(out_dirs)} output directories")
    kinds = load_all()
    dev = pick_device(device)
    data = load_labeled(data_root, recipes[0])
    cards = []
    shared: dict[str, torch.Tensor] = {}  # frozen features of the job's backbone, shared by its variants
    for recipe, out in zip(recipes, out_dirs):
        kind = kinds.get(recipe["kind"])
        if starts_from_model(recipe):
            start, parent = load_model(source_dir)
            start_backbone = start.backbone
        else:
            start, (start_backbone, parent) = None, load_backbone(source_dir)
        root = models_root(source_dir, parent["id"])
        ckpt = Path(checkpoint_dir) / f"{recipe['variant']}.pt" if checkpoint_dir else None
        index = train_subset(data.train_y, recipe["params"], int(recipe["seed"]))
        ctx = AdaptContext(load_backbone=lambda b=start_backbone: copy.deepcopy(b), data=data, device=dev,
                           seed=int(recipe["seed"]), checkpoint=ckpt, fingerprint=fingerprint(recipe),
                           start=None if start is None else start.to(dev), start_card=None if start is None else parent,
                           load_ancestor=_ancestor_loader(root, source_dir),
                           features=shared, train_index=index)
        n_train = len(data.train_y) if index is None else len(index)
        log(f"adapt {parent['id']} with variant {recipe['variant']!r} (kind {kind.name}), "
            f"{n_train} of {len(data.train_y)} labeled train images")
        torch.manual_seed(ctx.seed)
        t0 = time.perf_counter()
        model, info = kind.run(ctx, recipe["params"])
        info["train_images"] = n_train
        history = info.pop("history", None)
        seconds = sum(h.get("seconds", 0.0) for h in history) if history else time.perf_counter() - t0
        cards.append(write_model(out, model, recipe=recipe, kind=kind.name, family=kind.family, stage="adapt",
                                 classes=data.classes, parents=[*info.pop("ancestors", []), parent],
                                 history=history, train_seconds=seconds,
                                 trainable_params=info.pop("trainable_params", None),
                                 transforms=info.pop("transforms", None), info=info))
        remove_checkpoint(ckpt)
        log(f"  {recipe['variant']}: {seconds:.1f}s")
    return cards
