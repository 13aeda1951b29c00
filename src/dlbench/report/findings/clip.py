"""The CLIP section's claims (Radford et al. 2021 / Taori et al. 2020, Wortsman et al. 2022, Kumar et al.
2022, Nam et al. 2024, Goyal et al. 2022), checked per (dataset, backbone, pretrain variant, OOD shift kind) on ``dlbench.report.clip``'s
summary, so the findings and the section's tables always agree. Rows are matched by kind and lineage:
"zero-shot" is adapt kind ``zeroshot``; "fine-tuning" is the kind-``finetune`` variant that starts from
the zero-shot model (its parent; wise-ft's protocol), else the one named ``finetune``, else the first by
name; "LP-FT", "Lipsum-FT" and "FLYP" kinds ``lpft``, ``lipsum`` and ``flyp`` (named like the kind, else the first); WiSE-FT the kind-``wiseft`` models whose
end (last parent) is that fine-tune. Thresholds are constants with their source; never tuned on the
results.

"""

from __future__ import annotations

import pandas as pd

from dlbench.ids import ModelId
from dlbench.report.clip import clip_rows, clip_summary
from dlbench.report.findings.base import EPS, Claim, Verdict, mean_std, points, register_claim, stats
from dlbench.report.sections import Tables

SECTION = "clip"
# Wortsman et al. 2022: WiSE-FT improves OOD over both endpoints "without decreasing ID accuracy"; the
# course allows 1 point of ID accuracy below the fine-tuned model
WISE_ID_TOLERANCE = 0.01
LPFT_TOLERANCE = 0.0  # Kumar et al. 2022: LP-FT "at least as good" OOD as fine-tuning
LIPSUM_TOLERANCE = 0.0  # Nam et al. 2024: Lipsum-FT improves OOD over fine-tuning
FLYP_TOLERANCE = 0.0  # Goyal et al. 2022: FLYP improves OOD over fine-tuning
LORA_ID_TOLERANCE = 0.02  # course homework: LoRA within 2 points of full fine-tuning ID ...
LORA_PARAM_SHARE = 0.10  # ... with under 10% of its trainable parameters (Hu et al. 2022 report far less)


def _side(row: pd.Series, acc: str) -> dict:
    return stats(row[f"{acc}_mean"], row[f"{acc}_std"], row["seeds"])


def _text(row: pd.Series, acc: str) -> str:
    return mean_std(row[f"{acc}_mean"], row[f"{acc}_std"], row["seeds"])


def _pick(g: pd.DataFrame, kind: str) -> pd.DataFrame:
    """The rows of the variant of ``kind`` to compare at: the one named like the kind, else the first by name."""
    names = sorted(set(g.loc[g["kind"] == kind, "adapt"]))
    if not names:
        return g.iloc[0:0]
    return g[g["adapt"] == (kind if kind in names else names[0])]


def _first_parent_adapt(metrics: pd.DataFrame, key: tuple, variant: str) -> str | None:
    """The adapt slot of the first parent of ``variant``'s models in (dataset, backbone, pretrain)."""
    if "parents" not in metrics:
        return None
    dataset, backbone, pretrain, _ = key
    m = metrics[(metrics["dataset"] == dataset) & (metrics["backbone"] == backbone) & (metrics["pretrain"] == pretrain)
                & (metrics["adapt"] == variant)]
    for ps in m["parents"]:
        if len(ps):
            return ModelId.parse(str(list(ps)[0])).adapt
    return None


def _finetune(g: pd.DataFrame, metrics: pd.DataFrame, key: tuple) -> pd.DataFrame:
    """The fine-tune to compare: the one that starts from the zero-shot model, else ``_pick``'s."""
    zeroshots = set(g.loc[g["kind"] == "zeroshot", "adapt"])
    from_zs = sorted(a for a in set(g.loc[g["kind"] == "finetune", "adapt"])
                     if _first_parent_adapt(metrics, key, a) in zeroshots)
    return g[g["adapt"] == from_zs[0]] if from_zs else _pick(g, "finetune")


def _groups(tables: Tables):
    s = clip_summary(tables["metrics"])
    return [] if s.empty else list(s.groupby(["dataset", "backbone", "pretrain", "shift"], sort=False))


def _subject(key: tuple) -> str:
    dataset, backbone, pretrain, shift = key
    return f"{dataset}/{backbone}/{pretrain} ({shift})"


