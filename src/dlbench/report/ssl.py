"""Report section "Self-supervised pretraining": tables and figures from the tidy Parquet tables.

Everything here is a pure function of DataFrames (``metrics.parquet``, ``history.parquet``,
``tsne.parquet``). Which rows belong here comes from the lineage columns (``pretrain_family`` of
the model's pretraining stage), never from a list of method names: any registered method shows
up. The tuples below only fix a display order (by family, then kind); unknown kinds go last,
alphabetically. Rows are keyed by variant names (``pretrain``, ``adapt``), so sweeps show up as
their own rows and columns.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from dlbench.report.plotting import placeholder as _placeholder  # noqa: E402
from dlbench.report.plotting import save as _save  # noqa: E402
from dlbench.report.sections import Figure, Section, Tables, register_section  # noqa: E402
from dlbench.report.tables import f3 as _f3  # noqa: E402
from dlbench.report.tables import is_plain as _is_plain  # noqa: E402
from dlbench.report.tables import per_model as _per_model  # noqa: E402

# display order only (family by family, kind by kind); not a filter
FAMILIES: dict[str, tuple[str, ...]] = {
    "baseline": ("random",),
    "pretext": ("rotation", "jigsaw", "colorization", "inpainting", "relative_location"),
    "contrastive": ("simclr", "moco_v2", "swav", "deepcluster"),
    "self_distillation": ("byol", "simsiam", "barlow_twins", "vicreg", "dino"),
    "masked": ("mae",),
}
METHOD_ORDER: tuple[str, ...] = tuple(m for ms in FAMILIES.values() for m in ms)
PROTOCOL_ORDER: tuple[str, ...] = ("linear", "knn", "finetune", "lpft")
NOT_SSL = ("language-image",)  # pretraining families with their own section (CLIP)
SUPERVISED = "supervised (scratch)"
RANDOM = "random init"
COLLAPSE_THRESHOLD = 0.05  # final std·sqrt(d) of l2-normalised embeddings below this = collapsed
TSNE_MAX_POINTS = 2000  # per panel; t-SNE tables are subsampled (deterministically) above this
KEYS = ["dataset", "backbone", "pretrain", "adapt"]
FRACTION = "fraction"  # the adapt knob: share of the labeled train split a model was trained on (null / 1: all)
# label efficiency: the protocols drawn (adapt kinds) and their line styles
LABEL_EFFICIENCY_STYLES: dict[str, str] = {"linear": "-", "finetune": "--", "knn": ":", "lpft": "-."}


def family_of(kind: str) -> str:
    """The family of a pretraining kind (display order only; the tables carry the real family)."""
    for family, names in FAMILIES.items():
        if kind in names:
            return family
    return "supervised" if kind == "none" else "other"


def _kinds(df: pd.DataFrame, col: str, kind_col: str) -> dict[str, str]:
    """variant name -> its kind, from the table (the name itself where the column is missing)."""
    if col not in df:
        return {}
    if kind_col not in df:
        return {n: n for n in df[col].unique()}
    return dict(zip(df[col], df[kind_col].fillna(df[col])))


def method_label(pretrain: str, kind: str | None = None) -> str:
    """Display name of a pretrain variant; the two baselines get descriptive names."""
    kind = kind or pretrain
    if pretrain == "none":
        return SUPERVISED
    return RANDOM if kind == "random" and pretrain == "random" else pretrain


def method_order(names: Iterable[str], kinds: dict[str, str] | None = None) -> list[str]:
    """Pretrain variant names in display order: by their kind's family and rank, unknown kinds
    alphabetically after, the supervised baseline (``none``) last."""
    rank = {m: i for i, m in enumerate(METHOD_ORDER)}
    kinds = kinds or {}

    def key(m: str) -> tuple:
        k = kinds.get(m, m)
        return (m == "none", k not in rank, rank.get(k, 0), k, m)

    return sorted(set(names), key=key)


def protocol_order(names: Iterable[str], kinds: dict[str, str] | None = None) -> list[str]:
    """Adapt variant names in display order (linear, knn, finetune, lpft kinds, others, supervised last)."""
    rank = {p: i for i, p in enumerate(PROTOCOL_ORDER)}
    kinds = kinds or {}

    def key(p: str) -> tuple:
        k = kinds.get(p, p)
        return ("supervised" in (k, p), k not in rank, rank.get(k, 0), k, p)

    return sorted(set(names), key=key)


def _is_ssl(df: pd.DataFrame) -> pd.Series:
    """Models whose pretraining stage is self-supervised (or the random-init baseline)."""
    if "pretrain_family" in df:
        fam = df["pretrain_family"]
        return fam.notna() & ~fam.isin(NOT_SSL) & (df["pretrain"] != "none")
    return (df["pretrain"] != "none") & ~df["pretrain"].astype(str).str.startswith("clip")


def _fractions(df: pd.DataFrame) -> pd.Series:
    """Each row's label fraction (1.0 where the ``fraction`` knob is absent or null)."""
    if FRACTION not in df:
        return pd.Series(1.0, index=df.index)
    return pd.to_numeric(df[FRACTION], errors="coerce").astype("float64").fillna(1.0)


