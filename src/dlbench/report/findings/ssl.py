"""The SSL section's claims (homework 2/3, Kumar et al. 2022, He et al. 2022), checked on the tables.

All numbers come from ``dlbench.report.ssl``'s summary (per dataset, backbone, pretrain variant,
adapt variant: mean and std over seeds of ID accuracy and of OOD accuracy, the latter the mean
over OOD shift kinds of the mean over each kind's splits) and its collapse helper, so a finding
and the section's tables always agree. Rows are matched by kind, never by name: "linear probe" is
adapt kind ``linear``, "random init" pretrain kind ``random``, "supervised from scratch" pretrain
``none`` + adapt kind ``supervised``. Where a sweep has several variants of one adapt kind, the
variant named like the kind is used (else the first by name), the same for every method of a
(dataset, backbone), so both sides of a comparison were trained alike.

Only models trained on the full labeled split count for claims 1-3 and 5: rows whose ``fraction``
knob (label fraction) is set and below 1 are dropped first. Claim 4 reads the pretraining history,
where no labels are used.

Thresholds are constants with their source; they are never tuned on the results.
"""

from __future__ import annotations

import pandas as pd

from dlbench.report.findings.base import EPS, Claim, Verdict, mean_std, points, register_claim, stats
from dlbench.report.findings.base import f3 as _f3
from dlbench.report.sections import Tables
from dlbench.report.ssl import COLLAPSE_THRESHOLD, FAMILIES, collapse_flags, method_label, ssl_summary

# homework 2/3: "every SSL method's linear probe beats random init + linear probe by >= 10 points"
PROBE_MARGIN = 0.10
# homework 3: SSL + fine-tuning "beats" supervised from scratch ("several % higher"); no margin is
# stated for the claim, so strictly higher mean ID accuracy counts
FINETUNE_MARGIN = 0.0
# Kumar et al. 2022: LP-FT is "at least as good" as fine-tuning OOD: mean LP-FT >= mean FT, no tolerance
LPFT_TOLERANCE = 0.0
# He et al. 2022: MAE + fine-tuning beats a randomly initialised ViT + fine-tuning; strictly higher mean
MAE_MARGIN = 0.0
MAJORITY = 0.5  # homework 3, "most methods": more than half of the testable methods
SECTION = "ssl"
BASELINES = ("random", "none")  # pretrain kinds that are not self-supervised methods


def full_labels(metrics: pd.DataFrame) -> pd.DataFrame:
    """The rows trained on the full labeled split: ``fraction`` knob absent, null or >= 1."""
    if "fraction" not in metrics:
        return metrics
    frac = pd.to_numeric(metrics["fraction"], errors="coerce").astype("Float64")
    return metrics[(frac.isna() | (frac >= 1)).fillna(True).to_numpy(dtype=bool)]


def _summary(tables: Tables) -> pd.DataFrame:
    return ssl_summary(full_labels(tables["metrics"]))


def _pick(names: pd.Series, kind_names: pd.Series, kind: str) -> str | None:
    """The variant of ``kind`` to compare at: the one named like the kind, else the first by name."""
    found = sorted(set(names[kind_names == kind]))
    return None if not found else kind if kind in found else found[0]


def _row(g: pd.DataFrame, pretrain: str | None, adapt: str | None) -> pd.Series | None:
    if pretrain is None or adapt is None:
        return None
    r = g[(g["pretrain"] == pretrain) & (g["adapt"] == adapt)]
    return None if r.empty else r.iloc[0]


def _side(row: pd.Series, acc: str = "id") -> dict:
    return stats(row[f"{acc}_acc_mean"], row[f"{acc}_acc_std"], row["seeds"])


def _text(row: pd.Series, acc: str = "id") -> str:
    return mean_std(row[f"{acc}_acc_mean"], row[f"{acc}_acc_std"], row["seeds"])


