"""Report section "Self-supervised pretraining": summary numbers, tables, collapse flags, figures, HTML."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from dlbench.report import ssl
from dlbench.report.aggregate import summary_table
from dlbench.report.figures import FIGURES, make_figures
from dlbench.report.html import write_report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _model(pretrain: str, adapt: str, seed: int, id_acc: float, corr: tuple[float, ...] = (),
           style: float | None = None, dataset: str = "shapes", backbone: str = "resnet10n",
           ensemble: str = "none") -> list[dict]:
    """Rows of metrics.parquet for one model: one ID split, corruption splits, an optional style split."""
    mid = f"{dataset}/{backbone}/{pretrain}/{adapt}/{ensemble}/none/seed{seed}"
    base = dict(model_id=mid, dataset=dataset, backbone=backbone, pretrain=pretrain, adapt=adapt, ensemble=ensemble,
                compress="none", seed=seed, ece=0.1, nll=1.0, brier=0.3, n=100, params=1000, nonzero_params=1000,
                size_bytes=4000, latency_ms=1.0, train_seconds=10.0)
    rows = [dict(base, split="test", shift="id", corruption=None, severity=None, acc=id_acc)]
    for sev, a in enumerate(corr, start=1):
        rows.append(dict(base, split=f"c_gaussian_noise_{sev}", shift="corruption", corruption="gaussian_noise",
                         severity=sev, acc=a))
    if style is not None:
        rows.append(dict(base, split="style", shift="style", corruption=None, severity=None, acc=style))
    return rows


def make_metrics(with_ssl: bool = True) -> pd.DataFrame:
    rows = []
    # supervised baseline (ID .9/.8, OOD: corruption .6 / style .4 -> .5 each seed)
    rows += _model("none", "supervised", 0, 0.9, (0.5, 0.7), 0.4)
    rows += _model("none", "supervised", 1, 0.8, (0.5, 0.7), 0.4)
    rows += _model("none", "supervised", 0, 0.95, (0.9,), None, dataset="digits")  # no SSL on digits: left out
    if with_ssl:
        # simclr/linear: seed 0 ID .8, corruption mean .5, style .9 -> OOD .7 (split mean would be .633)
        rows += _model("simclr", "linear", 0, 0.8, (0.4, 0.6), 0.9)
        rows += _model("simclr", "linear", 1, 0.6, (0.2, 0.4), 0.5)  # OOD (.3 + .5) / 2 = .4
        for pretrain, off in (("random", 0.0), ("simclr", 0.2), ("byol", 0.1), ("zz_new", 0.05)):
            for seed in (0, 1):
                rows += _model(pretrain, "finetune", seed, 0.5 + off + 0.01 * seed, (0.3 + off, 0.3 + off), 0.4 + off)
        for pretrain in ("random", "byol"):
            for seed in (0, 1):
                rows += _model(pretrain, "linear", seed, 0.4 + 0.1 * seed, (0.2, 0.2), 0.3)
        rows += _model("byol", "knn", 0, 0.55, (0.25, 0.35), 0.3)
        rows += _model("simclr", "linear", 0, 0.99, (0.99,), 0.99, ensemble="deep")  # ensembles: own section
        # a ViT with MAE and its own random baseline, one seed, no OOD splits
        rows += _model("mae", "linear", 0, 0.45, backbone="vit_t")
        rows += _model("random", "linear", 0, 0.30, backbone="vit_t")
    df = pd.DataFrame(rows)
    df["severity"] = df["severity"].astype("Int64")
    return df


def make_history(collapse: bool = True) -> pd.DataFrame:
    rows = []

    def run(pretrain: str, seed: int, stds: list[float], knn: list[float], adapt: str = "none", backbone="resnet10n"):
        for epoch, (s, k) in enumerate(zip(stds, knn), start=1):
            rows.append(dict(model_id=f"shapes/{backbone}/{pretrain}/{adapt}/none/none/seed{seed}", dataset="shapes",
                             backbone=backbone, pretrain=pretrain, adapt=adapt, ensemble="none", compress="none",
                             seed=seed, epoch=epoch, train_loss=1.0 / epoch, seconds=1.0, val_emb_std=s / 8,
                             val_emb_std_norm=s, val_knn_acc=k, val_acc=np.nan))

    run("simclr", 0, [0.9, 0.85, 0.8], [0.3, 0.4, 0.5])
    run("simclr", 1, [0.9, 0.8, 0.7], [0.3, 0.45, 0.55])
    run("byol", 0, [0.5, 0.1, 0.01 if collapse else 0.2], [0.3, 0.2, 0.1])  # final .01 < .05: collapsed
    run("byol", 1, [0.5, 0.03, 0.3], [0.3, 0.3, 0.4])  # dips below the threshold but recovers: not collapsed
    run("mae", 0, [0.6, 0.5, 0.45], [0.2, 0.25, 0.3], backbone="vit_t")
    # not pretraining runs: a probe and the supervised baseline (would be 'collapsed' if counted)
    run("simclr", 0, [0.01, 0.01], [0.5, 0.5], adapt="linear")
    run("none", 0, [0.01, 0.01], [0.5, 0.5], adapt="supervised")
    return pd.DataFrame(rows)


def make_tsne(root: Path, finetuned: bool = True) -> Path:
    rng = np.random.default_rng(0)
    for pretrain in ("random", "simclr", "byol", "rotation", "jigsaw", "dino", "swav", "zz_new"):
        for seed in (0, 1) if pretrain == "simclr" else (0,):
            stages = ("pretrained", "finetuned") if finetuned and pretrain in ("simclr", "byol") else ("pretrained",)
            df = pd.concat([pd.DataFrame({"x": rng.normal(size=60), "y": rng.normal(size=60),
                                          "label": rng.integers(0, 5, 60), "stage": st}) for st in stages])
            out = root / "shapes" / "resnet10n" / pretrain / f"seed{seed}.parquet"
            out.parent.mkdir(parents=True, exist_ok=True)
            df.to_parquet(out, index=False)
    return root


def _png_size(path: Path) -> tuple[int, int]:
    assert path.read_bytes()[:8] == PNG_MAGIC
    with Image.open(path) as im:
        im.verify()
    with Image.open(path) as im:
        return im.size


def test_ssl_summary_numbers_and_ood_weighting():
    s = ssl.ssl_summary(make_metrics())
    row = s[(s["pretrain"] == "simclr") & (s["adapt"] == "linear")].iloc[0]
    assert row["seeds"] == 2
    assert row["id_acc_mean"] == pytest.approx(0.7)
    assert row["id_acc_std"] == pytest.approx(math.sqrt(0.02))  # ddof=1 over seeds
    # per model: mean over kinds of (mean over the kind's splits): (.5 + .9)/2 = .7, (.3 + .5)/2 = .4
    assert row["ood_acc_mean"] == pytest.approx(0.55)
    assert row["ood_acc_std"] == pytest.approx(math.sqrt(0.045))
    pm = ssl.per_model(ssl.ssl_rows(make_metrics()))
    seed0 = "shapes/resnet10n/simclr/linear/none/none/seed0"
    assert pm.set_index("model_id").loc[seed0, "ood_acc"] == pytest.approx(0.7)
    # the ensemble is excluded (it would pull the mean up), the digits baseline too (no SSL there)
    assert set(s["dataset"]) == {"shapes"}
    sup = s[s["pretrain"] == "none"]
    assert len(sup) == 1 and sup.iloc[0]["backbone"] == "resnet10n" and sup.iloc[0]["method"] == "supervised (scratch)"
    assert sup.iloc[0]["id_acc_mean"] == pytest.approx(0.85) and sup.iloc[0]["ood_acc_mean"] == pytest.approx(0.5)
    # display order: random first, known methods by family, unknown names after, supervised last
    res = s[s["backbone"] == "resnet10n"]
    assert list(dict.fromkeys(res["pretrain"])) == ["random", "simclr", "byol", "zz_new", "none"]
    assert list(res[res["pretrain"] == "byol"]["adapt"]) == ["linear", "knn", "finetune"]
    vit = s[s["backbone"] == "vit_t"]
    assert list(vit["pretrain"]) == ["random", "mae"] and vit["ood_acc_mean"].isna().all()
    assert vit["id_acc_std"].isna().all() and (vit["seeds"] == 1).all()


def test_ssl_summary_empty_without_ssl_rows():
    s = ssl.ssl_summary(make_metrics(with_ssl=False))
    assert s.empty and {"id_acc_mean", "ood_acc_mean", "seeds"} <= set(s.columns)
    assert ssl.protocol_table(s).empty


def test_method_order_unknown_names_last_alphabetically():
    assert ssl.method_order(["zeta", "mae", "none", "alpha", "simclr", "random"]) == \
        ["random", "simclr", "mae", "alpha", "zeta", "none"]
    assert ssl.protocol_order(["supervised", "weird", "lpft", "linear"]) == ["linear", "lpft", "weird", "supervised"]


def test_protocol_table_cells():
    t = ssl.protocol_table(ssl.ssl_summary(make_metrics()))
    assert list(t.columns) == ["linear", "knn", "finetune", "supervised"]
    assert t.index.names == ["dataset", "backbone", "method"]
    assert list(t.index) == [("shapes", "resnet10n", m) for m in
                             ("random init", "simclr", "byol", "zz_new", "supervised (scratch)")] + \
        [("shapes", "vit_t", "random init"), ("shapes", "vit_t", "mae")]
    assert t.loc[("shapes", "resnet10n", "simclr"), "linear"] == "ID .700 ± .141 / OOD .550 ± .212"
    assert t.loc[("shapes", "resnet10n", "supervised (scratch)"), "supervised"] == "ID .850 ± .071 / OOD .500 ± .000"
    assert t.loc[("shapes", "resnet10n", "supervised (scratch)"), "linear"] == ""
    assert t.loc[("shapes", "resnet10n", "simclr"), "knn"] == ""
    # one seed: std shown as .000; no OOD split: only the ID part
    assert t.loc[("shapes", "vit_t", "mae"), "linear"] == "ID .450 ± .000"


def test_collapse_flags():
    h = make_history()
    f = ssl.collapse_flags(h).set_index("model_id")
    assert sorted(f.index) == sorted(["shapes/resnet10n/simclr/none/none/none/seed0",
                                      "shapes/resnet10n/simclr/none/none/none/seed1",
                                      "shapes/resnet10n/byol/none/none/none/seed0",
                                      "shapes/resnet10n/byol/none/none/none/seed1",
                                      "shapes/vit_t/mae/none/none/none/seed0"])  # probes/baselines are not pretraining
    byol0 = f.loc["shapes/resnet10n/byol/none/none/none/seed0"]
    byol1 = f.loc["shapes/resnet10n/byol/none/none/none/seed1"]
    assert bool(byol0["collapsed"]) and byol0["final_std_norm"] == pytest.approx(0.01)
    assert byol0["final_knn_acc"] == pytest.approx(0.1) and byol0["epochs"] == 3
    assert not bool(byol1["collapsed"]) and byol1["min_std_norm"] == pytest.approx(0.03)  # final, not min, decides
    assert int(f["collapsed"].sum()) == 1
    assert ssl.collapsed_runs(h) == ["shapes/resnet10n/byol/none/none/none/seed0"]
    assert len(ssl.collapsed_runs(h, threshold=0.5)) == 3  # byol x2 and mae (final .45)
    assert ssl.collapsed_runs(make_history(collapse=False)) == []
    assert ssl.collapse_flags(pd.DataFrame(columns=["model_id", "epoch"])).empty


def test_figures_are_valid_pngs(tmp_path):
    tsne = ssl.read_tsne(make_tsne(tmp_path / "tsne"))
    assert set(tsne.loc[tsne["pretrain"] == "simclr", "seed"]) == {0, 1}
    ssl.make_ssl_figures(make_metrics(), make_history(), tmp_path / "tsne", tmp_path / "fig")
    sizes = {n: _png_size(tmp_path / "fig" / n) for n in ("ssl_protocols.png", "ssl_collapse.png", "ssl_tsne.png")}
    assert all(w > 600 and h > 300 for w, h in sizes.values()), sizes
    # t-SNE: 8 methods in 6 columns = 2 rows pretrained + 1 row finetuned; without finetuned it is shorter
    ssl.ssl_tsne(ssl.read_tsne(make_tsne(tmp_path / "tsne_pre", finetuned=False)), tmp_path / "pre.png")
    assert _png_size(tmp_path / "pre.png")[1] < sizes["ssl_tsne.png"][1] * 0.85


def test_figures_placeholders_when_empty(tmp_path):
    ssl.make_ssl_figures(make_metrics(with_ssl=False), pd.DataFrame(columns=["model_id", "epoch"]), None, tmp_path)
    for name in ("ssl_protocols.png", "ssl_collapse.png", "ssl_tsne.png"):
        w, h = _png_size(tmp_path / name)
        assert w < 700 and h < 300  # the small 5 x 2 inch text placeholder
    assert ssl.read_tsne(tmp_path / "missing").empty


def _tables(root: Path, metrics: pd.DataFrame, history: pd.DataFrame) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    metrics.to_parquet(root / "metrics.parquet", index=False)
    summary_table(metrics).to_parquet(root / "summary.parquet", index=False)
    history.to_parquet(root / "history.parquet", index=False)
    return root


def _section(page: str, key: str) -> str:
    return page.split(f"<h2 id='{key}'>")[1].split("<h2 ")[0]


def test_make_figures_draws_all_figures(tmp_path):
    tables = _tables(tmp_path / "tables", make_metrics(), make_history())
    make_figures(tables, tmp_path / "fig", tsne_dir=make_tsne(tmp_path / "tsne"))
    assert {"ssl_protocols.png", "ssl_collapse.png", "ssl_tsne.png"} <= set(FIGURES)
    for name in FIGURES:
        _png_size(tmp_path / "fig" / name)


def test_html_ssl_section_with_collapse_warning(tmp_path):
    tables = _tables(tmp_path / "tables", make_metrics(), make_history())
    fig = tmp_path / "fig"
    ssl.make_ssl_figures(make_metrics(), make_history(), make_tsne(tmp_path / "tsne"), fig)
    write_report(tables, fig, tmp_path / "none.yaml", tmp_path / "report.html")
    page = (tmp_path / "report.html").read_text()
    sec = _section(page, "ssl")
    assert "ID .700 ± .141 / OOD .550 ± .212" in sec and "supervised (scratch)" in sec
    assert "class='alert'" in sec and "1 of 5 pretraining runs collapsed" in sec
    assert "shapes/resnet10n/byol/none/none/none/seed0" in sec
    assert "shapes/resnet10n/byol/none/none/none/seed1" not in sec
    assert sec.count("<img") == 3 and "Not in this config yet." not in sec
    assert "supervised" in _section(page, "baseline") and "Not in this config yet." not in _section(page, "baseline")


def test_html_ssl_section_without_collapse_and_without_ssl(tmp_path):
    tables = _tables(tmp_path / "t1", make_metrics(), make_history(collapse=False))
    write_report(tables, tmp_path / "nofig", tmp_path / "none.yaml", tmp_path / "r1.html")
    sec = _section((tmp_path / "r1.html").read_text(), "ssl")
    assert "No pretraining run collapsed (final std·sqrt(d) ≥ 0.05 for all 5 runs)." in sec
    assert "alert" not in sec
    tables = _tables(tmp_path / "t2", make_metrics(with_ssl=False), make_history())
    write_report(tables, tmp_path / "nofig", tmp_path / "none.yaml", tmp_path / "r2.html")
    page = (tmp_path / "r2.html").read_text()
    assert "Not in this config yet." in _section(page, "ssl")
    assert "<table" in _section(page, "baseline")
