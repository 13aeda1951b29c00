"""The CLIP section's findings and tables on hand-made metrics: effective robustness by hand, each claim
holding on one table and failing on another."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from dlbench.report.clip import clip_summary, fit_baseline, robustness
from dlbench.report.findings import clip as fclip
from dlbench.report.findings.base import findings_table

D, B, P = "shapes", "clip_rn", "clip"


def row(adapt: str, kind: str, seed: int, id_acc: float, style: float, *, pretrain: str = P, backbone: str = B,
        family: str = "language-image", alpha: float | None = None, parents: list[str] | None = None,
        shots: int | None = None, trainable: int | None = None) -> list[dict]:
    mid = f"{D}/{backbone}/{pretrain}/{adapt}/none/none/seed{seed}"
    base = {"model_id": mid, "dataset": D, "backbone": backbone, "pretrain": pretrain, "adapt": adapt,
            "ensemble": "none", "compress": "none", "seed": seed, "kind": kind, "family": kind,
            "pretrain_family": family, "alpha": alpha, "fraction": None, "shots": shots,
            "trainable_params": trainable, "parents": parents or []}
    return [{**base, "split": "test", "shift": "id", "acc": id_acc},
            {**base, "split": "style", "shift": "style", "acc": style}]


def ft_id(seed: int, adapt: str) -> str:
    return f"{D}/{B}/{P}/{adapt}/none/none/seed{seed}"


def metrics(wise_mid_ood: float = 0.62, lpft_ood: float = 0.40, zs_style: float = 0.58,
            lipsum_ood: float = 0.45, flyp_ood: float = 0.30, shots: bool = True, lora_id: float = 0.865,
            lora_params: int = 5000) -> pd.DataFrame:
    rows = []
    for seed in (0, 1):
        # the ID-trained baseline: OOD = ID - .4 roughly (three supervised / SSL fine-tunes)
        for i, (a, o) in enumerate([(0.70, 0.25), (0.80, 0.30), (0.90, 0.40)]):
            rows += row(f"finetune{i}", "finetune", seed, a, o, pretrain="simclr", backbone="resnet",
                        family="contrastive")
        rows += row("zeroshot", "zeroshot", seed, 0.64, zs_style)
        # a fine-tune from a fresh head (named like the kind): the claims use the one from the zero-shot head
        rows += row("finetune", "finetune", seed, 0.50, 0.90, parents=[f"{D}/{B}/{P}/none/none/none/seed{seed}"])
        rows += row("finetune_zs", "finetune", seed, 0.88, 0.25, parents=[ft_id(seed, "zeroshot")], trainable=100_000)
        rows += row("lora", "lora", seed, lora_id, 0.30, parents=[ft_id(seed, "zeroshot")], trainable=lora_params)
        rows += row("lpft_clip", "lpft", seed, 0.86, lpft_ood, parents=[ft_id(seed, "linear")])
        rows += row("lipsum", "lipsum", seed, 0.87, lipsum_ood, parents=[ft_id(seed, "zeroshot")])
        rows += row("flyp", "flyp", seed, 0.89, flyp_ood, parents=[ft_id(seed, "zeroshot")])
        rows += row("linear", "linear", seed, 0.70, 0.45, parents=[f"{D}/{B}/{P}/none/none/none/seed{seed}"])
        # k-shot variants: a fine-tune from the zero-shot head (sorts before finetune_zs: must not be "the"
        # fine-tune of the claims), a linear probe, WiSE-FT α = .5 of each k-shot fine-tune
        for k in ((1, 4) if shots else ()):
            rows += row(f"finetune_shots-shots{k}", "finetune", seed, 0.60 + 0.05 * k, 0.50, shots=k,
                        parents=[ft_id(seed, "zeroshot")])
            rows += row(f"linear_shots-shots{k}", "linear", seed, 0.30 + 0.05 * k, 0.20, shots=k)
            rows += row(f"wiseft_shots-shots{k}", "wiseft", seed, 0.66 + 0.05 * k, 0.55, alpha=0.5, shots=k,
                        parents=[ft_id(seed, "zeroshot"), ft_id(seed, f"finetune_shots-shots{k}")])
        for a, (i, o) in {0.0: (0.64, zs_style), 0.5: (0.875, wise_mid_ood), 1.0: (0.88, 0.25)}.items():
            rows += row(f"wiseft-alpha{a:g}", "wiseft", seed, i, o, alpha=a,
                        parents=[ft_id(seed, "zeroshot"), ft_id(seed, "finetune_zs")])
    m = pd.DataFrame(rows)
    return m.assign(alpha=m["alpha"].astype("Float64"), fraction=m["fraction"].astype("Float64"),
                    shots=m["shots"].astype("Int64"))


def logit(p: float) -> float:
    return math.log(p / (1 - p))


def test_effective_robustness_by_hand():
    m = metrics()
    rob, fits = robustness(m)
    xs = np.array([logit(a) for a in (0.70, 0.80, 0.90)])
    ys = np.array([logit(o) for o in (0.25, 0.30, 0.40)])
    a, b = np.polyfit(xs, ys, 1)
    assert fits[(D, "style")] == pytest.approx((a, b))
    zs = rob[(rob["adapt"] == "zeroshot") & (rob["seed"] == 0)].iloc[0]
    expected = 0.58 - 1 / (1 + math.exp(-(a * logit(0.64) + b)))
    assert zs["effective_robustness"] == pytest.approx(expected)
    assert set(rob["pretrain"]) == {P}  # the section's rows are CLIP's only
    assert fit_baseline(pd.DataFrame({"id_acc": [0.5], "ood_acc": [0.4]})) is None


def test_summary_orders_protocols_and_alphas():
    s = clip_summary(metrics())
    assert list(s["adapt"]) == ["zeroshot", "linear", "finetune", "finetune_zs", "lpft_clip", "lipsum",
                                "flyp", "lora", "wiseft-alpha0", "wiseft-alpha0.5", "wiseft-alpha1"]  # no k-shot variants
    assert (s["seeds"] == 2).all() and s["er_std"].fillna(0).eq(0).all()


def verdicts(m: pd.DataFrame) -> pd.Series:
    t = {"metrics": m, "history": pd.DataFrame(), "summary": pd.DataFrame()}
    f = findings_table(t).set_index("claim_id")
    return f.loc[[c for c in f.index if c.startswith("clip.")], "holds"]


def test_claims_hold_on_a_table_where_they_should():
    assert verdicts(metrics()).tolist() == [True] * 6
    assert verdicts(metrics(shots=False)).tolist() == [True] * 6  # k-shot variants change nothing
    top = [v for v in fclip.wiseft_beats_both_ends({"metrics": metrics()}) if v.subject is None][0]
    assert top.numbers["n_holds"] == 1 and "α=0.5" in top.evidence


def test_claims_fail_on_a_table_where_they_should_not_hold():
    # WiSE-FT's middle below the zero-shot end OOD; LP-FT below FT OOD; zero-shot no more robust than FT
    got = verdicts(metrics(wise_mid_ood=0.20, lpft_ood=0.20, zs_style=0.05, lipsum_ood=0.20, flyp_ood=0.2,
                           lora_id=0.85))
    assert got.tolist() == [False] * 6
    lip = [v for v in fclip.lipsum_ood_at_least_ft({"metrics": metrics(lipsum_ood=0.20)}) if v.subject][0]
    assert lip.numbers["diff"] == pytest.approx(0.20 - 0.25) and "Lipsum-FT" in lip.evidence


def test_wiseft_within_one_point_of_ft_id_is_required():
    m = metrics()
    m.loc[m["adapt"].eq("wiseft-alpha0.5") & m["shift"].eq("id"), "acc"] = 0.86  # 2 points below FT's .88
    assert verdicts(m)["clip.wiseft_beats_both_ends"] == False  # noqa: E712  (numpy bool)


def test_untestable_without_clip_models():
    m = metrics()
    got = verdicts(m[m["pretrain_family"] != "language-image"])
    assert got.isna().all()


def test_data_efficiency_points_pair_each_protocol_with_its_full_label_variant():
    from dlbench.report.clip import efficiency_points, efficiency_table

    pts = efficiency_points(metrics())
    idp = pts[pts["shift"] == "id"].set_index(["protocol", "shots"])["acc_mean"]
    assert idp[("finetune", 1.0)] == pytest.approx(0.65) and idp[("finetune", 4.0)] == pytest.approx(0.80)
    assert math.isnan(idp.xs("finetune").index[-1]) and idp.xs("finetune").iloc[-1] == pytest.approx(0.88)  # "all"
    assert idp.xs("wiseft").iloc[-1] == pytest.approx(0.875)  # α = .5 of finetune_zs
    assert idp.xs("linear").iloc[-1] == pytest.approx(0.70) and idp.xs("zeroshot").iloc[0] == pytest.approx(0.64)
    assert set(pts["protocol"]) == {"zeroshot", "linear", "finetune", "wiseft"} and (pts["seeds"] == 2).all()
    table = efficiency_table(pts)
    ft = table[table["protocol"] == "fine-tune"]
    assert ft["shots / class"].tolist() == ["1", "4", "all"] and list(table.columns)[3:] == ["ID acc", "style acc"]
    assert efficiency_points(metrics(shots=False)).empty


def test_lora_claim_needs_both_the_accuracy_and_the_parameter_share():
    lo = [v for v in fclip.lora_close_to_ft({"metrics": metrics()}) if v.subject][0]
    assert lo.holds and lo.numbers["param_share"] == pytest.approx(0.05) and "5.0% of its trainable" in lo.evidence
    assert lo.numbers["diff"] == pytest.approx(0.865 - 0.88)
    assert verdicts(metrics(lora_params=10_000))["clip.lora_close_to_ft"] == False  # noqa: E712  10% is not under
    assert verdicts(metrics(lora_id=0.859))["clip.lora_close_to_ft"] == False  # noqa: E712  2.1 points below
