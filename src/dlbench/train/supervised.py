"""Supervised training from scratch: backbone + head on the labeled train split, cross-entropy."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from dlbench.data.augment import AugmentConfig, augment, normalize
from dlbench.data.loader import dataset_meta, load_tensors
from dlbench.evaluate.predict import predict_logits
from dlbench.io import write_json
from dlbench.models.backbones import Classifier, build_classifier
from dlbench.models.checkpoint import save_model
from dlbench.provenance import provenance
from dlbench.train.engine import TrainConfig, fit, pick_device, remove_checkpoint


class SupervisedObjective:
    """Cross-entropy on one augmented view; reports batch accuracy for the history."""

    def __init__(self, model: Classifier, aug: AugmentConfig, label_smoothing: float = 0.0) -> None:
        self.model = model
        self.aug = aug
        self.label_smoothing = label_smoothing

    def training_loss(self, images: torch.Tensor, labels: torch.Tensor,
                      gen: torch.Generator) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        logits = self.model(normalize(augment(images, self.aug, gen)))
        loss = F.cross_entropy(logits, labels, label_smoothing=self.label_smoothing)
        acc = (logits.argmax(1) == labels).float().mean()
        return loss, {"acc": acc}


def recipe_fingerprint(recipe: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:16]


def model_id(recipe: dict[str, Any]) -> str:
    parts = [recipe["dataset"], recipe["backbone"], recipe.get("pretrain", "none"), recipe.get("adapt", "none"),
             recipe.get("ensemble", "none"), recipe.get("compress", "none"), f"seed{recipe['seed']}"]
    return "/".join(str(p) for p in parts)


def train_supervised(recipe: dict[str, Any], data_root: str | Path, out_dir: str | Path,
                     checkpoint_path: str | Path | None = None, device: str = "auto") -> dict[str, Any]:
    """Train from scratch per ``recipe`` and write ``model.safetensors``/``model.json``/``history.json``."""
    dev = pick_device(device)
    meta = dataset_meta(data_root, recipe["dataset"])
    images, labels, _ = load_tensors(data_root, recipe["dataset"], recipe.get("train_split", "train"))
    if (labels < 0).any():
        raise ValueError(f"split {recipe.get('train_split', 'train')!r} of {recipe['dataset']!r} has unlabeled images")
    val = None
    if recipe.get("val_split"):
        val_images, val_labels, _ = load_tensors(data_root, recipe["dataset"], recipe["val_split"])
        val = (val_images, val_labels)
    cfg = TrainConfig(seed=int(recipe["seed"]), **recipe["train"])
    torch.manual_seed(cfg.seed)
    model = build_classifier(recipe["backbone_spec"], len(meta["classes"]))
    objective = SupervisedObjective(model, AugmentConfig.from_dict(recipe.get("augment")),
                                    float(recipe.get("label_smoothing", 0.0)))

    def validate() -> dict[str, float]:
        logits = predict_logits(model, val[0], device=dev)
        return {"loss": float(F.cross_entropy(logits, val[1])), "acc": float((logits.argmax(1) == val[1]).float().mean())}

    ckpt = Path(checkpoint_path) if checkpoint_path else None
    history = fit(objective, images, labels, cfg, checkpoint_path=ckpt, fingerprint=recipe_fingerprint(recipe),
                  device=dev, validate=validate if val else None)
    train_seconds = float(sum(h["seconds"] for h in history))  # resumed runs count every epoch
    out = Path(out_dir)
    write_json(out / "history.json", history)
    model_meta = {
        "model_id": model_id(recipe),
        "recipe": recipe,
        "parts": {"dataset": recipe["dataset"], "backbone": recipe["backbone"], "pretrain": "none",
                  "adapt": "supervised", "ensemble": "none", "compress": "none", "seed": int(recipe["seed"])},
        "parent": None,
        "backbone_spec": recipe["backbone_spec"],
        "num_classes": len(meta["classes"]),
        "classes": meta["classes"],
        "input_size": list(images.shape[1:3]),
        "train_seconds": train_seconds,
        "provenance": provenance(recipe["dataset"]),
    }
    save_model(out, model.cpu(), model_meta)
    remove_checkpoint(ckpt)
    return model_meta
