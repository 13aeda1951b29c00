"""Report section "Self-supervised pretraining": summary numbers, tables, collapse flags, figures, HTML.

The fixtures below build the tables the report reads (``metrics``, ``history``, ``tsne``) with
every column the aggregate step writes: the id's parts, the lineage (``kind``, ``family``,
``stage``, ``parents``, ``pretrain_kind``, ``pretrain_family``), one column per knob, the split's
tags, metrics and costs. ``tests/unit/test_report.py`` reuses them.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from dlbench.report import ssl
from dlbench.report.aggregate import summary_table
from dlbench.report.html import write_report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
ADAPT_KINDS = {"linear": "probe", "knn": "probe", "finetune": "finetune", "lpft": "finetune",
               "supervised": "supervised"}
PRETRAIN_FAMILIES = {"random": "baseline", "rotation": "pretext", "jigsaw": "pretext", "colorization": "pretext",
                     "inpainting": "pretext", "relative_location": "pretext", "simclr": "contrastive",
                     "moco_v2": "contrastive", "swav": "contrastive", "deepcluster": "contrastive",
                     "byol": "self_distillation", "simsiam": "self_distillation",
                     "barlow_twins": "self_distillation", "vicreg": "self_distillation",
                     "dino": "self_distillation", "mae": "masked", "zz_new": "novel", "clip": "language-image"}
METHODS_15 = ["random", "rotation", "jigsaw", "colorization", "inpainting", "relative_location", "simclr", "moco_v2",
              "swav", "deepcluster", "byol", "simsiam", "barlow_twins", "vicreg", "dino"]
CLASSES = ["circle", "square", "triangle", "star", "cross"]
METRICS_COLUMNS = ["model_id", "dataset", "backbone", "pretrain", "adapt", "ensemble", "compress", "seed", "kind",
                   "family", "stage", "parents", "pretrain_kind", "pretrain_family", "fraction", "lr", "shots", "split", "shift",
                   "corruption", "severity", "acc", "ece", "nll", "brier", "n", "num_classes", "params",
                   "trainable_params", "nonzero_params", "size_bytes", "latency_ms", "latency_device", "train_seconds"]


def kind_of(variant: str) -> str:
    """A variant's kind: its name without the sweep suffix (``finetune-lr0.001`` -> ``finetune``)."""
    return variant.split("-")[0]


def model_id(dataset: str, backbone: str, pretrain: str, adapt: str = "none", seed: int = 0,
             ensemble: str = "none") -> str:
    return f"{dataset}/{backbone}/{pretrain}/{adapt}/{ensemble}/none/seed{seed}"


def lineage(pretrain: str, adapt: str, dataset: str, backbone: str, seed: int, ensemble: str = "none") -> dict:
    """The lineage columns of a model, as ``aggregate.Cards.lineage`` finds them."""
    pk = None if pretrain == "none" else kind_of(pretrain)
    pre = {"pretrain_kind": pk, "pretrain_family": None if pk is None else PRETRAIN_FAMILIES.get(pk, "novel")}
    if ensemble != "none":
        members = [model_id(dataset, backbone, pretrain, adapt, s) for s in (seed, seed + 10)]
        return {"kind": "deep", "family": "ensemble", "stage": "ensemble", "parents": members, **pre}
    if adapt == "none":  # a pretraining run
        return {"kind": pk, "family": pre["pretrain_family"], "stage": "pretrain", "parents": [], **pre}
    parents = [] if pretrain == "none" else [model_id(dataset, backbone, pretrain, "none", seed)]
    if kind_of(adapt) == "lpft":
        parents = [model_id(dataset, backbone, pretrain, "linear", seed)]
    return {"kind": kind_of(adapt), "family": ADAPT_KINDS[kind_of(adapt)], "stage": "adapt", "parents": parents,
            **pre}


