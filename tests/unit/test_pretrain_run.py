"""The pretrain stage: collapse monitor, backbone-only model directories, determinism, labeled splits."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from dlbench.data.loader import balanced_subset, labeled_splits, load_tensors
from dlbench.models.backbones import build_backbone
from dlbench.models.checkpoint import WEIGHTS, load_backbone
from dlbench.pretrain.run import embed, embedding_std, pretrain
from dlbench.registry import UnknownNameError

from .ssl_helpers import TINY_SPEC as SPEC, make_colour_dataset

SIZES = {"unlabeled": 64, "train": 40, "val": 16}
TRAIN = {"epochs": 1, "batch_size": 16, "optimizer": "adamw", "lr": 1e-3, "warmup_epochs": 0, "amp": False,
         "checkpoint_min_seconds": 0}
SMALL_SIMCLR = {"proj_hidden": 32, "proj_dim": 16}
pytestmark = pytest.mark.usefixtures("one_thread")


def recipe(method: str, **over) -> dict:
    r = {"dataset": "toy", "backbone": "tiny", "backbone_spec": SPEC, "pretrain": method, "seed": 0,
         "unlabeled_split": "unlabeled", "train_split": "train", "val_split": "val", "train": dict(TRAIN),
         "views": {}, "params": dict(SMALL_SIMCLR) if method == "simclr" else {}}
    r.update(over)
    return r


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_colour_dataset(tmp_path_factory.mktemp("pretrain") / "data", SIZES)


# ---- collapse monitor ---------------------------------------------------------------------------

def test_embedding_std_collapse():
    z = torch.tensor([[0.3, -1.2, 2.0, 0.5]]).repeat(10, 1)
    assert embedding_std(z) == (0.0, 0.0)
    # rows along one direction but of different lengths collapse too (l2-normalised first)
    assert embedding_std(z * torch.arange(1.0, 11.0)[:, None]) == pytest.approx((0.0, 0.0), abs=1e-7)


@pytest.mark.parametrize("d", [4, 16, 128])
def test_embedding_std_one_hot(d):
    """N = d one-hot rows: every column holds one 1 and d-1 zeros, mean 1/d.

    Unbiased variance = [(1 - 1/d)^2 + (d - 1)(1/d)^2] / (d - 1) = 1/d, so std = 1/sqrt(d) per
    dimension and std * sqrt(d) = 1: the value of a perfectly spread set of embeddings.
    """
    mean = 1 / d
    var = ((1 - mean) ** 2 + (d - 1) * mean ** 2) / (d - 1)
    assert var == pytest.approx(1 / d)
    std, std_norm = embedding_std(torch.eye(d) * 3.0)  # the scale does not matter
    assert std == pytest.approx(math.sqrt(var), rel=1e-6)
    assert std_norm == pytest.approx(math.sqrt(var) * math.sqrt(d), rel=1e-6)
    assert std_norm == pytest.approx(1.0, rel=1e-6)


def test_embedding_std_half_collapsed():
    """Two opposite one-hot directions, half the rows each, in d dims: only dimension 0 varies.

    z = +-e_0 (N rows, N/2 each): column 0 has mean 0 and unbiased variance N / (N - 1); the other
    d - 1 columns are 0. Mean std over dims = sqrt(N / (N - 1)) / d.
    """
    n, d = 10, 8
    z = torch.zeros(n, d)
    z[: n // 2, 0], z[n // 2:, 0] = 1.0, -1.0
    std, std_norm = embedding_std(z)
    expected = math.sqrt(n / (n - 1)) / d
    assert std == pytest.approx(expected, rel=1e-6)
    assert std_norm == pytest.approx(expected * math.sqrt(d), rel=1e-6)


# ---- the random baseline ------------------------------------------------------------------------

def test_pretrain_random(data, tmp_path):
    meta = pretrain(recipe("random"), data, tmp_path / "m", device="cpu")
    history = json.loads((tmp_path / "m" / "history.json").read_text())
    assert len(history) == 1 and history[0]["epoch"] == 0 and history[0]["seconds"] == 0.0
    assert set(history[0]) == {"epoch", "seconds", "val_emb_std", "val_emb_std_norm", "val_knn_acc"}
    assert json.loads((tmp_path / "m" / "model.json").read_text()) == json.loads(json.dumps(meta))
    assert meta["num_classes"] == 0 and meta["head"] is None and meta["parent"] is None
    assert meta["parts"] == {"dataset": "toy", "backbone": "tiny", "pretrain": "random", "adapt": "none",
                             "ensemble": "none", "compress": "none", "seed": 0}
    assert meta["model_id"] == "toy/tiny/random/none/none/none/seed0"
    assert meta["method_family"] == "baseline" and meta["train_seconds"] == 0.0
    assert meta["input_size"] == [16, 16] and meta["classes"] == ["red", "green", "blue", "yellow"]
    assert all(k.startswith("backbone.") for k in load_file(str(tmp_path / "m" / WEIGHTS)))
    backbone, loaded_meta = load_backbone(tmp_path / "m")
    assert loaded_meta["backbone_spec"] == SPEC
    # the saved weights are the seeded initial ones
    torch.manual_seed(0)
    fresh = build_backbone(SPEC).state_dict()
    assert all(torch.equal(v, fresh[k]) for k, v in backbone.state_dict().items())
    # the monitor's numbers are those of the saved backbone
    val_x, _, _ = load_tensors(data, "toy", "val")
    std, std_norm = embedding_std(embed(backbone, val_x, torch.device("cpu")))
    assert history[0]["val_emb_std"] == pytest.approx(std, rel=1e-5)
    assert history[0]["val_emb_std_norm"] == pytest.approx(std_norm, rel=1e-5)
    assert 0 < history[0]["val_emb_std_norm"] < 1
    assert history[0]["val_knn_acc"] == 1.0  # colour classes: random features suffice


# ---- a trained method ---------------------------------------------------------------------------

def test_pretrain_simclr_one_epoch_deterministic(data, tmp_path):
    ckpt = tmp_path / "ckpt.pt"
    meta = pretrain(recipe("simclr"), data, tmp_path / "a", checkpoint_path=ckpt, device="cpu")
    for name in ("model.safetensors", "model.json", "history.json"):
        assert (tmp_path / "a" / name).exists()
    assert not ckpt.exists()
    history = json.loads((tmp_path / "a" / "history.json").read_text())
    assert [h["epoch"] for h in history] == [1]
    assert math.isfinite(history[0]["train_loss"]) and history[0]["train_loss"] > 0
    assert {"val_emb_std", "val_emb_std_norm", "val_knn_acc"} <= set(history[0])
    assert meta["method_family"] == "contrastive" and meta["num_classes"] == 0
    assert meta["train_seconds"] == pytest.approx(history[0]["seconds"]) and meta["train_seconds"] > 0
    assert meta["recipe"]["params"] == SMALL_SIMCLR
    weights = load_file(str(tmp_path / "a" / WEIGHTS))
    assert weights and all(k.startswith("backbone.") for k in weights)  # no projector in the backbone dir
    trained, _ = load_backbone(tmp_path / "a")
    torch.manual_seed(0)
    init = build_backbone(SPEC).state_dict()
    assert not all(torch.equal(v, init[k]) for k, v in trained.state_dict().items())
    pretrain(recipe("simclr"), data, tmp_path / "b", device="cpu")
    assert (tmp_path / "a" / WEIGHTS).read_bytes() == (tmp_path / "b" / WEIGHTS).read_bytes()
    history_b = json.loads((tmp_path / "b" / "history.json").read_text())
    assert history_b[0]["train_loss"] == history[0]["train_loss"]
    assert history_b[0]["val_knn_acc"] == history[0]["val_knn_acc"]


def test_pretrain_removes_its_checkpoint(data, tmp_path, monkeypatch):
    """Two epochs: a resumable checkpoint is written after epoch 1 and removed once the model dir is written."""
    import dlbench.pretrain.run as run

    ckpt = tmp_path / "ckpt.pt"
    seen = []
    real_fit = run.fit

    def spy_fit(*args, validate, **kwargs):
        def watch():
            seen.append(ckpt.exists())
            return validate()

        return real_fit(*args, validate=watch, **kwargs)

    monkeypatch.setattr(run, "fit", spy_fit)
    pretrain(recipe("simclr", train={**TRAIN, "epochs": 2}), data, tmp_path / "m", checkpoint_path=ckpt, device="cpu")
    history = json.loads((tmp_path / "m" / "history.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2]
    assert seen == [False, True]  # validate runs before the epoch's checkpoint; epoch 2 sees epoch 1's
    assert not ckpt.exists()


def test_pretrain_without_val_split(data, tmp_path):
    pretrain(recipe("random", val_split=None), data, tmp_path / "m", device="cpu")
    history = json.loads((tmp_path / "m" / "history.json").read_text())
    assert history[0]["val_knn_acc"] == 1.0 and history[0]["val_emb_std_norm"] > 0


def test_pretrain_other_seed_differs(data, tmp_path):
    pretrain(recipe("random"), data, tmp_path / "s0", device="cpu")
    meta = pretrain(recipe("random", seed=1), data, tmp_path / "s1", device="cpu")
    assert meta["model_id"].endswith("seed1")
    assert (tmp_path / "s0" / WEIGHTS).read_bytes() != (tmp_path / "s1" / WEIGHTS).read_bytes()


def test_pretrain_mae_on_resnet(data, tmp_path):
    with pytest.raises(ValueError, match=r"pretrain method 'mae' needs a Vision Transformer backbone; 'tiny'"):
        pretrain(recipe("mae"), data, tmp_path / "m", device="cpu")
    assert not (tmp_path / "m").exists()


def test_pretrain_bad_recipes(data, tmp_path):
    with pytest.raises(UnknownNameError, match="unknown pretrain method 'simclrr'"):
        pretrain(recipe("simclrr"), data, tmp_path / "m", device="cpu")
    with pytest.raises(ValueError, match=r"pretrain method 'simclr': unknown parameter\(s\) \['temp'\]"):
        pretrain(recipe("simclr", params={"temp": 0.1}), data, tmp_path / "m", device="cpu")
    with pytest.raises(ValueError, match=r"unknown view option\(s\) \['blur'\]"):
        pretrain(recipe("simclr", views={"blur": 0.5}), data, tmp_path / "m", device="cpu")
    with pytest.raises(ValueError, match="has unlabeled images"):
        pretrain(recipe("random", train_split="unlabeled"), data, tmp_path / "m", device="cpu")
    assert not (tmp_path / "m").exists()


# ---- labeled splits -----------------------------------------------------------------------------

def test_balanced_subset():
    labels = torch.tensor([2, 0, 0, 1, 2, 0, 1, 1, 2, 0])
    assert balanced_subset(labels, 6).tolist() == [0, 1, 2, 3, 4, 6]  # first two of each class, sorted
    assert balanced_subset(labels, 3).tolist() == [0, 1, 3]
    assert balanced_subset(labels, 1).tolist() == [0, 1, 3]  # at least one per class


def test_labeled_splits_carves_val_from_train(tmp_path):
    root = make_colour_dataset(tmp_path, {"train": 80, "val": 12})
    x, y, _ = load_tensors(root, "toy", "train")
    tx, ty, vx, vy = labeled_splits(root, "toy", "train", None)
    assert len(vy) == 8 and len(ty) == 72  # 10% of 80, two per class
    assert np.array_equal(np.bincount(vy.numpy(), minlength=4), [2, 2, 2, 2])
    assert np.array_equal(np.bincount(ty.numpy(), minlength=4), [18, 18, 18, 18])
    held = balanced_subset(y, 8)  # the first images of each class, deterministic
    assert held.tolist() == list(range(8))
    assert torch.equal(vx, x[held]) and torch.equal(vy, y[held])
    keep = torch.ones(80, dtype=torch.bool)
    keep[held] = False
    assert torch.equal(tx, x[keep]) and torch.equal(ty, y[keep])
    # disjoint and together the whole train split (images are distinct: random noise)
    rows = {t.numpy().tobytes() for t in x}
    assert len(rows) == 80
    train_rows, val_rows = {t.numpy().tobytes() for t in tx}, {t.numpy().tobytes() for t in vx}
    assert not train_rows & val_rows and train_rows | val_rows == rows
    # the same call gives the same split
    tx2, _, vx2, _ = labeled_splits(root, "toy", "train", None)
    assert torch.equal(tx, tx2) and torch.equal(vx, vx2)
    # with a val split, train is untouched
    tx, ty, vx, vy = labeled_splits(root, "toy", "train", "val")
    assert torch.equal(tx, x) and len(vy) == 12


def test_labeled_splits_small_train_holds_out_one_per_class(tmp_path):
    root = make_colour_dataset(tmp_path, {"train": 20})
    _, ty, _, vy = labeled_splits(root, "toy", "train", None)
    assert sorted(vy.tolist()) == [0, 1, 2, 3] and len(ty) == 16  # 10% = 2 < 4 classes: one per class