class _Groups:
    """The summary by (dataset, backbone), with the variant names each comparison uses."""

    def __init__(self, summary: pd.DataFrame) -> None:
        self.summary = summary
        self.groups = list(summary.groupby(["dataset", "backbone"], sort=True)) if len(summary) else []
        self.many = len(self.groups) > 1
        self.vary = [c for c in ("dataset", "backbone") if len(summary) and summary[c].nunique() > 1]

    def label(self, row: pd.Series) -> str:
        """A method's name in the evidence text, with its dataset / backbone where those vary."""
        name = method_label(row["pretrain"], row["pretrain_kind"])
        return f"{name} ({'/'.join(str(row[c]) for c in self.vary)})" if self.vary else name

    @staticmethod
    def subject(row: pd.Series) -> str:
        return f"{row['dataset']}/{row['backbone']}/{row['pretrain']}"

    @staticmethod
    def adapt(g: pd.DataFrame, kind: str) -> str | None:
        ssl = g[~g["pretrain_kind"].isin(["none"])]
        return _pick(ssl["adapt"], ssl["adapt_kind"], kind)

    @staticmethod
    def random(g: pd.DataFrame) -> str | None:
        return _pick(g["pretrain"], g["pretrain_kind"], "random")

    @staticmethod
    def methods(g: pd.DataFrame, adapt: str | None) -> pd.DataFrame:
        """The SSL methods' rows at adapt variant ``adapt`` (display order kept)."""
        return g[~g["pretrain_kind"].isin(BASELINES) & (g["adapt"] == adapt)]


def _family_order(families: set[str]) -> list[str]:
    known = [f for f in FAMILIES if f != "baseline" and f in families]
    return known + sorted(families - set(known))


# ---------------------------------------------------------------- 1. linear probe vs random init


def probe_beats_random(tables: Tables, margin: float = PROBE_MARGIN) -> list[Verdict]:
    groups = _Groups(_summary(tables))
    out, tested = [], []  # tested: (row, diff, holds) of the testable methods
    for (dataset, backbone), g in groups.groups:
        lp = groups.adapt(g, "linear")
        ref = _row(g, groups.random(g), lp)
        for _, m in groups.methods(g, lp).iterrows():
            name, subject = groups.label(m), groups.subject(m)
            if ref is None or pd.isna(ref["id_acc_mean"]) or pd.isna(m["id_acc_mean"]):
                out.append(Verdict(None, f"{name}: no random-init linear probe on {dataset}/{backbone}",
                                   {"method": _side(m)}, subject))
                continue
            diff = m["id_acc_mean"] - ref["id_acc_mean"]
            holds = bool(diff >= margin - EPS)
            tested.append((m, diff, holds))
            out.append(Verdict(holds, f"{name} LP {_text(m)} vs random {_text(ref)} ({points(diff)} "
                                      f"{'≥' if holds else '<'} {100 * margin:g})",
                               {"method": _side(m), "random": _side(ref), "diff": diff, "margin": margin,
                                "family": m["family"], "adapt": lp, "random_variant": ref["pretrain"]}, subject))
    if not tested:
        return [*out, Verdict(None, "no SSL linear probe with a random-init linear probe on the same backbone",
                              {"margin": margin})]
    n_holds = sum(h for _, _, h in tested)
    best, parts = {}, []
    for fam in _family_order({str(m["family"]) for m, _, _ in tested}):
        m, diff, holds = max((t for t in tested if str(t[0]["family"]) == fam), key=lambda t: t[0]["id_acc_mean"])
        best[fam] = {"method": groups.subject(m), "diff": diff, "holds": holds}
        parts.append(f"{fam} {groups.label(m)} {'✓' if holds else '✗'} {points(diff)}")
    missing = [f for f in FAMILIES if f != "baseline" and f not in best]
    text = (f"{n_holds} of {len(tested)} methods beat random init by ≥ {100 * margin:g} pts; "
            f"best per family: {', '.join(parts)}" + (f"; not in this config: {', '.join(missing)}" if missing else ""))
    return [*out, Verdict(n_holds == len(tested), text, {"n_methods": len(tested), "n_holds": n_holds,
                                                        "margin": margin, "best_per_family": best,
                                                        "families_missing": missing})]


# ---------------------------------------------------------------- 2. SSL + FT vs supervised from scratch