def _model(pretrain: str, adapt: str, seed: int, id_acc: float, corr: tuple[float, ...] = (),
           style: float | None = None, dataset: str = "shapes", backbone: str = "resnet10n",
           ensemble: str = "none", lr: float | None = None, fraction: float | None = None,
           shots: int | None = None) -> list[dict]:
    """Rows of metrics.parquet for one model: one ID split, corruption splits, an optional style split."""
    base = dict(model_id=model_id(dataset, backbone, pretrain, adapt, seed, ensemble), dataset=dataset,
                backbone=backbone, pretrain=pretrain, adapt=adapt, ensemble=ensemble, compress="none", seed=seed,
                **lineage(pretrain, adapt, dataset, backbone, seed, ensemble), fraction=fraction, lr=lr, shots=shots, ece=0.1,
                nll=1.0, brier=0.3,
                n=100, num_classes=len(CLASSES), params=1000, trainable_params=1000, nonzero_params=1000, size_bytes=4000, latency_ms=1.0,
                latency_device="cpu", train_seconds=10.0)
    rows = [dict(base, split="test", shift="id", corruption=None, severity=None, acc=id_acc)]
    for sev, a in enumerate(corr, start=1):
        rows.append(dict(base, split=f"c_gaussian_noise_{sev}", shift="corruption", corruption="gaussian_noise",
                         severity=sev, acc=a))
    if style is not None:
        rows.append(dict(base, split="style", shift="style", corruption=None, severity=None, acc=style))
    return rows


def frame(rows: list[dict]) -> pd.DataFrame:
    """metrics.parquet from rows, with the aggregate step's column order and nullable dtypes."""
    df = pd.DataFrame(rows)[METRICS_COLUMNS]
    return df.astype({"severity": "Int64", "lr": "Float64", "fraction": "Float64", "shots": "Int64",
                      "trainable_params": "Int64",
                      "num_classes": "Int64"})


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
        # zz_new: a kind no display tuple knows (family "novel"): selected by its pretrain_family all the same
        for pretrain, off in (("random", 0.0), ("simclr", 0.2), ("byol", 0.1), ("zz_new", 0.05)):
            for seed in (0, 1):
                rows += _model(pretrain, "finetune", seed, 0.5 + off + 0.01 * seed, (0.3 + off, 0.3 + off), 0.4 + off)
        for pretrain in ("random", "byol"):
            for seed in (0, 1):
                rows += _model(pretrain, "linear", seed, 0.4 + 0.1 * seed, (0.2, 0.2), 0.3)
        rows += _model("byol", "knn", 0, 0.55, (0.25, 0.35), 0.3)
        rows += _model("simclr", "linear", 0, 0.99, (0.99,), 0.99, ensemble="deep")  # ensembles: own section
        rows += _model("clip", "linear", 0, 0.97, (0.9,), 0.9)  # language-image pretraining: the CLIP section's
        for k in (1, 4):  # ... and its data-efficiency figure's
            rows += _model("clip", f"linear-shots{k}", 0, 0.5 + 0.1 * k, (0.4,), 0.4, shots=k)
        # a ViT with MAE and its own random baseline, one seed, no OOD splits
        rows += _model("mae", "linear", 0, 0.45, backbone="vit_t")
        rows += _model("random", "linear", 0, 0.30, backbone="vit_t")
        rows += label_fraction_rows()
    return frame(rows)


# label efficiency: ID accuracy of random init and simclr (resnet10n) at 1% and 10% of the labels, by
# protocol, seeds 0 and 1 (seed 1 is .02 higher); their 100% points are the full-data rows above
FRACTION_ACC = {("random", "linear"): (0.20, 0.30), ("random", "finetune"): (0.22, 0.35),
                ("simclr", "linear"): (0.50, 0.60), ("simclr", "finetune"): (0.45, 0.62)}


def label_fraction_rows() -> list[dict]:
    rows = []
    for (pretrain, proto), accs in FRACTION_ACC.items():
        for fraction, acc in zip((0.01, 0.1), accs):
            for seed in (0, 1):
                rows += _model(pretrain, f"{proto}-fraction{fraction:g}", seed, acc + 0.02 * seed, (0.1,), 0.1,
                               fraction=fraction)
    rows += _model("mae", "linear-fraction0.1", 0, 0.25, backbone="vit_t", fraction=0.1)  # one seed, one point
    return rows


