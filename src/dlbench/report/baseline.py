"""Report section "Supervised baseline": backbone + head trained from scratch, ID and OOD."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import seaborn as sns

from dlbench.report.plotting import placeholder, save
from dlbench.report.sections import Figure, Section, Tables, register_section
from dlbench.report.tables import recipe_label


def supervised(df: pd.DataFrame) -> pd.DataFrame:
    """The supervised-from-scratch rows (by kind); empty for tables without the lineage columns."""
    return df[df["kind"] == "supervised"] if "kind" in df and "dataset" in df else df.iloc[0:0]


def _recipes(df: pd.DataFrame) -> tuple[pd.DataFrame, list[str], dict]:
    """``df`` with a ``recipe`` column, the recipes sorted, and one colour per recipe: the same
    recipe has the same colour in every figure of the section."""
    df = df.assign(recipe=recipe_label(df))
    order = sorted(df["recipe"].unique())
    return df, order, dict(zip(order, sns.color_palette("colorblind", len(order))))


def id_vs_ood(tables: Tables, path: Path) -> None:
    """One panel per OOD shift kind: mean OOD accuracy against ID accuracy, one point per model."""
    metrics = supervised(tables["metrics"])
    if metrics.empty:
        return placeholder(path, "no supervised models in this config")
    m, order, palette = _recipes(metrics)
    idacc = m[m["shift"] == "id"].groupby(["model_id", "recipe"])["acc"].mean().rename("id_acc")
    ood = m[m["shift"] != "id"].groupby(["model_id", "recipe", "shift"])["acc"].mean().rename("ood_acc").reset_index()
    if ood.empty:
        return placeholder(path, "no OOD splits in this config")
    data = ood.join(idacc, on=["model_id", "recipe"])
    g = sns.relplot(data=data, x="id_acc", y="ood_acc", hue="recipe", hue_order=order, palette=palette, col="shift",
                    kind="scatter", s=70, height=3.6, aspect=1.0, facet_kws={"sharex": False, "sharey": False})
    for ax in g.axes.flat:
        lo = min(ax.get_xlim()[0], ax.get_ylim()[0])
        ax.plot([lo, 1], [lo, 1], ls="--", c="grey", lw=1)
        ax.set_xlabel("ID accuracy (mean over ID splits)")
        ax.set_ylabel("mean accuracy on the shift's splits")
    g.set_titles("{col_name} shift")
    g.figure.suptitle("ID vs OOD accuracy (one point per model and seed; dashed: y = x)", y=1.03)
    save(g.figure, path)


def corruption_severity(tables: Tables, path: Path) -> None:
    """Accuracy against severity (0 = clean ID test) per corruption type, mean over seeds."""
    metrics = supervised(tables["metrics"])
    if metrics.empty:
        return placeholder(path, "no supervised models in this config")
    m, _, palette = _recipes(metrics)
    cor = m[m["shift"] == "corruption"].copy()
    if cor.empty:
        return placeholder(path, "no corruption splits in this config")
    clean = m[m["shift"] == "id"].groupby(["model_id", "recipe"])["acc"].mean().reset_index()
    rows = [cor[["model_id", "recipe", "corruption", "severity", "acc"]]]
    for c, models in cor.groupby("corruption")["model_id"]:
        rows.append(clean[clean["model_id"].isin(set(models))].assign(corruption=c, severity=0))
    data = pd.concat(rows, ignore_index=True)
    data["severity"] = data["severity"].astype(int)
    order = [r for r in palette if r in set(data["recipe"])]
    g = sns.relplot(data=data, x="severity", y="acc", hue="recipe", hue_order=order, palette=palette,
                    col="corruption", col_wrap=min(5, data["corruption"].nunique()), kind="line", marker="o",
                    errorbar="sd", height=2.4, aspect=1.1)
    g.set_titles("{col_name}")
    g.set_axis_labels("severity (0 = clean)", "accuracy")
    g.figure.suptitle("Accuracy under corruption, per corruption type (mean over seeds, band: std)", y=1.02)
    save(g.figure, path)


CURVES = {"loss": "cross-entropy loss", "acc": "accuracy"}


def training_curves(tables: Tables, path: Path) -> None:
    """Loss and accuracy per epoch, train (solid) and validation (dashed); one colour per recipe,
    mean over seeds, band = std."""
    history = supervised(tables["history"])
    if history.empty or "train_loss" not in history:
        return placeholder(path, "no training history")
    h, _, palette = _recipes(history)
    cols = [f"{split}_{metric}" for metric in CURVES for split in ("train", "val") if f"{split}_{metric}" in h]
    long = h.melt(id_vars=["recipe", "seed", "epoch"], value_vars=cols, var_name="column", value_name="value")
    long = long[long["value"].notna()]
    long["split"] = long["column"].str.split("_").str[0].map({"train": "train", "val": "validation"})
    long["metric"] = long["column"].str.split("_", n=1).str[1]
    metrics = [k for k in CURVES if k in set(long["metric"])]
    order = [r for r in palette if r in set(long["recipe"])]
    g = sns.relplot(data=long, x="epoch", y="value", hue="recipe", hue_order=order, palette=palette, style="split",
                    style_order=["train", "validation"], col="metric", col_order=metrics, kind="line",
                    errorbar="sd", height=3.0, aspect=1.3, facet_kws={"sharey": False})
    for ax, metric in zip(g.axes.flat, metrics):
        ax.set_title(CURVES[metric])
        ax.set_ylabel(CURVES[metric])
        ax.set_xlabel("epoch")
    g.figure.suptitle("Supervised training curves (mean over seeds, band: std)", y=1.03)
    save(g.figure, path)


def baseline_table(summary: pd.DataFrame) -> pd.DataFrame:
    """Supervised rows of summary.parquet as 'mean ± std over seeds' strings, one row per recipe."""
    sup = supervised(summary).reset_index(drop=True)
    out = pd.DataFrame(index=recipe_label(sup).rename("model"))
    for col in [c[:-5] for c in sup.columns if c.endswith("_mean")]:
        mean, std = sup[f"{col}_mean"].to_numpy(), sup[f"{col}_std"].fillna(0).to_numpy()
        fmt = "{:.0f}" if col in ("params", "trainable_params") else "{:.3f} ± {:.3f}"
        out[col.replace("_", " ")] = [fmt.format(m, s) if m == m else "" for m, s in zip(mean, std)]
    out["seeds"] = sup["seeds"].to_numpy()
    return out


def render(tables: Tables, figures: Path) -> list[str]:
    from dlbench.report.html import section_figures

    if supervised(tables["metrics"]).empty:
        return []
    parts = [baseline_table(tables["summary"]).to_html(classes="results", border=0)]
    return parts + section_figures(SECTION, figures)


SECTION = register_section(Section(
    "baseline", "Supervised baseline",
    "Backbone + head trained from scratch on the labeled train split; evaluated ID and on every OOD split.", order=10,
    figures=(
        Figure("id_vs_ood.png", "ID accuracy against mean OOD accuracy per shift kind. Points below the dashed "
               "line lose accuracy under shift.", id_vs_ood),
        Figure("corruption_severity.png", "Accuracy against corruption severity (0 = clean ID test), per "
               "corruption type; band: std over seeds.", corruption_severity),
        Figure("training_curves.png", "Loss and accuracy per epoch on the train split (solid) and the val "
               "split (dashed); mean over seeds, band: std.", training_curves),
    ), render=render))
