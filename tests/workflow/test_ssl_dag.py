"""Self-supervised pretraining through the real DAG: every method end to end, and a new one added."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import yaml

from .conftest import clone_repo, snakemake

pytestmark = pytest.mark.workflow

PROTOCOLS = {"linear", "knn", "finetune", "lpft"}


def smoke_methods(repo) -> set[str]:
    cfg = yaml.safe_load((repo / "configs/smoke.yaml").read_text())
    return {m for run in cfg["pretrain"]["runs"] for m in run["methods"]}


def test_smoke_config_runs_every_registered_method(smoke_repo, first_run):
    from dlbench.pretrain.base import load_all

    registered = set(load_all().names())
    assert smoke_methods(smoke_repo) == registered  # the smoke run covers every method there is
    m = first_run["metrics"]
    ssl = m[m["pretrain"] != "none"]
    assert set(ssl["pretrain"]) == registered
    shapes_splits = set(m.loc[(m["adapt"] == "supervised") & (m["dataset"] == "shapes"), "split"])
    for method, g in ssl.groupby("pretrain"):
        assert set(g["adapt"]) == PROTOCOLS, method
        assert g["acc"].between(0, 1).all() and g["nll"].notna().all(), method
        assert set(g["split"]) == shapes_splits, method
    # the ViT-only method ran on the ViT backbone, its baseline too
    assert set(ssl.loc[ssl["pretrain"] == "mae", "backbone"]) == {"vit_tiny"}
    history = pd.read_parquet(smoke_repo / "results/tables/history.parquet")
    pre = history[(history["adapt"] == "none") & (history["pretrain"] != "none")]
    assert set(pre["pretrain"]) == registered
    assert pre["val_emb_std_norm"].between(0, 1.0001).all() and pre["val_knn_acc"].between(0, 1).all()
    trained = pre[pre["pretrain"] != "random"]
    assert trained["train_loss"].notna().all()
    for method in registered:
        tsne = pd.read_parquet(next((smoke_repo / "results/tsne/shapes").glob(f"*/{method}/seed0.parquet")))
        assert set(tsne["stage"]) == {"pretrained", "finetuned"} and len(tsne) == 200
    # adapted models record their parent and the kNN head is a real model directory
    meta = json.loads((smoke_repo / "results/models/shapes/tiny/simclr/knn/none/none/seed0/model.json").read_text())
    assert meta["parent"] == "shapes/tiny/simclr/none/none/none/seed0" and meta["head"]["kind"] == "knn"
    report = (smoke_repo / "results/report.html").read_text()
    assert "Self-supervised pretraining" in report and "simclr" in report


TOY_METHOD = '''
"""A toy method: predict each image's mean colour from its features (README: adding a method)."""
import torch
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

    def training_loss(self, images, labels, gen):
        target = images.float().mean(dim=(2, 3))
        loss = F.mse_loss(self.model["head"](self.encode(images)).float(), target)
        return loss, {}
'''


def test_a_new_method_is_one_module_and_one_config_line(tmp_path, repo_root):
    repo = clone_repo(repo_root, tmp_path / "repo")
    (repo / "src/dlbench/pretrain/toy_mean_colour.py").write_text(TOY_METHOD)
    cfg = yaml.safe_load((repo / "configs/smoke.yaml").read_text())
    cfg["pretrain"]["runs"][0]["methods"].append("toy_mean_colour")  # the one config line
    (repo / "configs/toy.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    targets = [f"results/predictions/shapes/tiny/toy_mean_colour/{a}/none/none/seed0/logits.parquet"
               for a in sorted(PROTOCOLS)]
    snakemake(repo, *targets, config="configs/toy.yaml")
    for target in targets:
        assert (repo / target).stat().st_size > 0
    meta = json.loads((repo / "results/models/shapes/tiny/toy_mean_colour/none/none/none/seed0/model.json").read_text())
    assert meta["parts"]["pretrain"] == "toy_mean_colour" and meta["method_family"] == "pretext"
    history = json.loads((repo / "results/models/shapes/tiny/toy_mean_colour/none/none/none/seed0/history.json").read_text())
    assert len(history) == 1 and history[0]["train_loss"] > 0