def full_labels(metrics: pd.DataFrame) -> pd.DataFrame:
    """The rows trained on the whole labeled train split (``fraction`` knob absent, null or >= 1)."""
    return metrics[(_fractions(metrics) >= 1).to_numpy()]


def ssl_rows(metrics: pd.DataFrame) -> pd.DataFrame:
    """The rows of metrics.parquet this section is about: SSL-pretrained backbones adapted by some
    variant (random init included), plus the supervised-from-scratch rows of the same
    (dataset, backbone) pairs as reference. Only models trained on the whole labeled train split:
    the label-fraction variants (``fraction`` < 1) are the label-efficiency figure's
    (:func:`label_efficiency`), never a protocol of their own here."""
    if metrics.empty or not {*KEYS, "seed"} <= set(metrics.columns):  # e.g. no metrics table at all
        return metrics.iloc[0:0]
    m = full_labels(metrics[_is_plain(metrics)])
    ssl = m[_is_ssl(m) & (m["adapt"] != "none")]
    pairs = set(zip(ssl["dataset"], ssl["backbone"]))
    sup = m[(m["pretrain"] == "none") & ((m["kind"] if "kind" in m else m["adapt"]) == "supervised")]
    sup = sup[[(d, b) in pairs for d, b in zip(sup["dataset"], sup["backbone"])]]
    return pd.concat([ssl, sup]) if len(sup) else ssl


def per_model(metrics: pd.DataFrame) -> pd.DataFrame:
    """One row per model with ``id_acc`` and ``ood_acc`` (see ``dlbench.report.tables.per_model``)."""
    return _per_model(metrics, KEYS)


def ssl_summary(metrics: pd.DataFrame) -> pd.DataFrame:
    """One row per (dataset, backbone, pretrain, adapt), seeds pooled: ``id_acc_mean/std``,
    ``ood_acc_mean/std`` (std over seeds, NaN for one seed) and ``seeds``, with the variants'
    kinds and the pretraining family.

    ``ood_acc`` of one model is the mean over its OOD shift kinds (corruption, style, natural,
    domain) of the mean accuracy over that kind's splits: every kind weighs the same, so a single
    'style' split counts as much as the whole corruption suite. Rows: see :func:`ssl_rows`
    (SSL methods incl. the random-init baseline, plus the supervised-from-scratch baseline);
    sorted by dataset, backbone, method order, protocol order.
    """
    cols = [*KEYS, "pretrain_kind", "adapt_kind", "family", "method", "id_acc_mean", "id_acc_std",
            "ood_acc_mean", "ood_acc_std", "seeds"]
    rows = ssl_rows(metrics)
    pm = per_model(rows)
    if pm.empty:
        return pd.DataFrame(columns=cols)
    g = pm.groupby(KEYS, dropna=False)
    out = g[["id_acc", "ood_acc"]].agg(["mean", "std"])
    out.columns = [f"{a}_{b}" for a, b in out.columns]
    out["seeds"] = g["seed"].nunique()
    out = out.reset_index()
    pkinds, akinds = _kinds(rows, "pretrain", "pretrain_kind"), _kinds(rows, "adapt", "kind")
    families = (dict(zip(rows["pretrain"], rows["pretrain_family"])) if "pretrain_family" in rows else {})
    out["pretrain_kind"] = out["pretrain"].map(pkinds).where(out["pretrain"] != "none", "none")
    out["adapt_kind"] = out["adapt"].map(akinds)
    out["family"] = [families.get(p) if isinstance(families.get(p), str) else family_of(k)
                     for p, k in zip(out["pretrain"], out["pretrain_kind"])]
    out.loc[out["pretrain"] == "none", "family"] = "supervised"
    out["method"] = [method_label(p, k) for p, k in zip(out["pretrain"], out["pretrain_kind"])]
    mrank = {m: i for i, m in enumerate(method_order(out["pretrain"], pkinds))}
    prank = {p: i for i, p in enumerate(protocol_order(out["adapt"], akinds))}
    out = out.assign(_m=out["pretrain"].map(mrank), _p=out["adapt"].map(prank))
    out = out.sort_values(["dataset", "backbone", "_m", "_p"]).drop(columns=["_m", "_p"])
    return out[cols].reset_index(drop=True)


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
    table = table.reindex(columns=protocol_order(table.columns, dict(zip(s["adapt"], s["adapt_kind"])))).fillna("")
    # pivot keeps the summary's row order (sort=False); relabel pretrain -> method
    kinds = dict(zip(s["pretrain"], s["pretrain_kind"]))
    table.index = pd.MultiIndex.from_tuples([(d, b, method_label(p, kinds.get(p))) for d, b, p in table.index],
                                            names=["dataset", "backbone", "method"])
    table.columns.name = "protocol"
    return table


