"""The pretrain stage: collapse monitor, the model card and backbone-only directory it writes (one
kind per family, reloaded with ``load_backbone``), determinism, checkpoints, bad recipes, labeled splits."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from dlbench.cards import trainable_count
from dlbench.data.loader import balanced_subset, labeled_splits, load_tensors
from dlbench.models.backbones import build_backbone
from dlbench.models.checkpoint import WEIGHTS, load_backbone
from dlbench.models.inference import embed
from dlbench.pretrain.base import PretrainSetup, load_all
from dlbench.pretrain.run import embedding_std, pretrain
from dlbench.pretrain.views import ViewConfig
from dlbench.registry import UnknownNameError

from .ssl_helpers import SMALL_PARAMS, TINY_SPEC as SPEC, make_colour_dataset, spec_for

METHODS = load_all()
SIZES = {"unlabeled": 64, "train": 40, "val": 16}
SIDE = 16  # make_colour_dataset's images: the ResNet trains at 16 px, the fixed-size ViT resamples them to 32
CLASSES = ["red", "green", "blue", "yellow"]
TRAIN = {"epochs": 1, "batch_size": 16, "optimizer": "adamw", "lr": 1e-3, "warmup_epochs": 0, "amp": False,
         "checkpoint_min_seconds": 0}
IMAGENET = ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])  # a random timm init's statistics
# one kind per family, from the registry (a new family is covered automatically). Language-image
# pretraining needs a captioned split and an open_clip backbone: its stage is tested in test_clip.py
# (card, history, trainable parameters, reload) on a tiny shapes with its web split.
OWN_TESTS = {"language-image": "test_clip.py"}
PER_FAMILY = sorted({METHODS.get(n).family: n for n in reversed(METHODS.names())
                     if METHODS.get(n).family not in OWN_TESTS}.values())
pytestmark = pytest.mark.usefixtures("one_thread")


def recipe(kind: str, seed: int = 0, **over) -> dict:
    """A plan-style recipe for ``kind`` (the tiny ResNet, or the tiny ViT for ViT-only kinds), small heads."""
    known = kind in METHODS
    spec = spec_for(kind) if known else SPEC
    trains = known and METHODS.get(kind).trains
    r = {"id": f"toy/tiny/{kind}/none/none/none/seed{seed}", "kind": kind, "variant": kind, "dataset": "toy",
         "backbone": "vit" if spec is not SPEC else "tiny", "backbone_spec": spec, "seed": seed,
         "unlabeled_split": "unlabeled", "train_split": "train", "val_split": "val", "train": dict(TRAIN),
         "views": {}, "params": dict(SMALL_PARAMS.get(kind, {})),
         "knobs": {"epochs": TRAIN["epochs"], "lr": TRAIN["lr"]} if trains else {}}
    r.update(over)
    return r


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_colour_dataset(tmp_path_factory.mktemp("pretrain") / "data", SIZES)


def seeded_init(spec: dict, seed: int = 0) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    return build_backbone(spec, (SIDE, SIDE)).state_dict()


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


# ---- one kind per family: the card, the weights, load_backbone ------------------------------------

def test_one_kind_per_family():
    assert ({METHODS.get(k).family for k in PER_FAMILY} | set(OWN_TESTS)
            == {METHODS.get(n).family for n in METHODS.names()})
    assert len(PER_FAMILY) == 5 and "random" in PER_FAMILY and "mae" in PER_FAMILY


@pytest.mark.parametrize("kind", PER_FAMILY)
def test_pretrain_writes_card_and_reloadable_backbone(kind, data, tmp_path):
    cls = METHODS.get(kind)
    r = recipe(kind)
    out, ckpt = tmp_path / "m", tmp_path / "ckpt.pt"
    card = pretrain(r, data, out, checkpoint_path=ckpt, device="cpu")
    assert not ckpt.exists()
    assert json.loads((out / "model.json").read_text()) == json.loads(json.dumps(card))
    # lineage and sweep record
    assert card["id"] == r["id"] and card["parts"] == {"dataset": "toy", "backbone": "tiny", "pretrain": kind,
                                                       "adapt": "none", "ensemble": "none", "compress": "none",
                                                       "seed": 0}
    assert (card["kind"], card["family"], card["stage"]) == (kind, cls.family, "pretrain")
    assert card["parents"] == [] and card["knobs"] == r["knobs"] and card["recipe"] == r and card["seed"] == 0
    assert card["knobs"] == ({"epochs": 1, "lr": 1e-3} if cls.trains else {})
    assert {"data_hash", "versions", "created"} <= set(card) and card["info"] == {}
    history = json.loads((out / "history.json").read_text())
    assert [h["epoch"] for h in history] == ([1] if cls.trains else [0])
    assert card["train_seconds"] == pytest.approx(sum(h["seconds"] for h in history))
    assert card["total_train_seconds"] == card["train_seconds"]  # no parents
    # trainable_params: what the stage optimised (backbone + the method's heads; nothing for the baseline)
    if cls.trains:
        images, _, _ = load_tensors(data, "toy", "unlabeled")
        torch.manual_seed(0)
        spec = r["backbone_spec"]
        setup = PretrainSetup(backbone=build_backbone(spec, (SIDE, SIDE)), backbone_spec=spec, params=r["params"],
                              views=ViewConfig(), input_size=(SIDE, SIDE), images=images)
        method = cls(setup)
        assert card["trainable_params"] == trainable_count(method.model) > trainable_count(method.backbone)
        assert math.isfinite(history[0]["train_loss"])
    else:
        assert card["trainable_params"] == 0 and card["train_seconds"] == 0.0
    # the rebuild record: a headless backbone with its own preprocessing
    vit = METHODS.get(kind).requires == "vit"
    model = card["model"]
    assert model["backbone"] == r["backbone_spec"] and model["head"] is None and model["num_classes"] == 0
    assert model["classes"] == CLASSES and model["transforms"] == []
    assert model["feature_dim"] == (48 if vit else 64)
    pre = model["preprocess"]
    assert pre["mean"] == pytest.approx(IMAGENET[0]) and pre["std"] == pytest.approx(IMAGENET[1])
    assert pre["input_size"] == ([32, 32] if vit else [SIDE, SIDE]) and pre["fixed_size"] is vit
    # the weights: the Backbone module's (net.*), no head; load_backbone reloads exactly them
    weights = load_file(str(out / WEIGHTS))
    assert weights and all(k.startswith("net.") for k in weights)
    backbone, loaded_card = load_backbone(out)
    assert loaded_card == json.loads(json.dumps(card))
    state = backbone.state_dict()
    assert state.keys() == weights.keys() and all(torch.equal(state[k], weights[k]) for k in weights)
    assert backbone.input_size == tuple(pre["input_size"]) and backbone.fixed_size is vit
    assert backbone.num_features == model["feature_dim"]
    init = seeded_init(r["backbone_spec"])
    assert init.keys() == state.keys()
    same_as_init = all(torch.equal(state[k], init[k]) for k in init)
    assert same_as_init is (not cls.trains)  # the baseline saves the seeded initial weights; others train them
    # the monitor's last numbers are those of the saved (final) backbone
    val_x, _, _ = load_tensors(data, "toy", "val")
    std, std_norm = embedding_std(embed(backbone, val_x))
    assert history[-1]["val_emb_std"] == pytest.approx(std, rel=1e-5)
    assert history[-1]["val_emb_std_norm"] == pytest.approx(std_norm, rel=1e-5)


# ---- the random baseline ------------------------------------------------------------------------

def test_pretrain_random_monitors_the_initial_weights(data, tmp_path):
    pretrain(recipe("random"), data, tmp_path / "m", device="cpu")
    history = json.loads((tmp_path / "m" / "history.json").read_text())
    assert len(history) == 1 and history[0]["epoch"] == 0 and history[0]["seconds"] == 0.0
    assert set(history[0]) == {"epoch", "seconds", "val_emb_std", "val_emb_std_norm", "val_knn_acc"}
    assert 0 < history[0]["val_emb_std_norm"] < 1
    assert history[0]["val_knn_acc"] == 1.0  # colour classes: random features suffice


# ---- a trained method ---------------------------------------------------------------------------

def test_pretrain_simclr_one_epoch_deterministic(data, tmp_path):
    ckpt = tmp_path / "ckpt.pt"
    card = pretrain(recipe("simclr"), data, tmp_path / "a", checkpoint_path=ckpt, device="cpu")
    for name in ("model.safetensors", "model.json", "history.json"):
        assert (tmp_path / "a" / name).exists()
    assert not ckpt.exists()
    history = json.loads((tmp_path / "a" / "history.json").read_text())
    assert [h["epoch"] for h in history] == [1]
    assert math.isfinite(history[0]["train_loss"]) and history[0]["train_loss"] > 0
    assert {"val_emb_std", "val_emb_std_norm", "val_knn_acc"} <= set(history[0])
    assert card["family"] == "contrastive" and card["model"]["num_classes"] == 0
    assert card["train_seconds"] == pytest.approx(history[0]["seconds"]) and card["train_seconds"] > 0
    assert card["recipe"]["params"] == SMALL_PARAMS["simclr"]
    weights = load_file(str(tmp_path / "a" / WEIGHTS))
    assert weights and all(k.startswith("net.") for k in weights)  # no projector in the backbone dir
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
    card = pretrain(recipe("random", seed=1), data, tmp_path / "s1", device="cpu")
    assert card["id"].endswith("seed1") and card["seed"] == 1
    assert (tmp_path / "s0" / WEIGHTS).read_bytes() != (tmp_path / "s1" / WEIGHTS).read_bytes()


def test_pretrain_mae_on_resnet(data, tmp_path):
    with pytest.raises(ValueError, match=r"pretrain kind 'mae' needs a Vision Transformer backbone; 'tiny' is a "
                                         r"ResNet"):
        pretrain(recipe("mae", backbone="tiny", backbone_spec=SPEC), data, tmp_path / "m", device="cpu")
    assert not (tmp_path / "m").exists()


def test_pretrain_bad_recipes(data, tmp_path):
    with pytest.raises(UnknownNameError, match="unknown pretrain method 'simclrr'"):
        pretrain(recipe("simclrr"), data, tmp_path / "m", device="cpu")
    with pytest.raises(ValueError, match=r"unknown parameter 'temp' of pretrain kind 'simclr'; known: proj_dim"):
        pretrain(recipe("simclr", params={"temp": 0.1}), data, tmp_path / "m", device="cpu")
    with pytest.raises(ValueError, match=r"unknown view option\(s\) \['blur'\]"):
        pretrain(recipe("simclr", views={"blur": 0.5}), data, tmp_path / "m", device="cpu")
    with pytest.raises(ValueError, match=r"unknown train config key\(s\): epoch;"):
        pretrain(recipe("simclr", train={"epoch": 1}), data, tmp_path / "m", device="cpu")
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
