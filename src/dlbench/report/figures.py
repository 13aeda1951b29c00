"""Tables -> figures (seaborn, PNG). Figures read only the Parquet tables, never a model."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

from dlbench.io import atomic_path  # noqa: E402

FIGURES = ("id_vs_ood.png", "corruption_severity.png", "training_curves.png",
           "ssl_protocols.png", "ssl_collapse.png", "ssl_tsne.png")


def recipe_label(df: pd.DataFrame) -> pd.Series:
    """Human label of a recipe without the seed, e.g. ``shapes/resnet18s/supervised``."""
    parts = [df["dataset"], df["backbone"]]
    for col in ("pretrain", "adapt", "ensemble", "compress"):
        parts.append(df[col].where(df[col] != "none", ""))
    return pd.Series(["/".join(p for p in row if p) for row in zip(*parts)], index=df.index)


def _save(fig: plt.Figure, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)


def _placeholder(path: Path, text: str) -> None:
    fig, ax = plt.subplots(figsize=(5, 2))
    ax.axis("off")
    ax.text(0.5, 0.5, text, ha="center", va="center")
    _save(fig, path)


def id_vs_ood(metrics: pd.DataFrame, path: Path) -> None:
    """One panel per OOD shift kind: mean OOD accuracy against ID accuracy, one point per model."""
    m = metrics.assign(recipe=recipe_label(metrics))
    idacc = m[m["shift"] == "id"].groupby(["model_id", "recipe"])["acc"].mean().rename("id_acc")
    ood = m[m["shift"] != "id"].groupby(["model_id", "recipe", "shift"])["acc"].mean().rename("ood_acc").reset_index()
    if ood.empty:
        return _placeholder(path, "no OOD splits in this config")
    data = ood.join(idacc, on=["model_id", "recipe"])
    g = sns.relplot(data=data, x="id_acc", y="ood_acc", hue="recipe", col="shift", kind="scatter", s=70,
                    height=3.6, aspect=1.0, facet_kws={"sharex": False, "sharey": False})
    for ax in g.axes.flat:
        lo = min(ax.get_xlim()[0], ax.get_ylim()[0])
        ax.plot([lo, 1], [lo, 1], ls="--", c="grey", lw=1)
        ax.set_xlabel("ID accuracy")
        ax.set_ylabel("mean OOD accuracy")
    g.figure.suptitle("ID vs OOD accuracy (one point per model and seed; dashed: y = x)", y=1.03)
    _save(g.figure, path)


def corruption_severity(metrics: pd.DataFrame, path: Path) -> None:
    """Accuracy against severity (0 = clean ID test) per corruption type, mean over seeds."""
    m = metrics.assign(recipe=recipe_label(metrics))
    cor = m[m["shift"] == "corruption"].copy()
    if cor.empty:
        return _placeholder(path, "no corruption splits in this config")
    clean = m[m["shift"] == "id"].groupby(["model_id", "recipe"])["acc"].mean().reset_index()
    rows = [cor[["model_id", "recipe", "corruption", "severity", "acc"]]]
    for c, models in cor.groupby("corruption")["model_id"]:
        rows.append(clean[clean["model_id"].isin(set(models))].assign(corruption=c, severity=0))
    data = pd.concat(rows, ignore_index=True)
    data["severity"] = data["severity"].astype(int)
    g = sns.relplot(data=data, x="severity", y="acc", hue="recipe", col="corruption", col_wrap=5, kind="line",
                    marker="o", errorbar="sd", height=2.4, aspect=1.1)
    g.set_titles("{col_name}")
    g.set_axis_labels("severity (0 = clean)", "accuracy")
    _save(g.figure, path)


def training_curves(history: pd.DataFrame, path: Path) -> None:
    """Training loss and validation accuracy per epoch; one line per recipe, band over seeds."""
    if history.empty or "train_loss" not in history:
        return _placeholder(path, "no training history")
    h = history.assign(recipe=recipe_label(history))
    cols = [c for c in ("train_loss", "val_acc", "train_acc") if c in h]
    long = h.melt(id_vars=["recipe", "seed", "epoch"], value_vars=cols, var_name="metric", value_name="value")
    g = sns.relplot(data=long, x="epoch", y="value", hue="recipe", col="metric", kind="line", errorbar="sd",
                    height=3.0, aspect=1.2, facet_kws={"sharey": False})
    g.set_titles("{col_name}")
    _save(g.figure, path)


def make_figures(tables_dir: str | Path, out_dir: str | Path, tsne_dir: str | Path | None = None) -> None:
    """Every figure of FIGURES; the SSL ones are placeholders when the config has no SSL models
    (``tsne_dir``: results/tsne, the per-model t-SNE embeddings; None = no t-SNE figure data)."""
    from dlbench.report.ssl import make_ssl_figures  # ssl imports this module's helpers

    tables, out = Path(tables_dir), Path(out_dir)
    sns.set_theme(style="whitegrid", context="paper")
    metrics = pd.read_parquet(tables / "metrics.parquet")
    history = pd.read_parquet(tables / "history.parquet")
    sup, sup_history = metrics[metrics["adapt"] == "supervised"], history[history["adapt"] == "supervised"]
    id_vs_ood(sup, out / "id_vs_ood.png")  # the baseline section's figures: supervised models only
    corruption_severity(sup, out / "corruption_severity.png")
    training_curves(sup_history, out / "training_curves.png")
    make_ssl_figures(metrics, history, tsne_dir, out)