def pretrain_history(history: pd.DataFrame) -> pd.DataFrame:
    """The pretraining runs of history.parquet (``stage == 'pretrain'``; ``adapt == 'none'`` in
    tables without the lineage columns) of an SSL family."""
    if history.empty or "pretrain" not in history or "adapt" not in history:
        return history.iloc[0:0]
    h = history[_is_plain(history)]
    pretraining = h["stage"] == "pretrain" if "stage" in h else h["adapt"] == "none"
    return h[pretraining & _is_ssl(h)]


def collapse_flags(history: pd.DataFrame, threshold: float = COLLAPSE_THRESHOLD) -> pd.DataFrame:
    """Per pretraining run: final and minimum ``val_emb_std_norm`` (std of l2-normalised embeddings
    x sqrt(dim): ~1 well spread, -> 0 at collapse), the final online kNN accuracy, and
    ``collapsed`` = final value < ``threshold``. Runs that never logged the monitor (e.g. the
    untrained random baseline) are left out."""
    cols = ["model_id", "dataset", "backbone", "pretrain", "seed", "epochs", "final_std_norm",
            "min_std_norm", "final_knn_acc", "collapsed"]
    h = pretrain_history(history)
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


def collapsed_runs(history: pd.DataFrame, threshold: float = COLLAPSE_THRESHOLD) -> list[str]:
    """model_ids of the pretraining runs whose final std·sqrt(d) is below ``threshold``."""
    flags = collapse_flags(history, threshold)
    return flags.loc[flags["collapsed"], "model_id"].tolist()


# ---------------------------------------------------------------- figures


def _group_title(dataset: str, backbone: str) -> str:
    return f"{dataset} / {backbone}"


def ssl_protocols(metrics: pd.DataFrame, path: Path) -> None:
    """Per (dataset, backbone): ID accuracy (top) and mean OOD accuracy (bottom) per method, one
    dodged colour/marker per protocol, mean ± std over seeds; dashed line (band = std): the
    supervised-from-scratch baseline of that dataset and backbone."""
    summary = ssl_summary(metrics)
    ssl = summary[summary["pretrain"] != "none"]
    if ssl.empty:
        return _placeholder(path, "no self-supervised models in this config")
    protocols = protocol_order(ssl["adapt"], dict(zip(ssl["adapt"], ssl["adapt_kind"])))
    pkinds = dict(zip(ssl["pretrain"], ssl["pretrain_kind"]))
    fams = dict(zip(ssl["pretrain"], ssl["family"]))
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
        names = method_order(g["pretrain"], pkinds)
        xpos = {m: i for i, m in enumerate(names)}
        sup = summary[(summary["pretrain"] == "none") & (summary["dataset"] == dataset)
                      & (summary["backbone"] == backbone)]
        for k, kind in enumerate(("id", "ood")):
            ax = axes[2 * gi + k, 0]
            ax.set_title(f"{_group_title(dataset, backbone)}: "
                         f"{'ID' if kind == 'id' else 'OOD (mean over shift kinds)'}", fontsize=9)
            ax.set_xticks(range(len(names)))
            ax.set_xlim(-0.5, len(names) - 0.5)
            ax.set_xticklabels([method_label(m, pkinds.get(m)) for m in names] if k == 1 else [], rotation=35,
                               ha="right", rotation_mode="anchor")
            ax.grid(False, axis="x")
            for i in range(1, len(names)):  # between methods; darker between families
                new_family = fams.get(names[i]) != fams.get(names[i - 1])
                ax.axvline(i - 0.5, c="0.55" if new_family else "0.85", lw=1.2 if new_family else 0.8)
            if k == 1:
                ax.set_xlabel("pretraining method (dark lines separate families: "
                              f"{', '.join(dict.fromkeys(_family_title(fams[m]) for m in names))})", fontsize=8)
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


