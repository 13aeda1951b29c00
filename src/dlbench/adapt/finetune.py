"""Kinds that train the backbone: full fine-tuning and LP-FT (Kumar et al. 2022).

Both train through the one classifier fit (``dlbench.classify``) with the supervised objective;
LP-FT differs only in its starting head (the linear probe's, so early gradients do not distort
the pretrained features) and, by default, a smaller learning rate.
"""

from __future__ import annotations

import copy
from typing import Any

import torch

from dlbench.adapt.base import AdaptContext, register_kind
from dlbench.cards import trainable_count
from dlbench.classify import fit_classifier
from dlbench.models.backbones import Classifier

TRAINED = {"train": None, "augment": {}, "label_smoothing": 0.0}
TRAINED_KNOBS = {"lr": "train.lr", "epochs": "train.epochs", "weight_decay": "train.weight_decay"}


def train(ctx: AdaptContext, model: Classifier, params: dict[str, Any]) -> tuple[Classifier, dict[str, Any]]:
    history = fit_classifier(model, (ctx.data.train_x, ctx.data.train_y), (ctx.data.val_x, ctx.data.val_y), params,
                             seed=ctx.seed, device=ctx.device, checkpoint=ctx.checkpoint, fingerprint=ctx.fingerprint)
    return model, {"history": history, "trainable_params": trainable_count(model)}


@register_kind("finetune", family="finetune", job="train", defaults=TRAINED, required=("train",),
               knobs=TRAINED_KNOBS, description="full fine-tuning of backbone + a new linear head")
def finetune(ctx: AdaptContext, params: dict[str, Any]) -> tuple[Classifier, dict[str, Any]]:
    torch.manual_seed(ctx.seed)
    return train(ctx, Classifier(ctx.pretrained_backbone(), ctx.num_classes), params)


@register_kind("lpft", family="finetune", job="train", defaults=TRAINED, required=("train",), knobs=TRAINED_KNOBS,
               of="linear", description="linear probe, then full fine-tuning from its head (Kumar et al. 2022)")
def lpft(ctx: AdaptContext, params: dict[str, Any]) -> tuple[Classifier, dict[str, Any]]:
    if ctx.start is None:
        raise ValueError("lpft starts from a linear probe: the job needs the `of` model")
    model = Classifier(ctx.pretrained_backbone(), ctx.num_classes, copy.deepcopy(ctx.start.head).to(ctx.device))
    return train(ctx, model, params)
