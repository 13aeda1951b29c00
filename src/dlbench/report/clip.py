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
CLIP_KINDS = ("zeroshot", "linear", "finetune", "lpft", "lipsum", "flyp", "lora", "wiseft")  # display order; others follow
LABELS = {"zeroshot": "zero-shot", "linear": "linear probe", "finetune": "fine-tune", "lpft": "LP-FT",
          "lipsum": "Lipsum-FT", "flyp": "FLYP", "lora": "LoRA",
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
                        "alpha", "fraction", "shots", "parents") if c in metrics]
    if metrics.empty or "shift" not in metrics:
        return pd.DataFrame(columns=["model_id", *keys, "shift", "id_acc", "ood_acc"])
    base = metrics.groupby("model_id", sort=False)[keys].first()
    id_acc = metrics[metrics["shift"] == "id"].groupby("model_id")["acc"].mean().rename("id_acc")
    ood = metrics[metrics["shift"] != "id"].groupby(["model_id", "shift"])["acc"].mean().rename("ood_acc")
    out = ood.reset_index().join(base, on="model_id").join(id_acc, on="model_id")
    return out[["model_id", *keys, "shift", "id_acc", "ood_acc"]]


def shots_of(df: pd.DataFrame) -> pd.Series:
    """Each row's ``shots`` knob (labeled images per class; NaN: the whole train split)."""
    if "shots" not in df:
        return pd.Series(np.nan, index=df.index, dtype="float64")
    return pd.to_numeric(df["shots"], errors="coerce").astype("float64")


def _full_labels(df: pd.DataFrame) -> np.ndarray:
    """Trained on the whole labeled train split: no ``fraction`` below 1 and no ``shots``."""
    full = shots_of(df).isna().to_numpy()
    if "fraction" in df:
        frac = pd.to_numeric(df["fraction"], errors="coerce").astype("float64")
        full = full & (frac.isna() | (frac >= 1)).to_numpy()
    return full


def _clip_models(metrics: pd.DataFrame) -> pd.DataFrame:
    if metrics.empty or "pretrain_family" not in metrics:
        return metrics.iloc[0:0]
    return metrics[is_plain(metrics) & (metrics["pretrain_family"] == FAMILY)]


def clip_rows(metrics: pd.DataFrame) -> pd.DataFrame:
    """The CLIP models' rows of metrics.parquet (single models trained on the whole train split; the
    k-shot variants are the data-efficiency figure's, ``shots_rows``)."""
    m = _clip_models(metrics)
    return m[_full_labels(m)]


def shots_rows(metrics: pd.DataFrame) -> pd.DataFrame:
    """The CLIP models with a ``shots`` knob (data efficiency)."""
    m = _clip_models(metrics)
    return m[shots_of(m).notna().to_numpy()]


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


MARKERS = {"zeroshot": "*", "linear": "s", "finetune": "o", "lpft": "D", "lipsum": "P", "flyp": "X", "lora": "v"}


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
        _logit_axes(ax)
        ax.set_xlabel("ID accuracy (test; logit axis)")
        ax.set_ylabel(f"{shift} accuracy (mean over its splits; logit axis)")
        ax.set_title(f"{dataset}: {shift} shift (means over seeds)")
    # one legend for all panels, beside them (inside, it would cover the points)
    handles, labels = {}, []
    for ax in axes[0]:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            if lab not in handles:
                handles[lab] = h
                labels.append(lab)
    fig.legend([handles[lab] for lab in labels], labels, fontsize=7.5, loc="center left",
               bbox_to_anchor=(1.0, 0.5), frameon=False)
    fig.suptitle("Robust fine-tuning of CLIP: ID vs OOD accuracy", y=1.02)
    fig.tight_layout()
    save(fig, path)


LOGIT_TICKS = (0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.98, 0.99)


def _logit_axes(ax) -> None:
    """Logit-scaled axes with plain accuracy tick labels (.1, .5, .9 rather than matplotlib's 1/2, 1-10^-1)."""
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator

    ax.set_xscale("logit")
    ax.set_yscale("logit")
    for axis, (lo, hi) in ((ax.xaxis, ax.get_xlim()), (ax.yaxis, ax.get_ylim())):
        ticks = [t for t in LOGIT_TICKS if lo <= t <= hi] or [t for t in LOGIT_TICKS]
        axis.set_major_locator(FixedLocator(ticks))
        axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:.2f}".rstrip("0").lstrip("0") or "0"))
        axis.set_minor_locator(NullLocator())