def _main_variant(names: Iterable[str], kind: str) -> str:
    """Of several adapt variants of one kind, the one named like the kind, else the first by name."""
    names = sorted(set(names))
    return kind if kind in names else names[0]


def label_efficiency(metrics: pd.DataFrame) -> pd.DataFrame:
    """Label-efficiency points: per (dataset, backbone, pretrain variant, protocol) that has variants
    with a ``fraction`` < 1 of the labeled train split, one row per fraction (mean and std over seeds of
    the ID accuracy), the 100% point being the protocol's main full-data variant of the same method
    (the variant named like its kind, else the first by name). Protocol = the adapt kind (linear,
    finetune, knn, lpft); where several variants share a kind and a fraction, the first by name counts
    (the same for every method). Columns: dataset, backbone, pretrain, pretrain_kind, method, protocol,
    adapt, fraction, id_acc_mean, id_acc_std, seeds; sorted by group, method order, protocol, fraction."""
    cols = ["dataset", "backbone", "pretrain", "pretrain_kind", "method", "protocol", "adapt", "fraction",
            "id_acc_mean", "id_acc_std", "seeds"]
    if (metrics.empty or FRACTION not in metrics or "kind" not in metrics
            or not {*KEYS, "seed", "shift", "acc"} <= set(metrics.columns)):
        return pd.DataFrame(columns=cols)
    m = metrics[_is_plain(metrics)]
    m = m[_is_ssl(m) & m["kind"].isin(list(LABEL_EFFICIENCY_STYLES))]
    if m.empty or not (_fractions(m) < 1).any():
        return pd.DataFrame(columns=cols)
    m = m.assign(_fraction=_fractions(m).clip(upper=1.0), protocol=m["kind"])
    pm = _per_model(m, [*KEYS, "protocol", "_fraction"])
    low = pm[pm["_fraction"] < 1]
    wanted = set(zip(low["dataset"], low["backbone"], low["pretrain"], low["protocol"]))
    pm = pm[[k in wanted for k in zip(pm["dataset"], pm["backbone"], pm["pretrain"], pm["protocol"])]]
    keep = []  # one variant per (dataset, backbone, protocol, fraction), the same for every method
    for (_, _, proto, frac), g in pm.groupby(["dataset", "backbone", "protocol", "_fraction"], sort=False):
        keep.append(g[g["adapt"] == _main_variant(g["adapt"], proto)])
    pm = pd.concat(keep)
    g = pm.groupby(["dataset", "backbone", "pretrain", "protocol", "_fraction", "adapt"], sort=False)
    out = g["id_acc"].agg(["mean", "std"]).rename(columns={"mean": "id_acc_mean", "std": "id_acc_std"})
    out["seeds"] = g["seed"].nunique()
    out = out.reset_index().rename(columns={"_fraction": "fraction"})
    out = out.astype({"fraction": float, "id_acc_mean": float, "id_acc_std": float, "seeds": int})
    pkinds = _kinds(m, "pretrain", "pretrain_kind")
    out["pretrain_kind"] = out["pretrain"].map(pkinds)
    out["method"] = [method_label(p, k) for p, k in zip(out["pretrain"], out["pretrain_kind"])]
    mrank = {p: i for i, p in enumerate(method_order(out["pretrain"], pkinds))}
    prank = {p: i for i, p in enumerate(protocol_order(out["protocol"]))}
    out = out.assign(_m=out["pretrain"].map(mrank), _p=out["protocol"].map(prank))
    out = out.sort_values(["dataset", "backbone", "_m", "_p", "fraction"]).drop(columns=["_m", "_p"])
    return out[cols].reset_index(drop=True)


def _percent(fraction: float) -> str:
    return f"{100 * fraction:g}%"


def label_efficiency_table(points: pd.DataFrame) -> pd.DataFrame:
    """HTML table of :func:`label_efficiency`: rows (dataset, backbone, method), columns (protocol,
    % of the labeled train split), cells 'ID mean ± std' over seeds."""
    if points.empty:
        return pd.DataFrame()
    p = points.assign(cell=[f"{_f3(a)} ± {_f3(0.0 if pd.isna(s) else s)}"
                            for a, s in zip(points["id_acc_mean"], points["id_acc_std"])])
    table = p.pivot_table(index=["dataset", "backbone", "method"], columns=["protocol", "fraction"], values="cell",
                          aggfunc="first", sort=False)
    order = sorted(table.columns, key=lambda c: (protocol_order(points["protocol"]).index(c[0]), c[1]))
    table = table.reindex(columns=order).fillna("")
    table.columns = pd.MultiIndex.from_tuples([(proto, _percent(f)) for proto, f in table.columns],
                                              names=["protocol", "labels"])
    return table


