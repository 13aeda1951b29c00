"""Protocols that train the backbone: full fine-tuning and LP-FT (Kumar et al. 2022).

Both train through the one engine with the supervised objective; LP-FT differs only in its
starting head (the linear probe's, so early gradients do not distort the pretrained
features) and, by default, a smaller learning rate.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from dlbench.adapt.base import AdaptContext, register_protocol
from dlbench.data.augment import AugmentConfig
from dlbench.evaluate.predict import predict_logits
from dlbench.models.backbones import Classifier
from dlbench.train.engine import TrainConfig, fit
from dlbench.train.supervised import SupervisedObjective, recipe_fingerprint


def train_classifier(ctx: AdaptContext, model: Classifier, params: dict[str, Any], name: str) -> tuple[Classifier, dict[str, Any]]:
    cfg = TrainConfig(seed=ctx.seed, **params["train"])
    objective = SupervisedObjective(model, AugmentConfig.from_dict(params.get("augment")),
                                    float(params.get("label_smoothing", 0.0)))

    def validate() -> dict[str, float]:
        logits = predict_logits(model, ctx.val_images, device=ctx.device)
        return {"loss": float(F.cross_entropy(logits, ctx.val_labels)),
                "acc": float((logits.argmax(1) == ctx.val_labels).float().mean())}

    checkpoints = ctx.recipe.get("checkpoints") or {}
    ckpt = Path(checkpoints[name]) if checkpoints.get(name) else None
    history = fit(objective, ctx.train_images, ctx.train_labels, cfg, checkpoint_path=ckpt,
                  fingerprint=recipe_fingerprint({**ctx.recipe, "protocol": name, "params": params}),
                  device=ctx.device, validate=validate)
    return model, {"head": {"kind": "linear"}, "history": history, "checkpoint": str(ckpt) if ckpt else None}


@register_protocol("finetune", description="full fine-tuning of backbone + new linear head")
def finetune(ctx: AdaptContext, params: dict[str, Any]) -> tuple[Classifier, dict[str, Any]]:
    torch.manual_seed(ctx.seed)
    model = Classifier(ctx.pretrained_backbone(), ctx.num_classes)
    return train_classifier(ctx, model, params, "finetune")


@register_protocol("lpft", needs=("linear",), description="linear probe, then full fine-tuning from its head")
def lpft(ctx: AdaptContext, params: dict[str, Any]) -> tuple[Classifier, dict[str, Any]]:
    head = copy.deepcopy(ctx.done["linear"].head)
    model = Classifier(ctx.pretrained_backbone(), ctx.num_classes, head)
    return train_classifier(ctx, model, params, "lpft")