def _summarise(out: list[Verdict], what: str, numbers: dict) -> list[Verdict]:
    tested = [v.holds for v in out if v.holds is not None]
    if not out:
        return [Verdict(None, f"no CLIP models with {what} in this config", numbers)]
    if not tested:
        return [*out, Verdict(None, "; ".join(v.evidence for v in out), numbers)]
    text = "; ".join(v.evidence for v in out if v.holds is not None)
    return [*out, Verdict(all(tested), f"{sum(tested)} of {len(tested)}: {text}",
                          {**numbers, "n_holds": sum(tested), "n_total": len(tested)})]


def zeroshot_more_robust(tables: Tables) -> list[Verdict]:
    metrics = clip_rows(tables["metrics"])
    out = []
    for key, g in _groups(tables):
        zs, ft = _pick(g, "zeroshot"), _finetune(g, metrics, key)
        if zs.empty or ft.empty or pd.isna(zs.iloc[0]["er_mean"]) or pd.isna(ft.iloc[0]["er_mean"]):
            why = ("no zero-shot model" if zs.empty else "no fine-tune" if ft.empty
                   else "no effective-robustness baseline (no supervised / SSL fine-tunes on this dataset)")
            out.append(Verdict(None, f"{_subject(key)}: {why}", {}, _subject(key)))
            continue
        z, f = zs.iloc[0], ft.iloc[0]
        diff = z["er_mean"] - f["er_mean"]
        holds = bool(diff > EPS)
        out.append(Verdict(holds, f"{key[3]}: ER zero-shot {points(z['er_mean'])} vs fine-tune {f['adapt']} "
                                  f"{points(f['er_mean'])}", {"zeroshot": _side(z, "er"), "finetune": _side(f, "er"),
                                                             "diff": diff}, _subject(key)))
    return _summarise(out, "a zero-shot model and a fine-tune", {})


def _curves_of(metrics: pd.DataFrame, key: tuple, finetune: str) -> set[str]:
    """The WiSE-FT variants (adapt names) of (dataset, backbone, pretrain) whose end is ``finetune``: their
    last parent (θ = (1-α)·parents[0] + α·parents[1]) is that fine-tune's model."""
    if "parents" not in metrics:
        return set()
    dataset, backbone, pretrain, _ = key
    m = metrics[(metrics["dataset"] == dataset) & (metrics["backbone"] == backbone) & (metrics["pretrain"] == pretrain)
                & (metrics["kind"] == "wiseft")].drop_duplicates("model_id")
    return {a for a, ps in zip(m["adapt"], m["parents"])
            if len(ps) and ModelId.parse(str(list(ps)[-1])).adapt == finetune}


def wiseft_beats_both_ends(tables: Tables, tolerance: float = WISE_ID_TOLERANCE) -> list[Verdict]:
    metrics = clip_rows(tables["metrics"])
    out = []
    for key, g in _groups(tables):
        ft = _finetune(g, metrics, key)
        if ft.empty:
            continue
        f = ft.iloc[0]
        # the WiSE-FT curve whose end is this fine-tune: wiseft models with it as their last parent
        wise = g[g["adapt"].isin(_curves_of(metrics, key, f["adapt"]))]
        zs_rows = _pick(g, "zeroshot")
        if wise.empty or zs_rows.empty:
            out.append(Verdict(None, f"{_subject(key)}: no WiSE-FT curve of {f['adapt']}" if wise.empty
                               else f"{_subject(key)}: no zero-shot model", {}, _subject(key)))
            continue
        z = zs_rows.iloc[0]
        alpha = pd.to_numeric(wise["alpha"], errors="coerce")
        mid = wise[(alpha > 0) & (alpha < 1)]
        best_ood = max(z["ood_acc_mean"], f["ood_acc_mean"])
        ok = mid[(mid["ood_acc_mean"] > best_ood + EPS) & (mid["id_acc_mean"] >= f["id_acc_mean"] - tolerance - EPS)]
        holds = not ok.empty
        pick = (ok.loc[ok["ood_acc_mean"].idxmax()] if holds else
                mid.loc[mid["ood_acc_mean"].idxmax()] if not mid.empty else None)
        if pick is None:
            out.append(Verdict(None, f"{_subject(key)}: no α strictly between 0 and 1", {}, _subject(key)))
            continue
        text = (f"{key[3]}: {'' if holds else 'no α does; best OOD '}α={float(pick['alpha']):g} OOD "
                f"{_text(pick, 'ood_acc')} vs zero-shot {_text(z, 'ood_acc')} / FT {_text(f, 'ood_acc')}, ID "
                f"{_text(pick, 'id_acc')} vs FT {_text(f, 'id_acc')}")
        out.append(Verdict(holds, text, {"alpha": float(pick["alpha"]), "wiseft": {"id": _side(pick, "id_acc"),
                                                                                    "ood": _side(pick, "ood_acc")},
                                         "zeroshot_ood": _side(z, "ood_acc"), "finetune": {
                                             "id": _side(f, "id_acc"), "ood": _side(f, "ood_acc")},
                                         "alphas_that_hold": sorted(float(a) for a in ok["alpha"]),
                                         "id_tolerance": tolerance}, _subject(key)))
    return _summarise(out, "a WiSE-FT curve of a fine-tune", {"id_tolerance": tolerance})