def ssl_label_efficiency(metrics: pd.DataFrame, path: Path, ncols: int = 2) -> None:
    """Per (dataset, backbone) with label-fraction variants: ID accuracy against the share of the
    labeled train split (log x; 100% = the main full-data variant), one colour per method, one line
    style per protocol (linear solid, finetune dashed), mean ± std over seeds. Dotted grey: chance;
    dash-dot grey: supervised from scratch on all labels, where the config has it."""
    pts = label_efficiency(metrics)
    if pts.empty:
        return _placeholder(path, "no label-fraction variants (adapt variants with fraction < 1)")
    pkinds = dict(zip(pts["pretrain"], pts["pretrain_kind"]))
    methods = method_order(pts["pretrain"], pkinds)
    cb = sns.color_palette("colorblind", 10)  # reordered: the first five (the usual pick) far apart
    palette = [cb[i] for i in (0, 1, 2, 4, 3, 9, 5, 8, 6, 7)] if len(methods) <= 10 else \
        sns.color_palette("husl", len(methods))
    colours = dict(zip(methods, palette))
    protocols = protocol_order(pts["protocol"])
    markers = dict(zip(protocols, ["o", "s", "^", "D"]))
    dodge = {p: 1.0 + 0.035 * (i - (len(protocols) - 1) / 2) for i, p in enumerate(protocols)}  # apart on log x
    groups = list(pts.groupby(["dataset", "backbone"], sort=True))
    ncols = max(1, min(ncols, len(groups)))
    nrows = math.ceil(len(groups) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.6 * ncols + 1.8, 3.6 * nrows), squeeze=False,
                             layout="constrained")
    for ax in axes.flat[len(groups):]:
        ax.set_visible(False)
    summary = ssl_summary(metrics)
    has_sup = False
    for ax, ((dataset, backbone), g) in zip(axes.flat, groups):
        fracs = sorted(set(g["fraction"]))
        for m in method_order(g["pretrain"], pkinds):
            for proto in protocols:
                line = g[(g["pretrain"] == m) & (g["protocol"] == proto)].sort_values("fraction")
                if line.empty:
                    continue
                ax.errorbar(100 * line["fraction"].to_numpy(float) * dodge[proto], line["id_acc_mean"].to_numpy(float),
                            yerr=line["id_acc_std"].fillna(0).to_numpy(float), color=colours[m],
                            ls=LABEL_EFFICIENCY_STYLES.get(proto, "-"), marker=markers[proto], ms=4.5, lw=1.4,
                            capsize=2.5)
        ax.set_xscale("log")
        ax.set_xticks([100 * f for f in fracs])
        ax.set_xticklabels([_percent(f) for f in fracs])
        ax.minorticks_off()
        ax.set_xlim(100 * min(fracs) / 1.6, 160)
        ax.set_xlabel("labeled train images used (% of the split, log scale)")
        ax.set_ylabel("ID accuracy")
        ax.set_title(_group_title(dataset, backbone), fontsize=10)
        classes = metrics.loc[(metrics["dataset"] == dataset) & (metrics["backbone"] == backbone),
                              "num_classes"].dropna() if "num_classes" in metrics else pd.Series(dtype=float)
        if len(classes):
            ax.axhline(1.0 / float(classes.iloc[0]), ls=":", c="0.5", lw=1)
        sup = summary[(summary["pretrain"] == "none") & (summary["dataset"] == dataset)
                      & (summary["backbone"] == backbone)]
        if len(sup) and pd.notna(sup["id_acc_mean"].iloc[0]):
            has_sup = True
            ax.axhline(sup["id_acc_mean"].iloc[0], ls="-.", c="0.35", lw=1)
    handles = [Line2D([], [], color=colours[m], lw=2, label=method_label(m, pkinds.get(m))) for m in methods]
    handles += [Line2D([], [], color="0.2", ls=LABEL_EFFICIENCY_STYLES.get(p, "-"), marker=markers[p], ms=4.5,
                       label=p) for p in protocols]
    handles.append(Line2D([], [], ls=":", c="0.5", label="chance"))
    if has_sup:
        handles.append(Line2D([], [], ls="-.", c="0.35", label=f"{SUPERVISED}, 100%"))
    fig.legend(handles=handles, loc="outside right upper", frameon=False, fontsize=8,
               title="method / protocol\n(mean ± std over seeds)", title_fontsize=8)
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