def make_history(collapse: bool = True) -> pd.DataFrame:
    rows = []

    def run(pretrain: str, seed: int, stds: list[float], knn: list[float], adapt: str = "none", backbone="resnet10n"):
        for epoch, (s, k) in enumerate(zip(stds, knn), start=1):
            rows.append(dict(model_id=model_id("shapes", backbone, pretrain, adapt, seed), dataset="shapes",
                             backbone=backbone, pretrain=pretrain, adapt=adapt, ensemble="none", compress="none",
                             seed=seed, **lineage(pretrain, adapt, "shapes", backbone, seed), epoch=epoch,
                             train_loss=1.0 / epoch, seconds=1.0, val_emb_std=s / 8, val_emb_std_norm=s,
                             val_knn_acc=k, val_acc=np.nan if adapt == "none" else 0.5 + 0.1 * epoch))

    run("simclr", 0, [0.9, 0.85, 0.8], [0.3, 0.4, 0.5])
    run("simclr", 1, [0.9, 0.8, 0.7], [0.3, 0.45, 0.55])
    run("byol", 0, [0.5, 0.1, 0.01 if collapse else 0.2], [0.3, 0.2, 0.1])  # final .01 < .05: collapsed
    run("byol", 1, [0.5, 0.03, 0.3], [0.3, 0.3, 0.4])  # dips below the threshold but recovers: not collapsed
    run("mae", 0, [0.6, 0.5, 0.45], [0.2, 0.25, 0.3], backbone="vit_t")
    # not pretraining runs: a probe and the supervised baseline (would be 'collapsed' if counted)
    run("simclr", 0, [0.01, 0.01], [0.5, 0.5], adapt="linear")
    run("none", 0, [0.01, 0.01], [0.5, 0.5], adapt="supervised")
    return pd.DataFrame(rows)


def tsne_frame(points: dict[tuple[str, str, str, str, int], str], n: int = 60, seed: int = 0) -> pd.DataFrame:
    """tsne.parquet as ``write_tsne`` writes it, from {(dataset, backbone, pretrain, adapt, seed): panel}."""
    rng = np.random.default_rng(seed)
    frames = []
    for (dataset, backbone, pretrain, adapt, s), panel in points.items():
        labels = rng.integers(0, len(CLASSES), n)
        frames.append(pd.DataFrame({"model_id": model_id(dataset, backbone, pretrain, adapt, s), "dataset": dataset,
                                    "backbone": backbone, "pretrain": pretrain, "adapt": adapt, "ensemble": "none",
                                    "compress": "none", "seed": s, "panel": panel,
                                    "x": rng.normal(size=n).astype(np.float32),
                                    "y": rng.normal(size=n).astype(np.float32), "label": labels,
                                    "class": [CLASSES[i] for i in labels]}))
    return pd.concat(frames, ignore_index=True)


def make_tsne(finetuned: bool = True) -> pd.DataFrame:
    points = {}
    for pretrain in ("random", "simclr", "byol", "rotation", "jigsaw", "dino", "swav", "zz_new"):
        for seed in (0, 1) if pretrain == "simclr" else (0,):
            points[("shapes", "resnet10n", pretrain, "linear", seed)] = "pretrained"
            if finetuned and pretrain in ("simclr", "byol"):
                points[("shapes", "resnet10n", pretrain, "finetune", seed)] = "finetuned"
    return tsne_frame(points)


def write_tables(root: Path, metrics: pd.DataFrame, history: pd.DataFrame, tsne: pd.DataFrame | None = None) -> Path:
    """The tables directory the report reads (summary computed by the aggregate step's own function)."""
    root.mkdir(parents=True, exist_ok=True)
    metrics.to_parquet(root / "metrics.parquet", index=False)
    summary_table(metrics).to_parquet(root / "summary.parquet", index=False)
    history.to_parquet(root / "history.parquet", index=False)
    if tsne is not None:
        tsne.to_parquet(root / "tsne.parquet", index=False)
    return root


def png_size(path: Path) -> tuple[int, int]:
    assert path.read_bytes()[:8] == PNG_MAGIC
    with Image.open(path) as im:
        im.verify()
    with Image.open(path) as im:
        return im.size


