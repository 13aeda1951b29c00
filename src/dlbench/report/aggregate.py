"""Cached logits + model metadata -> tidy Parquet tables (the contract of DESIGN.md).

``metrics.parquet``: one row per (model id, eval split) with recipe parts, shift tags,
metrics and costs. ``history.parquet``: one row per (model id, epoch) for training curves.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from dlbench.evaluate.metrics import all_metrics
from dlbench.evaluate.predict import read_logits
from dlbench.io import atomic_path, read_json

PARTS = ["dataset", "backbone", "pretrain", "adapt", "ensemble", "compress", "seed"]
COSTS = ["params", "nonzero_params", "size_bytes", "latency_ms", "train_seconds"]
METRICS = ["acc", "ece", "nll", "brier", "n"]
COLUMNS = ["model_id", *PARTS, "split", "shift", "corruption", "severity", *METRICS, *COSTS]


def _model_dirs(models_root: Path) -> list[Path]:
    return sorted(p.parent for p in models_root.rglob("model.json"))


def metrics_table(models_root: str | Path, predictions_root: str | Path) -> pd.DataFrame:
    models_root, predictions_root = Path(models_root), Path(predictions_root)
    rows = []
    for model_dir in _model_dirs(models_root):
        model_id = str(model_dir.relative_to(models_root))
        pred_dir = predictions_root / model_id
        if not (pred_dir / "logits.parquet").exists():
            continue
        meta = read_json(model_dir / "model.json")
        costs = read_json(pred_dir / "costs.json")
        for split, (logits, labels, tags) in read_logits(pred_dir / "logits.parquet").items():
            rows.append({
                "model_id": model_id, **{k: meta["parts"][k] for k in PARTS},
                "split": split, "shift": tags.get("shift", "id"), "corruption": tags.get("corruption"),
                "severity": tags.get("severity"), **all_metrics(logits, labels),
                **{k: costs.get(k) for k in COSTS},
            })
    df = pd.DataFrame(rows, columns=COLUMNS)
    df["seed"] = df["seed"].astype("int64")
    df["severity"] = df["severity"].astype("Int64")
    df["n"] = df["n"].astype("int64")
    for k in ("params", "nonzero_params", "size_bytes"):
        df[k] = df[k].astype("int64")
    return df.sort_values(["model_id", "split"]).reset_index(drop=True)


def history_table(models_root: str | Path) -> pd.DataFrame:
    models_root = Path(models_root)
    frames = []
    for model_dir in _model_dirs(models_root):
        if not (model_dir / "history.json").exists():
            continue
        meta = read_json(model_dir / "model.json")
        h = pd.DataFrame(read_json(model_dir / "history.json"))
        h.insert(0, "model_id", str(model_dir.relative_to(models_root)))
        for k in PARTS:
            h[k] = meta["parts"][k]
        frames.append(h)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["model_id", "epoch"])


def write_parquet(df: pd.DataFrame, path: Path) -> None:
    with atomic_path(path) as tmp:
        df.to_parquet(tmp, index=False)


def aggregate(models_root: str | Path, predictions_root: str | Path, out_dir: str | Path) -> None:
    out = Path(out_dir)
    metrics = metrics_table(models_root, predictions_root)
    if metrics.empty:
        raise ValueError(f"no evaluated models under {models_root} / {predictions_root}")
    write_parquet(metrics, out / "metrics.parquet")
    write_parquet(history_table(models_root), out / "history.parquet")
    summary = summary_table(metrics)
    write_parquet(summary, out / "summary.parquet")
    print(summary.to_string(index=False))


def summary_table(metrics: pd.DataFrame) -> pd.DataFrame:
    """Per recipe (seeds pooled): ID accuracy, mean accuracy per OOD shift kind, mean over seeds +- std."""
    keys = [p for p in PARTS if p != "seed"]
    rows = []
    for key, g in metrics.groupby([*keys, "seed"], dropna=False):
        row = dict(zip([*keys, "seed"], key))
        row["id_acc"] = g.loc[g["shift"] == "id", "acc"].mean()
        for shift, gs in g[g["shift"] != "id"].groupby("shift"):
            row[f"{shift}_acc"] = gs["acc"].mean()
        row["id_ece"] = g.loc[g["shift"] == "id", "ece"].mean()
        row["id_nll"] = g.loc[g["shift"] == "id", "nll"].mean()
        row["params"] = g["params"].iloc[0]
        rows.append(row)
    df = pd.DataFrame(rows)
    value_cols = [c for c in df.columns if c not in [*keys, "seed"]]
    agg = df.groupby(keys, dropna=False)[value_cols].agg(["mean", "std"])
    agg.columns = [f"{a}_{b}" for a, b in agg.columns]
    agg["seeds"] = df.groupby(keys, dropna=False)["seed"].nunique()
    return agg.reset_index()