def _family_title(family: str) -> str:
    return str(family).replace("_", "-")


def ssl_collapse(history: pd.DataFrame, path: Path, threshold: float = COLLAPSE_THRESHOLD,
                 logy: bool | None = None) -> None:
    """Pretraining curves, one column per pretraining family (at most five methods a panel, so
    colours stay apart): top row ``val_emb_std_norm`` per epoch (dashed red: the collapse
    threshold; red x: final value of each collapsed run, since one seed can collapse while the
    mean does not), bottom row online ``val_knn_acc``. One colour per method within its family,
    mean over seeds, band = std; line style per dataset/backbone when there are several.
    ``logy=None``: log scale when the values span more than a decade."""
    h = pretrain_history(history)
    if h.empty or "val_emb_std_norm" not in h or h["val_emb_std_norm"].notna().sum() == 0:
        return _placeholder(path, "no self-supervised pretraining history")
    kinds = _kinds(h, "pretrain", "kind")
    family = (h["family"] if "family" in h else h["pretrain"].map(lambda p: family_of(kinds.get(p, p))))
    h = h.assign(_family=family.fillna("other").astype(str), _ctx=_context(h))
    fams = [f for f in FAMILIES if f in set(h["_family"])]
    fams += sorted(set(h["_family"]) - set(fams))
    contexts = sorted(set(h["_ctx"]))
    styles = dict(zip(contexts, ["-", "--", ":", "-."] * 4))
    knn = "val_knn_acc" in h and h["val_knn_acc"].notna().any()
    rows = [("val_emb_std_norm", "val embedding std · √d")]
    if knn:
        rows.append(("val_knn_acc", "online kNN accuracy (val)"))
    ncols = len(fams)
    fig, axes = plt.subplots(len(rows), ncols, figsize=(max(3.1 * ncols, 6.0), 2.5 * len(rows) + 1.6), squeeze=False,
                             sharey="row", layout="constrained")
    bad = collapse_flags(history, threshold)
    bad = bad[bad["collapsed"]].set_index("model_id")
    for c, fam in enumerate(fams):
        g = h[h["_family"] == fam]
        methods = method_order(g["pretrain"], kinds)
        colours = dict(zip(methods, sns.color_palette("colorblind" if len(methods) <= 10 else "husl", len(methods))))
        for r, (col, ylabel) in enumerate(rows):
            ax = axes[r, c]
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            drawn = False
            for m in methods:
                for ctx in contexts:
                    run = g[(g["pretrain"] == m) & (g["_ctx"] == ctx) & g[col].notna()]
                    if run.empty:
                        continue
                    st = run.groupby("epoch")[col].agg(["mean", "std"])
                    ax.plot(st.index, st["mean"], color=colours[m], ls=styles[ctx], marker="o", ms=3, lw=1.3)
                    if st["std"].fillna(0).gt(0).any():
                        ax.fill_between(st.index, st["mean"] - st["std"].fillna(0), st["mean"] + st["std"].fillna(0),
                                        color=colours[m], alpha=0.15, lw=0)
                    drawn = True
            if not drawn:
                ax.text(0.5, 0.5, f"no {col} logged", ha="center", va="center", transform=ax.transAxes, color="0.4")
            if r == 0:
                ax.set_title(_family_title(fam), fontsize=10)
                ax.axhline(threshold, ls="--", c="red", lw=1)
                mine = bad[bad.index.isin(set(g["model_id"]))]
                if len(mine):
                    ax.scatter(mine["epochs"], mine["final_std_norm"].clip(lower=1e-6), marker="x", c="red", s=40,
                               zorder=5)
            ax.set_ylabel(ylabel if c == 0 else "")
            ax.set_xlabel("epoch" if r == len(rows) - 1 else "")
        handles = [Line2D([], [], color=colours[m], marker="o", ms=3, label=method_label(m, kinds.get(m)))
                   for m in methods]
        axes[-1, c].legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.28), fontsize=8,
                           frameon=False, ncol=1 if len(handles) <= 5 else 2, title="method", title_fontsize=8)
    pos = h["val_emb_std_norm"][h["val_emb_std_norm"] > 0]
    if logy is None:
        logy = len(pos) > 0 and pos.max() / pos.min() > 10
    if logy:
        axes[0, 0].set_yscale("log")  # the row shares y
    keys = [Line2D([], [], ls="--", c="red", lw=1, label=f"collapse threshold {threshold:g}")]
    if len(bad):
        keys.append(Line2D([], [], ls="none", marker="x", c="red", label="collapsed run (final epoch)"))
    if len(contexts) > 1:
        keys += [Line2D([], [], ls=styles[ctx], c="0.3", label=ctx) for ctx in contexts]
    axes[0, 0].legend(handles=keys, loc="best", fontsize=7, framealpha=0.8)
    fig.suptitle("Self-supervised pretraining curves (mean over seeds, band: std)\nrepresentation spread "
                 "(~1 spread, -> 0 collapsed) and online kNN accuracy", fontsize=10)
    _save(fig, path)