def finetune_beats_supervised(tables: Tables, margin: float = FINETUNE_MARGIN) -> list[Verdict]:
    groups = _Groups(_summary(tables))
    out, per_group, untestable = [], {}, []
    for (dataset, backbone), g in groups.groups:
        ft = groups.adapt(g, "finetune")
        sups = g[g["pretrain_kind"] == "none"]
        sup = _row(g, "none", _pick(sups["adapt"], sups["adapt_kind"], "supervised"))
        methods = groups.methods(g, ft)
        rows = []
        for _, m in methods.iterrows():
            name, subject = groups.label(m), groups.subject(m)
            if sup is None or pd.isna(sup["id_acc_mean"]) or pd.isna(m["id_acc_mean"]):
                out.append(Verdict(None, f"{name}: no supervised-from-scratch run on {dataset}/{backbone}",
                                   {"method": _side(m)}, subject))
                continue
            diff = m["id_acc_mean"] - sup["id_acc_mean"]
            holds = bool(diff > margin + EPS)
            rows.append((m, diff, holds))
            out.append(Verdict(holds, f"{name} FT {_text(m)} vs supervised {_text(sup)} ({points(diff)})",
                               {"method": _side(m), "supervised": _side(sup), "diff": diff, "adapt": ft,
                                "supervised_variant": sup["adapt"]}, subject))
        if rows:
            per_group[(dataset, backbone)] = (rows, sup)
        elif len(methods):
            n = len(methods)
            untestable.append(f"{dataset}/{backbone} (no supervised run; {n} method{'s' * (n != 1)} not testable)")
    if not per_group:
        return [*out, Verdict(None, "no SSL fine-tuning run with a supervised-from-scratch run on the same backbone",
                              {"margin": margin})]
    texts, numbers, holds_all = [], {}, True
    for (dataset, backbone), (rows, sup) in per_group.items():
        m, diff, best_holds = max(rows, key=lambda t: t[0]["id_acc_mean"])
        n_holds = sum(h for _, _, h in rows)
        majority = n_holds > MAJORITY * len(rows)
        holds_all &= best_holds and majority
        where = f"{dataset}/{backbone}: " if groups.many else ""
        texts.append(f"{where}best {method_label(m['pretrain'], m['pretrain_kind'])} FT {_text(m)} vs supervised "
                     f"{_text(sup)} ({points(diff)}, {'beats' if best_holds else 'does not beat'} it); {n_holds} of "
                     f"{len(rows)} methods beat it (majority: {'yes' if majority else 'no'})")
        numbers[f"{dataset}/{backbone}"] = {"best": groups.subject(m), "best_diff": diff, "best_holds": best_holds,
                                           "n_methods": len(rows), "n_holds": n_holds, "majority": majority,
                                           "supervised": _side(sup)}
    if untestable:
        texts.append("not testable: " + ", ".join(untestable))
    return [*out, Verdict(holds_all, "; ".join(texts), {"groups": numbers, "margin": margin})]


# ---------------------------------------------------------------- 3. LP-FT vs FT out of distribution


def lpft_ood_at_least_finetune(tables: Tables, tolerance: float = LPFT_TOLERANCE) -> list[Verdict]:
    groups = _Groups(_summary(tables))
    out, tested = [], []
    for (dataset, backbone), g in groups.groups:
        ft, lpft = groups.adapt(g, "finetune"), groups.adapt(g, "lpft")
        either = g[~g["pretrain_kind"].isin(BASELINES) & g["adapt"].isin([lpft, ft])]
        for _, m in either.drop_duplicates("pretrain").iterrows():
            name, subject = groups.label(m), groups.subject(m)
            a, b = _row(g, m["pretrain"], lpft), _row(g, m["pretrain"], ft)
            if a is None or b is None or pd.isna(a["ood_acc_mean"]) or pd.isna(b["ood_acc_mean"]):
                why = ("no LP-FT run" if a is None else "no fine-tuning run" if b is None else "no OOD splits")
                out.append(Verdict(None, f"{name}: {why}", {}, subject))
                continue
            diff = a["ood_acc_mean"] - b["ood_acc_mean"]
            holds = bool(diff >= -tolerance - EPS)
            tested.append((m, diff, holds))
            out.append(Verdict(holds, f"{name} OOD LP-FT {_text(a, 'ood')} vs FT {_text(b, 'ood')} ({points(diff)})",
                               {"lpft": _side(a, "ood"), "finetune": _side(b, "ood"), "diff": diff,
                                "lpft_variant": lpft, "finetune_variant": ft}, subject))
    if not tested:
        return [*out, Verdict(None, "no SSL method with both LP-FT and fine-tuning runs on OOD splits",
                              {"tolerance": tolerance})]
    n_holds = sum(h for _, _, h in tested)
    worst_m, worst, _ = min(tested, key=lambda t: t[1])
    text = (f"{n_holds} of {len(tested)} methods: mean OOD accuracy of LP-FT ≥ FT; "
            f"{'smallest' if worst >= 0 else 'largest'} {'margin' if worst >= 0 else 'shortfall'}: "
            f"{groups.label(worst_m)} {points(worst)}")
    return [*out, Verdict(n_holds == len(tested), text, {"n_methods": len(tested), "n_holds": n_holds,
                                                        "worst": groups.subject(worst_m), "worst_diff": worst,
                                                        "tolerance": tolerance})]


