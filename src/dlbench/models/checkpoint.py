"""Model directories: ``model.safetensors`` (weights) + ``model.json`` (the card, ``dlbench.cards``).

No pickle is ever read from a model directory; a truncated or corrupt weights file fails with
an error naming it. ``load_model`` rebuilds any model from its directory alone: the card's
``model`` section gives the backbone source spec, preprocessing, head and transforms.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from dlbench.cards import CARD_FILE
from dlbench.errors import CheckpointError
from dlbench.io import atomic_path, read_json, write_json
from dlbench.models.backbones import Backbone, Classifier, build_backbone
from dlbench.models.heads import build_head
from dlbench.models.transforms import apply_transforms

WEIGHTS = "model.safetensors"
META = CARD_FILE

__all__ = ["WEIGHTS", "META", "CheckpointError", "save_model", "load_state", "read_card", "load_backbone",
           "load_model"]


def save_model(out_dir: str | Path, model: nn.Module, card: dict[str, Any]) -> None:
    """Write weights then the card, each atomically; the card last marks completeness."""
    out = Path(out_dir)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with atomic_path(out / WEIGHTS) as tmp:
        save_file(state, str(tmp))
    write_json(out / META, card)


def load_state(path: str | Path) -> dict[str, torch.Tensor]:
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: weights file not found")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"{path}: truncated or corrupt safetensors file ({e}); delete it and rerun") from None


def read_card(model_dir: str | Path) -> dict[str, Any]:
    try:
        card = read_json(Path(model_dir) / META)
    except (FileNotFoundError, ValueError) as e:
        raise CheckpointError(str(e)) from None
    if "model" not in card:
        raise CheckpointError(f"{Path(model_dir) / META}: not a model card (no 'model' section); "
                              f"written by an older dlbench? delete the directory and rerun")
    return card


def _load(module: nn.Module, state: dict[str, torch.Tensor], where: Path) -> None:
    try:
        module.load_state_dict(state)
    except RuntimeError as e:
        raise CheckpointError(f"{where}: weights do not fit the model its {META} describes: {e}") from None


def _backbone(section: dict[str, Any]) -> Backbone:
    """The card's backbone, built without reading its ``weights`` file (the directory's weights replace
    them, and the file may be gone); the spec is kept whole for the lineage of what is made from it."""
    spec = section["backbone"]
    backbone = build_backbone({k: v for k, v in spec.items() if k != "weights"}, preprocess=section["preprocess"])
    backbone.spec = dict(spec)
    return backbone


def load_backbone(model_dir: str | Path) -> tuple[Backbone, dict[str, Any]]:
    """The backbone of any model directory (a pretrained backbone or a full classifier)."""
    model_dir = Path(model_dir)
    card = read_card(model_dir)
    section = card["model"]
    if section.get("transforms"):
        model, card = load_model(model_dir)
        return model.backbone, card
    backbone = _backbone(section)
    state = load_state(model_dir / WEIGHTS)
    if section.get("head") is not None:  # a classifier's weights: keep the backbone's
        state = {k[len("backbone."):]: v for k, v in state.items() if k.startswith("backbone.")}
    _load(backbone, state, model_dir / WEIGHTS)
    return backbone, card


def load_model(model_dir: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the classifier a directory holds (backbone, head, transforms) and load its weights."""
    model_dir = Path(model_dir)
    card = read_card(model_dir)
    section = card["model"]
    if section.get("head") is None:
        raise CheckpointError(f"{model_dir}: a pretrained backbone without a classifier head; adapt it first")
    backbone = _backbone(section)
    model = Classifier(backbone, section["num_classes"],
                       build_head(section["head"], backbone.num_features, section["num_classes"]))
    model = apply_transforms(model, section.get("transforms") or [])
    _load(model, load_state(model_dir / WEIGHTS), model_dir / WEIGHTS)
    model.eval()
    return model, card
