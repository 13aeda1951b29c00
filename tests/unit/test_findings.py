"""Findings: the registry, the SSL claims' verdicts on hand-built tables (holding and failing), the
findings table, the report's findings boxes and summary line, and ``num_classes`` in metrics."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from dlbench.report.aggregate import summary_table
from dlbench.report.findings import ssl as fssl
from dlbench.report.findings.base import (CLAIMS, COLUMNS, Claim, Verdict, findings_table, load_all, read_findings,
                                          subject_table, write_findings)
from dlbench.report.html import write_report
from tests.unit.test_report_ssl import _model, frame, lineage, model_id, section_html, write_tables

R, V = "resnet10n", "vit_t"
SSL_CLAIMS = ["ssl.probe_beats_random", "ssl.finetune_beats_supervised", "ssl.lpft_ood_at_least_finetune",
              "ssl.no_collapse", "ssl.mae_beats_random_vit"]
# registered by findings/clip.py (tested in test_clip_findings.py); not testable on these SSL-only tables
CLIP_CLAIMS = ["clip.zeroshot_effective_robustness", "clip.wiseft_beats_both_ends", "clip.lpft_ood_at_least_ft",
               "clip.lipsum_ood_at_least_ft", "clip.flyp_ood_at_least_ft", "clip.lora_close_to_ft"]
FT_OOD = dict(corr=(0.40,), style=0.30)  # OOD .35 (mean of the corruption and style kinds)
LPFT_OOD = dict(corr=(0.45,), style=0.35)  # OOD .40


def seeds(pretrain: str, adapt: str, accs: tuple[float, ...], backbone: str = R, first: int = 0, **ood) -> list[dict]:
    return [r for i, a in enumerate(accs) for r in _model(pretrain, adapt, first + i, a, backbone=backbone, **ood)]


def metrics_rows(fail: bool = False, mae: bool = True) -> list[dict]:
    """The holding scenario, or (``fail``) the failing one: byol's probe misses the margin by 9 points,
    only one method's FT beats supervised, byol's LP-FT is below FT OOD, MAE FT below random-init FT."""
    rows = seeds("none", "supervised", (0.60, 0.62), corr=(0.4,), style=0.3)  # ID .61
    rows += seeds("random", "linear", (0.30, 0.32))  # ID .31
    rows += seeds("random", "finetune", (0.55, 0.57), **FT_OOD)
    lp = {"rotation": (0.45, 0.47), "simclr": (0.50, 0.52), "byol": (0.31, 0.33) if fail else (0.48, 0.50)}
    # holding: rotation .60 < .61 but 2 of 3 beat supervised (majority); failing: 1 of 3
    ft = {"rotation": (0.59, 0.61), "simclr": (0.70, 0.72), "byol": (0.58, 0.60) if fail else (0.68, 0.70)}
    for m in ("rotation", "simclr", "byol"):
        rows += seeds(m, "linear", lp[m])
        rows += seeds(m, "finetune", ft[m], **FT_OOD)
        bad = fail and m == "byol"
        rows += seeds(m, "lpft", ft[m], **(dict(corr=(0.30,), style=0.20) if bad else LPFT_OOD))
    rows += seeds("random", "linear", (0.20, 0.22), backbone=V)
    rows += seeds("random", "finetune", (0.30, 0.32), backbone=V)  # ID .31: 1.55x chance (5 classes)
    if mae:
        rows += seeds("mae", "linear", (0.35, 0.37), backbone=V)
        rows += seeds("mae", "finetune", (0.28, 0.30) if fail else (0.50, 0.52), backbone=V, corr=(0.3,))
        rows += seeds("mae", "lpft", (0.50, 0.52), backbone=V, corr=(0.3,))
    return rows


def history(collapse: bool = False) -> pd.DataFrame:
    rows = []

    def run(pretrain: str, seed: int, stds: list[float], backbone: str = R, adapt: str = "none"):
        for epoch, s in enumerate(stds, start=1):
            rows.append(dict(model_id=model_id("shapes", backbone, pretrain, adapt, seed), dataset="shapes",
                             backbone=backbone, pretrain=pretrain, adapt=adapt, ensemble="none", compress="none",
                             seed=seed, **lineage(pretrain, adapt, "shapes", backbone, seed), epoch=epoch,
                             train_loss=1.0 / epoch, val_emb_std_norm=s, val_knn_acc=0.3))

    for m in ("rotation", "simclr", "byol"):
        for seed in (0, 1):
            run(m, seed, [0.9, 0.02 if collapse and m == "byol" and seed == 1 else 0.6])
    for seed in (0, 1):
        run("mae", seed, [0.8, 0.7], backbone=V)
        run("random", seed, [0.0, 0.0])  # the untrained baseline: not a pretraining run, never 'collapsed'
    run("simclr", 0, [0.01], adapt="linear")  # an adapt run's history: not pretraining
    return pd.DataFrame(rows)


def tables(fail: bool = False, mae: bool = True, collapse: bool | None = None) -> dict[str, pd.DataFrame]:
    m = frame(metrics_rows(fail, mae))
    return {"metrics": m, "history": history(fail if collapse is None else collapse), "summary": summary_table(m)}


def by_subject(verdicts: list[Verdict]) -> tuple[Verdict, dict[str, Verdict]]:
    top = [v for v in verdicts if v.subject is None]
    assert len(top) == 1
    return top[0], {v.subject.rsplit("/", 1)[-1] if v.subject.count("/") == 2 else v.subject: v
                    for v in verdicts if v.subject is not None}


# ---------------------------------------------------------------- registry


def test_ssl_claims_registered_in_report_order():
    claims = load_all()
    assert [c.key for c in claims if c.section == "ssl"] == SSL_CLAIMS
    for c in claims:
        assert c.claim and c.source and c.comparison and callable(c.check)
    assert set(SSL_CLAIMS) <= set(CLAIMS)
    with pytest.raises(ValueError, match="registered twice"):
        fssl.register_claim(CLAIMS.get("ssl.no_collapse"))


def test_thresholds_are_the_sources():
    assert fssl.PROBE_MARGIN == 0.10 and fssl.FINETUNE_MARGIN == 0 and fssl.LPFT_TOLERANCE == 0
    assert fssl.MAE_MARGIN == 0 and fssl.COLLAPSE_THRESHOLD == 0.05


# ---------------------------------------------------------------- claim 1


def test_probe_beats_random_holds():
    top, subs = by_subject(fssl.probe_beats_random(tables()))
    assert top.holds is True and set(subs) == {"rotation", "simclr", "byol", "mae"}
    assert all(v.holds for v in subs.values())
    simclr = subs["simclr"]
    assert simclr.numbers["diff"] == pytest.approx(0.20)
    assert simclr.numbers["method"] == {"mean": pytest.approx(0.51), "std": pytest.approx(math.sqrt(2e-4)),
                                        "seeds": 2}
    assert simclr.evidence == "simclr (resnet10n) LP .510±.014 vs random .310±.014 (+20.0 pts ≥ 10)"
    # MAE is compared with the random init of its own backbone (vit_t: .21)
    assert subs["mae"].numbers["random"]["mean"] == pytest.approx(0.21)
    assert top.evidence.startswith("4 of 4 methods beat random init by ≥ 10 pts; best per family: pretext rotation")
    assert set(top.numbers["best_per_family"]) == {"pretext", "contrastive", "self_distillation", "masked"}


def test_probe_beats_random_one_method_misses_by_9_points():
    top, subs = by_subject(fssl.probe_beats_random(tables(fail=True)))
    assert top.holds is False and top.numbers["n_holds"] == 3 and top.numbers["n_methods"] == 4
    byol = subs["byol"]
    assert byol.holds is False and byol.numbers["diff"] == pytest.approx(0.01)  # 9 points short of 10
    assert "(+1.0 pts < 10)" in byol.evidence
    assert subs["rotation"].holds and subs["simclr"].holds and subs["mae"].holds
    assert "3 of 4 methods" in top.evidence and "self_distillation byol (resnet10n) ✗ +1.0 pts" in top.evidence
    assert top.numbers["best_per_family"]["self_distillation"]["holds"] is False
    assert top.numbers["best_per_family"]["contrastive"]["holds"] is True


def test_probe_threshold_is_inclusive_despite_floats():
    rows = seeds("random", "linear", (0.4,)) + seeds("simclr", "linear", (0.5,))  # .5 - .4 = .0999... in floats
    top, subs = by_subject(fssl.probe_beats_random({"metrics": frame(rows)}))
    assert subs["simclr"].holds is True and top.holds is True
    assert "1 seed, no std" in subs["simclr"].evidence and subs["simclr"].numbers["method"]["std"] is None


# ---------------------------------------------------------------- claim 2


def test_finetune_beats_supervised_majority_holds():
    top, subs = by_subject(fssl.finetune_beats_supervised(tables()))
    assert top.holds is True
    assert subs["rotation"].holds is False and subs["simclr"].holds and subs["byol"].holds  # 2 of 3: a majority
    assert subs["mae"].holds is None and "no supervised-from-scratch run on shapes/vit_t" in subs["mae"].evidence
    g = top.numbers["groups"]["shapes/resnet10n"]
    assert g["best"] == "shapes/resnet10n/simclr" and g["best_holds"] and g["n_holds"] == 2 and g["majority"]
    assert g["best_diff"] == pytest.approx(0.10)
    assert "2 of 3 methods beat it (majority: yes)" in top.evidence and "not testable: shapes/vit_t" in top.evidence


def test_finetune_beats_supervised_best_holds_majority_fails():
    top, subs = by_subject(fssl.finetune_beats_supervised(tables(fail=True)))
    assert top.holds is False
    assert [subs[m].holds for m in ("rotation", "simclr", "byol")] == [False, True, False]
    g = top.numbers["groups"]["shapes/resnet10n"]
    assert g["best_holds"] and not g["majority"] and "1 of 3 methods beat it (majority: no)" in top.evidence


def test_finetune_majority_needs_more_than_half():
    rows = seeds("none", "supervised", (0.6,))
    for m, acc in (("rotation", 0.7), ("simclr", 0.8), ("byol", 0.5), ("dino", 0.55)):
        rows += seeds(m, "finetune", (acc,))
    top, subs = by_subject(fssl.finetune_beats_supervised({"metrics": frame(rows)}))
    assert sum(v.holds for v in subs.values()) == 2 and top.holds is False  # 2 of 4 is not "most"
    assert top.numbers["groups"]["shapes/resnet10n"]["best_holds"] is True


# ---------------------------------------------------------------- claim 3


def test_lpft_ood_per_method():
    top, subs = by_subject(fssl.lpft_ood_at_least_finetune(tables()))
    assert top.holds is True and set(subs) == {"rotation", "simclr", "byol", "mae"}  # random init excluded
    assert subs["simclr"].numbers["diff"] == pytest.approx(0.05)
    assert subs["mae"].numbers["diff"] == pytest.approx(0.0) and subs["mae"].holds  # equal counts: "at least as good"
    top, subs = by_subject(fssl.lpft_ood_at_least_finetune(tables(fail=True)))
    assert top.holds is False and [subs[m].holds for m in ("rotation", "simclr", "byol", "mae")] == \
        [True, True, False, True]
    assert subs["byol"].numbers["diff"] == pytest.approx(-0.10)
    assert top.numbers["worst"] == "shapes/resnet10n/byol" and "3 of 4 methods" in top.evidence
    assert "largest shortfall: byol (resnet10n) -10.0 pts" in top.evidence


def test_lpft_not_testable_without_ood_or_lpft():
    rows = seeds("simclr", "finetune", (0.7,)) + seeds("simclr", "lpft", (0.7,)) + seeds("byol", "finetune", (0.7,),
                                                                                          **FT_OOD)
    top, subs = by_subject(fssl.lpft_ood_at_least_finetune({"metrics": frame(rows)}))
    assert top.holds is None and subs["simclr"].holds is None and subs["byol"].holds is None
    assert "no OOD splits" in subs["simclr"].evidence and "no LP-FT run" in subs["byol"].evidence


# ---------------------------------------------------------------- claim 4


def test_no_collapse_and_one_collapsed_seed():
    top, subs = by_subject(fssl.no_collapse(tables()))
    assert top.holds is True and len(subs) == 8 and all(v.holds for v in subs.values())  # random init excluded
    assert not any("/random/" in s for s in subs) and not any("/linear/" in s for s in subs)
    assert top.evidence.startswith("0 of 8 pretraining runs collapsed")
    top, subs = by_subject(fssl.no_collapse(tables(collapse=True)))
    bad = "shapes/resnet10n/byol/none/none/none/seed1"
    assert top.holds is False and subs[bad].holds is False and sum(v.holds for v in subs.values()) == 7
    assert top.numbers["collapsed"] == [bad] and "byol seed 1 (.020)" in top.evidence
    assert subs["shapes/resnet10n/byol/none/none/none/seed0"].holds is True


def test_no_collapse_not_testable_without_history():
    top, subs = by_subject(fssl.no_collapse({"history": pd.DataFrame(columns=["model_id", "epoch"])}))
    assert top.holds is None and not subs


# ---------------------------------------------------------------- claim 5


def test_mae_beats_random_vit():
    top, subs = by_subject(fssl.mae_beats_random_vit(tables()))
    assert top.holds is True and subs["mae"].numbers["diff"] == pytest.approx(0.20)
    assert subs["mae"].numbers["num_classes"] == 5 and subs["mae"].numbers["random_x_chance"] == pytest.approx(1.55)
    assert "random-init vit_t FT = 1.6× chance (1/5)" in top.evidence
    top, _ = by_subject(fssl.mae_beats_random_vit(tables(fail=True)))
    assert top.holds is False and "(-2.0 pts)" in top.evidence


def test_mae_not_testable_without_mae_rows():
    verdicts = fssl.mae_beats_random_vit(tables(mae=False))
    assert len(verdicts) == 1 and verdicts[0].holds is None and verdicts[0].subject is None
    assert "no MAE runs" in verdicts[0].evidence


def test_mae_chance_unknown_without_num_classes():
    t = tables()
    t["metrics"] = t["metrics"].drop(columns="num_classes")
    top, _ = by_subject(fssl.mae_beats_random_vit(t))
    assert top.holds is True and "chance level unknown" in top.evidence


# ---------------------------------------------------------------- label fraction


def with_fraction(rows: list[dict], fraction: float | None) -> list[dict]:
    return [dict(r, fraction=fraction) for r in rows]


def test_rows_with_a_label_fraction_below_one_are_ignored():
    rows = with_fraction(metrics_rows(), None)
    # these would flip claims 1, 2 and 5 if they counted
    rows += with_fraction(seeds("simclr", "linear", (0.0,), first=7), 0.1)
    rows += with_fraction(seeds("none", "supervised", (0.99,), first=7), 0.01)
    rows += with_fraction(seeds("mae", "finetune", (0.0,), backbone=V, first=7), 0.5)
    rows += with_fraction(seeds("rotation", "linear", (0.46,), first=2), 1.0)  # a full-label fraction counts
    m = frame(rows).assign(fraction=pd.array([r["fraction"] for r in rows], dtype="Float64"))
    t = {"metrics": m, "history": history(), "summary": summary_table(m)}
    got = findings_table(t).set_index("claim_id")
    want = findings_table(tables()).set_index("claim_id")
    assert list(got.loc[SSL_CLAIMS, "holds"]) == list(want.loc[SSL_CLAIMS, "holds"]) == [True, True, True, True, True]
    _, subs = by_subject(fssl.probe_beats_random(t))
    assert subs["simclr"].numbers["method"]["seeds"] == 2 and subs["rotation"].numbers["method"]["seeds"] == 3
    top, _ = by_subject(fssl.finetune_beats_supervised(t))
    assert top.numbers["groups"]["shapes/resnet10n"]["supervised"]["mean"] == pytest.approx(0.61)
    assert len(fssl.full_labels(m)) == len(m) - 3


# ---------------------------------------------------------------- the table


def test_findings_table_schema_and_counts():
    f = findings_table(tables(fail=True, mae=False))
    assert list(f.columns) == COLUMNS and list(f["claim_id"]) == SSL_CLAIMS + CLIP_CLAIMS
    assert f.set_index("claim_id").loc[CLIP_CLAIMS, "holds"].isna().all()  # no CLIP models in these tables
    assert str(f["holds"].dtype) == "boolean" and str(f["n_holds"].dtype) == "Int64"
    row = f.set_index("claim_id")
    assert not bool(row.loc["ssl.probe_beats_random", "holds"])  # bool(NA) would raise
    assert (row.loc["ssl.probe_beats_random", "n_holds"], row.loc["ssl.probe_beats_random", "n_total"]) == (2, 3)
    assert row.loc["ssl.finetune_beats_supervised", "n_holds"] == 1
    assert row.loc["ssl.no_collapse", "n_holds"] == 7 and row.loc["ssl.no_collapse", "n_total"] == 8
    assert pd.isna(row.loc["ssl.mae_beats_random_vit", "holds"])
    assert pd.isna(row.loc["ssl.mae_beats_random_vit", "n_total"])  # no per-subject verdicts at all
    for text in f["evidence_json"]:
        json.loads(text, parse_constant=lambda c: pytest.fail(f"non-strict JSON constant {c}"))
    subs = subject_table(f, "ssl.lpft_ood_at_least_finetune")
    assert list(subs["subject"]) == [f"shapes/resnet10n/{m}" for m in ("rotation", "simclr", "byol")]
    assert list(subs["holds"]) == [True, True, False] and subs["numbers"][2]["diff"] == pytest.approx(-0.10)


def test_findings_table_on_empty_tables():
    empty = {"metrics": pd.DataFrame(columns=["model_id", "split", "shift", "acc"]),
             "history": pd.DataFrame(columns=["model_id", "epoch"]), "summary": pd.DataFrame()}
    f = findings_table(empty)
    assert list(f["claim_id"]) == SSL_CLAIMS + CLIP_CLAIMS and f["holds"].isna().all()


def test_a_claim_needs_one_claim_level_verdict():
    bad = Claim("zz.bad", "c", "s", "cmp", "ssl", lambda t: [Verdict(True, "x", subject="a")])
    with pytest.raises(ValueError, match="claim-level"):
        findings_table({}, [bad])


def test_write_findings_via_cli_and_read_back(tmp_path):
    from dlbench.cli import main

    t = tables()
    root = write_tables(tmp_path / "tables", t["metrics"], t["history"])
    assert read_findings(root) is None
    assert main(["report", "findings", "--tables", str(root), "--out", str(root / "findings.parquet")]) == 0
    f = read_findings(root)
    pd.testing.assert_frame_equal(f, findings_table(t))
    assert f.set_index("claim_id").loc[SSL_CLAIMS, "holds"].all()


# ---------------------------------------------------------------- HTML


def test_report_shows_summary_line_and_ssl_findings(tmp_path):
    t = tables(fail=True, mae=False)
    root = write_tables(tmp_path / "tables", t["metrics"], t["history"])
    write_findings(root, root / "findings.parquet")
    write_report(root, tmp_path / "fig", tmp_path / "none.yaml", tmp_path / "r.html")
    page = (tmp_path / "r.html").read_text()
    top = page.split("<h2 ")[0]
    assert "Findings: 0 of 11 hold (7 not testable in this config)" in top  # 6 CLIP claims: no CLIP models
    assert "<a href='#ssl'>Self-supervised pretraining</a>: 0 of 5 hold" in top
    sec = section_html(page, "ssl")
    box = sec.split("<table class='findings'>")[1].split("</table>")[0]
    assert box.count("<tr>") == 1 + 5
    assert box.count("✗ does not hold") == 4 and box.count("– not testable") == 1
    assert "Every self-supervised method&#x27;s linear probe beats" in box and "Kumar et al. 2022" in box
    assert "byol (resnet10n) LP .320±.014 vs random .310±.014 (+1.0 pts &lt; 10)" in box  # per-method details
    assert "no MAE runs" in box and "alert" not in box
    assert sec.index("<h3>Findings</h3>") < sec.index("<h3>Protocols</h3>")
    # all hold
    t = tables()
    root = write_tables(tmp_path / "t2", t["metrics"], t["history"])
    write_findings(root, root / "findings.parquet")
    write_report(root, tmp_path / "fig", tmp_path / "none.yaml", tmp_path / "r2.html")
    page = (tmp_path / "r2.html").read_text()
    assert "Findings: 5 of 11 hold (6 not testable in this config)" in page
    assert section_html(page, "ssl").count("✓ holds") == 5


def test_report_without_findings_table_says_not_computed(tmp_path):
    t = tables()
    root = write_tables(tmp_path / "tables", t["metrics"], t["history"])
    write_report(root, tmp_path / "fig", tmp_path / "none.yaml", tmp_path / "r.html")
    page = (tmp_path / "r.html").read_text()
    assert "Findings were not computed" in page.split("<h2 ")[0]
    sec = section_html(page, "ssl")
    assert "Findings were not computed" in sec and "<h3>Protocols</h3>" in sec and "class='findings'" not in sec


# ---------------------------------------------------------------- num_classes in metrics.parquet


def test_metrics_table_has_num_classes_from_the_card(tmp_path):
    from dlbench.evaluate.outputs import write_logits
    from dlbench.io import write_json
    from dlbench.report.aggregate import COSTS, metrics_table

    mid = model_id("shapes", R, "none", "supervised", 0)
    parts = dict(zip(["dataset", "backbone", "pretrain", "adapt", "ensemble", "compress", "seed"],
                     ["shapes", R, "none", "supervised", "none", "none", 0]))
    card = {"id": mid, "parts": parts, "kind": "supervised", "family": "supervised", "stage": "adapt",
            "parents": [], "knobs": {}, "model": {"classes": ["a", "b", "c"], "num_classes": 3}}
    write_json(tmp_path / "models" / mid / "model.json", card)
    pred = tmp_path / "predictions" / mid
    write_json(pred / "costs.json", {k: 1 for k in COSTS} | {"latency_device": "cpu"})
    rng = np.random.default_rng(0)
    write_logits(pred / "logits.parquet", [("test", rng.normal(size=(6, 3)), np.arange(6) % 3, {"shift": "id"})])
    m = metrics_table(tmp_path, [mid])
    assert list(m["num_classes"]) == [3] and str(m["num_classes"].dtype) == "Int64"
    assert list(m.columns).index("num_classes") == list(m.columns).index("n") + 1
