"""Cached outputs + model cards -> tidy Parquet tables (the contracts of DESIGN.md).

The tables hold exactly the models the DAG passes (the current config's), never a directory
glob, so a model removed from the config leaves the tables and the report.

``metrics.parquet``: one row per (model id, eval split): the id's parts, ``kind``/``family``/
``stage`` of the model's last stage, ``parents`` (list of ids), the kind and family of its
pretraining stage (``pretrain_kind``, ``pretrain_family``; found along the lineage), one nullable
typed column per knob, the split's shift tags, metrics, ``num_classes`` (from the card's
``model.classes``; chance level is ``1 / num_classes``) and costs.
``history.parquet``: one row per (model id, epoch). ``summary.parquet``: per recipe, seeds pooled.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from dlbench.evaluate.metrics import all_metrics
from dlbench.evaluate.outputs import read_logits
from dlbench.io import atomic_path, read_json
from dlbench.report.tables import PARTS, SLOTS

LINEAGE = ["kind", "family", "stage", "parents", "pretrain_kind", "pretrain_family"]
METRICS = ["acc", "ece", "nll", "brier", "n"]
CLASS_COUNT = "num_classes"  # the model's number of classes (chance = 1 / num_classes), from its card
COSTS = ["params", "trainable_params", "nonzero_params", "size_bytes", "latency_ms", "latency_device",
         "train_seconds"]
SPLIT_TAGS = ["split", "shift", "corruption", "severity"]


def num_classes(card: dict[str, Any]) -> int | None:
    """The number of classes a model predicts: its card's class names, else its head size (None if neither)."""
    model = card.get("model") or {}
    classes = model.get("classes") or []
    return len(classes) if classes else (int(model["num_classes"]) if model.get("num_classes") else None)


class Cards:
    """Model cards by id, read once each from ``<results>/models/<id>/model.json``."""

    def __init__(self, results_dir: Path) -> None:
        self.root = results_dir / "models"
        self._cards: dict[str, dict[str, Any]] = {}

    def __getitem__(self, model_id: str) -> dict[str, Any]:
        if model_id not in self._cards:
            self._cards[model_id] = read_json(self.root / model_id / "model.json")
        return self._cards[model_id]

    def pretraining(self, model_id: str) -> dict[str, Any] | None:
        """The card of the pretraining stage in a model's lineage (first parent chain), if any."""
        card = self[model_id]
        while card.get("stage") != "pretrain":
            if not card.get("parents"):
                return None
            card = self[card["parents"][0]]
        return card

    def lineage(self, model_id: str) -> dict[str, Any]:
        card, pre = self[model_id], self.pretraining(model_id)
        return {"kind": card["kind"], "family": card["family"], "stage": card["stage"],
                "parents": list(card["parents"]), "pretrain_kind": pre["kind"] if pre else None,
                "pretrain_family": pre["family"] if pre else None}


def _typed_knobs(df: pd.DataFrame, knobs: dict[str, list[Any]]) -> pd.DataFrame:
    """One nullable typed column per knob (``knobs``: name -> the values the cards hold): Int64 for
    integers, Float64 for numbers, string otherwise."""
    def number(v: Any) -> bool:
        return isinstance(v, (int, float)) and not isinstance(v, bool)

    for k, values in knobs.items():
        values = [v for v in values if v is not None]
        if all(number(v) and isinstance(v, int) for v in values):
            df[k] = df[k].astype("Int64")
        elif all(number(v) for v in values):
            df[k] = df[k].astype("Float64")
        else:
            df[k] = df[k].astype("string")
    return df


def metrics_table(results_dir: str | Path, model_ids: list[str], cards: Cards | None = None) -> pd.DataFrame:
    results = Path(results_dir)
    cards = cards or Cards(results)
    rows, knobs = [], {}
    for model_id in model_ids:
        card = cards[model_id]
        pred = results / "predictions" / model_id
        costs = read_json(pred / "costs.json")
        for k, v in (card.get("knobs") or {}).items():
            knobs.setdefault(k, []).append(v)
        base = {"model_id": model_id, **{k: card["parts"][k] for k in PARTS}, **cards.lineage(model_id),
                **(card.get("knobs") or {})}
        for split, (logits, labels, tags) in read_logits(pred / "logits.parquet").items():
            rows.append({**base, "split": split, "shift": tags.get("shift", "id"), "corruption": tags.get("corruption"),
                         "severity": tags.get("severity"), **all_metrics(logits, labels),
                         CLASS_COUNT: num_classes(card), **{k: costs.get(k) for k in COSTS}})
    fixed = ["model_id", *PARTS, *LINEAGE, *SPLIT_TAGS, *METRICS, CLASS_COUNT, *COSTS]
    clash = sorted(set(knobs) & set(fixed))
    if clash:
        raise ValueError(f"knob name(s) {clash} collide with metrics columns; rename the knob")
    knobs = dict(sorted(knobs.items()))  # by name: the column order does not depend on the order of the ids
    columns = ["model_id", *PARTS, *LINEAGE, *knobs, *SPLIT_TAGS, *METRICS, CLASS_COUNT, *COSTS]
    df = pd.DataFrame(rows, columns=columns)
    df["seed"] = df["seed"].astype("int64")
    df["severity"] = df["severity"].astype("Int64")
    df["n"] = df["n"].astype("int64")
    df[CLASS_COUNT] = df[CLASS_COUNT].astype("Int64")
    for k in ("params", "nonzero_params", "size_bytes"):
        df[k] = df[k].astype("int64")
    df["trainable_params"] = df["trainable_params"].astype("Int64")
    df = _typed_knobs(df, knobs)
    return df.sort_values(["model_id", "split"]).reset_index(drop=True)


def history_table(results_dir: str | Path, model_ids: list[str], cards: Cards | None = None) -> pd.DataFrame:
    results = Path(results_dir)
    cards = cards or Cards(results)
    frames = []
    for model_id in dict.fromkeys(model_ids):
        path = results / "models" / model_id / "history.json"
        if not path.exists():
            continue
        rows = read_json(path)
        if not rows:  # a model with no epochs (WiSE-FT's blend)
            continue
        card = cards[model_id]
        h = pd.DataFrame(rows)
        h.insert(0, "model_id", model_id)
        for k in PARTS:
            h[k] = card["parts"][k]
        for k, v in cards.lineage(model_id).items():
            h[k] = [v] * len(h) if isinstance(v, list) else v
        frames.append(h)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["model_id", "epoch"])


def summary_table(metrics: pd.DataFrame) -> pd.DataFrame:
    """Per recipe (seeds pooled): ID accuracy, mean accuracy per OOD shift kind, mean over seeds +- std."""
    keys = [*SLOTS, *(c for c in ("kind", "family") if c in metrics)]
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


def write_parquet(df: pd.DataFrame, path: Path) -> None:
    with atomic_path(path) as tmp:
        df.to_parquet(tmp, index=False)


def aggregate(results_dir: str | Path, model_ids: list[str], history_ids: list[str], out_dir: str | Path) -> None:
    """Write metrics (``model_ids``), history (``model_ids`` + ``history_ids``) and summary tables."""
    out, cards = Path(out_dir), Cards(Path(results_dir))
    if not model_ids:
        raise ValueError("no evaluated models: the config makes none")
    metrics = metrics_table(results_dir, model_ids, cards)
    write_parquet(metrics, out / "metrics.parquet")
    write_parquet(history_table(results_dir, [*model_ids, *history_ids], cards), out / "history.parquet")
    summary = summary_table(metrics)
    write_parquet(summary, out / "summary.parquet")
    print(summary.to_string(index=False))
