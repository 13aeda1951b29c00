"""Adaptation of a pretrained backbone: kNN head, logistic probe, the adapt stage end to end (frozen
variants in one job, trained variants alone, LP-FT from the linear probe), and the evaluation of
adapted models (several models sharing eval splits, cached corruptions, cached embeddings)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch
import torch.nn.functional as F

from dlbench.adapt.frozen import fit_logistic
from dlbench.adapt.run import adapt
from dlbench.data.corrupted import write_corrupted
from dlbench.data.loader import balanced_subset, load_tensors
from dlbench.evaluate.outputs import read_embeddings, read_logits
from dlbench.evaluate.predict import EvalJob, EvalSplit, evaluate_models, shared_backbones
from dlbench.models.backbones import Classifier, build_backbone
from dlbench.models.checkpoint import WEIGHTS, CheckpointError, load_backbone, load_model, save_model
from dlbench.models.heads import KNNHead, build_head, knn_vote_probs
from dlbench.models.inference import predict_logits, predict_shared
from dlbench.pretrain.run import pretrain
from dlbench.registry import UnknownNameError

from .ssl_helpers import TINY_SPEC as SPEC, make_colour_dataset

SIZES = {"unlabeled": 64, "train": 40, "val": 16, "test": 24}
FT = {"epochs": 1, "batch_size": 20, "optimizer": "adamw", "lr": 1e-3, "warmup_epochs": 0, "amp": False}
PRE = "toy/tiny/random/none/none/none/seed0"
FROZEN = ["linear", "knn"]
TRAINED = ["finetune", "lpft"]
VARIANTS = FROZEN + TRAINED
PARAMS = {"linear": {"weight_decays": [1e-3, 1e-1], "max_iter": 200}, "knn": {"k": 1, "temperature": 0.07},
          "finetune": {"train": FT, "augment": {}, "label_smoothing": 0.0},
          "lpft": {"train": {**FT, "lr": 1e-9}, "augment": {}, "label_smoothing": 0.0}}
pytestmark = pytest.mark.usefixtures("one_thread")


def pretrain_recipe() -> dict:
    return {"id": PRE, "kind": "random", "variant": "random", "dataset": "toy", "backbone": "tiny",
            "backbone_spec": SPEC, "seed": 0, "unlabeled_split": "unlabeled", "train_split": "train",
            "val_split": "val", "train": {**FT, "batch_size": 16}, "views": {}, "params": {}, "knobs": {}}


def model_id(variant: str) -> str:
    return f"toy/tiny/random/{variant}/none/none/seed0"


def recipe(variant: str, **over) -> dict:
    """The recipe dlbench.plan makes for one adapt variant of the random backbone."""
    kind = variant
    source = model_id("linear") if kind == "lpft" else PRE
    return {"id": model_id(variant), "kind": kind, "variant": variant, "dataset": "toy", "seed": 0,
            "train_split": "train", "val_split": "val", "params": PARAMS[variant], "knobs": {}, "source": source,
            **over}


def state_equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def run_all(tmp: Path, data: Path, pre: Path, out: Path) -> dict[str, Path]:
    """The four adapt jobs of one backbone as the DAG runs them: one frozen job, then one per trained variant."""
    dirs = {v: out / v for v in VARIANTS}
    quiet = {"device": "cpu", "log": lambda s: None}
    adapt([recipe(v) for v in FROZEN], pre, data, [dirs[v] for v in FROZEN], **quiet)
    adapt([recipe("finetune")], pre, data, [dirs["finetune"]], checkpoint_dir=out / "ckpt", **quiet)
    adapt([recipe("lpft")], dirs["linear"], data, [dirs["lpft"]], checkpoint_dir=out / "ckpt", **quiet)
    return dirs


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Tiny dataset, a `random` pretrained backbone, and two identical adapt runs of every variant."""
    tmp = tmp_path_factory.mktemp("adapt")
    data = make_colour_dataset(tmp / "data", SIZES)
    parent = pretrain(pretrain_recipe(), data, tmp / "pre", device="cpu")
    runs = [run_all(tmp, data, tmp / "pre", tmp / run) for run in ("a", "b")]
    return {"tmp": tmp, "data": data, "pre": tmp / "pre", "parent": parent, "runs": runs}


# ---- kNN head -----------------------------------------------------------------------------------

