"""Report section "Robust fine-tuning of CLIP": zero-shot, LP, FT, LP-FT and WiSE-FT, ID against OOD.

Rows: models whose pretraining family is ``language-image`` (CLIP), single models only. Per model
and OOD shift kind (``style``, ``corruption``, ...): ID accuracy (mean over ID splits), OOD accuracy
(mean over the kind's splits) and its **effective robustness** (Taori et al. 2020): OOD accuracy
minus what the *baseline* predicts from its ID accuracy, the baseline being a linear fit in logit
space, logit(OOD) = a·logit(ID) + b, over the models trained on the ID data only (supervised from
scratch and the SSL fine-tunes, full labels) of the same dataset. A model above the line is more
robust than its ID accuracy alone explains.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from dlbench.report.plotting import placeholder, save
from dlbench.report.sections import Figure, Section, Tables, register_section
from dlbench.report.tables import is_plain, mean_std

FAMILY = "language-image"
ID_TRAINED_KINDS = ("supervised", "finetune", "lpft")  # the effective-robustness baseline's models
CLIP_KINDS = ("zeroshot", "linear", "finetune", "lpft", "wiseft")  # display order; others follow
LABELS = {"zeroshot": "zero-shot", "linear": "linear probe", "finetune": "fine-tune", "lpft": "LP-FT",
          "wiseft": "WiSE-FT"}
CLIP_EPS = 1e-4  # accuracies are clipped to [eps, 1 - eps] before the logit


def _logit(p: np.ndarray | pd.Series) -> np.ndarray:
    p = np.clip(np.asarray(p, dtype=float), CLIP_EPS, 1 - CLIP_EPS)
    return np.log(p / (1 - p))


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-x))


def per_model_shift(metrics: pd.DataFrame) -> pd.DataFrame:
    """One row per (model, OOD shift kind): lineage columns, ``id_acc``, ``ood_acc``."""
    keys = [c for c in ("dataset", "backbone", "pretrain", "adapt", "seed", "kind", "family", "pretrain_family",
                        "alpha", "fraction", "parents") if c in metrics]
    if metrics.empty or "shift" not in metrics:
        return pd.DataFrame(columns=["model_id", *keys, "shift", "id_acc", "ood_acc"])
    base = metrics.groupby("model_id", sort=False)[keys].first()
    id_acc = metrics[metrics["shift"] == "id"].groupby("model_id")["acc"].mean().rename("id_acc")
    ood = metrics[metrics["shift"] != "id"].groupby(["model_id", "shift"])["acc"].mean().rename("ood_acc")
    out = ood.reset_index().join(base, on="model_id").join(id_acc, on="model_id")
    return out[["model_id", *keys, "shift", "id_acc", "ood_acc"]]


def _full_labels(df: pd.DataFrame) -> pd.Series:
    if "fraction" not in df:
        return pd.Series(True, index=df.index)
    frac = pd.to_numeric(df["fraction"], errors="coerce").astype("float64")
    return (frac.isna() | (frac >= 1)).to_numpy()


def clip_rows(metrics: pd.DataFrame) -> pd.DataFrame:
    """The CLIP models' rows of metrics.parquet (single models)."""
    if metrics.empty or "pretrain_family" not in metrics:
        return metrics.iloc[0:0]
    return metrics[is_plain(metrics) & (metrics["pretrain_family"] == FAMILY)]


def baseline_rows(metrics: pd.DataFrame) -> pd.DataFrame:
    """Models trained on the ID data only: supervised from scratch and SSL fine-tunes, full labels."""
    if metrics.empty or "kind" not in metrics:
        return metrics.iloc[0:0]
    fam = metrics["pretrain_family"] if "pretrain_family" in metrics else pd.Series(None, index=metrics.index)
    m = metrics[is_plain(metrics) & metrics["kind"].isin(ID_TRAINED_KINDS) & (fam.fillna("") != FAMILY)]
    return m[_full_labels(m)]


def fit_baseline(points: pd.DataFrame) -> tuple[float, float] | None:
    """(slope, intercept) of logit(ood) on logit(id), least squares; None with fewer than 2 distinct points."""
    if len(points) < 2 or np.ptp(_logit(points["id_acc"])) < 1e-9:
        return None
    a, b = np.polyfit(_logit(points["id_acc"]), _logit(points["ood_acc"]), 1)
    return float(a), float(b)


def predicted_ood(fit: tuple[float, float], id_acc: np.ndarray | pd.Series) -> np.ndarray:
    return _sigmoid(fit[0] * _logit(id_acc) + fit[1])