def ood_at_least_ft(tables: Tables, kind: str, label: str, tolerance: float = 0.0) -> list[Verdict]:
    """``kind``'s variant (``_pick``) ≥ the fine-tune OOD, per shift."""
    metrics = clip_rows(tables["metrics"])
    out = []
    for key, g in _groups(tables):
        other, ft = _pick(g, kind), _finetune(g, metrics, key)
        if other.empty or ft.empty:
            if not (other.empty and ft.empty):
                out.append(Verdict(None, f"{_subject(key)}: {'no ' + label if other.empty else 'no fine-tune'}", {},
                                   _subject(key)))
            continue
        a, b = other.iloc[0], ft.iloc[0]
        diff = a["ood_acc_mean"] - b["ood_acc_mean"]
        holds = bool(diff >= -tolerance - EPS)
        out.append(Verdict(holds, f"{key[3]}: {label} {_text(a, 'ood_acc')} vs FT {b['adapt']} "
                                  f"{_text(b, 'ood_acc')} ({points(diff)})",
                           {kind: _side(a, "ood_acc"), "finetune": _side(b, "ood_acc"), "diff": diff}, _subject(key)))
    return _summarise(out, f"{label} and fine-tuning", {"tolerance": tolerance})


def lpft_ood_at_least_ft(tables: Tables, tolerance: float = LPFT_TOLERANCE) -> list[Verdict]:
    return ood_at_least_ft(tables, "lpft", "LP-FT", tolerance)


def lipsum_ood_at_least_ft(tables: Tables, tolerance: float = LIPSUM_TOLERANCE) -> list[Verdict]:
    return ood_at_least_ft(tables, "lipsum", "Lipsum-FT", tolerance)


def flyp_ood_at_least_ft(tables: Tables, tolerance: float = FLYP_TOLERANCE) -> list[Verdict]:
    return ood_at_least_ft(tables, "flyp", "FLYP", tolerance)


def _trainable(metrics: pd.DataFrame, key: tuple, variant: str) -> float | None:
    dataset, backbone, pretrain, _ = key
    m = metrics[(metrics["dataset"] == dataset) & (metrics["backbone"] == backbone) & (metrics["pretrain"] == pretrain)
                & (metrics["adapt"] == variant)]
    values = pd.to_numeric(m["trainable_params"], errors="coerce").dropna() if "trainable_params" in m else []
    return float(values.mean()) if len(values) else None


