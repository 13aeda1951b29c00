"""Shared table helpers: labels, per-model ID/OOD accuracy, 'mean ± std' cells. Pure pandas."""

from __future__ import annotations

import pandas as pd

PARTS = ["dataset", "backbone", "pretrain", "adapt", "ensemble", "compress", "seed"]
SLOTS = [p for p in PARTS if p != "seed"]


def recipe_label(df: pd.DataFrame) -> pd.Series:
    """Human label of a recipe without the seed, e.g. ``shapes/resnet10s/supervised``."""
    parts = [df["dataset"], df["backbone"]]
    for col in ("pretrain", "adapt", "ensemble", "compress"):
        parts.append(df[col].where(df[col] != "none", ""))
    return pd.Series(["/".join(p for p in row if p) for row in zip(*parts)], index=df.index)


def per_model(metrics: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """One row per model: ``id_acc`` = mean accuracy over its ID splits, ``ood_acc`` = mean over its
    OOD shift kinds of the mean accuracy over that kind's splits (each kind weighs the same, so one
    'style' split weighs as much as the whole 70-split corruption suite)."""
    cols = ["model_id", *keys, "seed"]
    if metrics.empty:
        return pd.DataFrame(columns=[*cols, "id_acc", "ood_acc"])
    base = metrics.groupby("model_id", sort=False)[[*keys, "seed"]].first()
    id_acc = metrics[metrics["shift"] == "id"].groupby("model_id")["acc"].mean().rename("id_acc")
    kinds = metrics[metrics["shift"] != "id"].groupby(["model_id", "shift"])["acc"].mean()
    ood_acc = kinds.groupby(level="model_id").mean().rename("ood_acc")
    return base.join(id_acc).join(ood_acc).reset_index()[[*cols, "id_acc", "ood_acc"]]


def f3(v: float) -> str:
    """0.8134 -> '.813' (compact accuracy for wide tables)."""
    s = f"{v:.3f}"
    return s[1:] if s.startswith("0.") else s


def mean_std(mean: float, std: float) -> str:
    """'.813 ± .012' (std 0 shown for a single seed)."""
    return f"{f3(mean)} ± {f3(0.0 if pd.isna(std) else std)}"


def is_plain(df: pd.DataFrame) -> pd.Series:
    """Single models only: ensembles and compressed models belong to their own sections."""
    mask = pd.Series(True, index=df.index)
    for col in ("ensemble", "compress"):
        if col in df:
            mask &= df[col].fillna("none") == "none"
    return mask