# ---- data efficiency (homework 1 bonus) -------------------------------------------------------------

EFFICIENCY_KINDS = ("linear", "finetune", "wiseft")  # the k-shot protocols; zero-shot is flat


def _first_parent(parents: object) -> str | None:
    ps = list(parents) if parents is not None and not isinstance(parents, float) else []
    return str(ps[0]).split("/")[3] if ps else None


def _last_parent(parents: object) -> str | None:
    ps = list(parents) if parents is not None and not isinstance(parents, float) else []
    return str(ps[-1]).split("/")[3] if ps else None


def efficiency_points(metrics: pd.DataFrame) -> pd.DataFrame:
    """Per (dataset, backbone, pretrain, protocol, shots, split kind): mean and std over seeds of the accuracy,
    ``shots`` NaN for the whole train split. Protocols: the k-shot variants' kinds; their "all" point is the
    full-label variant of the same lineage (the linear probe named ``linear``; the fine-tune from the zero-shot
    head; WiSE-FT at α = 0.5 of that fine-tune); zero-shot appears once (no labels)."""
    cols = ["dataset", "backbone", "pretrain", "protocol", "shots", "shift", "acc_mean", "acc_std", "seeds"]
    k = per_model_shift(shots_rows(metrics))
    if k.empty:
        return pd.DataFrame(columns=cols)
    full = per_model_shift(clip_rows(metrics))
    zs = set(full.loc[full["kind"] == "zeroshot", "adapt"])
    ft_all = set(full.loc[(full["kind"] == "finetune") & full["parents"].map(_first_parent).isin(zs), "adapt"])
    alpha = pd.to_numeric(full["alpha"], errors="coerce") if "alpha" in full else pd.Series(np.nan, index=full.index)
    pick = {"zeroshot": full["kind"] == "zeroshot",
            "linear": (full["kind"] == "linear") & (full["adapt"] == "linear"),
            "finetune": full["adapt"].isin(ft_all),
            "wiseft": (full["kind"] == "wiseft") & (alpha == 0.5) & full["parents"].map(_last_parent).isin(ft_all)}
    parts = [k[k["kind"].isin(EFFICIENCY_KINDS)].assign(protocol=lambda d: d["kind"])]
    for proto, mask in pick.items():
        if proto == "zeroshot" or proto in set(parts[0]["protocol"]):
            parts.append(full[mask.to_numpy()].assign(protocol=proto, shots=np.nan))
    rows = pd.concat(parts, ignore_index=True)
    rows["shots"] = pd.to_numeric(rows["shots"], errors="coerce").astype("float64")
    long = pd.concat([rows.assign(shift="id", acc=rows["id_acc"]).drop_duplicates(["model_id"]),
                      rows.assign(acc=rows["ood_acc"])], ignore_index=True)
    g = long.groupby(["dataset", "backbone", "pretrain", "protocol", "shots", "shift"], dropna=False)
    out = g.agg(acc_mean=("acc", "mean"), acc_std=("acc", "std"), seeds=("seed", "nunique")).reset_index()
    return out[cols]


def data_efficiency(tables: Tables, path: Path) -> None:
    """Accuracy against labeled images per class (log axis), one panel per (dataset, split kind)."""
    import matplotlib.pyplot as plt

    pts = efficiency_points(tables["metrics"])
    if pts.empty:
        return placeholder(path, "no k-shot CLIP variants (adapt knob shots) in this config")
    panels = list(pts.groupby(["dataset", "shift"], sort=False).groups)
    panels.sort(key=lambda p: (p[0], p[1] != "id", p[1]))
    fig, axes = plt.subplots(1, len(panels), figsize=(4.8 * len(panels), 4.2), squeeze=False)
    for ax, (dataset, shift) in zip(axes[0], panels):
        d = pts[(pts["dataset"] == dataset) & (pts["shift"] == shift)]
        kmax = d["shots"].max()
        x_all = 2 * kmax  # the whole train split, drawn one octave right of the largest k
        for proto in EFFICIENCY_KINDS:
            c = d[d["protocol"] == proto].assign(x=lambda t: t["shots"].fillna(x_all)).sort_values("x")
            if len(c):
                ax.errorbar(c["x"], c["acc_mean"], yerr=c["acc_std"].fillna(0), marker="o", ms=4, capsize=2,
                            label=LABELS[proto] + (" (α = 0.5)" if proto == "wiseft" else ""))
        z = d[d["protocol"] == "zeroshot"]
        if len(z):
            ax.axhline(float(z["acc_mean"].iloc[0]), c="black", ls="--", lw=1, label="zero-shot (no labels)")
        ax.set_xscale("log", base=2)
        ticks = sorted(d["shots"].dropna().unique())
        ax.set_xticks([*ticks, x_all], [*(f"{t:g}" for t in ticks), "all"])
        ax.set_xlabel("labeled train images per class (log scale)")
        ax.set_ylabel(f"{'ID test' if shift == 'id' else shift} accuracy")
        ax.set_ylim(0, 1)
        ax.set_title(f"{dataset}: {'in distribution' if shift == 'id' else shift + ' shift'}")
        ax.legend(fontsize=7, loc="lower right")
    fig.suptitle("Data efficiency of CLIP adaptation (means ± std over seeds)", y=1.02)
    fig.tight_layout()
    save(fig, path)