def lora_close_to_ft(tables: Tables, tolerance: float = LORA_ID_TOLERANCE,
                     share: float = LORA_PARAM_SHARE) -> list[Verdict]:
    """LoRA's ID accuracy ≥ FT's − ``tolerance`` with trainable parameters < ``share`` x FT's. ID accuracy is
    the same on every shift's row; the verdict is per (dataset, backbone, pretrain), on its first shift."""
    metrics = clip_rows(tables["metrics"])
    out, seen = [], set()
    for key, g in _groups(tables):
        if key[:3] in seen:
            continue
        lo, ft = _pick(g, "lora"), _finetune(g, metrics, key)
        if lo.empty or ft.empty:
            if not (lo.empty and ft.empty):
                out.append(Verdict(None, f"{_subject(key)}: {'no LoRA' if lo.empty else 'no fine-tune'}", {},
                                   _subject(key)))
            continue
        seen.add(key[:3])
        a, b = lo.iloc[0], ft.iloc[0]
        pa, pb = _trainable(metrics, key, a["adapt"]), _trainable(metrics, key, b["adapt"])
        subject = "/".join(key[:3])
        if pa is None or not pb:
            out.append(Verdict(None, f"{subject}: trainable parameter counts missing", {}, subject))
            continue
        diff, ratio = a["id_acc_mean"] - b["id_acc_mean"], pa / pb
        holds = bool(diff >= -tolerance - EPS and ratio < share)
        out.append(Verdict(holds, f"LoRA ID {_text(a, 'id_acc')} vs FT {b['adapt']} {_text(b, 'id_acc')} "
                                  f"({points(diff)}) with {100 * ratio:.1f}% of its trainable parameters "
                                  f"({pa:,.0f} vs {pb:,.0f})",
                           {"lora": _side(a, "id_acc"), "finetune": _side(b, "id_acc"), "diff": diff,
                            "trainable_lora": pa, "trainable_finetune": pb, "param_share": ratio}, subject))
    return _summarise(out, "LoRA and fine-tuning", {"id_tolerance": tolerance, "param_share": share})


for _claim in (
    Claim("clip.zeroshot_effective_robustness",
          "Zero-shot CLIP has higher effective robustness than fine-tuned CLIP.",
          "Radford et al. 2021; Taori et al. 2020 (effective robustness); course lecture 1",
          "Per OOD shift kind: effective robustness (OOD accuracy above the logit-linear fit over the models "
          "trained on ID data only), mean over seeds, adapt kind zeroshot vs finetune; holds when zero-shot's is "
          "higher on every shift.", SECTION, zeroshot_more_robust, order=1),
    Claim("clip.wiseft_beats_both_ends",
          "WiSE-FT at some α strictly between 0 and 1 beats both endpoints OOD while staying within 1 point of the "
          "fine-tuned model ID.",
          "Wortsman et al. 2022 (WiSE-FT); course homework 1",
          "Per OOD shift kind: mean over seeds of the WiSE-FT models of the fine-tune (kind wiseft, α in (0, 1)) "
          "vs the zero-shot model and the fine-tune; holds when some α has OOD accuracy above both and ID "
          "accuracy ≥ fine-tune's − 1 point, on every shift.", SECTION, wiseft_beats_both_ends, order=2),
    Claim("clip.lpft_ood_at_least_ft",
          "LP-FT is at least as good as fine-tuning out of distribution (CLIP).",
          "Kumar et al. 2022",
          "Per OOD shift kind: mean OOD accuracy over seeds, adapt kind lpft vs finetune on the CLIP backbone; "
          "holds when LP-FT ≥ FT on every shift.", SECTION, lpft_ood_at_least_ft, order=3),
    Claim("clip.lipsum_ood_at_least_ft",
          "Lipsum-FT is at least as good as fine-tuning out of distribution.",
          "Nam et al. 2024 (Lipsum-FT); course homework 1",
          "Per OOD shift kind: mean OOD accuracy over seeds, adapt kind lipsum vs the fine-tune from the zero-shot "
          "head; holds when Lipsum-FT ≥ FT on every shift.", SECTION, lipsum_ood_at_least_ft, order=4),
    Claim("clip.flyp_ood_at_least_ft",
          "FLYP is at least as good as fine-tuning out of distribution.",
          "Goyal et al. 2022 (FLYP)",
          "Per OOD shift kind: mean OOD accuracy over seeds, adapt kind flyp vs the fine-tune from the zero-shot "
          "head; holds when FLYP ≥ FT on every shift.", SECTION, flyp_ood_at_least_ft, order=5),
    Claim("clip.lora_close_to_ft",
          "LoRA comes within 2 points of full fine-tuning in distribution with under 10% of its trainable "
          "parameters.",
          "Hu et al. 2022 (LoRA); course homework 1",
          "Mean ID test accuracy over seeds and trainable parameter counts (cards), adapt kind lora vs the fine-tune "
          "from the zero-shot head; holds when LoRA ≥ FT − 2 points and its trainable parameters < 10% of FT's.",
          SECTION, lora_close_to_ft, order=6),
):
    register_claim(_claim)