def ssl_tsne(tsne: pd.DataFrame, path: Path, ncols: int = 6, max_points: int = TSNE_MAX_POINTS,
             kinds: dict[str, str] | None = None) -> None:
    """Grid of t-SNE scatter plots, one per pretrain variant (first seed), coloured by class: the
    frozen pretrained features first, then (when present) the features after fine-tuning.
    ``kinds``: pretrain variant -> kind (display order and labels; the metrics table has them)."""
    if tsne.empty:
        return _placeholder(path, "no t-SNE embeddings")
    first = tsne.groupby(["dataset", "backbone", "pretrain"])["seed"].transform("min")
    t = tsne[tsne["seed"] == first]
    t = t.assign(_ctx=_context(t))
    kinds = kinds or {}
    stages = [s for s in ("pretrained", "finetuned") if s in set(t["panel"])]
    stages += sorted(set(t["panel"]) - set(stages))
    titles = {"pretrained": "frozen pretrained features", "finetuned": "after fine-tuning"}
    names = (t[["label", "class"]].drop_duplicates().sort_values("label").set_index("label")["class"]
             if "class" in t else pd.Series({v: str(v) for v in sorted(pd.unique(t["label"]))}))
    labels = list(names.index)
    cmap = plt.get_cmap("tab10" if len(labels) <= 10 else "tab20" if len(labels) <= 20 else "viridis")
    colour = {lab: cmap(i / max(len(labels) - 1, 1)) if len(labels) > 20 else cmap(i) for i, lab in enumerate(labels)}

    blocks = []  # per panel kind: its points and its grid rows (each dataset/backbone starts a row)
    for stage in stages:
        s = t[t["panel"] == stage]
        groups = [[(d, b, p) for p in method_order(g["pretrain"], kinds)]
                  for (d, b), g in s.groupby(["dataset", "backbone"], sort=True)]
        blocks.append((stage, s, groups))
    ncols = max(1, min(ncols, max(len(k) for _, _, gs in blocks for k in gs)))
    nrows = [sum(math.ceil(len(k) / ncols) for k in gs) for _, _, gs in blocks]
    panel = 1.7
    fig = plt.figure(figsize=(panel * ncols, panel * sum(nrows) + 0.45 * len(blocks) + 0.8), layout="constrained")
    subfigs = fig.subfigures(len(blocks), 1, height_ratios=[r * panel + 0.45 for r in nrows], squeeze=False)
    rng = np.random.default_rng(0)
    for (stage, s, groups), rows, sf in zip(blocks, nrows, subfigs[:, 0]):
        sf.suptitle(f"t-SNE, {titles.get(stage, stage)}", fontsize=10)
        axes = sf.subplots(rows, ncols, squeeze=False)
        for ax in axes.flat:
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_visible(False)
        keys = [key for k in groups for key in k + [None] * (-len(k) % ncols)]  # pad each group to full rows
        for ax, key in zip(axes.flat, keys):
            if key is None:
                continue
            d, b, p = key
            pts = s[(s["dataset"] == d) & (s["backbone"] == b) & (s["pretrain"] == p)]
            if len(pts) > max_points:
                pts = pts.iloc[np.sort(rng.choice(len(pts), max_points, replace=False))]
            ax.set_visible(True)
            ax.scatter(pts["x"], pts["y"], c=[colour[v] for v in pts["label"]], s=5 if len(pts) <= 600 else 2,
                       alpha=0.8, lw=0, rasterized=True)
            ctx = pts["_ctx"].iloc[0] if len(pts) else ""
            label = method_label(p, kinds.get(p))
            ax.set_title(f"{label}\n{ctx}" if ctx else label, fontsize=7)
    handles = [Line2D([], [], ls="none", marker="o", ms=4, color=colour[lab], label=str(names[lab])) for lab in labels]
    fig.legend(handles=handles, loc="outside upper center", ncol=min(len(handles), 10), fontsize=8, frameon=False,
               title="class", title_fontsize=8)
    _save(fig, path)