# ---------------------------------------------------------------- 4. no representation collapse


def no_collapse(tables: Tables, threshold: float = COLLAPSE_THRESHOLD) -> list[Verdict]:
    history = tables["history"]
    if "pretrain" in history:
        kind = history["pretrain_kind"].fillna(history["pretrain"]) if "pretrain_kind" in history else history["pretrain"]
        history = history[kind != "random"]  # the untrained baseline is not a pretraining run
    flags = collapse_flags(history, threshold)
    out = []
    for r in flags.itertuples():
        collapsed = bool(r.collapsed)
        out.append(Verdict(not collapsed, f"{r.model_id}: final std·√d {_f3(r.final_std_norm)} "
                                          f"{'<' if collapsed else '≥'} {threshold:g} (epoch {int(r.epochs)})",
                           {"final_std_norm": r.final_std_norm, "min_std_norm": r.min_std_norm,
                            "epochs": int(r.epochs), "threshold": threshold}, r.model_id))
    if flags.empty:
        return [Verdict(None, "no pretraining run logged the collapse monitor (val_emb_std_norm)",
                        {"threshold": threshold})]
    bad = flags[flags["collapsed"]]
    low = flags.loc[flags["final_std_norm"].idxmin()]
    if bad.empty:
        text = (f"0 of {len(flags)} pretraining runs collapsed (threshold {threshold:g}); lowest final std·√d "
                f"{_f3(low['final_std_norm'])}: {low['pretrain']} seed {int(low['seed'])}")
    else:
        runs = ", ".join(f"{r.pretrain} seed {int(r.seed)} ({_f3(r.final_std_norm)})" for r in bad.itertuples())
        text = f"{len(bad)} of {len(flags)} pretraining runs collapsed (final std·√d < {threshold:g}): {runs}"
    return [*out, Verdict(bad.empty, text, {"n_runs": len(flags), "n_collapsed": len(bad), "threshold": threshold,
                                            "collapsed": bad["model_id"].tolist()})]


# ---------------------------------------------------------------- 5. MAE vs random-init ViT, fine-tuned


def _num_classes(metrics: pd.DataFrame, row: pd.Series) -> int | None:
    """The number of classes of a summary row's models (metrics' ``num_classes``), None if unknown."""
    if "num_classes" not in metrics:
        return None
    m = metrics[(metrics["dataset"] == row["dataset"]) & (metrics["backbone"] == row["backbone"])
                & (metrics["pretrain"] == row["pretrain"]) & (metrics["adapt"] == row["adapt"])]
    values = pd.to_numeric(m["num_classes"], errors="coerce").dropna().unique()
    return int(values[0]) if len(values) == 1 and values[0] > 0 else None


