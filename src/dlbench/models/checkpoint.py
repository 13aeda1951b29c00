"""Model directories: ``model.safetensors`` (weights) + ``model.json`` (recipe and provenance).

No pickle is ever read from a model directory; a truncated or corrupt weights file fails
with an error naming it, instead of a deep stack trace from safetensors.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from dlbench.io import atomic_path, read_json, write_json
from dlbench.models.backbones import Classifier, build_backbone
from dlbench.models.heads import build_head

WEIGHTS = "model.safetensors"
META = "model.json"


class CheckpointError(RuntimeError):
    """A weights or checkpoint file is missing, truncated or does not fit its model."""


def save_model(out_dir: str | Path, model: torch.nn.Module, meta: dict[str, Any]) -> None:
    """Write weights then metadata, each atomically; metadata last marks completeness."""
    out = Path(out_dir)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with atomic_path(out / WEIGHTS) as tmp:
        save_file(state, str(tmp))
    write_json(out / META, meta)


def load_state(path: str | Path) -> dict[str, torch.Tensor]:
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: weights file not found")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"{path}: truncated or corrupt safetensors file ({e}); delete it and rerun") from None


def read_meta(model_dir: str | Path) -> dict[str, Any]:
    try:
        return read_json(Path(model_dir) / META)
    except (FileNotFoundError, ValueError) as e:
        raise CheckpointError(str(e)) from None


def load_backbone(model_dir: str | Path) -> tuple[torch.nn.Module, dict[str, Any]]:
    """The backbone of any model directory (a pretrained backbone or a full classifier)."""
    model_dir = Path(model_dir)
    meta = read_meta(model_dir)
    backbone = build_backbone(meta["backbone_spec"])
    state = {k[len("backbone."):]: v for k, v in load_state(model_dir / WEIGHTS).items() if k.startswith("backbone.")}
    try:
        backbone.load_state_dict(state)
    except RuntimeError as e:
        raise CheckpointError(f"{model_dir / WEIGHTS}: backbone weights do not fit {META}: {e}") from None
    return backbone, meta


def load_model(model_dir: str | Path) -> tuple[Classifier, dict[str, Any]]:
    """Rebuild the classifier (backbone + the head kind in ``model.json``) and load its weights."""
    model_dir = Path(model_dir)
    meta = read_meta(model_dir)
    if not meta.get("num_classes"):
        raise CheckpointError(f"{model_dir}: a pretrained backbone without a classifier head; adapt it first")
    backbone = build_backbone(meta["backbone_spec"])
    model = Classifier(backbone, meta["num_classes"], build_head(meta.get("head"), backbone.num_features,
                                                                  meta["num_classes"]))
    state = load_state(model_dir / WEIGHTS)
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise CheckpointError(f"{model_dir / WEIGHTS}: does not fit the model in {META}: {e}") from None
    model.eval()
    return model, meta
