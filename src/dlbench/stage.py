"""What every training stage shares: reading its recipe's data, fingerprinting, writing its model(s).

A stage (supervised, pretrain, adapt; later ensemble and compress) is a function of a recipe
(built by ``dlbench.plan`` from config) that trains through the engine and writes one or more
model directories. Writing is always the same: ``history.json``, weights, then the card last
(its presence marks a complete model), then the resumable checkpoint is removed.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dlbench.cards import build_card, model_section
from dlbench.data.loader import dataset_meta, labeled_splits
from dlbench.ids import ModelId
from dlbench.io import write_json
from dlbench.models.checkpoint import save_model


@dataclass
class Labeled:
    """The labeled train split and the val split (held out of train when the dataset has none)."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    val_x: torch.Tensor
    val_y: torch.Tensor
    classes: list[str]
    templates: list[str] = field(default_factory=list)  # prompt templates ("a photo of a {}."): zero-shot heads

    @property
    def image_size(self) -> tuple[int, int]:
        return int(self.train_x.shape[1]), int(self.train_x.shape[2])


def load_labeled(data_root: str | Path, recipe: dict[str, Any]) -> Labeled:
    meta = dataset_meta(data_root, recipe["dataset"])
    tx, ty, vx, vy = labeled_splits(data_root, recipe["dataset"], recipe["train_split"], recipe.get("val_split"))
    return Labeled(tx, ty, vx, vy, list(meta["classes"]), list(meta.get("prompt_templates") or []))


def fingerprint(recipe: dict[str, Any]) -> str:
    """Identifies a recipe: a checkpoint written by another recipe is never resumed."""
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:16]


def write_model(out_dir: str | Path, model: nn.Module, *, recipe: dict[str, Any], kind: str, family: str,
                stage: str, classes: list[str], parents: list[dict[str, Any]] = (),
                history: list[dict[str, Any]] | None = None, train_seconds: float = 0.0,
                trainable_params: int | None = None, info: dict[str, Any] | None = None,
                transforms: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """Write one model directory (history, weights, card last) and return its card."""
    out = Path(out_dir)
    card = build_card(model_id=ModelId.parse(recipe["id"]), kind=kind, family=family, stage=stage, recipe=recipe,
                      model=model_section(model, classes, transforms), parents=list(parents),
                      knobs=recipe.get("knobs"), train_seconds=train_seconds, trainable_params=trainable_params,
                      info=info)
    if history is not None:
        write_json(out / "history.json", history)
    save_model(out, model.cpu(), card)
    return card


def history_seconds(history: list[dict[str, Any]]) -> float:
    """Training time of a (possibly resumed) run: every epoch counts once."""
    return float(sum(h.get("seconds", 0.0) for h in history))
