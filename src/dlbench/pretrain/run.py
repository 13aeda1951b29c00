"""The ``pretrain`` stage: one method x one backbone x one seed on a dataset's unlabeled split.

Writes a backbone-only model directory (``model.safetensors`` with the ``backbone.*``
weights, ``model.json`` with recipe and provenance, ``history.json``). Every epoch the
history records the collapse check of the homework (std of l2-normalised embeddings of a
fixed labeled batch, ~1/sqrt(d) when spread, -> 0 at collapse) and an online kNN accuracy.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from dlbench.data.loader import dataset_meta, labeled_splits, load_tensors
from dlbench.io import write_json
from dlbench.models.backbones import build_backbone
from dlbench.models.checkpoint import save_model
from dlbench.models.heads import knn_vote_probs
from dlbench.pretrain.base import PretrainSetup, load_all
from dlbench.pretrain.views import ViewConfig
from dlbench.provenance import provenance
from dlbench.train.engine import TrainConfig, fit, pick_device, remove_checkpoint
from dlbench.train.supervised import model_id, recipe_fingerprint


@torch.no_grad()
def embed(backbone: nn.Module, images: torch.Tensor, device: torch.device, batch_size: int = 512) -> torch.Tensor:
    """Backbone features of uint8 N x H x W x C images (eval mode, no augmentation), on CPU."""
    from dlbench.data.augment import normalize

    was_training = backbone.training
    backbone.eval()
    out = []
    for i in range(0, len(images), batch_size):
        x = images[i:i + batch_size].to(device).permute(0, 3, 1, 2).float().div_(255)
        out.append(backbone(normalize(x)).float().cpu())
    backbone.train(was_training)
    return torch.cat(out) if out else torch.empty(0)


def embedding_std(features: torch.Tensor) -> tuple[float, float]:
    """Mean per-dimension std of l2-normalised embeddings, and the same times sqrt(dim)."""
    z = F.normalize(features.float(), dim=1)
    std = float(z.std(dim=0).mean())
    return std, std * math.sqrt(z.shape[1])


def is_vit(backbone: nn.Module) -> bool:
    from timm.models.vision_transformer import VisionTransformer

    return isinstance(backbone, VisionTransformer)


def pretrain(recipe: dict[str, Any], data_root: str | Path, out_dir: str | Path,
             checkpoint_path: str | Path | None = None, device: str = "auto") -> dict[str, Any]:
    """Pretrain per ``recipe`` (see ``dlbench.config.pretrain_recipe``) and write the model directory."""
    dev = pick_device(device)
    methods = load_all()
    cls = methods.get(recipe["pretrain"])
    meta = dataset_meta(data_root, recipe["dataset"])
    images, _, _ = load_tensors(data_root, recipe["dataset"], recipe["unlabeled_split"])
    train_x, train_y, val_x, val_y = labeled_splits(data_root, recipe["dataset"], recipe["train_split"],
                                                    recipe.get("val_split"))
    cfg = TrainConfig(seed=int(recipe["seed"]), **recipe["train"])
    torch.manual_seed(cfg.seed)
    backbone = build_backbone(recipe["backbone_spec"])
    if cls.requires == "vit" and not is_vit(backbone):
        raise ValueError(f"pretrain method {cls.name!r} needs a Vision Transformer backbone; "
                         f"{recipe['backbone']!r} is a {type(backbone).__name__}")
    n = len(images)
    setup = PretrainSetup(backbone=backbone, backbone_spec=recipe["backbone_spec"], params=dict(recipe.get("params") or {}),
                          views=ViewConfig.from_dict(recipe.get("views")), input_size=tuple(images.shape[1:3]),
                          images=images, device=dev, epochs=cfg.epochs,
                          steps_per_epoch=max(1, n // cfg.batch_size), seed=cfg.seed)
    method = cls(setup)

    def monitor() -> dict[str, float]:
        val_f = embed(backbone, val_x, dev)
        std, std_norm = embedding_std(val_f)
        probs = knn_vote_probs(val_f, F.normalize(embed(backbone, train_x, dev), dim=1), train_y, len(meta["classes"]))
        return {"emb_std": std, "emb_std_norm": std_norm, "knn_acc": float((probs.argmax(1) == val_y).float().mean())}

    ckpt = Path(checkpoint_path) if checkpoint_path else None
    if cls.trains:
        labels = torch.full((n,), -1, dtype=torch.int64)
        history = fit(method, images, labels, cfg, checkpoint_path=ckpt, fingerprint=recipe_fingerprint(recipe),
                      device=dev, validate=monitor)
    else:
        history = [{"epoch": 0, "seconds": 0.0, **{f"val_{k}": v for k, v in monitor().items()}}]
    out = Path(out_dir)
    write_json(out / "history.json", history)
    model_meta = {
        "model_id": model_id({**recipe, "adapt": "none"}),
        "recipe": recipe,
        "parts": {"dataset": recipe["dataset"], "backbone": recipe["backbone"], "pretrain": recipe["pretrain"],
                  "adapt": "none", "ensemble": "none", "compress": "none", "seed": int(recipe["seed"])},
        "parent": None,
        "backbone_spec": recipe["backbone_spec"],
        "num_classes": 0,
        "head": None,
        "classes": meta["classes"],
        "input_size": list(images.shape[1:3]),
        "method_family": cls.family,
        "train_seconds": float(sum(h.get("seconds", 0.0) for h in history)),
        "provenance": provenance(recipe["dataset"]),
    }
    save_model(out, nn.ModuleDict({"backbone": backbone.cpu()}), model_meta)
    remove_checkpoint(ckpt)
    return model_meta