def efficiency_table(pts: pd.DataFrame) -> pd.DataFrame:
    """Protocol x shots rows, one accuracy column per split kind (ID first)."""
    shifts = sorted(set(pts["shift"]), key=lambda s: (s != "id", s))
    rows = []
    for (dataset, proto, shots), g in pts.groupby(["dataset", "protocol", "shots"], dropna=False, sort=False):
        row = {"dataset": dataset, "protocol": LABELS.get(proto, proto),
               "shots / class": "all" if pd.isna(shots) else f"{shots:g}"}
        for sh in shifts:
            r = g[g["shift"] == sh]
            row[f"{'ID' if sh == 'id' else sh} acc"] = (mean_std(r["acc_mean"].iloc[0], r["acc_std"].iloc[0])
                                                        if len(r) else "")
        rows.append(row)
    out = pd.DataFrame(rows)
    order = {p: i for i, p in enumerate(("zeroshot", *EFFICIENCY_KINDS))}
    out["_p"] = [order.get(next((k for k, v in LABELS.items() if v == p), p), 9) for p in out["protocol"]]
    out["_k"] = [np.inf if s == "all" else float(s) for s in out["shots / class"]]
    return out.sort_values(["dataset", "_p", "_k"]).drop(columns=["_p", "_k"]).reset_index(drop=True)


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
    pts = efficiency_points(tables["metrics"])
    if not pts.empty:
        parts.append("<h3>Data efficiency</h3><p>Accuracy with k labeled train images per class (class-balanced, "
                     "nested subsets per seed); \"all\": the whole train split; zero-shot uses no labels.</p>")
        parts.append(efficiency_table(pts).to_html(classes="results", border=0, index=False))
    return parts + section_figures(SECTION, figures)


SECTION = register_section(Section(
    "clip", "Robust fine-tuning of CLIP",
    "CLIP pretrained on captioned web-like data that covers every rendering style, then adapted on the narrow "
    "labeled split: zero-shot (class names x prompt templates), linear probe, fine-tuning from the zero-shot head, "
    "LP-FT, Lipsum-FT, FLYP, LoRA, and WiSE-FT's weight interpolation between each fine-tune and its start. Effective robustness: OOD "
    "accuracy above the logit-linear fit over the models trained on the ID data only (Taori et al. 2020).",
    order=30,
    figures=(Figure("clip_id_vs_ood.png", "ID against OOD accuracy per OOD shift on logit axes: zero-shot (star), "
                    "linear probe (square), fine-tune (circle), LP-FT (diamond), Lipsum-FT (plus), FLYP (cross), LoRA (triangle), WiSE-FT curves through α = 0 ... 1 "
                    "(from the start model to the fine-tune), the ID-trained models (grey) with their baseline fit "
                    "(dashed), the Pareto front of the CLIP points (dotted).", id_vs_ood),
             Figure("clip_data_efficiency.png", "Data efficiency: ID and OOD accuracy against the number of labeled "
                    "train images per class (log scale; 'all' is the whole train split) for the linear probe, the "
                    "fine-tune from the zero-shot head and WiSE-FT at α = 0.5 of each k-shot fine-tune; zero-shot "
                    "(dashed) needs no labels.", data_efficiency)),
    render=render))