def section_html(page: str, key: str) -> str:
    return page.split(f"<h2 id='{key}'>")[1].split("<h2 ")[0]


_RENDERED: dict[str, tuple[Path, Path]] = {}


def rendered_once(tmp_path_factory) -> tuple[Path, Path]:
    """(tables dir, figures dir) of the fixture tables, every registered figure drawn by
    ``make_figures``: once per session (drawing is most of this file's time), shared read-only."""
    if "default" not in _RENDERED:
        from dlbench.report.figures import make_figures

        root = tmp_path_factory.mktemp("rendered")
        tables = write_tables(root / "tables", make_metrics(), make_history(), make_tsne())
        make_figures(tables, root / "fig")
        _RENDERED["default"] = (tables, root / "fig")
    return _RENDERED["default"]


@pytest.fixture
def rendered(tmp_path_factory) -> tuple[Path, Path]:
    return rendered_once(tmp_path_factory)


@pytest.fixture
def kept_figures(monkeypatch):
    """Figures the SSL module would save, kept open for inspection (and closed afterwards)."""
    import matplotlib.pyplot as plt

    kept = []
    monkeypatch.setattr(ssl, "_save", lambda fig, path: kept.append(fig))
    yield kept
    for fig in kept:
        plt.close(fig)


def legend_texts(fig) -> list[str]:
    return [t.get_text() for leg in fig.legends for t in leg.get_texts()]


# ---------------------------------------------------------------- numbers and tables


def test_metrics_fixture_matches_the_aggregate_contract():
    m = make_metrics()
    assert list(m.columns) == METRICS_COLUMNS
    ft = m[m["model_id"] == "shapes/resnet10n/simclr/finetune/none/none/seed0"].iloc[0]
    assert (ft["kind"], ft["family"], ft["stage"]) == ("finetune", "finetune", "adapt")
    assert (ft["pretrain_kind"], ft["pretrain_family"]) == ("simclr", "contrastive")
    assert list(ft["parents"]) == ["shapes/resnet10n/simclr/none/none/none/seed0"]
    sup = m[m["kind"] == "supervised"]
    assert sup["pretrain_kind"].isna().all() and sup["pretrain_family"].isna().all()


def test_ssl_summary_numbers_and_ood_weighting():
    s = ssl.ssl_summary(make_metrics())
    row = s[(s["pretrain"] == "simclr") & (s["adapt"] == "linear")].iloc[0]
    assert row["seeds"] == 2
    assert row["id_acc_mean"] == pytest.approx(0.7)
    assert row["id_acc_std"] == pytest.approx(math.sqrt(0.02))  # ddof=1 over seeds
    # per model: mean over kinds of (mean over the kind's splits): (.5 + .9)/2 = .7, (.3 + .5)/2 = .4
    assert row["ood_acc_mean"] == pytest.approx(0.55)
    assert row["ood_acc_std"] == pytest.approx(math.sqrt(0.045))
    assert (row["pretrain_kind"], row["adapt_kind"], row["family"]) == ("simclr", "linear", "contrastive")
    pm = ssl.per_model(ssl.ssl_rows(make_metrics()))
    seed0 = "shapes/resnet10n/simclr/linear/none/none/seed0"
    assert pm.set_index("model_id").loc[seed0, "ood_acc"] == pytest.approx(0.7)
    # the ensemble is excluded (it would pull the mean up), the digits baseline too (no SSL there), and
    # CLIP (pretrain_family 'language-image': its own section)
    assert set(s["dataset"]) == {"shapes"} and "clip" not in set(s["pretrain"])
    sup = s[s["pretrain"] == "none"]
    assert len(sup) == 1 and sup.iloc[0]["backbone"] == "resnet10n" and sup.iloc[0]["method"] == "supervised (scratch)"
    assert sup.iloc[0]["id_acc_mean"] == pytest.approx(0.85) and sup.iloc[0]["ood_acc_mean"] == pytest.approx(0.5)
    assert sup.iloc[0]["family"] == "supervised"
    # display order: random first, known methods by family, unknown kinds after, supervised last
    res = s[s["backbone"] == "resnet10n"]
    assert list(dict.fromkeys(res["pretrain"])) == ["random", "simclr", "byol", "zz_new", "none"]
    assert list(res[res["pretrain"] == "byol"]["adapt"]) == ["linear", "knn", "finetune"]
    # the family comes from the table, not from the display tuples
    assert res.loc[res["pretrain"] == "zz_new", "family"].unique().tolist() == ["novel"]
    vit = s[s["backbone"] == "vit_t"]
    assert list(vit["pretrain"]) == ["random", "mae"] and vit["ood_acc_mean"].isna().all()
    assert vit["id_acc_std"].isna().all() and (vit["seeds"] == 1).all()


