"""Kinds on a frozen backbone: linear probe and weighted kNN (features computed once per job)."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from dlbench.adapt.base import FRACTION, FRACTION_KNOB, AdaptContext, register_kind
from dlbench.models.backbones import Classifier
from dlbench.models.heads import KNNHead


def fit_logistic(x: torch.Tensor, y: torch.Tensor, num_classes: int, weight_decay: float,
                 max_iter: int = 200) -> nn.Linear:
    """Multinomial logistic regression on standardised features by full-batch L-BFGS.

    A convex problem on a few thousand cached feature vectors: L-BFGS solves it in well under
    a second, deterministically, so it does not go through the image training engine. The
    standardisation is folded into the returned layer, which takes raw features.
    """
    x = x.double()
    mean, std = x.mean(0), x.std(0)
    live = std > 1e-4 * std.max().clamp_min(1e-12)  # dead (constant) features get weight 0, not 1/0
    std = torch.where(live, std, torch.ones_like(std))
    xs = (x - mean) / std * live
    layer = nn.Linear(x.shape[1], num_classes).double()
    nn.init.zeros_(layer.weight)
    nn.init.zeros_(layer.bias)
    opt = torch.optim.LBFGS(layer.parameters(), lr=1.0, max_iter=max_iter, history_size=20,
                            tolerance_grad=1e-9, tolerance_change=1e-12, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(layer(xs), y) + 0.5 * weight_decay * layer.weight.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    folded = nn.Linear(x.shape[1], num_classes)
    with torch.no_grad():
        w = layer.weight * live / std
        folded.weight.copy_(w.float())
        folded.bias.copy_((layer.bias - w @ mean).float())
    return folded


@register_kind("linear", family="probe", job="frozen",
               defaults={"weight_decays": [1e-4, 1e-3, 1e-2, 1e-1], "max_iter": 200, **FRACTION},
               knobs=FRACTION_KNOB,
               description="linear probe: logistic regression on frozen features, L2 strength chosen on val")
def linear_probe(ctx: AdaptContext, params: dict[str, Any]) -> tuple[Classifier, dict[str, Any]]:
    train_f, val_f = ctx.frozen_features()
    grid = [float(w) for w in params["weight_decays"]]
    scores = {}
    for wd in grid:
        head = fit_logistic(train_f, ctx.train_y, ctx.num_classes, wd, int(params["max_iter"]))
        with torch.no_grad():
            scores[wd] = float((head(val_f).argmax(1) == ctx.data.val_y).float().mean())
    best = max(grid, key=lambda wd: (scores[wd], wd))  # ties: the stronger regularisation
    head = fit_logistic(train_f, ctx.train_y, ctx.num_classes, best, int(params["max_iter"]))
    model = Classifier(ctx.pretrained_backbone(), ctx.num_classes, head.to(ctx.device))
    return model, {"weight_decay": best, "val_acc_by_weight_decay": scores,
                   "trainable_params": sum(p.numel() for p in head.parameters())}


@register_kind("knn", family="probe", job="frozen", defaults={"k": 20, "temperature": 0.07, **FRACTION},
               knobs={"k": "k", "temperature": "temperature", **FRACTION_KNOB},
               description="weighted kNN (cosine, exp(sim/T) votes; Wu et al. 2018) on frozen features")
def knn(ctx: AdaptContext, params: dict[str, Any]) -> tuple[Classifier, dict[str, Any]]:
    train_f, _ = ctx.frozen_features()
    head = KNNHead.from_features(train_f, ctx.train_y, ctx.num_classes, k=int(params["k"]),
                                 temperature=float(params["temperature"]))
    model = Classifier(ctx.pretrained_backbone(), ctx.num_classes, head.to(ctx.device))
    return model, {"trainable_params": 0}
