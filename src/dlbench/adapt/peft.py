"""Parameter-efficient fine-tuning of CLIP's image tower: the shared recipe, and the hand-written kinds.

Every PEFT kind starts from a zero-shot model (``of``), freezes the whole backbone (both towers and
the logit scale), attaches its own parameters to the image tower (LoRA: ``dlbench.adapt.lora``; VPT
prompts and bottleneck adapters: ``dlbench.models.prompts``), and trains them with the zero-shot head
(``train_head``, default on) through the one fine-tuning engine; ``trainable_params`` counts exactly
those. The recipe is the run's ``finetune`` one unless a variant sets its own ``train`` (PEFT usually
wants a larger lr: Jia et al. 2022 and Houlsby et al. 2019 sweep it, as the LoRA variant does here).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import torch

from dlbench.adapt.base import AdaptContext, register_kind
from dlbench.adapt.finetune import TRAINED, TRAINED_KNOBS, train
from dlbench.models.backbones import Backbone, Classifier
from dlbench.models.clip import OpenClipNet
from dlbench.models.prompts import add_adapters, add_prompts

PEFT = {**TRAINED, "train_head": True}


def fit_peft(ctx: AdaptContext, params: dict[str, Any], attach: Callable[[OpenClipNet], dict[str, Any]],
             what: str) -> tuple[Backbone, Classifier, dict[str, Any], dict[str, Any]]:
    """Freeze the backbone, ``attach`` the kind's parameters (returns its transform spec), train them and
    the head; returns (backbone, model, info, transform)."""
    if ctx.start is None:
        raise ValueError(f"{what} fine-tunes from a zero-shot model: the job needs the `of` model")
    torch.manual_seed(ctx.seed)
    backbone = ctx.pretrained_backbone()
    if not isinstance(backbone.net, OpenClipNet):
        raise ValueError(f"{what} needs a CLIP backbone (backbones.<name>.source: open_clip)")
    backbone.requires_grad_(False)
    transform = attach(backbone.net)
    backbone.to(ctx.device)
    head = copy.deepcopy(ctx.start.head).to(ctx.device)
    head.requires_grad_(bool(params["train_head"]))
    model = Classifier(backbone, ctx.num_classes, head)
    model, info = train(ctx, model, params)  # trainable_params: the attached parameters + the head
    return backbone, model, info, transform


@register_kind("vpt", family="peft", job="train", defaults={**PEFT, "prompts": 8, "deep": False},
               required=("train",), knobs={**TRAINED_KNOBS, "prompts": "prompts"}, of="zeroshot",
               requires="open_clip_vit", description="visual prompt tuning, shallow or deep (Jia et al. 2022)")
def vpt(ctx: AdaptContext, params: dict[str, Any]) -> tuple[Classifier, dict[str, Any]]:
    spec = {"kind": "vpt", "prompts": int(params["prompts"]), "deep": bool(params["deep"])}

    def attach(net: OpenClipNet) -> dict[str, Any]:
        add_prompts(net, spec["prompts"], spec["deep"])
        return spec

    _, model, info, transform = fit_peft(ctx, params, attach, "vpt")
    return model, {**info, "transforms": [transform]}


@register_kind("adapter", family="peft", job="train", defaults={**PEFT, "bottleneck": 8}, required=("train",),
               knobs={**TRAINED_KNOBS, "bottleneck": "bottleneck"}, of="zeroshot", requires="open_clip_vit",
               description="bottleneck adapters after attention and MLP (Houlsby et al. 2019)")
def adapter(ctx: AdaptContext, params: dict[str, Any]) -> tuple[Classifier, dict[str, Any]]:
    spec = {"kind": "adapter", "bottleneck": int(params["bottleneck"])}

    def attach(net: OpenClipNet) -> dict[str, Any]:
        add_adapters(net, spec["bottleneck"])
        return spec

    _, model, info, transform = fit_peft(ctx, params, attach, "adapter")
    return model, {**info, "transforms": [transform]}