def test_ssl_rows_select_by_pretrain_family_not_by_name():
    # a method no tuple lists, named like nothing known, is in the section by its family; a model
    # named like an SSL method but pretrained by CLIP's family is not
    rows = (_model("none", "supervised", 0, 0.9) + _model("mystery", "linear", 0, 0.5)
            + _model("simclr", "linear", 0, 0.6))
    m = frame([dict(r, pretrain_family="language-image") if r["pretrain"] == "simclr" else r for r in rows])
    m.loc[m["pretrain"] == "mystery", ["pretrain_kind", "pretrain_family"]] = ["mystery", "contrastive"]
    s = ssl.ssl_summary(m)
    assert list(s["pretrain"]) == ["mystery", "none"]
    assert s.iloc[0]["family"] == "contrastive"


def test_supervised_reference_selected_by_kind():
    # the supervised reference is found by its kind, whatever its variant is called
    rows = _model("none", "supervised", 0, 0.9) + _model("random", "linear", 0, 0.5)
    m = frame(rows)
    sup = m["kind"] == "supervised"
    m.loc[sup, ["adapt", "model_id"]] = ["scratch", "shapes/resnet10n/none/scratch/none/none/seed0"]
    s = ssl.ssl_summary(m)
    assert list(s["pretrain"]) == ["random", "none"]
    assert list(ssl.protocol_table(s).columns) == ["linear", "scratch"]


def test_ssl_summary_empty_without_ssl_rows():
    s = ssl.ssl_summary(make_metrics(with_ssl=False))
    assert s.empty and {"id_acc_mean", "ood_acc_mean", "seeds"} <= set(s.columns)
    assert ssl.protocol_table(s).empty


def test_method_order_unknown_names_last_alphabetically():
    assert ssl.method_order(["zeta", "mae", "none", "alpha", "simclr", "random"]) == \
        ["random", "simclr", "mae", "alpha", "zeta", "none"]
    assert ssl.protocol_order(["supervised", "weird", "lpft", "linear"]) == ["linear", "lpft", "weird", "supervised"]
    # variant names are ordered by their kinds (a sweep point sits with its kind)
    assert ssl.method_order(["simclr-lr0.1", "rotation", "random"], {"simclr-lr0.1": "simclr"}) == \
        ["random", "rotation", "simclr-lr0.1"]
    assert ssl.protocol_order(["ft-b", "ft-a", "knn", "lp"], {"ft-b": "finetune", "ft-a": "finetune", "lp": "linear"}) \
        == ["lp", "knn", "ft-a", "ft-b"]


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


def sweep_metrics() -> pd.DataFrame:
    rows = _model("none", "supervised", 0, 0.9, (0.6,))
    for pretrain in ("simclr", "random"):
        rows += _model(pretrain, "linear", 0, 0.6, (0.4,))
        for lr, acc in ((0.002, 0.75), (0.001, 0.7)):  # listed out of order on purpose
            rows += _model(pretrain, f"finetune-lr{lr}", 0, acc, (0.5,), lr=lr)
    return frame(rows)