def test_knn_vote_probs_by_hand():
    bank = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])  # unit rows
    labels = torch.tensor([0, 1, 1])
    query = torch.tensor([[1.0, 0.0], [0.0, 2.0], [3.0, 0.0]])  # normalised inside: row 2 == row 0
    probs = knn_vote_probs(query, bank, labels, num_classes=3, k=2, temperature=1.0)
    # q0: sims 1, 0, 0.6 -> neighbours bank0 (class 0, e^1) and bank2 (class 1, e^0.6)
    z = math.e + math.exp(0.6)
    # q1: sims 0, 1, 0.8 -> bank1 and bank2, both class 1
    expected = torch.tensor([[math.e / z, math.exp(0.6) / z, 0.0],
                             [0.0, 1.0, 0.0],
                             [math.e / z, math.exp(0.6) / z, 0.0]])
    torch.testing.assert_close(probs, expected, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(probs.sum(1), torch.ones(3))
    # k beyond the bank: clamped to all 3 entries; q0 votes e^1 for class 0, e^0 + e^0.6 for class 1
    probs = knn_vote_probs(query[:1], bank, labels, num_classes=3, k=50, temperature=1.0)
    z = math.e + 1.0 + math.exp(0.6)
    torch.testing.assert_close(probs, torch.tensor([[math.e / z, (1 + math.exp(0.6)) / z, 0.0]]), rtol=1e-6, atol=1e-7)
    # temperature sharpens: with T=0.1, q0's class-0 share is 1 / (1 + e^-4)
    probs = knn_vote_probs(query[:1], bank, labels, num_classes=3, k=2, temperature=0.1)
    assert float(probs[0, 0]) == pytest.approx(1 / (1 + math.exp(-4.0)), rel=1e-6)


def test_knn_vote_probs_chunks_and_empty():
    g = torch.Generator().manual_seed(0)
    bank = F.normalize(torch.randn(30, 8, generator=g), dim=1)
    labels = torch.randint(0, 4, (30,), generator=g)
    query = torch.randn(25, 8, generator=g)
    whole = knn_vote_probs(query, bank, labels, 4, k=5)
    torch.testing.assert_close(knn_vote_probs(query, bank, labels, 4, k=5, chunk=7), whole)
    torch.testing.assert_close(whole.sum(1), torch.ones(25))
    assert knn_vote_probs(query[:0], bank, labels, 4).shape == (0, 4)


def test_knn_head_round_trip(tmp_path):
    from dlbench.cards import model_section

    torch.manual_seed(0)
    backbone = build_backbone(SPEC, (16, 16))
    g = torch.Generator().manual_seed(1)
    feats, labels = torch.randn(20, backbone.num_features, generator=g), torch.arange(20) % 4
    head = KNNHead.from_features(feats, labels, 4, k=3, temperature=0.1)
    assert head.spec() == {"kind": "knn", "k": 3, "temperature": 0.1, "bank_size": 20}
    torch.testing.assert_close(head.bank.norm(dim=1), torch.ones(20))
    model = Classifier(backbone, 4, head).eval()
    save_model(tmp_path / "m", model, {"id": "toy/knn", "model": model_section(model, list("abcd"))})
    loaded, loaded_meta = load_model(tmp_path / "m")
    assert isinstance(loaded.head, KNNHead) and loaded.head.k == 3 and loaded.head.temperature == 0.1
    assert loaded_meta["model"]["head"]["kind"] == "knn"
    x = torch.rand(6, 3, 16, 16, generator=g)
    with torch.no_grad():
        expected, got = model(x), loaded(x)
    assert torch.equal(expected, got)
    # the logits are log vote probabilities
    torch.testing.assert_close(got.exp().sum(1), torch.ones(6), atol=1e-5, rtol=0)
    # the backbone of a kNN model loads as any backbone
    bb, _ = load_backbone(tmp_path / "m")
    assert state_equal(bb.state_dict(), backbone.state_dict())


def test_build_head_kinds():
    assert isinstance(build_head(None, 8, 3), torch.nn.Linear)
    assert isinstance(build_head({"kind": "linear"}, 8, 3), torch.nn.Linear)
    knn = build_head({"kind": "knn", "k": 5, "temperature": 0.2, "bank_size": 11}, 8, 3)
    assert isinstance(knn, KNNHead) and knn.bank.shape == (11, 8) and knn.k == 5
    with pytest.raises(UnknownNameError, match="unknown head kind 'svm'"):
        build_head({"kind": "svm"}, 8, 3)


def test_load_model_of_backbone_only_dir(world):
    with pytest.raises(CheckpointError, match="pretrained backbone without a classifier head; adapt it first"):
        load_model(world["pre"])


# ---- logistic probe -----------------------------------------------------------------------------

def separable(n: int = 120, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """4 classes = quadrants of (x0, x1) with a margin; columns on very different scales and offsets."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 4
    signs = torch.tensor([[1.0, 1.0], [-1.0, 1.0], [-1.0, -1.0], [1.0, -1.0]])[y]
    core = signs * (0.5 + torch.rand(n, 2, generator=g))
    noise = torch.randn(n, 2, generator=g)
    x = torch.cat([core, noise], 1) * torch.tensor([0.1, 50.0, 1000.0, 1.0]) + torch.tensor([3.0, -200.0, 5.0, 0.0])
    return x, y


def test_fit_logistic_separable_scale_varying():
    x, y = separable()
    layer = fit_logistic(x, y, 4, weight_decay=1e-4)
    assert layer.weight.dtype == torch.float32 and layer.weight.shape == (4, 4)
    with torch.no_grad():
        acc = float((layer(x).argmax(1) == y).float().mean())
    assert acc == 1.0
    # the same problem on standardised inputs gives the same predictions (the fit is scale-invariant)
    xs = (x - x.mean(0)) / x.std(0)
    with torch.no_grad():
        assert torch.equal(fit_logistic(xs, y, 4, 1e-4)(xs).argmax(1), y)


def test_fit_logistic_dead_columns():
    x, y = separable()
    const = torch.full((len(x), 1), 7.5)
    tiny_noise = 7.5 + 1e-9 * torch.randn(len(x), 1, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    xd = torch.cat([x.double(), const.double(), tiny_noise], 1)
    layer = fit_logistic(xd, y, 4, weight_decay=1e-3)
    assert torch.isfinite(layer.weight).all() and torch.isfinite(layer.bias).all()
    assert torch.equal(layer.weight[:, 4:], torch.zeros(4, 2))
    with torch.no_grad():
        assert torch.equal(layer(xd.float()).argmax(1), y)


def test_fit_logistic_all_dead_learns_the_prior():
    """No usable feature: weights 0 and softmax(bias) = class frequencies (the bias is not regularised)."""
    y = torch.tensor([0] * 6 + [1] * 3 + [2] * 1)
    layer = fit_logistic(torch.ones(10, 3), y, 3, weight_decay=0.1)
    assert torch.equal(layer.weight, torch.zeros(3, 3))
    torch.testing.assert_close(layer.bias.softmax(0), torch.tensor([0.6, 0.3, 0.1]), atol=1e-5, rtol=0)


def test_fit_logistic_folding_matches_sklearn_on_standardised_features():
    """The returned layer on raw x equals a multinomial logistic regression fitted on standardised x.

    Objective here: mean CE + wd/2 |W|^2; sklearn's: C * sum CE + 1/2 |W|^2, so C = 1 / (n wd).
    """
    from sklearn.linear_model import LogisticRegression

    g = torch.Generator().manual_seed(0)
    n, wd = 200, 0.05
    z = torch.randn(n, 5, generator=g, dtype=torch.float64)
    noise = 0.8 * torch.randn(n, generator=g, dtype=torch.float64)
    y = (z[:, 0] + 0.5 * z[:, 1] + noise > 0).long() + (z[:, 2] > 0.5).long()
    x = (z * torch.tensor([0.1, 10.0, 100.0, 1.0, 3.0], dtype=torch.float64)
         + torch.tensor([5.0, -3.0, 100.0, 0.0, 1.0], dtype=torch.float64)).float()
    layer = fit_logistic(x, y, 3, wd)
    xd = x.double()
    mean, std = xd.mean(0), xd.std(0)
    clf = LogisticRegression(C=1 / (n * wd), tol=1e-12, max_iter=10_000).fit(((xd - mean) / std).numpy(), y.numpy())
    w = torch.from_numpy(clf.coef_) / std
    b = torch.from_numpy(clf.intercept_) - w @ mean
    with torch.no_grad():
        torch.testing.assert_close(layer.weight.double(), w, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(layer(x).double(), xd @ w.T + b, atol=1e-4, rtol=1e-4)
    # invariance: refitting on a per-column affine transform of x gives the same logits
    x2 = (z * torch.tensor([0.7, 70.0, 7.0, 0.07, 21.0], dtype=torch.float64) - 3).float()
    with torch.no_grad():
        torch.testing.assert_close(fit_logistic(x2, y, 3, wd)(x2), layer(x), atol=1e-4, rtol=1e-4)


# ---- adapt end to end ---------------------------------------------------------------------------

def test_adapt_writes_one_loadable_model_per_variant(world):
    dirs = world["runs"][0]
    parent = world["parent"]
    pre_backbone, _ = load_backbone(world["pre"])
    for v in VARIANTS:
        model, card = load_model(dirs[v])
        assert card["id"] == model_id(v) and card["parts"] == {**parent["parts"], "adapt": v}
        assert card["kind"] == v and card["stage"] == "adapt"
        assert card["family"] == ("probe" if v in FROZEN else "finetune")
        # lineage: LP-FT's parent is the linear probe it starts from, the others' the pretrained backbone
        assert card["parents"] == [model_id("linear") if v == "lpft" else PRE]
        model_sec = card["model"]
        assert model_sec["num_classes"] == 4 and model_sec["classes"] == ["red", "green", "blue", "yellow"]
        assert model_sec["backbone"] == SPEC and model_sec["preprocess"]["input_size"] == [16, 16]
        assert card["recipe"] == recipe(v) and card["recipe"]["params"] == PARAMS[v]
        assert card["train_seconds"] > 0
        parent_total = (load_model(dirs["linear"])[1] if v == "lpft" else parent)["total_train_seconds"]
        assert card["total_train_seconds"] == pytest.approx(parent_total + card["train_seconds"])
        frozen = state_equal(model.backbone.state_dict(), pre_backbone.state_dict())
        assert frozen == (v in FROZEN), v  # frozen variants keep the pretrained weights exactly
        assert (Path(dirs[v]) / "history.json").exists() == (v in TRAINED)
    cards = {v: load_model(dirs[v])[1] for v in VARIANTS}
    assert cards["knn"]["model"]["head"] == {"kind": "knn", "k": 1, "temperature": 0.07, "bank_size": SIZES["train"]}
    assert cards["linear"]["model"]["head"] == {"kind": "linear"}
    assert cards["knn"]["trainable_params"] == 0 and cards["linear"]["trainable_params"] == 64 * 4 + 4
    assert cards["finetune"]["trainable_params"] == sum(p.numel() for p in load_model(dirs["finetune"])[0].parameters())
    info = cards["linear"]["info"]
    assert set(info["val_acc_by_weight_decay"]) == {"0.001", "0.1"}  # JSON object keys are strings
    best = max(info["val_acc_by_weight_decay"].values())
    assert info["val_acc_by_weight_decay"][str(info["weight_decay"])] == best
    if all(v == best for v in info["val_acc_by_weight_decay"].values()):
        assert info["weight_decay"] == 1e-1  # ties: the stronger regularisation


def test_adapted_models_classify(world):
    dirs = world["runs"][0]
    data = world["data"]
    train_x, train_y, _ = load_tensors(data, "toy", "train")
    val_x, val_y, _ = load_tensors(data, "toy", "val")
    test_x, test_y, _ = load_tensors(data, "toy", "test")
    knn, _ = load_model(dirs["knn"])
    assert float((predict_logits(knn, train_x).argmax(1) == train_y).float().mean()) == 1.0  # k=1: itself
    linear, card = load_model(dirs["linear"])
    val_acc = float((predict_logits(linear, val_x).argmax(1) == val_y).float().mean())
    info = card["info"]
    assert val_acc == info["val_acc_by_weight_decay"][str(info["weight_decay"])]
    # colour classes: even random features separate them
    assert float((predict_logits(linear, test_x).argmax(1) == test_y).float().mean()) >= 0.9
    hist = pd.read_json(Path(dirs["finetune"]) / "history.json")
    assert list(hist["epoch"]) == [1] and {"train_loss", "val_loss", "val_acc"} <= set(hist.columns)


def test_lpft_starts_from_the_linear_head(world):
    dirs = world["runs"][0]
    linear, _ = load_model(dirs["linear"])
    lpft, _ = load_model(dirs["lpft"])
    finetune, _ = load_model(dirs["finetune"])
    # LP-FT trained one epoch at lr 1e-9: its head is still the probe's
    torch.testing.assert_close(lpft.head.weight, linear.head.weight, atol=1e-6, rtol=0)
    torch.testing.assert_close(lpft.head.bias, linear.head.bias, atol=1e-6, rtol=0)
    # plain fine-tuning starts from a fresh head
    assert (finetune.head.weight - linear.head.weight).abs().max() > 1e-2


def test_adapt_is_deterministic(world):
    dirs_a, dirs_b = world["runs"]
    for v in VARIANTS:
        assert (Path(dirs_a[v]) / WEIGHTS).read_bytes() == (Path(dirs_b[v]) / WEIGHTS).read_bytes(), v


def test_a_frozen_variant_alone_equals_it_in_the_shared_job(world, tmp_path):
    """The frozen job shares one feature pass; each variant's model is the same as when it runs alone."""
    adapt([recipe("knn")], world["pre"], world["data"], [tmp_path / "knn"], device="cpu", log=lambda s: None)
    assert (tmp_path / "knn" / WEIGHTS).read_bytes() == (world["runs"][0]["knn"] / WEIGHTS).read_bytes()


def test_lpft_needs_its_linear_model(world, tmp_path):
    with pytest.raises(CheckpointError, match="pretrained backbone without a classifier head"):
        adapt([recipe("lpft")], world["pre"], world["data"], [tmp_path / "lpft"], device="cpu", log=lambda s: None)


def test_adapt_without_val_split_holds_out_part_of_train(world, tmp_path):
    cards = adapt([recipe("knn", val_split=None)], world["pre"], world["data"], [tmp_path / "knn"], device="cpu",
                  log=lambda s: None)
    assert cards[0]["model"]["head"]["bank_size"] == SIZES["train"] - 4  # 10% of 40, one per class


# ---- label fractions ----------------------------------------------------------------------------

def test_label_fraction_subset_is_class_balanced_deterministic_and_nested():
    from dlbench.data.loader import label_fraction_subset

    labels = torch.tensor([0] * 100 + [1] * 50 + [2] * 7 + [3] * 1)[torch.randperm(158, generator=torch.Generator()
                                                                                  .manual_seed(3))]
    for fraction, per_class in ((0.1, {0: 10, 1: 5, 2: 1, 3: 1}), (0.01, {0: 1, 1: 1, 2: 1, 3: 1}),
                                (0.5, {0: 50, 1: 25, 2: 4, 3: 1})):  # round(3.5) = 4; at least one each
        idx = label_fraction_subset(labels, fraction, seed=0)
        assert torch.equal(idx, idx.sort().values) and len(set(idx.tolist())) == len(idx)
        assert {c: int((labels[idx] == c).sum()) for c in range(4)} == per_class, fraction
        assert torch.equal(idx, label_fraction_subset(labels, fraction, seed=0))  # deterministic
    assert torch.equal(label_fraction_subset(labels, 1.0, seed=5), torch.arange(158))
    small, large = (set(label_fraction_subset(labels, f, seed=1).tolist()) for f in (0.1, 0.5))
    assert small <= large  # one permutation per class and seed: the subsets are nested
    assert label_fraction_subset(labels, 0.5, seed=0).tolist() != label_fraction_subset(labels, 0.5, seed=1).tolist()
    for bad in (0, -0.1, 1.5):
        with pytest.raises(ValueError, match="fraction"):
            label_fraction_subset(labels, bad, seed=0)


def test_class_shots_subset_takes_k_per_class_nested_and_shares_the_fractions_permutations():
    from dlbench.adapt.run import train_subset
    from dlbench.data.loader import class_shots_subset, label_fraction_subset

    labels = torch.tensor([0] * 100 + [1] * 50 + [2] * 3)[torch.randperm(153, generator=torch.Generator().manual_seed(4))]
    for k in (1, 2, 4, 8):
        idx = class_shots_subset(labels, k, seed=0)
        assert torch.equal(idx, idx.sort().values)
        assert {c: int((labels[idx] == c).sum()) for c in range(3)} == {0: k, 1: k, 2: min(k, 3)}
        assert torch.equal(idx, class_shots_subset(labels, k, seed=0))
    subsets = [set(class_shots_subset(labels, k, seed=2).tolist()) for k in (1, 2, 4, 8)]
    assert all(a <= b for a, b in zip(subsets, subsets[1:]))  # nested
    # the same permutations as the label fractions: 1 shot of class 2 is its 1-image 10% subset
    frac = label_fraction_subset(labels, 0.01, seed=2)  # one image of each class
    assert set(frac.tolist()) == subsets[0]
    assert torch.equal(train_subset(labels, {**PARAMS["finetune"], "shots": 2}, seed=2),
                       class_shots_subset(labels, 2, seed=2))
    with pytest.raises(ValueError, match="not both"):
        train_subset(labels, {**PARAMS["linear"], "shots": 2, "fraction": 0.5}, seed=0)
    with pytest.raises(ValueError, match="shots must be >= 1"):
        class_shots_subset(labels, 0, seed=0)


def test_every_protocol_with_one_seed_and_fraction_gets_the_same_images():
    from dlbench.adapt.run import train_subset

    y = torch.arange(200) % 10
    a = train_subset(y, {**PARAMS["linear"], "fraction": 0.05}, seed=1)
    b = train_subset(y, {**PARAMS["finetune"], "fraction": 0.05}, seed=1)
    assert torch.equal(a, b) and len(a) == 10 and set(y[a].tolist()) == set(range(10))
    assert train_subset(y, {**PARAMS["knn"], "fraction": 1.0}, seed=1) is None
    assert train_subset(y, PARAMS["knn"], seed=1) is None  # a kind without the parameter: the whole split


def frac_recipe(variant: str, kind: str, fraction: float, **params) -> dict:
    base = recipe(kind)
    return {**base, "id": model_id(variant), "variant": variant,
            "params": {**PARAMS[kind], "fraction": fraction, **params}, "knobs": {"fraction": fraction}}


def test_frozen_job_with_fraction_variants_shares_one_feature_pass(world, tmp_path, monkeypatch):
    import dlbench.adapt.base as base
    from dlbench.data.loader import label_fraction_subset

    calls = []
    real_embed = base.embed
    monkeypatch.setattr(base, "embed", lambda *a, **k: calls.append(len(a[1])) or real_embed(*a, **k))
    recipes = [recipe("linear"), frac_recipe("linear-fraction0.5", "linear", 0.5),
               frac_recipe("knn-fraction0.1", "knn", 0.1)]
    outs = [tmp_path / r["variant"] for r in recipes]
    cards = adapt(recipes, world["pre"], world["data"], outs, device="cpu", log=lambda s: None)
    assert calls == [SIZES["train"], SIZES["val"]]  # the whole train split and val, once for all three variants
    assert [c["info"]["train_images"] for c in cards] == [40, 20, 4]  # 10 per class: 5 and 1 of each
    assert cards[2]["model"]["head"]["bank_size"] == 4 and cards[1]["knobs"] == {"fraction": 0.5}
    # the kNN bank is the subset's features: the whole split's features indexed by the subset
    train_x, train_y, _ = load_tensors(world["data"], "toy", "train")
    idx = label_fraction_subset(train_y, 0.1, seed=0)
    knn, _ = load_model(outs[2])
    backbone, _ = load_backbone(world["pre"])
    with torch.no_grad():
        feats = real_embed(backbone, train_x[idx], device=torch.device("cpu"))
    torch.testing.assert_close(knn.head.bank, F.normalize(feats, dim=1))
    assert torch.equal(knn.head.bank_labels, train_y[idx])
    # a fraction variant alone makes the same model as in the shared job
    adapt([recipes[1]], world["pre"], world["data"], [tmp_path / "alone"], device="cpu", log=lambda s: None)
    assert (tmp_path / "alone" / WEIGHTS).read_bytes() == (outs[1] / WEIGHTS).read_bytes()
    # ... and the probe on half the labels differs from the one on all of them
    assert (outs[1] / WEIGHTS).read_bytes() != (outs[0] / WEIGHTS).read_bytes()


def test_finetune_on_fewer_images_than_one_batch_trains_one_step_per_epoch(world, tmp_path, monkeypatch):
    """4 labeled images (fraction 0.1 of 40) at batch_size 20: the engine makes one step per epoch on all 4."""
    import dlbench.adapt.finetune as finetune
    from dlbench.data.loader import label_fraction_subset
    from dlbench.train.engine import TrainConfig, batch_plan

    seen = []
    real_fit = finetune.fit_classifier
    monkeypatch.setattr(finetune, "fit_classifier", lambda model, train, *a, **k: seen.append(train)
                        or real_fit(model, train, *a, **k))
    train = {**FT, "epochs": 2}
    assert batch_plan(4, TrainConfig.from_dict(train, seed=0)) == (1, 1, 4)
    r = frac_recipe("finetune-fraction0.1", "finetune", 0.1, train=train)
    card = adapt([r], world["pre"], world["data"], [tmp_path / "ft"], device="cpu", log=lambda s: None)[0]
    train_x, train_y, _ = load_tensors(world["data"], "toy", "train")
    idx = label_fraction_subset(train_y, 0.1, seed=0)
    (x, y), = seen
    assert torch.equal(x, train_x[idx]) and torch.equal(y, train_y[idx]) and card["info"]["train_images"] == 4
    hist = pd.read_json(tmp_path / "ft" / "history.json")
    assert list(hist["epoch"]) == [1, 2] and hist["val_acc"].notna().all()  # val: the whole split
    assert np.allclose(hist["images_per_s"] * hist["seconds"], 4)  # one 4-image step per epoch
    model, _ = load_model(tmp_path / "ft")
    pre_backbone, _ = load_backbone(world["pre"])
    assert not state_equal(model.backbone.state_dict(), pre_backbone.state_dict())  # it trained


# ---- evaluation of adapted models ---------------------------------------------------------------

def test_evalsplit_parse_round_trip():
    for text in ["test=toy:test", "test.gaussian_noise-3=toy:test:gaussian_noise:3",
                 "test.gaussian_noise-3=toy:test:gaussian_noise:3:200"]:
        assert str(EvalSplit.parse(text)) == text
    s = EvalSplit.parse("c=toy:test:snow:5:200")
    assert (s.name, s.dataset, s.split, s.corruption, s.severity, s.max_images) == ("c", "toy", "test", "snow", 5, 200)
    assert EvalSplit.parse("c=toy:test:snow:5").max_images is None
    for bad in ["toy:test", "=toy:test", "a=toy", "a=toy:test:snow", "a=toy:test:snow:5:200:1", "a=toy::snow:5"]:
        with pytest.raises(ValueError, match="bad eval split"):
            EvalSplit.parse(bad)


@pytest.mark.parametrize("text", ["a=toy:test:snow:5:0", "a=toy:test:snow:5:-5"])
def test_evalsplit_parse_rejects_non_positive_max_images(text):
    with pytest.raises(ValueError):
        EvalSplit.parse(text)


def jobs_for(dirs: dict, names: list[str], out: Path, embeddings: bool = True) -> list[EvalJob]:
    return [EvalJob(dirs[m], out / f"{m}.parquet", out / f"{m}.json", out / f"{m}.emb.parquet" if embeddings else None)
            for m in names]


def test_evaluate_models_together_equals_alone(world, tmp_path):
    dirs = world["runs"][0]
    data = world["data"]
    splits = [EvalSplit.parse(s) for s in ["test=toy:test", "val=toy:val",
                                           "test.gaussian_noise-3=toy:test:gaussian_noise:3:8",
                                           "test.contrast-5=toy:test:contrast:5:1000"]]
    models = ["linear", "knn"]
    kw = {"device": "cpu", "embedding_split": "toy:test", "embedding_points": 8, "latency_repeats": 3}
    joint = evaluate_models(jobs_for(dirs, models, tmp_path / "joint"), splits, data, **kw)
    alone = [evaluate_models(jobs_for(dirs, [m], tmp_path / "alone"), splits, data, **kw)[0] for m in models]
    for m, cj, ca in zip(models, joint, alone):
        tj, ta = pq.read_table(tmp_path / "joint" / f"{m}.parquet"), pq.read_table(tmp_path / "alone" / f"{m}.parquet")
        assert tj.equals(ta) and tj.schema.metadata == ta.schema.metadata
        assert {k: v for k, v in cj.items() if k != "latency_ms"} == {k: v for k, v in ca.items() if k != "latency_ms"}
        assert cj["latency_device"] == "cpu" and cj["latency_ms"] > 0
    assert joint[1]["size_bytes"] > joint[0]["size_bytes"]  # the kNN bank (40 x 64 floats) is stored ...
    assert joint[1]["params"] == joint[0]["params"] - (64 * 4 + 4) + SIZES["train"] * 64 + SIZES["train"]  # ... counted
    got = read_logits(tmp_path / "joint" / "knn.parquet")
    assert sorted(got) == sorted(s.name for s in splits)
    _, test_y, _ = load_tensors(data, "toy", "test")
    logits, labels, tags = got["test.gaussian_noise-3"]
    # max_images 8 of 24: the first 2 test images of each class
    assert logits.shape == (8, 4)
    assert np.array_equal(labels, test_y[balanced_subset(test_y, 8)].numpy())
    assert np.array_equal(np.bincount(labels, minlength=4), [2, 2, 2, 2])
    assert tags["shift"] == "corruption" and tags["corruption"] == "gaussian_noise" and tags["severity"] == 3
    assert len(got["test.contrast-5"][1]) == SIZES["test"]  # max_images above the split size: all images
    assert len(got["test"][1]) == SIZES["test"] and got["test"][2]["shift"] == "id"
    # a clean split is the model's plain predictions
    test_x, _, _ = load_tensors(data, "toy", "test")
    knn, _ = load_model(dirs["knn"])
    np.testing.assert_allclose(got["test"][0], predict_logits(knn, test_x).numpy(), rtol=1e-5, atol=1e-5)


def test_frozen_variants_share_one_backbone_pass(world):
    """Linear probe and kNN of one pretrained backbone: one backbone forward per batch, logits equal to
    each model run alone, bit for bit; a fine-tuned model (other weights) runs on its own."""
    dirs, data = world["runs"][0], world["data"]
    models = [load_model(dirs[m]) for m in ("linear", "knn", "finetune")]
    assert shared_backbones(models) == [[0, 1], [2]]
    test_x, _, _ = load_tensors(data, "toy", "test")
    calls = []
    hook = models[0][0].backbone.register_forward_hook(lambda *a: calls.append(1))
    shared = predict_shared(models[0][0].backbone, [m.head for m, _ in models[:2]], test_x, batch_size=10)
    hook.remove()
    assert len(calls) == -(-len(test_x) // 10)
    for (model, _), got in zip(models[:2], shared):
        assert np.array_equal(got.numpy(), predict_logits(model, test_x, batch_size=10).numpy())


def test_cached_corruptions_equal_computed_ones(world, tmp_path):
    """Rule corruptions computes each (corruption, severity) once; evaluating from the cache gives the
    same logits as corrupting inside the evaluate job."""
    dirs, data = world["runs"][0], world["data"]
    write_corrupted(data, "toy", "test", ["gaussian_noise", "contrast"], [3, 5], tmp_path / "corrupted" / "toy",
                    max_images=8, log=lambda s: None)
    splits = [EvalSplit.parse(s) for s in ["test.gaussian_noise-3=toy:test:gaussian_noise:3:8",
                                           "test.contrast-5=toy:test:contrast:5:8"]]
    kw = {"device": "cpu", "latency_repeats": 1}
    evaluate_models(jobs_for(dirs, ["knn"], tmp_path / "fly", False), splits, data, **kw)
    evaluate_models(jobs_for(dirs, ["knn"], tmp_path / "cache", False), splits, data,
                    corrupted_root=tmp_path / "corrupted", **kw)
    assert pq.read_table(tmp_path / "fly" / "knn.parquet").equals(pq.read_table(tmp_path / "cache" / "knn.parquet"))
    meta = json.loads((tmp_path / "corrupted" / "toy" / "meta.json").read_text())
    assert meta["splits"]["test.contrast-5"] == {"n": 8, "shift": "corruption", "corruption": "contrast",
                                                  "severity": 5, "source_split": "test", "labeled": True}


def test_evaluation_caches_class_balanced_embeddings(world, tmp_path):
    dirs, data = world["runs"][0], world["data"]
    evaluate_models(jobs_for(dirs, ["finetune"], tmp_path), [EvalSplit.parse("test=toy:test")], data, device="cpu",
                    embedding_split="toy:test", embedding_points=12, latency_repeats=1)
    feats, labels, classes = read_embeddings(tmp_path / "finetune.emb.parquet")
    _, test_y, _ = load_tensors(data, "toy", "test")
    test_x = load_tensors(data, "toy", "test")[0]
    keep = balanced_subset(test_y, 12)
    assert np.array_equal(labels, test_y[keep].numpy()) and np.bincount(labels).tolist() == [3, 3, 3, 3]
    assert classes == [["red", "green", "blue", "yellow"][y] for y in labels]
    model, _ = load_model(dirs["finetune"])
    from dlbench.models.inference import embed

    np.testing.assert_allclose(feats, embed(model.backbone, test_x[keep]).numpy(), rtol=1e-6, atol=1e-6)


def test_evaluate_models_rejects_duplicate_split_names(world, tmp_path):
    dirs = world["runs"][0]
    splits = [EvalSplit.parse("a=toy:test"), EvalSplit.parse("a=toy:val")]
    with pytest.raises(ValueError, match="duplicate eval split names"):
        evaluate_models(jobs_for(dirs, ["linear"], tmp_path), splits, world["data"], device="cpu")


def test_lpft_head_temperature_divides_the_probe_head_and_keeps_its_predictions(world):
    from dlbench.adapt.finetune import tempered_head

    linear, _ = load_model(world["runs"][0]["linear"])
    head = tempered_head(linear.head, 4.0)
    torch.testing.assert_close(head.weight, linear.head.weight / 4)
    torch.testing.assert_close(head.bias, linear.head.bias / 4)
    feats = torch.randn(32, linear.head.in_features)
    assert torch.equal(head(feats).argmax(1), linear.head(feats).argmax(1))
    assert not torch.equal(linear.head.weight, head.weight)  # a copy: the probe's head is untouched


def test_lpft_with_head_temperature_starts_from_the_tempered_head(world, tmp_path):
    dirs = world["runs"][0]
    params = {**PARAMS["lpft"], "head_temperature": 8.0}
    quiet = {"device": "cpu", "log": lambda s: None}
    adapt([recipe("lpft", params=params)], dirs["linear"], world["data"], [tmp_path / "lpft"], **quiet)
    linear, _ = load_model(dirs["linear"])
    lpft, card = load_model(tmp_path / "lpft")
    torch.testing.assert_close(lpft.head.weight, linear.head.weight / 8, atol=1e-6, rtol=0)  # lr 1e-9
    assert card["recipe"]["params"]["head_temperature"] == 8.0
