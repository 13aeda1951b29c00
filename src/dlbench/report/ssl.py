"""Report section "Self-supervised pretraining": tables and figures from the tidy Parquet tables.

Everything here is a pure function of DataFrames (``metrics.parquet``, ``history.parquet``, the
t-SNE embeddings under ``results/tsne``); figures are written with the helpers of
:mod:`dlbench.report.figures`. Method names are never hard-coded as a filter: any registered
pretrain name shows up; the tuples below only fix a display order (by family), unknown names go
last, alphabetically.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Iterable
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from dlbench.report.figures import _placeholder, _save  # noqa: E402

# display order only (family by family); not a filter
FAMILIES: dict[str, tuple[str, ...]] = {
    "baseline": ("random",),
    "pretext": ("rotation", "jigsaw", "colorization", "inpainting", "relative_location"),
    "contrastive": ("simclr", "moco_v2", "swav", "deepcluster"),
    "non-contrastive": ("byol", "simsiam", "barlow_twins", "vicreg", "dino"),
    "masked": ("mae",),
}
METHOD_ORDER: tuple[str, ...] = tuple(m for ms in FAMILIES.values() for m in ms)
PROTOCOL_ORDER: tuple[str, ...] = ("linear", "knn", "finetune", "lpft")
SUPERVISED = "supervised (scratch)"
RANDOM = "random init"
COLLAPSE_THRESHOLD = 0.05  # final std·sqrt(d) of l2-normalised embeddings below this = collapsed
TSNE_MAX_POINTS = 2000  # per panel; t-SNE files are subsampled (deterministically) above this
KEYS = ["dataset", "backbone", "pretrain", "adapt"]


def family_of(pretrain: str) -> str:
    for family, names in FAMILIES.items():
        if pretrain in names:
            return family
    return "supervised" if pretrain == "none" else "other"


def method_label(pretrain: str) -> str:
    """Display name of a pretrain method; the two baselines get descriptive names."""
    return {"none": SUPERVISED, "random": RANDOM}.get(pretrain, pretrain)


def method_order(names: Iterable[str]) -> list[str]:
    """Pretrain names in display order: the known ones by family, then unknown ones alphabetically,
    the supervised baseline (``none``) last."""
    rank = {m: i for i, m in enumerate(METHOD_ORDER)}
    return sorted(set(names), key=lambda m: (m == "none", m not in rank, rank.get(m, 0), m))


def protocol_order(names: Iterable[str]) -> list[str]:
    """Adaptation protocols in display order (linear, knn, finetune, lpft, others, supervised last)."""
    rank = {p: i for i, p in enumerate(PROTOCOL_ORDER)}
    return sorted(set(names), key=lambda p: (p == "supervised", p not in rank, rank.get(p, 0), p))


def _is_plain(df: pd.DataFrame) -> pd.Series:
    """Single models only: ensembles and compressed models belong to their own sections."""
    mask = pd.Series(True, index=df.index)
    for col in ("ensemble", "compress"):
        if col in df:
            mask &= df[col].fillna("none") == "none"
    return mask


def _is_ssl_pretrain(pretrain: pd.Series, methods: Collection[str] | None) -> pd.Series:
    if methods is not None:
        return pretrain.isin(list(methods))
    # every pretrained backbone except the supervised baseline and CLIP (own section)
    return (pretrain != "none") & ~pretrain.astype(str).str.startswith("clip")


def ssl_rows(metrics: pd.DataFrame, methods: Collection[str] | None = None) -> pd.DataFrame:
    """The rows of metrics.parquet this section is about: SSL-pretrained backbones adapted by some
    protocol (``random`` included), plus the supervised-from-scratch rows of the same
    (dataset, backbone) pairs as reference. ``methods``: the pretrain names that count as SSL
    (default: every name except ``none`` and ``clip*``)."""
    m = metrics[_is_plain(metrics)]
    ssl = m[_is_ssl_pretrain(m["pretrain"], methods) & (m["adapt"] != "none")]
    pairs = set(zip(ssl["dataset"], ssl["backbone"]))
    sup = m[(m["pretrain"] == "none") & (m["adapt"] == "supervised")]
    sup = sup[[(d, b) in pairs for d, b in zip(sup["dataset"], sup["backbone"])]]
    return pd.concat([ssl, sup]) if len(sup) else ssl


def per_model(metrics: pd.DataFrame) -> pd.DataFrame:
    """One row per model: ``id_acc`` = mean accuracy over its ID splits, ``ood_acc`` = mean over its
    OOD shift kinds of the mean accuracy over that kind's splits (each kind weighs the same, so one
    'style' split weighs as much as the whole 70-split corruption suite)."""
    cols = ["model_id", *KEYS, "seed"]
    if metrics.empty:
        return pd.DataFrame(columns=[*cols, "id_acc", "ood_acc"])
    base = metrics.groupby("model_id", sort=False)[[*KEYS, "seed"]].first()
    id_acc = metrics[metrics["shift"] == "id"].groupby("model_id")["acc"].mean().rename("id_acc")
    kinds = metrics[metrics["shift"] != "id"].groupby(["model_id", "shift"])["acc"].mean()
    ood_acc = kinds.groupby(level="model_id").mean().rename("ood_acc")
    return base.join(id_acc).join(ood_acc).reset_index()[[*cols, "id_acc", "ood_acc"]]


def ssl_summary(metrics: pd.DataFrame, methods: Collection[str] | None = None) -> pd.DataFrame:
    """One row per (dataset, backbone, pretrain, adapt), seeds pooled: ``id_acc_mean/std``,
    ``ood_acc_mean/std`` (std over seeds, NaN for one seed) and ``seeds``.

    ``ood_acc`` of one model is the mean over its OOD shift kinds (corruption, style, natural,
    domain) of the mean accuracy over that kind's splits: every kind weighs the same, so a single
    'style' split counts as much as the whole corruption suite. Rows: see :func:`ssl_rows`
    (SSL methods incl. the random-init baseline, plus the supervised-from-scratch baseline);
    sorted by dataset, backbone, method order, protocol order.
    """
    cols = [*KEYS, "family", "method", "id_acc_mean", "id_acc_std", "ood_acc_mean", "ood_acc_std", "seeds"]
    pm = per_model(ssl_rows(metrics, methods))
    if pm.empty:
        return pd.DataFrame(columns=cols)
    g = pm.groupby(KEYS, dropna=False)
    out = g[["id_acc", "ood_acc"]].agg(["mean", "std"])
    out.columns = [f"{a}_{b}" for a, b in out.columns]
    out["seeds"] = g["seed"].nunique()
    out = out.reset_index()
    out["family"] = out["pretrain"].map(family_of)
    out["method"] = out["pretrain"].map(method_label)
    mrank = {m: i for i, m in enumerate(method_order(out["pretrain"]))}
    prank = {p: i for i, p in enumerate(protocol_order(out["adapt"]))}
    out = out.assign(_m=out["pretrain"].map(mrank), _p=out["adapt"].map(prank))
    out = out.sort_values(["dataset", "backbone", "_m", "_p"]).drop(columns=["_m", "_p"])
    return out[cols].reset_index(drop=True)


def _f3(v: float) -> str:
    """0.8134 -> '.813' (compact accuracy for wide tables)."""
    s = f"{v:.3f}"
    return s[1:] if s.startswith("0.") else s


def _cell(row: pd.Series) -> str:
    def ms(kind: str) -> str:
        mean, std = row[f"{kind}_acc_mean"], row[f"{kind}_acc_std"]
        return f"{_f3(mean)} ± {_f3(0.0 if pd.isna(std) else std)}"

    parts = []
    if pd.notna(row["id_acc_mean"]):
        parts.append(f"ID {ms('id')}")
    if pd.notna(row["ood_acc_mean"]):
        parts.append(f"OOD {ms('ood')}")
    return " / ".join(parts)


def protocol_table(summary: pd.DataFrame) -> pd.DataFrame:
    """HTML table: rows = (dataset, backbone, method) incl. 'random init' and 'supervised (scratch)',
    columns = protocols (linear, knn, finetune, lpft, ..., supervised), cells
    'ID .xxx ± .xxx / OOD .xxx ± .xxx' (mean ± std over seeds; std 0 shown for a single seed)."""
    if summary.empty:
        return pd.DataFrame(index=pd.MultiIndex.from_tuples([], names=["dataset", "backbone", "method"]))
    s = summary.assign(cell=summary.apply(_cell, axis=1))
    table = s.pivot_table(index=["dataset", "backbone", "pretrain"], columns="adapt", values="cell",
                          aggfunc="first", sort=False)
    table = table.reindex(columns=protocol_order(table.columns)).fillna("")
    # pivot keeps the summary's row order (sort=False); relabel pretrain -> method
    table.index = pd.MultiIndex.from_tuples([(d, b, method_label(p)) for d, b, p in table.index],
                                            names=["dataset", "backbone", "method"])
    table.columns.name = "protocol"
    return table


def pretrain_history(history: pd.DataFrame, methods: Collection[str] | None = None) -> pd.DataFrame:
    """The pretraining runs of history.parquet: ``adapt == 'none'`` and an SSL pretrain name."""
    if history.empty or "pretrain" not in history or "adapt" not in history:
        return history.iloc[0:0]
    h = history[_is_plain(history)]
    return h[(h["adapt"] == "none") & _is_ssl_pretrain(h["pretrain"], methods)]


def collapse_flags(history: pd.DataFrame, threshold: float = COLLAPSE_THRESHOLD,
                   methods: Collection[str] | None = None) -> pd.DataFrame:
    """Per pretraining run: final and minimum ``val_emb_std_norm`` (std of l2-normalised embeddings
    x sqrt(dim): ~1 well spread, -> 0 at collapse), the final online kNN accuracy, and
    ``collapsed`` = final value < ``threshold``. Runs that never logged the monitor (e.g. the
    untrained random baseline) are left out."""
    cols = ["model_id", "dataset", "backbone", "pretrain", "seed", "epochs", "final_std_norm",
            "min_std_norm", "final_knn_acc", "collapsed"]
    h = pretrain_history(history, methods)
    if h.empty or "val_emb_std_norm" not in h:
        return pd.DataFrame(columns=cols).astype({"collapsed": bool})
    h = h[h["val_emb_std_norm"].notna()].sort_values(["model_id", "epoch"])
    if h.empty:
        return pd.DataFrame(columns=cols).astype({"collapsed": bool})
    g = h.groupby("model_id", sort=True)
    out = g[["dataset", "backbone", "pretrain", "seed"]].first()
    out["epochs"] = g["epoch"].max()
    out["final_std_norm"] = g["val_emb_std_norm"].last()
    out["min_std_norm"] = g["val_emb_std_norm"].min()
    out["final_knn_acc"] = g["val_knn_acc"].last() if "val_knn_acc" in h else np.nan
    out["collapsed"] = out["final_std_norm"] < threshold
    return out.reset_index()[cols]


def collapsed_runs(history: pd.DataFrame, threshold: float = COLLAPSE_THRESHOLD,
                   methods: Collection[str] | None = None) -> list[str]:
    """model_ids of the pretraining runs whose final std·sqrt(d) is below ``threshold``."""
    flags = collapse_flags(history, threshold, methods)
    return flags.loc[flags["collapsed"], "model_id"].tolist()


# ---------------------------------------------------------------- figures


def _group_title(dataset: str, backbone: str) -> str:
    return f"{dataset} / {backbone}"


def ssl_protocols(metrics: pd.DataFrame, path: Path, methods: Collection[str] | None = None) -> None:
    """Per (dataset, backbone): ID accuracy (top) and mean OOD accuracy (bottom) per method, one
    dodged colour/marker per protocol, mean ± std over seeds; dashed line (band = std): the
    supervised-from-scratch baseline of that dataset and backbone."""
    summary = ssl_summary(metrics, methods)
    ssl = summary[summary["pretrain"] != "none"]
    if ssl.empty:
        return _placeholder(path, "no self-supervised models in this config")
    protocols = protocol_order(ssl["adapt"])
    palette = dict(zip(protocols, sns.color_palette("colorblind", len(protocols))))
    markers = dict(zip(protocols, ["o", "s", "D", "^", "v", "P", "X", "*"] * 4))
    groups = list(ssl.groupby(["dataset", "backbone"], sort=True))
    n_methods = max(g["pretrain"].nunique() for _, g in groups)
    width = max(6.0, 0.55 * n_methods + 2.0)
    fig, axes = plt.subplots(2 * len(groups), 1, figsize=(width, 2.4 * 2 * len(groups) + 0.8), squeeze=False,
                             layout="constrained")
    step = 0.75 / max(len(protocols), 1)
    has_sup = False
    for gi, ((dataset, backbone), g) in enumerate(groups):
        names = method_order(g["pretrain"])
        xpos = {m: i for i, m in enumerate(names)}
        sup = summary[(summary["pretrain"] == "none") & (summary["dataset"] == dataset)
                      & (summary["backbone"] == backbone)]
        for k, kind in enumerate(("id", "ood")):
            ax = axes[2 * gi + k, 0]
            ax.set_title(f"{_group_title(dataset, backbone)}: "
                         f"{'ID' if kind == 'id' else 'OOD (mean over shift kinds)'}", fontsize=9)
            ax.set_xticks(range(len(names)))
            ax.set_xlim(-0.5, len(names) - 0.5)
            ax.set_xticklabels([method_label(m) for m in names] if k == 1 else [], rotation=35, ha="right",
                               rotation_mode="anchor")
            ax.grid(False, axis="x")
            for i in range(1, len(names)):
                ax.axvline(i - 0.5, c="0.85", lw=0.8)
            if g[f"{kind}_acc_mean"].isna().all():
                ax.set_yticks([])
                ax.text(0.5, 0.5, f"no {'ID' if kind == 'id' else 'OOD'} splits", ha="center", va="center",
                        transform=ax.transAxes, color="0.4")
                continue
            for pi, proto in enumerate(protocols):
                p = g[g["adapt"] == proto]
                if p.empty:
                    continue
                x = p["pretrain"].map(xpos).to_numpy() + (pi - (len(protocols) - 1) / 2) * step
                ax.errorbar(x, p[f"{kind}_acc_mean"], yerr=p[f"{kind}_acc_std"].fillna(0), ls="none",
                            marker=markers[proto], ms=5, capsize=2, lw=1, color=palette[proto])
            if not sup.empty and sup[f"{kind}_acc_mean"].notna().any():
                has_sup = True
                mean, std = sup[f"{kind}_acc_mean"].iloc[0], sup[f"{kind}_acc_std"].fillna(0).iloc[0]
                ax.axhline(mean, ls="--", c="0.25", lw=1)
                if std > 0:
                    ax.axhspan(mean - std, mean + std, color="0.5", alpha=0.15, lw=0)
            ax.set_ylabel("ID accuracy" if kind == "id" else "mean OOD accuracy")
    handles = [Line2D([], [], ls="none", marker=markers[p], color=palette[p], label=p) for p in protocols]
    if has_sup:
        handles.append(Line2D([], [], ls="--", c="0.25", label=SUPERVISED))
    fig.legend(handles=handles, loc="outside upper center", ncol=len(handles), frameon=False,
               title="protocol (mean ± std over seeds)")
    _save(fig, path)


def _context(df: pd.DataFrame) -> pd.Series:
    """'dataset/backbone' restricted to the parts that vary in ``df`` ('' when one pair only)."""
    cols = [c for c in ("dataset", "backbone") if df[c].nunique() > 1]
    if not cols:
        return pd.Series("", index=df.index)
    out = df[cols[0]].astype(str)
    for c in cols[1:]:
        out = out + "/" + df[c].astype(str)
    return out


def _run_label(h: pd.DataFrame) -> pd.Series:
    """Method name, with the varying dataset/backbone in brackets when several pairs are present."""
    ctx = _context(h)
    return pd.Series([f"{p} ({c})" if c else str(p) for p, c in zip(h["pretrain"], ctx)], index=h.index)


def ssl_collapse(history: pd.DataFrame, path: Path, threshold: float = COLLAPSE_THRESHOLD,
                 logy: bool | None = None, methods: Collection[str] | None = None) -> None:
    """Pretraining curves: ``val_emb_std_norm`` per epoch (dashed: the collapse threshold) and
    online ``val_knn_acc`` per epoch; one line per method (mean over seeds, band = std), line
    style by family; red x: final value of each collapsed run (one seed can collapse while the mean
    does not). ``logy=None``: log scale when the values span more than a decade."""
    h = pretrain_history(history, methods)
    if h.empty or "val_emb_std_norm" not in h or h["val_emb_std_norm"].notna().sum() == 0:
        return _placeholder(path, "no self-supervised pretraining history")
    h = h.assign(method=_run_label(h), family=h["pretrain"].map(family_of))
    order = h.assign(_r=h["pretrain"].map({m: i for i, m in enumerate(method_order(h["pretrain"]))}))
    hue_order = list(dict.fromkeys(order.sort_values(["_r", "method"])["method"]))
    fam_order = [f for f in [*FAMILIES, "other"] if f in set(h["family"])]
    palette = dict(zip(hue_order, sns.color_palette("husl", len(hue_order))))
    knn = "val_knn_acc" in h and h["val_knn_acc"].notna().any()
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8), squeeze=False)
    for a in axes.flat:
        a.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax = axes[0, 0]
    std = h[h["val_emb_std_norm"].notna()]
    sns.lineplot(data=std, x="epoch", y="val_emb_std_norm", hue="method", hue_order=hue_order, palette=palette,
                 style="family", style_order=fam_order, errorbar="sd", ax=ax, legend=not knn)
    ax.axhline(threshold, ls="--", c="red", lw=1)
    flags = collapse_flags(history, threshold, methods)
    bad = flags[flags["collapsed"]]
    if len(bad):  # the seed mean can hide one collapsed seed: mark each collapsed run's final value
        ax.scatter(bad["epochs"], bad["final_std_norm"].clip(lower=1e-6), marker="x", c="red", s=30, zorder=5)
        if knn:  # the methods' legend is on the right panel
            ax.legend(handles=[Line2D([], [], ls="none", marker="x", c="red", label="collapsed run (final)")],
                      loc="lower left", fontsize=7)
    ax.text(ax.get_xlim()[0], threshold, f" collapse threshold {threshold:g}", color="red", va="bottom", fontsize=7)
    pos = std["val_emb_std_norm"][std["val_emb_std_norm"] > 0]
    if logy is None:
        logy = len(pos) > 0 and pos.max() / pos.min() > 10
    if logy:
        ax.set_yscale("log")
    ax.set_ylabel("val embedding std · sqrt(d)")
    ax.set_title("collapse monitor (~1 spread, -> 0 collapsed)", fontsize=9)
    ax2 = axes[0, 1]
    if knn:
        sns.lineplot(data=h[h["val_knn_acc"].notna()], x="epoch", y="val_knn_acc", hue="method", hue_order=hue_order,
                     palette=palette, style="family", style_order=fam_order, errorbar="sd", ax=ax2)
        ax2.set_ylabel("online kNN accuracy (val)")
        ax2.set_title("kNN accuracy during pretraining", fontsize=9)
        legend_ax = ax2
    else:
        ax2.axis("off")
        ax2.text(0.5, 0.5, "no val_knn_acc logged", ha="center", va="center")
        legend_ax = ax
    if legend_ax.get_legend() is not None:
        sns.move_legend(legend_ax, "upper left", bbox_to_anchor=(1.02, 1.0), fontsize=7, frameon=False)
    fig.tight_layout()
    _save(fig, path)


def read_tsne(tsne_dir: str | Path | None) -> pd.DataFrame:
    """All ``<tsne_dir>/<dataset>/<backbone>/<pretrain>/seed<N>.parquet`` files as one frame with
    the path parts as columns (empty frame when the directory is missing)."""
    cols = ["dataset", "backbone", "pretrain", "seed", "x", "y", "label", "stage"]
    if tsne_dir is None or not Path(tsne_dir).is_dir():
        return pd.DataFrame(columns=cols)
    root, frames = Path(tsne_dir), []
    for f in sorted(root.glob("*/*/*/seed*.parquet")):
        dataset, backbone, pretrain = f.relative_to(root).parts[:3]
        try:
            seed = int(f.stem.removeprefix("seed"))
        except ValueError:
            continue
        df = pd.read_parquet(f)
        frames.append(df.assign(dataset=dataset, backbone=backbone, pretrain=pretrain, seed=seed))
    if not frames:
        return pd.DataFrame(columns=cols)
    return pd.concat(frames, ignore_index=True)[cols]


def ssl_tsne(tsne: pd.DataFrame, path: Path, ncols: int = 6, max_points: int = TSNE_MAX_POINTS) -> None:
    """Grid of t-SNE scatter plots, one per method (first seed present), coloured by class label:
    the frozen pretrained features first, then (when present) the features after fine-tuning."""
    if tsne.empty:
        return _placeholder(path, "no t-SNE embeddings")
    first = tsne.groupby(["dataset", "backbone", "pretrain"])["seed"].transform("min")
    t = tsne[tsne["seed"] == first]
    t = t.assign(_ctx=_context(t))
    stages = [s for s in ("pretrained", "finetuned") if s in set(t["stage"])]
    stages += sorted(set(t["stage"]) - set(stages))
    titles = {"pretrained": "frozen pretrained features", "finetuned": "after fine-tuning"}
    labels = sorted(pd.unique(t["label"]))
    cmap = plt.get_cmap("tab10" if len(labels) <= 10 else "tab20" if len(labels) <= 20 else "viridis")
    colour = {lab: cmap(i / max(len(labels) - 1, 1)) if len(labels) > 20 else cmap(i) for i, lab in enumerate(labels)}

    blocks = []
    for stage in stages:
        s = t[t["stage"] == stage]
        keys = []
        for (d, b), g in s.groupby(["dataset", "backbone"], sort=True):
            keys += [(d, b, p) for p in method_order(g["pretrain"])]
        blocks.append((stage, s, keys))
    ncols = max(1, min(ncols, max(len(k) for _, _, k in blocks)))
    nrows = [math.ceil(len(k) / ncols) for _, _, k in blocks]
    panel = 1.7
    fig = plt.figure(figsize=(panel * ncols, panel * sum(nrows) + 0.45 * len(blocks) + 0.4), layout="constrained")
    subfigs = fig.subfigures(len(blocks), 1, height_ratios=[r * panel + 0.45 for r in nrows], squeeze=False)
    rng = np.random.default_rng(0)
    for (stage, s, keys), rows, sf in zip(blocks, nrows, subfigs[:, 0]):
        sf.suptitle(f"t-SNE, {titles.get(stage, stage)}", fontsize=10)
        axes = sf.subplots(rows, ncols, squeeze=False)
        for ax in axes.flat:
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_visible(False)
        for ax, (d, b, p) in zip(axes.flat, keys):
            pts = s[(s["dataset"] == d) & (s["backbone"] == b) & (s["pretrain"] == p)]
            if len(pts) > max_points:
                pts = pts.iloc[np.sort(rng.choice(len(pts), max_points, replace=False))]
            ax.set_visible(True)
            ax.scatter(pts["x"], pts["y"], c=[colour[v] for v in pts["label"]], s=2, alpha=0.7, lw=0,
                       rasterized=True)
            ctx = pts["_ctx"].iloc[0] if len(pts) else ""
            ax.set_title(f"{method_label(p)}\n{ctx}" if ctx else method_label(p), fontsize=7)
    handles = [Line2D([], [], ls="none", marker="o", ms=4, color=colour[lab], label=str(lab)) for lab in labels]
    fig.legend(handles=handles, loc="outside lower center", ncol=min(len(handles), 10), fontsize=7, frameon=False,
               title="class label", title_fontsize=7)
    _save(fig, path)


def make_ssl_figures(metrics: pd.DataFrame, history: pd.DataFrame, tsne_dir: str | Path | None,
                     out_dir: str | Path, threshold: float = COLLAPSE_THRESHOLD) -> None:
    """The three figures of the section (each a placeholder image when it has no data)."""
    out = Path(out_dir)
    ssl_protocols(metrics, out / "ssl_protocols.png")
    ssl_collapse(history, out / "ssl_collapse.png", threshold=threshold)
    ssl_tsne(read_tsne(tsne_dir), out / "ssl_tsne.png")
