"""The report layer: section registry, figures from the tables, HTML, baseline section, t-SNE table."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from dlbench.evaluate.outputs import write_embeddings
from dlbench.report import baseline
from dlbench.report.figures import figure_names, make_figures, read_tables
from dlbench.report.html import write_report
from dlbench.report.sections import SECTIONS, Figure, Section, all_figures, load_all
from dlbench.report.tsne import write_tsne
from tests.unit.test_report_ssl import (make_history, make_metrics, png_size, rendered_once, section_html,
                                        write_tables)

SECTION_KEYS = ["baseline", "ssl", "clip", "ensembles", "compression"]


def test_sections_in_report_order():
    sections = load_all()
    assert [s.key for s in sections] == SECTION_KEYS
    assert [s.order for s in sections] == sorted(s.order for s in sections)
    names = figure_names()
    assert len(names) == len(set(names)) and all(n.endswith(".png") for n in names)
    assert {"id_vs_ood.png", "corruption_severity.png", "training_curves.png", "ssl_protocols.png",
            "ssl_collapse.png", "ssl_tsne.png"} <= set(names)
    for s, f in all_figures():
        assert s.caption(f.name) == f.caption and f.caption


@pytest.fixture
def rendered(tmp_path_factory):
    return rendered_once(tmp_path_factory)  # make_figures on the SSL fixture tables, drawn once per session


def test_make_figures_draws_every_registered_figure(rendered):
    _, fig = rendered
    drawn = {p.name for p in fig.iterdir()}
    assert drawn == {f.name for _, f in all_figures()}
    for name in drawn:
        w, h = png_size(fig / name)
        assert w > 700 or h > 300, (name, w, h)  # real figures, not placeholders, with this fixture


def test_make_figures_without_tables_draws_placeholders(tmp_path):
    make_figures(tmp_path / "no_tables", tmp_path / "fig")
    for name in figure_names():
        w, h = png_size(tmp_path / "fig" / name)
        assert w < 700 and h < 300


def test_a_registered_section_reaches_figures_and_html(tmp_path, monkeypatch):
    """A section is one registration: its figure is drawn and embedded, in the section's order."""
    import matplotlib.pyplot as plt

    from dlbench.report.html import figure_html
    from dlbench.report.plotting import save

    def draw(tables, path):
        fig, ax = plt.subplots(figsize=(7, 4))
        ax.bar(["a", "b"], [len(tables["metrics"]), 1])
        save(fig, path)

    def render(tables, figures):
        return [f"<p>rows: {len(tables['metrics'])}</p>", figure_html(figures / "zz.png", "zz caption")]

    load_all()
    zz = Section("zz", "ZZ topic", "blurb", order=25, figures=(Figure("zz.png", "zz caption", draw),), render=render)
    tables = write_tables(tmp_path / "tables", make_metrics(), make_history())
    with monkeypatch.context() as only_zz:  # draw just this section's figure (the others cost seconds)
        only_zz.setattr(SECTIONS, "_items", {"zz": zz})
        make_figures(tables, tmp_path / "fig")
    assert [p.name for p in (tmp_path / "fig").iterdir()] == ["zz.png"]
    png_size(tmp_path / "fig" / "zz.png")
    monkeypatch.setitem(SECTIONS._items, "zz", zz)
    assert [s.key for s in load_all()] == ["baseline", "ssl", "zz", "clip", "ensembles", "compression"]
    assert "zz.png" in figure_names()
    write_report(tables, tmp_path / "fig", tmp_path / "none.yaml", tmp_path / "r.html")
    page = (tmp_path / "r.html").read_text()
    assert page.index("<h2 id='ssl'>") < page.index("<h2 id='zz'>") < page.index("<h2 id='clip'>")
    sec = section_html(page, "zz")
    assert f"rows: {len(make_metrics())}" in sec and "zz caption" in sec and "<img" in sec


def test_empty_sections_say_not_in_config(tmp_path):
    tables = write_tables(tmp_path / "tables", make_metrics(), make_history())
    config = tmp_path / "c.yaml"
    config.write_text("report: {title: My course report}\n")
    write_report(tables, tmp_path / "fig", config, tmp_path / "r.html")
    page = (tmp_path / "r.html").read_text()
    assert "<title>My course report</title>" in page
    for key in ("ensembles", "compression"):  # planned sections: nothing in this config yet
        assert "<p class='empty'>Not in this config yet.</p>" in section_html(page, key)
    for key in ("baseline", "ssl", "clip"):  # the tables have CLIP rows (pretrain family language-image)
        assert "Not in this config yet." not in section_html(page, key)
    assert [page.index(f"<h2 id='{k}'>") for k in SECTION_KEYS] == sorted(page.index(f"<h2 id='{k}'>")
                                                                          for k in SECTION_KEYS)
    assert page.index("<h2 id='compression'>") < page.index("<h2 id='provenance'>")
    assert "report: {title: My course report}" in section_html(page, "provenance")


def test_read_tables_empty_frames_when_absent(tmp_path):
    tables = read_tables(tmp_path)
    assert set(tables) == {"metrics", "summary", "history", "tsne"}
    assert all(df.empty for df in tables.values())
    assert {"x", "y", "label", "class", "panel"} <= set(tables["tsne"].columns)