def test_sweep_points_are_their_own_protocol_columns(kept_figures, tmp_path):
    s = ssl.ssl_summary(sweep_metrics())
    sweep = s[s["adapt"].str.startswith("finetune-")]
    assert set(sweep["adapt_kind"]) == {"finetune"} and len(sweep) == 4
    t = ssl.protocol_table(s)
    assert list(t.columns) == ["linear", "finetune-lr0.001", "finetune-lr0.002", "supervised"]
    assert t.loc[("shapes", "resnet10n", "simclr"), "finetune-lr0.001"] == "ID .700 ± .000 / OOD .500 ± .000"
    assert t.loc[("shapes", "resnet10n", "simclr"), "finetune-lr0.002"] == "ID .750 ± .000 / OOD .500 ± .000"
    # the figure shows each sweep point as its own protocol in the legend
    ssl.ssl_protocols(sweep_metrics(), tmp_path / "p.png")
    texts = legend_texts(kept_figures[0])
    assert texts[:3] == ["linear", "finetune-lr0.001", "finetune-lr0.002"] and "supervised (scratch)" in texts


# ---------------------------------------------------------------- label efficiency


def test_fraction_rows_stay_out_of_the_protocol_summary_and_table():
    m = make_metrics()
    assert (m["fraction"] < 1).sum() > 0
    s = ssl.ssl_summary(m)
    assert not s["adapt"].str.contains("fraction").any()
    assert s.equals(ssl.ssl_summary(m[~(m["fraction"] < 1).fillna(False).to_numpy(dtype=bool)]))
    assert list(ssl.protocol_table(s).columns) == ["linear", "knn", "finetune", "supervised"]
    # fraction 1 (e.g. the top of a fraction sweep) is a full-data variant: it stays
    full = frame(_model("simclr", "linear-fraction1", 0, 0.7, fraction=1.0))
    assert list(ssl.ssl_summary(pd.concat([m, full]))["adapt"]).count("linear-fraction1") == 1


def test_label_efficiency_points():
    pts = ssl.label_efficiency(make_metrics())
    assert list(pts.columns) == ["dataset", "backbone", "pretrain", "pretrain_kind", "method", "protocol", "adapt",
                                 "fraction", "id_acc_mean", "id_acc_std", "seeds"]
    key = ["backbone", "pretrain", "protocol", "fraction"]
    got = pts.set_index(key)
    # only methods with fraction variants (byol and zz_new have none), in method order, protocols in order
    assert list(dict.fromkeys(zip(pts["backbone"], pts["method"], pts["protocol"]))) == [
        ("resnet10n", "random init", "linear"), ("resnet10n", "random init", "finetune"),
        ("resnet10n", "simclr", "linear"), ("resnet10n", "simclr", "finetune"), ("vit_t", "mae", "linear")]
    for (pretrain, proto), accs in FRACTION_ACC.items():
        for fraction, acc in zip((0.01, 0.1), accs):
            row = got.loc[("resnet10n", pretrain, proto, fraction)]
            assert row["adapt"] == f"{proto}-fraction{fraction:g}" and row["seeds"] == 2
            assert row["id_acc_mean"] == pytest.approx(acc + 0.01)
            assert row["id_acc_std"] == pytest.approx(0.02 / math.sqrt(2))
    # the 100% points: the main full-data variant of the same method and protocol
    simclr_lin = got.loc[("resnet10n", "simclr", "linear", 1.0)]
    assert simclr_lin["adapt"] == "linear" and simclr_lin["id_acc_mean"] == pytest.approx(0.7)
    assert got.loc[("resnet10n", "random", "finetune", 1.0)]["id_acc_mean"] == pytest.approx(0.505)
    assert got.loc[("vit_t", "mae", "linear", 1.0)]["id_acc_mean"] == pytest.approx(0.45)
    assert len(pts) == 4 * 3 + 2
    # two full-data variants of one kind: the one named like the kind is the 100% point
    extra = frame(_model("simclr", "linear-wd0.1", 0, 0.1) + _model("random", "linear-wd0.1", 0, 0.1))
    again = ssl.label_efficiency(pd.concat([make_metrics(), extra])).set_index(key)
    assert again.loc[("resnet10n", "simclr", "linear", 1.0)]["adapt"] == "linear"
    # nothing to show: no fraction column, or no fraction below 1
    assert ssl.label_efficiency(make_metrics().drop(columns="fraction")).empty
    assert ssl.label_efficiency(make_metrics().assign(fraction=1.0)).empty
    assert ssl.label_efficiency(pd.DataFrame()).empty


