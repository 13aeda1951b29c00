"""The ``pretrain`` stage: one method x one backbone x one seed on a dataset's unlabeled split
(language-image methods: on the captioned split their ``caption_split`` names).

Writes a backbone-only model directory (weights, card, ``history.json``). Every epoch the
history records the collapse check of the homework (std of l2-normalised embeddings of the
val split, ~1/sqrt(d) when spread, -> 0 at collapse) and an online kNN accuracy.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from dlbench.cards import trainable_count
from dlbench.data.loader import load_tensors
from dlbench.device import pick_device
from dlbench.models.backbones import build_backbone
from dlbench.models.heads import knn_vote_probs
from dlbench.models.inference import embed
from dlbench.pretrain.base import PretrainSetup, load_all
from dlbench.pretrain.views import ViewConfig
from dlbench.stage import fingerprint, history_seconds, load_labeled, write_model
from dlbench.train.engine import TrainConfig, fit, remove_checkpoint


def embedding_std(features: torch.Tensor) -> tuple[float, float]:
    """Mean per-dimension std of l2-normalised embeddings, and the same times sqrt(dim)."""
    z = F.normalize(features.float(), dim=1)
    std = float(z.std(dim=0).mean())
    return std, std * math.sqrt(z.shape[1])


def is_vit(net: nn.Module) -> bool:
    from timm.models.vision_transformer import VisionTransformer

    return isinstance(net, VisionTransformer)


def is_open_clip(net: nn.Module) -> bool:
    from dlbench.models.clip import OpenClipNet

    return isinstance(net, OpenClipNet)


def training_split(cls: type, recipe: dict[str, Any], data_root: str | Path) -> tuple[torch.Tensor, list[str] | None]:
    """The images a method trains on (the unlabeled split, or its ``caption_split``) and their captions."""
    if not cls.needs_captions:
        return load_tensors(data_root, recipe["dataset"], recipe["unlabeled_split"])[0], None
    split = cls.resolve_params(recipe["params"])["caption_split"]
    images, _, s = load_tensors(data_root, recipe["dataset"], split)
    if s.captions is None:
        raise ValueError(f"pretrain kind {cls.name!r} trains on captions, and {recipe['dataset']}:{split} has none "
                         f"(params.caption_split)")
    return images, [str(c) for c in s.captions]


def pretrain(recipe: dict[str, Any], data_root: str | Path, out_dir: str | Path,
             checkpoint_path: str | Path | None = None, device: str = "auto") -> dict[str, Any]:
    """Pretrain per ``recipe`` (``dlbench.plan``) and write the model directory; return its card."""
    dev = pick_device(device)
    cls = load_all().get(recipe["kind"])
    images, captions = training_split(cls, recipe, data_root)
    labeled = load_labeled(data_root, recipe)
    cfg = TrainConfig.from_dict(recipe["train"], seed=int(recipe["seed"]))
    torch.manual_seed(cfg.seed)
    backbone = build_backbone(recipe["backbone_spec"], (int(images.shape[1]), int(images.shape[2])))
    needs = {"vit": (is_vit, "a Vision Transformer"), "open_clip": (is_open_clip, "an open_clip")}.get(cls.requires)
    if needs and not needs[0](backbone.net):
        raise ValueError(f"pretrain kind {cls.name!r} needs {needs[1]} backbone; "
                         f"{recipe['backbone']!r} is a {type(backbone.net).__name__}")
    n = len(images)
    setup = PretrainSetup(backbone=backbone, backbone_spec=recipe["backbone_spec"], params=dict(recipe["params"]),
                          views=ViewConfig.from_dict(recipe.get("views")), input_size=tuple(images.shape[1:3]),
                          images=images, captions=captions, device=dev, epochs=cfg.epochs,
                          steps_per_epoch=max(1, n // (cfg.batch_size * cfg.accumulate)), seed=cfg.seed)
    method = cls(setup)

    def monitor() -> dict[str, float]:
        val_f = embed(backbone, labeled.val_x, device=dev)
        std, std_norm = embedding_std(val_f)
        bank = F.normalize(embed(backbone, labeled.train_x, device=dev), dim=1)
        probs = knn_vote_probs(val_f, bank, labeled.train_y, len(labeled.classes))
        return {"emb_std": std, "emb_std_norm": std_norm,
                "knn_acc": float((probs.argmax(1) == labeled.val_y).float().mean())}

    ckpt = Path(checkpoint_path) if checkpoint_path else None
    trainable = trainable_count(method.model)
    if cls.trains:
        labels = torch.full((n,), -1, dtype=torch.int64)
        history = fit(method, images, labels, cfg, checkpoint_path=ckpt, fingerprint=fingerprint(recipe),
                      device=dev, validate=monitor)
    else:
        history, trainable = [{"epoch": 0, "seconds": 0.0, **{f"val_{k}": v for k, v in monitor().items()}}], 0
    card = write_model(out_dir, backbone, recipe=recipe, kind=cls.name, family=cls.family, stage="pretrain",
                       classes=labeled.classes, history=history, train_seconds=history_seconds(history),
                       trainable_params=trainable)
    remove_checkpoint(ckpt)
    return card
