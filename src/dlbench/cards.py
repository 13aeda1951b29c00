"""Model cards: the one builder of ``model.json``, the lineage and rebuild record of every model.

A card says how a model was made and how to rebuild it:

* ``id`` and its ``parts``; ``kind`` (the registered kind that made it, e.g. ``finetune``) and
  ``family`` (e.g. ``finetune``, ``probe``, ``contrastive``); ``stage`` (pretrain, adapt, ...);
* ``parents``: model ids it was made from (one for a fine-tune, two for WiSE-FT, N for a soup);
* ``knobs``: the numbers that vary in a sweep (lr, alpha, sparsity ...), one metrics column each;
* ``recipe`` (the full config it was trained from), ``seed``, ``data_hash`` (dvc.lock), package
  ``versions``, ``train_seconds`` of this stage and ``total_train_seconds`` along its lineage (each
  ancestor once, from ``lineage_seconds``: model id -> its stage's seconds, so WiSE-FT's two parents
  or an ensemble's members count their shared pretraining once),
  ``trainable_params`` (what the stage optimised);
* ``model``: everything ``dlbench.models.checkpoint.load_model`` needs to rebuild the network
  from the directory alone: backbone source spec, preprocessing (mean, std, input size), head,
  number and names of classes, and the ``transforms`` list (LoRA, pruning, quantization ...).
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from torch import nn

from dlbench.ids import ModelId
from dlbench.provenance import provenance

CARD_FILE = "model.json"


def model_section(model: nn.Module, classes: list[str] | None, transforms: list[dict[str, Any]] | None = None
                  ) -> dict[str, Any]:
    """The rebuild record of a live ``Classifier`` or ``Backbone``."""
    from dlbench.models.backbones import Backbone
    from dlbench.models.heads import head_spec

    backbone = model if isinstance(model, Backbone) else model.backbone
    head = None if isinstance(model, Backbone) else head_spec(model.head)
    return {"backbone": backbone.spec, "preprocess": backbone.preprocess_spec(), "head": head,
            "num_classes": 0 if head is None else int(model.num_classes), "classes": list(classes or []),
            "feature_dim": int(backbone.num_features), "transforms": list(transforms or [])}


def build_card(*, model_id: ModelId, kind: str, family: str, stage: str, recipe: dict[str, Any],
               model: dict[str, Any], parents: list[dict[str, Any]] = (), knobs: dict[str, Any] | None = None,
               train_seconds: float = 0.0, trainable_params: int | None = None,
               info: dict[str, Any] | None = None) -> dict[str, Any]:
    """A complete card. ``parents``: the parents' cards (their ids and costs enter the lineage)."""
    prov = provenance(model_id.dataset)
    lineage: dict[str, float] = {}
    for p in parents:  # cards written before ``lineage_seconds`` existed count as one ancestor
        lineage.update(p.get("lineage_seconds") or {p["id"]: float(p.get("total_train_seconds", 0.0))})
    lineage[str(model_id)] = float(train_seconds)
    return {
        "id": str(model_id),
        "parts": model_id.parts(),
        "kind": kind,
        "family": family,
        "stage": stage,
        "parents": [p["id"] for p in parents],
        "knobs": dict(knobs or {}),
        "recipe": recipe,
        "seed": model_id.seed,
        "data_hash": prov["data_hash"],
        "versions": prov["versions"],
        "host": prov["host"],
        "platform": prov["platform"],
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "train_seconds": float(train_seconds),
        "total_train_seconds": float(sum(lineage.values())),
        "lineage_seconds": lineage,
        "trainable_params": None if trainable_params is None else int(trainable_params),
        "model": model,
        "info": dict(info or {}),
    }


def trainable_count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)
