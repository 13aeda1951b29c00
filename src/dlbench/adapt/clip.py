"""CLIP's adaptation kinds: the zero-shot classifier and WiSE-FT's weight-space ensembles.

``zeroshot`` (Radford et al. 2021) needs no labels: its head is the text tower's embedding of every
class name in every prompt template of the dataset (``meta.json`` ``prompt_templates``), per-prompt
normalised, averaged, normalised again, times CLIP's logit scale, on l2-normalised image features
(``dlbench.models.clip.CosineHead``). A fine-tune with ``of: <a zeroshot variant>`` starts from it.

``wiseft`` (Wortsman et al. 2022): θ = (1 - α)·θ_start + α·θ_end over every weight, the head's
included, where θ_end is the ``of`` model (a fine-tune) and θ_start the model that fine-tune started
from (its parent: the zero-shot model for FT, Lipsum-FT and FLYP, the linear probe for LP-FT).
α = 0 is the start model and α = 1 the fine-tune, exactly. ``alpha`` is a knob: sweep it
(``sweep: {alpha: [0, 0.1, ..., 1]}``) and every α is a model, evaluated like any other.
"""

from __future__ import annotations

import copy
from typing import Any

import torch

from dlbench.adapt.base import AdaptContext, register_kind
from dlbench.errors import CheckpointError
from dlbench.models.backbones import Classifier
from dlbench.models.clip import OpenClipNet, zeroshot_head


@register_kind("zeroshot", family="zeroshot", job="frozen", defaults={}, requires="open_clip",
               description="CLIP zero-shot head from class names x prompt templates (Radford et al. 2021)")
def zeroshot(ctx: AdaptContext, params: dict[str, Any]) -> tuple[Classifier, dict[str, Any]]:
    backbone = ctx.pretrained_backbone()
    if not isinstance(backbone.net, OpenClipNet):
        raise ValueError("adapt kind 'zeroshot' needs a CLIP backbone (backbones.<name>.source: open_clip); "
                         f"this one is {type(backbone.net).__name__}")
    head = zeroshot_head(backbone.net, backbone.spec, ctx.data.classes, ctx.data.templates, ctx.device)
    return Classifier(backbone, ctx.num_classes, head), {"trainable_params": 0, "templates": len(ctx.data.templates)}


def interpolate(start: torch.nn.Module, end: torch.nn.Module, alpha: float) -> dict[str, torch.Tensor]:
    """(1 - α)·start + α·end for every floating-point tensor of the state; others (counters) from ``end``.

    α = 0 and α = 1 return the endpoints' tensors exactly (no rounding through the blend).
    """
    a, b = start.state_dict(), end.state_dict()
    if a.keys() != b.keys():
        raise ValueError(f"WiSE-FT endpoints differ in structure: {sorted(set(a) ^ set(b))[:5]}")
    out = {}
    for k, vb in b.items():
        va = a[k]
        if va.shape != vb.shape:
            raise ValueError(f"WiSE-FT endpoints differ in the shape of {k}: {tuple(va.shape)} vs {tuple(vb.shape)}")
        if not vb.is_floating_point() or alpha == 1:
            out[k] = vb.clone()
        elif alpha == 0:
            out[k] = va.clone()
        else:
            out[k] = torch.lerp(va.float(), vb.float(), float(alpha)).to(vb.dtype)
    return out


@register_kind("wiseft", family="wiseft", job="train", defaults={"alpha": 0.5}, knobs={"alpha": "alpha"},
               of=("finetune", "lpft", "lipsum", "flyp"),
               description="WiSE-FT: (1-α)·start + α·fine-tuned weights, head included (Wortsman et al. 2022)")
def wiseft(ctx: AdaptContext, params: dict[str, Any]) -> tuple[Classifier, dict[str, Any]]:
    alpha = float(params["alpha"])
    if not 0 <= alpha <= 1:
        raise ValueError(f"wiseft alpha must be in [0, 1], got {alpha}")
    if ctx.start is None or ctx.start_card is None or ctx.load_ancestor is None:
        raise ValueError("wiseft interpolates a fine-tune with the model it started from: the job needs the `of` model")
    parents = ctx.start_card.get("parents") or []
    if not parents:
        raise ValueError(f"{ctx.start_card['id']} has no parent to interpolate with")
    try:
        start, start_card = ctx.load_ancestor(parents[0])
    except CheckpointError as e:
        raise ValueError(f"{ctx.start_card['id']} started from {parents[0]}, which is not a classifier ({e}); "
                         f"WiSE-FT needs a classifier at both ends (fine-tune `of` a zero-shot variant, or LP-FT)"
                         ) from None
    model = copy.deepcopy(ctx.start).cpu()
    model.load_state_dict(interpolate(start.cpu(), model, alpha))
    # lineage: both endpoints, start first (θ = (1 - α)·parents[0] + α·parents[1])
    # no epochs: an empty history (the train rule's history.json), the card's time is the blend's
    return model.to(ctx.device), {"trainable_params": 0, "ancestors": [start_card], "history": []}