def collapse_html(history: pd.DataFrame, threshold: float = COLLAPSE_THRESHOLD) -> str:
    """The collapsed pretraining runs as a red-flagged table, or one sentence saying none did."""
    flags = collapse_flags(history, threshold)
    bad = flags[flags["collapsed"]]
    if flags.empty:
        return "<p class='empty'>No collapse monitor (val_emb_std_norm) logged by any pretraining run.</p>"
    if bad.empty:
        return (f"<p>No pretraining run collapsed (final std·sqrt(d) ≥ {threshold:g} "
                f"for all {len(flags)} runs).</p>")
    table = bad.drop(columns=["collapsed"]).rename(columns=lambda c: c.replace("_", " "))
    return (f"<p class='alert'>WARNING: {len(bad)} of {len(flags)} pretraining runs collapsed "
            f"(final std·sqrt(d) &lt; {threshold:g}); their probes measure a collapsed representation.</p>"
            + table.to_html(index=False, border=0, classes="alert-table", float_format="{:.4f}".format))


def render(tables: Tables, figures: Path) -> list[str]:
    """HTML parts of the section (empty list when the config has no SSL models)."""
    from dlbench.report.findings.base import findings_html
    from dlbench.report.html import section_figures

    summary = ssl_summary(tables["metrics"])
    if not (summary["pretrain"] != "none").any():
        return []
    parts = [findings_html(tables, SECTION.key),
             "<h3>Protocols</h3><p>Mean ± std over seeds. OOD: mean over shift kinds of the mean accuracy "
             "over each kind's splits (one style split weighs as much as the whole corruption suite).</p>",
             protocol_table(summary).to_html(classes="results", border=0)]
    efficiency = label_efficiency(tables["metrics"])
    if len(efficiency):
        parts += ["<h3>Label efficiency</h3><p>ID accuracy (mean ± std over seeds) with a class-balanced share of "
                  "the labeled train split; 100%: the protocol's main variant above.</p>",
                  label_efficiency_table(efficiency).to_html(classes="results", border=0)]
    parts += ["<h3>Representation collapse</h3>", collapse_html(tables["history"])]
    return parts + section_figures(SECTION, figures)


SECTION = register_section(Section(
    "ssl", "Self-supervised pretraining",
    "Pretext tasks, contrastive and self-distillation methods, MAE; probes and fine-tuning.", order=20,
    figures=(
        Figure("ssl_protocols.png", "ID accuracy (top) and mean OOD accuracy over shift kinds (bottom) per "
               "pretraining method and adaptation variant, mean ± std over seeds. Dashed line and band: supervised "
               "training from scratch on the same backbone. 'random init': the untrained backbone.",
               lambda tables, path: ssl_protocols(tables["metrics"], path)),
        Figure("ssl_collapse.png", "Pretraining curves, one column per pretraining family. Top: std of "
               "l2-normalised validation embeddings x sqrt(dim) (~1 well spread, -> 0 collapsed; dashed red: "
               "collapse threshold; red x: a collapsed run's final value). Bottom: online kNN accuracy on the val "
               "split. Mean over seeds, band: std; line style per backbone when there are several.",
               lambda tables, path: ssl_collapse(tables["history"], path)),
        Figure("ssl_label_efficiency.png", "Label efficiency: ID accuracy against the share of the labeled train "
               "split used by the linear probe (solid) and by fine-tuning (dashed), log x axis, one colour per "
               "pretraining method, mean ± std over seeds (error bars). Each class contributes round(share x its "
               "images), at least 1, the same class-balanced images for every method and protocol of a seed (on "
               "the embedded shapes set, 100 train images per class: 1, 10 and 100 per class at 1%, 10%, 100%). "
               "The 100% point is the method's main full-data variant; the validation split is always whole. "
               "Dotted: chance; dash-dot: supervised training from scratch on all labels.",
               lambda tables, path: ssl_label_efficiency(tables["metrics"], path)),
        Figure("ssl_tsne.png", "t-SNE of a class-balanced subset of the test split per method (first seed), "
               "coloured by class: frozen pretrained features, and after fine-tuning where available.",
               lambda tables, path: ssl_tsne(tables["tsne"], path,
                                             kinds=_kinds(tables["metrics"], "pretrain", "pretrain_kind"))),
    ), render=render))