def robustness(metrics: pd.DataFrame) -> tuple[pd.DataFrame, dict[tuple[str, str], tuple[float, float]]]:
    """CLIP models per (model, shift) with ``effective_robustness``, and the baseline fit per (dataset, shift)."""
    clip = per_model_shift(clip_rows(metrics))
    if clip.empty:
        return clip.assign(effective_robustness=pd.Series(dtype=float)), {}
    base = per_model_shift(baseline_rows(metrics))
    fits = {}
    for (dataset, shift), g in (base.groupby(["dataset", "shift"]) if len(base) else []):
        fit = fit_baseline(g)
        if fit is not None:
            fits[(dataset, shift)] = fit
    er = []
    for r in clip.itertuples():
        fit = fits.get((r.dataset, r.shift))
        er.append(np.nan if fit is None else float(r.ood_acc - predicted_ood(fit, np.array([r.id_acc]))[0]))
    return clip.assign(effective_robustness=er), fits


def _kind_rank(kind: str) -> tuple[int, str]:
    return (CLIP_KINDS.index(kind), kind) if kind in CLIP_KINDS else (len(CLIP_KINDS), kind)


def clip_summary(metrics: pd.DataFrame) -> pd.DataFrame:
    """Mean and std over seeds per (dataset, backbone, pretrain, adapt variant, shift): ID, OOD, ER."""
    rob, _ = robustness(metrics)
    if rob.empty:
        return pd.DataFrame()
    keys = ["dataset", "backbone", "pretrain", "adapt", "kind", "shift"]
    rob = rob.assign(alpha=rob["alpha"] if "alpha" in rob else np.nan)
    g = rob.groupby(keys, dropna=False)
    out = g.agg(alpha=("alpha", "first"), seeds=("seed", "nunique"), id_acc_mean=("id_acc", "mean"),
                id_acc_std=("id_acc", "std"), ood_acc_mean=("ood_acc", "mean"), ood_acc_std=("ood_acc", "std"),
                er_mean=("effective_robustness", "mean"), er_std=("effective_robustness", "std")).reset_index()
    out["_rank"] = [_kind_rank(k) for k in out["kind"]]
    out["_alpha"] = pd.to_numeric(out["alpha"], errors="coerce").fillna(-1)
    return out.sort_values(["dataset", "backbone", "shift", "_rank", "adapt", "_alpha"]).drop(
        columns=["_rank", "_alpha"]).reset_index(drop=True)