# ---------------------------------------------------------------- baseline section


def test_baseline_table_and_selection_by_kind():
    from dlbench.report.aggregate import summary_table

    t = baseline.baseline_table(summary_table(make_metrics()))
    assert list(t.index) == ["digits/resnet10n/supervised", "shapes/resnet10n/supervised"]
    assert t.loc["shapes/resnet10n/supervised", "id acc"] == "0.850 ± 0.071"
    assert t.loc["shapes/resnet10n/supervised", "params"] == "1000"
    assert list(t["seeds"]) == [1, 2]
    assert set(baseline.supervised(make_metrics())["kind"]) == {"supervised"}


def test_baseline_figures_show_only_supervised_models(tmp_path, monkeypatch):
    import matplotlib.pyplot as plt

    kept = []
    monkeypatch.setattr(baseline, "save", lambda fig, path: kept.append(fig))
    tables = {"metrics": make_metrics(), "history": make_history()}
    try:
        baseline.id_vs_ood(tables, tmp_path / "a.png")
        baseline.corruption_severity(tables, tmp_path / "b.png")
        baseline.training_curves(tables, tmp_path / "c.png")
        for fig in kept:
            texts = [t.get_text() for leg in [*fig.legends, *(a.get_legend() for a in fig.axes)] if leg
                     for t in leg.get_texts()]
            assert texts and all(t.endswith("/supervised") for t in texts if "/" in t), texts
            for ax in fig.axes:
                assert ax.get_xlabel() and ax.get_ylabel() and ax.get_title(), (ax.get_title(), ax.get_xlabel())
    finally:
        for fig in kept:
            plt.close(fig)


# ---------------------------------------------------------------- t-SNE table


def test_write_tsne_from_cached_embeddings(tmp_path):
    classes = ["red", "green", "blue", "yellow"]
    rng = np.random.default_rng(0)
    ids = {"shapes/resnet10n/simclr/linear/none/none/seed1": "pretrained",
           "shapes/resnet10n/simclr/finetune/none/none/seed1": "finetuned"}
    for i, mid in enumerate(ids):
        labels = np.arange(24) % 4
        feats = rng.normal(size=(24, 8)) + 3 * np.eye(8)[labels] * (i + 1)
        path = tmp_path / "predictions" / mid / "embeddings.parquet"
        path.parent.mkdir(parents=True)
        write_embeddings(path, feats, labels, classes, split="test")
    out = tmp_path / "tables" / "tsne.parquet"
    write_tsne(tmp_path, ids, out)
    df = pd.read_parquet(out)
    assert {"model_id", "dataset", "backbone", "pretrain", "adapt", "ensemble", "compress", "seed", "panel", "x",
            "y", "label", "class"} <= set(df.columns)
    assert len(df) == 48 and df.groupby("model_id")["panel"].first().to_dict() == ids
    assert (df["seed"] == 1).all() and set(df["pretrain"]) == {"simclr"} and set(df["adapt"]) == {"linear", "finetune"}
    assert np.isfinite(df[["x", "y"]].to_numpy()).all() and df["x"].std() > 0
    assert dict(zip(df["label"], df["class"])) == dict(enumerate(classes))  # names travel with the labels
    # the figure reads it as is
    tables = {**read_tables(tmp_path / "tables"), "metrics": make_metrics()}
    assert (tables["tsne"]["class"] == df["class"]).all()
    write_tsne(tmp_path, ids, tmp_path / "again.parquet")  # seeded by the model's seed: the same points
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "again.parquet"), df)
    write_tsne(tmp_path, {}, tmp_path / "empty.parquet")
    assert pd.read_parquet(tmp_path / "empty.parquet").empty


# ---------------------------------------------------------------- no models in the report layer


def test_report_layer_imports_no_model_code():
    """Reports read tables and cached outputs only: no torch, timm or the training packages."""
    code = ("import sys\n"
            "import dlbench.report.aggregate, dlbench.report.figures, dlbench.report.html, dlbench.report.tsne\n"
            "from dlbench.report.sections import load_all\n"
            "load_all()\n"
            "banned = ('dlbench.models', 'dlbench.train', 'dlbench.pretrain', 'dlbench.adapt',\n"
            "          'dlbench.evaluate.predict')\n"
            "bad = [m for m in sys.modules if m.split('.')[0] in ('torch', 'timm', 'torchvision')\n"
            "       or m.startswith(banned)]\n"
            "print(sorted(bad))\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


@pytest.mark.parametrize("name", ["ssl_protocols.png", "ssl_collapse.png", "ssl_label_efficiency.png", "ssl_tsne.png"])
def test_ssl_figures_registered_in_ssl_section(name):
    ssl_section = next(s for s in load_all() if s.key == "ssl")
    assert name in [f.name for f in ssl_section.figures]


def test_snakemake_report_captions_are_the_sections_captions():
    """`snakemake --report` reads captions from workflow/report/<figure>.rst: they must say what the HTML says."""
    from pathlib import Path

    from dlbench.report.sections import all_figures

    root = Path(__file__).resolve().parents[2] / "workflow" / "report"
    for _, figure in all_figures():
        text = (root / f"{figure.name.removesuffix('.png')}.rst").read_text()
        assert " ".join(text.split()) == " ".join(figure.caption.split()), figure.name