def test_label_efficiency_table():
    t = ssl.label_efficiency_table(ssl.label_efficiency(make_metrics()))
    assert list(t.columns) == [(p, f) for p in ("linear", "finetune") for f in ("1%", "10%", "100%")]
    assert t.loc[("shapes", "resnet10n", "simclr"), ("linear", "1%")] == ".510 ± .014"
    assert t.loc[("shapes", "vit_t", "mae"), ("finetune", "1%")] == ""
    assert t.loc[("shapes", "vit_t", "mae"), ("linear", "10%")] == ".250 ± .000"


def test_label_efficiency_figure(kept_figures, tmp_path):
    from matplotlib.container import ErrorbarContainer

    ssl.ssl_label_efficiency(make_metrics(), tmp_path / "le.png")
    fig = kept_figures[0]
    axes = [ax for ax in fig.axes if ax.get_visible()]
    assert [ax.get_title() for ax in axes] == ["shapes / resnet10n", "shapes / vit_t"]  # one panel per group
    res, vit = axes
    assert res.get_xscale() == "log" and res.get_ylabel() == "ID accuracy" and "%" in res.get_xlabel()
    assert [t.get_text() for t in res.get_xticklabels()] == ["1%", "10%", "100%"]
    assert [t.get_text() for t in vit.get_xticklabels()] == ["10%", "100%"]
    lines = [c for c in res.containers if isinstance(c, ErrorbarContainer)]
    assert len(lines) == 4  # (random init, simclr) x (linear, finetune)
    styles = [c.lines[0].get_linestyle() for c in lines]
    assert styles == ["-", "--", "-", "--"]  # linear solid, finetune dashed
    colours = [c.lines[0].get_color() for c in lines]
    assert colours[0] == colours[1] != colours[2] == colours[3]  # one colour per method
    x, y = lines[2].lines[0].get_data()  # simclr linear: 1%, 10%, 100% (dodged a little on the log axis)
    np.testing.assert_allclose(np.asarray(x) / np.asarray(x)[-1], [0.01, 0.1, 1.0])
    np.testing.assert_allclose(y, [0.51, 0.61, 0.7])
    # chance (5 classes) and the supervised baseline as reference lines
    refs = [ln.get_ydata()[0] for ln in res.get_lines() if ln.get_linestyle() in (":", "-.")]
    assert refs == pytest.approx([0.2, 0.85])
    texts = legend_texts(fig)
    assert texts[:3] == ["random init", "simclr", "mae"] and {"linear", "finetune", "chance"} <= set(texts)
    assert "supervised (scratch), 100%" in texts


def test_label_efficiency_placeholder_without_fraction_variants(tmp_path):
    m = make_metrics()
    ssl.ssl_label_efficiency(m[~(m["fraction"] < 1).fillna(False).to_numpy(dtype=bool)], tmp_path / "le.png")
    w, h = png_size(tmp_path / "le.png")
    assert w < 700 and h < 300


# ---------------------------------------------------------------- collapse


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


# ---------------------------------------------------------------- figures


def test_figures_are_valid_pngs(rendered, tmp_path):
    _, fig = rendered
    sizes = {f.name: png_size(fig / f.name) for f in ssl.SECTION.figures}
    assert set(sizes) == {"ssl_protocols.png", "ssl_collapse.png", "ssl_label_efficiency.png", "ssl_tsne.png"}
    assert all(w > 600 and h > 300 for w, h in sizes.values()), sizes
    # t-SNE: 8 methods in 6 columns = 2 rows pretrained + 1 row finetuned; without finetuned it is shorter
    ssl.ssl_tsne(make_tsne(finetuned=False), tmp_path / "pre.png")
    assert png_size(tmp_path / "pre.png")[1] < sizes["ssl_tsne.png"][1] * 0.85