def clip_tables(summary: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    """One table per (dataset, backbone, OOD shift): protocol rows with ID, OOD and effective robustness."""
    out = []
    for (dataset, backbone, shift), g in summary.groupby(["dataset", "backbone", "shift"], sort=False):
        rows = pd.DataFrame({
            "protocol": [LABELS.get(k, k) for k in g["kind"]],
            "variant": g["adapt"].to_numpy(),
            "α": ["" if pd.isna(a) else f"{float(a):g}" for a in g["alpha"]],
            "ID acc": [mean_std(m, s) for m, s in zip(g["id_acc_mean"], g["id_acc_std"])],
            f"{shift} acc": [mean_std(m, s) for m, s in zip(g["ood_acc_mean"], g["ood_acc_std"])],
            "effective robustness": ["" if pd.isna(m) else f"{100 * m:+.1f} pts ± {100 * (0 if pd.isna(s) else s):.1f}"
                                     for m, s in zip(g["er_mean"], g["er_std"])],
            "seeds": g["seeds"].to_numpy()})
        out.append((f"{dataset} / {backbone}: {shift} shift", rows))
    return out


def pareto_front(points: pd.DataFrame) -> pd.DataFrame:
    """The points no other point beats on both ID and OOD accuracy, by ID accuracy."""
    pts = points.sort_values("id_mean", ascending=False)
    keep, best = [], -np.inf
    for r in pts.itertuples():
        if r.ood_mean > best:
            keep.append(r.Index)
            best = r.ood_mean
    return points.loc[keep].sort_values("id_mean")


MARKERS = {"zeroshot": "*", "linear": "s", "finetune": "o", "lpft": "D"}


def id_vs_ood(tables: Tables, path: Path) -> None:
    """Per (dataset, OOD shift): CLIP protocols and WiSE-FT curves on logit axes, the ID-trained models
    and their effective-robustness fit, the Pareto front of the CLIP points."""
    import matplotlib.pyplot as plt

    metrics = tables["metrics"]
    rob, fits = robustness(metrics)
    if rob.empty:
        return placeholder(path, "no CLIP models (pretrain family language-image) in this config")
    base = per_model_shift(baseline_rows(metrics))
    panels = list(rob.groupby(["dataset", "shift"]).groups)
    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 4.6), squeeze=False)
    for ax, (dataset, shift) in zip(axes[0], panels):
        r = rob[(rob["dataset"] == dataset) & (rob["shift"] == shift)]
        b = base[(base["dataset"] == dataset) & (base["shift"] == shift)]
        ax.scatter(b["id_acc"], b["ood_acc"], s=14, c="0.6", label="trained on ID data only (supervised, SSL FT)")
        r = r.assign(alpha=r["alpha"] if "alpha" in r else np.nan)
        mean = r.groupby(["adapt", "kind"], dropna=False).agg(id_mean=("id_acc", "mean"), ood_mean=("ood_acc", "mean"),
                                                              alpha=("alpha", "first")).reset_index()
        allx = pd.concat([b["id_acc"], r["id_acc"]])
        lo, hi = max(CLIP_EPS, allx.min() * 0.9), min(1 - CLIP_EPS, 1 - (1 - allx.max()) * 0.7)
        if (dataset, shift) in fits:
            xs = np.linspace(lo, hi, 100)
            ax.plot(xs, predicted_ood(fits[(dataset, shift)], xs), c="0.4", lw=1.2, ls="--",
                    label="baseline fit (logit-linear, Taori et al.)")
        wise = mean[mean["kind"] == "wiseft"].copy()
        if not wise.empty:
            wise["curve"] = wise["adapt"].str.replace(r"-alpha[0-9.e-]+$", "", regex=True)
            for name, c in wise.groupby("curve"):
                c = c.assign(a=pd.to_numeric(c["alpha"], errors="coerce")).sort_values("a")
                line, = ax.plot(c["id_mean"], c["ood_mean"], marker=".", lw=1.5, label=f"{name} (α 0 → 1)")
                for x, y, a in zip(c["id_mean"], c["ood_mean"], c["a"]):
                    if a == 0.5:
                        ax.annotate("α=.5", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7,
                                    color=line.get_color())
        for kind, marker in MARKERS.items():
            k = mean[mean["kind"] == kind]
            for row in k.itertuples():
                ax.scatter(row.id_mean, row.ood_mean, marker=marker, s=160 if marker == "*" else 60,
                           edgecolor="black", zorder=5, label=f"{LABELS[kind]} ({row.adapt})")
        front = pareto_front(mean)
        ax.plot(front["id_mean"], front["ood_mean"], c="crimson", lw=0.8, ls=":", label="Pareto front (CLIP points)")
        ax.set_xscale("logit")
        ax.set_yscale("logit")
        ax.set_xlabel("ID accuracy (test; logit axis)")
        ax.set_ylabel(f"{shift} accuracy (mean over its splits; logit axis)")
        ax.set_title(f"{dataset}: {shift} shift (means over seeds)")
        ax.legend(fontsize=6.5, loc="best")
    fig.suptitle("Robust fine-tuning of CLIP: ID vs OOD accuracy", y=1.02)
    fig.tight_layout()
    save(fig, path)


def render(tables: Tables, figures: Path) -> list[str]:
    from dlbench.report.findings.base import findings_html
    from dlbench.report.html import section_figures

    summary = clip_summary(tables["metrics"])
    if summary.empty:
        return []
    parts = [findings_html(tables, SECTION.key),
             "<p>Mean ± std over seeds. ID: the ID test split; OOD: the mean over the shift kind's splits. "
             "Effective robustness: OOD accuracy minus the baseline fit's prediction at the model's ID accuracy.</p>"]
    for title, table in clip_tables(summary):
        parts.append(f"<h3>{title}</h3>")
        parts.append(table.to_html(classes="results", border=0, index=False))
    return parts + section_figures(SECTION, figures)


SECTION = register_section(Section(
    "clip", "Robust fine-tuning of CLIP",
    "CLIP pretrained on captioned web-like data that covers every rendering style, then adapted on the narrow "
    "labeled split: zero-shot (class names x prompt templates), linear probe, fine-tuning from the zero-shot head, "
    "LP-FT, and WiSE-FT's weight interpolation between each fine-tune and its start. Effective robustness: OOD "
    "accuracy above the logit-linear fit over the models trained on the ID data only (Taori et al. 2020).",
    order=30,
    figures=(Figure("clip_id_vs_ood.png", "ID against OOD accuracy per OOD shift on logit axes: zero-shot (star), "
                    "linear probe (square), fine-tune (circle), LP-FT (diamond), WiSE-FT curves through α = 0 ... 1 "
                    "(from the start model to the fine-tune), the ID-trained models (grey) with their baseline fit "
                    "(dashed), the Pareto front of the CLIP points (dotted).", id_vs_ood),),
    render=render))
