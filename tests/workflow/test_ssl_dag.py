"""Self-supervised pretraining through the real DAG: one method per family end to end, and a new one added
as one module plus one config line (per-method coverage is in tests/unit/test_ssl_methods.py)."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import yaml

from .conftest import snakemake

pytestmark = pytest.mark.workflow

VARIANTS = {"linear", "knn", "finetune-lr0.001", "finetune-lr0.002", "lpft"}
CLIP_VARIANTS = {"zeroshot", "finetune_zs", "wiseft-alpha0", "wiseft-alpha0.5", "wiseft-alpha1"}


def test_smoke_config_runs_one_method_per_family(smoke_repo, first_run):
    from dlbench.pretrain.base import load_all

    methods = load_all()
    m = first_run["metrics"]
    ssl = m[(m["stage"] == "adapt") & (m["kind"] != "supervised")]  # supervised fills the adapt slot too
    assert set(ssl["pretrain_family"]) == {methods.get(n).family for n in methods.names()}
    shapes_splits = set(m.loc[(m["kind"] == "supervised") & (m["dataset"] == "shapes"), "split"])
    for (backbone, method), g in ssl.groupby(["backbone", "pretrain"]):
        extra = {"simclr": {"linear_10pct"}, "clip": CLIP_VARIANTS}.get(method, set())
        assert set(g["adapt"]) == VARIANTS | extra, method
        assert g["acc"].between(0, 1).all() and g["nll"].notna().all(), method
        assert set(g["split"]) == shapes_splits, method
    assert set(ssl.loc[ssl["pretrain"] == "mae", "backbone"]) == {"vit_tiny"}  # the ViT-only method on the ViT
    history = pd.read_parquet(smoke_repo / "results/tables/history.parquet")
    pre = history[history["stage"] == "pretrain"]
    assert set(pre["pretrain"]) == set(ssl["pretrain"])
    assert pre["val_emb_std_norm"].between(0, 1.0001).all() and pre["val_knn_acc"].between(0, 1).all()
    assert pre.loc[pre["kind"] != "random", "train_loss"].notna().all()
    tsne = pd.read_parquet(smoke_repo / "results/tables/tsne.parquet")
    assert set(tsne["panel"]) == {"pretrained", "finetuned"}
    assert tsne.groupby("model_id").size().eq(100).all() and tsne["model_id"].nunique() == 12
    assert set(tsne["class"]) == {"circle", "ring", "triangle", "square", "heart", "bar", "star", "cross",
                                  "crescent", "arrow"}
    card = json.loads((smoke_repo / "results/models/shapes/tiny/simclr/knn/none/none/seed0/model.json").read_text())
    assert card["parents"] == ["shapes/tiny/simclr/none/none/none/seed0"] and card["model"]["head"]["kind"] == "knn"
    report = (smoke_repo / "results/report.html").read_text()
    assert "Self-supervised pretraining" in report and "simclr" in report
    # the label-fraction variant: a class-balanced 10% of the labeled train split, only for simclr
    few = m[m["adapt"] == "linear_10pct"]
    assert set(few["fraction"]) == {0.1} and set(few["pretrain"]) == {"simclr"}
    assert m.loc[m["adapt"] == "linear", "fraction"].eq(1.0).all()
    few_card = json.loads((smoke_repo / "results/models/shapes/tiny/simclr/linear_10pct/none/none/seed0/model.json")
                          .read_text())
    assert few_card["parents"] == ["shapes/tiny/simclr/none/none/none/seed0"]
    assert "<h3>Label efficiency</h3>" in report


TOY_METHOD = '''
"""A toy method: predict each image's mean colour from its features (README: adding a method)."""
import torch.nn.functional as F
from torch import nn

from dlbench.pretrain.base import PretrainMethod, register_method


@register_method("toy_mean_colour", family="pretext")
class ToyMeanColour(PretrainMethod):
    defaults = {"hidden": 32}

    def __init__(self, setup):
        super().__init__(setup)
        self.model["head"] = nn.Sequential(nn.Linear(self.feature_dim, self.params["hidden"]), nn.ReLU(),
                                           nn.Linear(self.params["hidden"], 3))

    def training_loss(self, batch, gen):
        target = batch.images.float().mean(dim=(2, 3))
        return F.mse_loss(self.model["head"](self.encode(batch.images)).float(), target), {}
'''


def test_a_new_method_is_one_module_and_one_config_line(smoke_repo, first_run):
    """In the smoke clone (its datasets are there already); the module is removed again afterwards. The new
    method's backbone goes through pretraining, the frozen-feature protocols and evaluation (three jobs;
    every adapt kind on every family's backbone is the smoke run's own test above)."""
    repo = smoke_repo
    module = repo / "src/dlbench/pretrain/toy_mean_colour.py"
    module.write_text(TOY_METHOD)
    try:
        cfg = yaml.safe_load((repo / "configs/smoke.yaml").read_text())
        cfg["pretrain"]["runs"][0]["variants"].append("toy_mean_colour")  # the one config line
        (repo / "configs/toy.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
        targets = [f"results/predictions/shapes/tiny/toy_mean_colour/{a}/none/none" for a in ("knn", "linear")]
        snakemake(repo, *targets, config="configs/toy.yaml")
    finally:
        module.unlink()
    for target in targets:
        assert (repo / target / "seed0/logits.parquet").stat().st_size > 0
    pre = repo / "results/models/shapes/tiny/toy_mean_colour/none/none/none/seed0"
    card = json.loads((pre / "model.json").read_text())
    assert card["kind"] == "toy_mean_colour" and card["family"] == "pretext" and card["stage"] == "pretrain"
    history = json.loads((pre / "history.json").read_text())
    assert len(history) == 1 and history[0]["train_loss"] > 0