def test_figures_placeholders_when_empty(tmp_path):
    from dlbench.report.figures import read_tables

    empty = read_tables(tmp_path / "missing")  # no tables at all: empty frames
    assert empty["tsne"].empty
    tables = {**empty, "metrics": make_metrics(with_ssl=False)}
    for figure in ssl.SECTION.figures:
        figure.draw(tables, tmp_path / figure.name)
        w, h = png_size(tmp_path / figure.name)
        assert w < 700 and h < 300  # the small 5 x 2 inch text placeholder


def test_tsne_legend_shows_class_names(kept_figures, tmp_path):
    ssl.ssl_tsne(make_tsne(), tmp_path / "t.png")
    fig = kept_figures[0]
    assert legend_texts(fig) == CLASSES  # names in label order, not 0..4
    assert fig.legends[0].get_title().get_text() == "class"
    titles = [ax.get_title() for ax in fig.axes if ax.get_visible()]
    assert titles[0] == "random init" and "zz_new" in titles and len(titles) == 8 + 2


def test_collapse_figure_one_column_per_family(kept_figures, tmp_path):
    ssl.ssl_collapse(make_history(), tmp_path / "c.png")
    fig = kept_figures[0]
    top, bottom = fig.axes[:3], fig.axes[3:6]  # rows: collapse monitor, kNN; columns: families in display order
    assert [ax.get_title() for ax in top] == ["contrastive", "self-distillation", "masked"]
    assert all(ax.get_xlabel() == "epoch" for ax in bottom) and top[0].get_ylabel() and bottom[0].get_ylabel()
    # one method legend per family (below its column), names as in the tables
    assert [t.get_text() for t in bottom[1].get_legend().get_texts()] == ["byol"]
    keys = [t.get_text() for t in top[0].get_legend().get_texts()]
    assert keys[:2] == ["collapse threshold 0.05", "collapsed run (final epoch)"]
    assert keys[2:] == ["resnet10n", "vit_t"]  # line style per backbone: two are present
    # one red x at the collapsed byol seed's final epoch and value, in the self-distillation column
    offsets = [c.get_offsets() for c in top[1].collections if len(c.get_offsets()) == 1]
    assert any(np.allclose(o[0], [3, 0.01]) for o in offsets)


# ---------------------------------------------------------------- HTML


def test_html_ssl_section_with_collapse_warning(rendered, tmp_path):
    tables, fig = rendered
    write_report(tables, fig, tmp_path / "none.yaml", tmp_path / "report.html")
    page = (tmp_path / "report.html").read_text()
    sec = section_html(page, "ssl")
    assert "ID .700 ± .141 / OOD .550 ± .212" in sec and "supervised (scratch)" in sec
    assert "class='alert'" in sec and "1 of 5 pretraining runs collapsed" in sec
    assert "shapes/resnet10n/byol/none/none/none/seed0" in sec
    assert "shapes/resnet10n/byol/none/none/none/seed1" not in sec
    assert sec.count("<img") == 4 and "Not in this config yet." not in sec
    # label efficiency: its own table, never a protocol column of the main one
    assert "<h3>Label efficiency</h3>" in sec and "linear-fraction0.01" not in sec
    assert ".510 ± .014" in sec  # simclr linear at 1%: (.50 + .52) / 2
    assert "supervised" in section_html(page, "baseline")
    assert "Not in this config yet." not in section_html(page, "baseline")


def test_html_ssl_section_without_collapse_and_without_ssl(tmp_path):
    tables = write_tables(tmp_path / "t1", make_metrics(), make_history(collapse=False))
    write_report(tables, tmp_path / "nofig", tmp_path / "none.yaml", tmp_path / "r1.html")
    sec = section_html((tmp_path / "r1.html").read_text(), "ssl")
    assert "No pretraining run collapsed (final std·sqrt(d) ≥ 0.05 for all 5 runs)." in sec
    assert "alert" not in sec and "<img" not in sec  # no figures drawn: none embedded
    tables = write_tables(tmp_path / "t2", make_metrics(with_ssl=False), make_history())
    write_report(tables, tmp_path / "nofig", tmp_path / "none.yaml", tmp_path / "r2.html")
    page = (tmp_path / "r2.html").read_text()
    assert "Not in this config yet." in section_html(page, "ssl")
    assert "<table" in section_html(page, "baseline")