def mae_beats_random_vit(tables: Tables, margin: float = MAE_MARGIN) -> list[Verdict]:
    metrics = full_labels(tables["metrics"])
    groups = _Groups(ssl_summary(metrics))
    out, tested = [], []
    for (dataset, backbone), g in groups.groups:
        maes = g[g["pretrain_kind"] == "mae"]
        if maes.empty:
            continue
        ft = groups.adapt(g, "finetune")
        ref = _row(g, groups.random(g), ft)
        for pretrain in dict.fromkeys(maes["pretrain"]):
            m = _row(g, pretrain, ft)
            subject = f"{dataset}/{backbone}/{pretrain}"
            if m is None or ref is None or pd.isna(m["id_acc_mean"]) or pd.isna(ref["id_acc_mean"]):
                why = "no fine-tuned MAE" if m is None else "no fine-tuned random-init backbone"
                out.append(Verdict(None, f"{pretrain} on {dataset}/{backbone}: {why}", {}, subject))
                continue
            diff = m["id_acc_mean"] - ref["id_acc_mean"]
            holds = bool(diff > margin + EPS)
            k = _num_classes(metrics, ref)
            chance = (f"random-init {backbone} FT = {ref['id_acc_mean'] * k:.1f}× chance (1/{k})" if k
                      else "chance level unknown (metrics.parquet has no num_classes)")
            text = f"{groups.label(m)} FT {_text(m)} vs random-init FT {_text(ref)} ({points(diff)}); {chance}"
            tested.append(holds)
            out.append(Verdict(holds, text, {"mae": _side(m), "random": _side(ref), "diff": diff,
                                             "num_classes": k, "random_x_chance": ref["id_acc_mean"] * k if k else None,
                                             "adapt": ft}, subject))
    if not out:
        return [Verdict(None, "no MAE runs (pretrain kind mae) in this config", {"margin": margin})]
    if not tested:
        return [*out, Verdict(None, "; ".join(v.evidence for v in out), {"margin": margin})]
    text = out[0].evidence if len(out) == 1 else f"{sum(tested)} of {len(tested)} MAE runs beat random init"
    return [*out, Verdict(all(tested), text, {"n_holds": sum(tested), "n_total": len(tested), "margin": margin})]


for _claim in (
    Claim("ssl.probe_beats_random",
          "Every self-supervised method's linear probe beats a linear probe on the random-init backbone by at least "
          "10 points of ID accuracy.",
          "Course homework 2 and 3",
          "Per method and (dataset, backbone): mean ID accuracy over seeds, adapt kind linear, the method vs "
          "pretrain kind random; holds when the difference is ≥ 10 points for every method.",
          SECTION, probe_beats_random, order=1),
    Claim("ssl.finetune_beats_supervised",
          "Self-supervised pretraining + fine-tuning beats supervised training from scratch (ID), for the best "
          "method and for most methods.",
          "Course homework 3 (\"several % higher\" than supervised from scratch)",
          "Per method: mean ID accuracy over seeds, adapt kind finetune vs pretrain none + adapt kind supervised on "
          "the same dataset and backbone (methods on a backbone without a supervised run are not testable); holds "
          "when the best method beats it and more than half of the methods do.",
          SECTION, finetune_beats_supervised, order=2),
    Claim("ssl.lpft_ood_at_least_finetune",
          "LP-FT is at least as good as fine-tuning out of distribution.",
          "Kumar et al. 2022, \"Fine-Tuning can Distort Pretrained Features and Underperform Out-of-Distribution\"",
          "Per SSL method (random init excluded: it has no pretrained features to distort): mean over seeds of OOD "
          "accuracy (mean over OOD shift kinds, corruption and style, of each kind's mean), adapt kind lpft vs "
          "finetune; holds when LP-FT ≥ FT for every method, no tolerance.",
          SECTION, lpft_ood_at_least_finetune, order=3),
    Claim("ssl.no_collapse",
          "No self-supervised pretraining run collapses.",
          "Course homework (collapse check: std of l2-normalised embeddings x sqrt(d))",
          f"Every pretraining run and seed (the untrained random init excluded): the final epoch's val_emb_std_norm "
          f"≥ {COLLAPSE_THRESHOLD:g} (~1 well spread, -> 0 collapsed).",
          SECTION, no_collapse, order=4),
    Claim("ssl.mae_beats_random_vit",
          "MAE pretraining + fine-tuning beats a randomly initialised ViT + fine-tuning (ID).",
          "He et al. 2022, \"Masked Autoencoders Are Scalable Vision Learners\"",
          "Pretrain kind mae vs random on the same (ViT) backbone, adapt kind finetune: mean ID accuracy over "
          "seeds; the random-init ViT's accuracy is also given in multiples of chance (1 / number of classes).",
          SECTION, mae_beats_random_vit, order=5),
):
    register_claim(_claim)
