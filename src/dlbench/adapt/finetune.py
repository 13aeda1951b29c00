"""Kinds that train the backbone: full fine-tuning and LP-FT (Kumar et al. 2022).

Both train through the one classifier fit (``dlbench.classify``) with the supervised objective;
LP-FT differs only in its starting head (the linear probe's, so early gradients do not distort
the pretrained features) and, by default, a smaller learning rate.

With a ``fraction`` of the labels the steps per epoch shrink with the set
(``dlbench.train.engine.batch_plan``: ``n // batch_size``, and a set smaller than one batch makes one
step per epoch on all of it, e.g. 10 images at batch_size 50: one 10-image step), so a small fraction
needs more epochs for the same number of steps; validation still runs on the whole val split.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import torch

from dlbench.adapt.base import FRACTION, FRACTION_KNOB, AdaptContext, register_kind
from dlbench.cards import trainable_count
from dlbench.classify import SupervisedObjective, fit_classifier
from dlbench.models.backbones import Classifier

TRAINED = {"train": None, "augment": {}, "label_smoothing": 0.0, **FRACTION}
TRAINED_KNOBS = {"lr": "train.lr", "epochs": "train.epochs", "weight_decay": "train.weight_decay",
                 **FRACTION_KNOB}


def train(ctx: AdaptContext, model: Classifier, params: dict[str, Any],
          objective: Callable[..., SupervisedObjective] = SupervisedObjective) -> tuple[Classifier, dict[str, Any]]:
    history = fit_classifier(model, (ctx.train_x, ctx.train_y), (ctx.data.val_x, ctx.data.val_y), params,
                             seed=ctx.seed, device=ctx.device, checkpoint=ctx.checkpoint, fingerprint=ctx.fingerprint,
                             objective=objective)
    return model, {"history": history, "trainable_params": trainable_count(model)}


@register_kind("finetune", family="finetune", job="train", defaults=TRAINED, required=("train",),
               knobs=TRAINED_KNOBS, of=("zeroshot",), of_optional=True,
               description="full fine-tuning of backbone + a new linear head (or, with `of`, the zero-shot head)")
def finetune(ctx: AdaptContext, params: dict[str, Any]) -> tuple[Classifier, dict[str, Any]]:
    """Fine-tune the backbone with a new linear head; with ``of`` a zero-shot variant, from the zero-shot
    model's head (CLIP, as in wise-ft: so that WiSE-FT interpolates the head too, and the first steps
    start from CLIP's predictions rather than a random head)."""
    torch.manual_seed(ctx.seed)
    head = None if ctx.start is None else copy.deepcopy(ctx.start.head).to(ctx.device)
    return train(ctx, Classifier(ctx.pretrained_backbone(), ctx.num_classes, head), params)


def tempered_head(head: torch.nn.Module, temperature: float) -> torch.nn.Module:
    """A copy of a linear head whose logits are divided by ``temperature`` (weights and bias scaled by
    1/T): the same predictions (argmax), less confident.

    Why (Tomihari & Sato 2024, "Understanding LP-FT from an NTK perspective"): the linear probe's head
    has a large norm (here ~68 on standardised-then-folded features, against ~2 for a fresh head), so
    fine-tuning starts with large, confident losses and gradients that distort the features, which is
    what LP-FT means to avoid; with AdamW's per-parameter steps, the large head also barely moves.
    Measured on shapes (val, 20 epochs, seed 0): LP-FT from the raw probe head .63 (SimCLR) / .60 (BYOL)
    against fine-tuning's .85 / .80; T = 4: .76 / .69; T = 16: .85 (SimCLR).
    """
    out = copy.deepcopy(head)
    with torch.no_grad():
        for p in out.parameters():
            p.div_(float(temperature))
    return out


@register_kind("lpft", family="finetune", job="train", defaults={**TRAINED, "head_temperature": 1.0},
               required=("train",), knobs={**TRAINED_KNOBS, "head_temperature": "head_temperature"},
               of="linear", description="linear probe, then full fine-tuning from its head (Kumar et al. 2022)")
def lpft(ctx: AdaptContext, params: dict[str, Any]) -> tuple[Classifier, dict[str, Any]]:
    """LP-FT: fine-tune from the linear probe's head, divided by ``head_temperature`` (default 1: the
    probe's head as is, Kumar et al. 2022; see :func:`tempered_head`)."""
    if ctx.start is None:
        raise ValueError("lpft starts from a linear probe: the job needs the `of` model")
    temperature = float(params.get("head_temperature", 1.0))
    if not temperature > 0:
        raise ValueError(f"lpft head_temperature must be > 0, got {temperature}")
    head = tempered_head(ctx.start.head, temperature).to(ctx.device)
    model = Classifier(ctx.pretrained_backbone(), ctx.num_classes, head)
    return train(ctx, model, params)
