"""What EVERY registered pretrain kind must do, in process (the smoke DAG runs one kind per family only).

Each kind: is registered under its family; gives a finite loss with backbone gradients; draws
its views only from the generator; takes params over its defaults and rejects unknown ones at
``resolve_params``; fits through the engine; declares (``input_sides``) exactly the sides it
feeds the backbone, and the backbone accepts them. A representative subset resumes
bit-identically after a kill. ``random`` and ``clip_weights`` do not train: for them the tests check that they refuse to.

The family files (test_pretext.py, test_contrastive.py, test_self_distillation.py, test_masked.py)
test what is particular to each method.
"""

from __future__ import annotations

import math
import re

import pytest
import torch
from torch import nn

from dlbench.models.backbones import Backbone
from dlbench.pretrain.base import PretrainMethod, load_all
from dlbench.pretrain.views import ViewConfig
from dlbench.train.engine import TrainConfig

from .ssl_helpers import (BATCH, FAMILY_OF, SIDE, SMALL_PARAMS, WIDTH_KEYS, fit_resumed, images_uint8, loss_of, make,
                          quiet_fit, spec_for, tiny_backbone)

METHODS = load_all()
NAMES = METHODS.names()
pytestmark = pytest.mark.usefixtures("one_thread")


def trains(name: str) -> bool:
    return METHODS.get(name).trains


def test_every_registered_kind_is_covered():
    """A new kind must get small params (under its family) here, or these tests would not cover it."""
    assert len(NAMES) == 18
    assert set(NAMES) == set(SMALL_PARAMS)
    assert [n for n in NAMES if not trains(n)] == ["clip_weights", "random"]


@pytest.mark.parametrize("name", NAMES)
def test_registered_under_its_family(name):
    cls = METHODS.get(name)
    assert issubclass(cls, PretrainMethod) and cls.name == name
    assert cls.family == FAMILY_OF[name]
    # the family is the module it lives in (random: the baseline, in random_init; language-image: language_image)
    module = {"baseline": "random_init"}.get(cls.family, cls.family.replace("-", "_"))
    assert cls.__module__ == f"dlbench.pretrain.{module}"
    if cls.trains:
        assert cls.knobs == {"epochs": "train.epochs", "lr": "train.lr"}
    else:
        assert cls.knobs == {}  # nothing to sweep


@pytest.mark.parametrize("name", NAMES)
def test_finite_loss_and_backbone_gradients(name):
    m = make(name)
    if not trains(name):
        with pytest.raises(RuntimeError, match="not trained"):
            loss_of(m)
        return
    loss, stats = loss_of(m)
    assert loss.ndim == 0 and torch.isfinite(loss) and loss.requires_grad
    assert all(v.ndim == 0 and not v.requires_grad and torch.isfinite(v) for v in stats.values())
    loss.backward()
    grads = {n: p.grad for n, p in m.backbone.named_parameters()}
    missing = [n for n, g in grads.items() if g is None]  # every backbone parameter takes part
    assert not missing, missing
    assert sum(float(g.abs().sum()) for g in grads.values()) > 0
    assert all(bool(torch.isfinite(g).all()) for g in grads.values())


@pytest.mark.parametrize("name", NAMES)
def test_views_come_only_from_the_generator(name):
    """Bit-identical with the same generator seed whatever the global RNG holds; different with another seed."""
    a, b = make(name), make(name)
    if not trains(name):
        with pytest.raises(RuntimeError, match="not trained"):
            loss_of(a, seed=3)
        return
    torch.manual_seed(123)
    la = loss_of(a, seed=3)[0]
    torch.manual_seed(456)  # a method drawing from the global RNG would differ now
    lb = loss_of(b, seed=3)[0]
    assert torch.equal(la, lb)
    assert not torch.equal(la, loss_of(a, seed=4)[0])  # the views do come from the generator


@pytest.mark.parametrize("name", NAMES)
def test_params_override_defaults_and_unknown_params_raise(name):
    cls = METHODS.get(name)
    small = SMALL_PARAMS[name]
    assert set(small) <= set(cls.defaults)
    assert cls.resolve_params(small) == {**cls.defaults, **small}
    assert cls.resolve_params(None) == cls.defaults and cls.resolve_params({}) is not cls.defaults
    m = make(name)
    assert m.params == {**cls.defaults, **small}
    widths = {v for k, v in small.items() if k in WIDTH_KEYS}
    if widths:  # the override reaches the heads: some head layer has that width
        in_backbones = {id(sub) for mod in m.model.modules() if isinstance(mod, Backbone) for sub in mod.modules()}
        heads = [mod for mod in m.model.modules() if id(mod) not in in_backbones]
        built = {mod.out_features for mod in heads if isinstance(mod, nn.Linear)}
        built |= {mod.out_channels for mod in heads if isinstance(mod, nn.Conv2d)}
        assert widths <= built, (widths, built)
    message = rf"unknown parameter 'no_such_param' of pretrain kind '{name}'; known: "
    known = ", ".join(sorted(cls.defaults)) or "(none)"
    with pytest.raises(ValueError, match=message + re.escape(known) + "$"):  # at config time, nothing built
        cls.resolve_params({**small, "no_such_param": 1})
    with pytest.raises(ValueError, match=message):  # the constructor validates through resolve_params too
        make(name, params={**small, "no_such_param": 1})


@pytest.mark.parametrize("name", NAMES)
def test_short_fit_reports_finite_history(name):
    """The engine drives the hooks (after_step, before_epoch) and passes row indices (DeepCluster)."""
    images = images_uint8(32)
    m = make(name, images=images, steps_per_epoch=2, prepare=False)  # the engine calls before_epoch itself
    cfg = TrainConfig(epochs=2, batch_size=BATCH, optimizer="adamw", lr=1e-3, checkpoint_min_seconds=0)
    if not trains(name):  # the pretrain stage never fits the baseline; the engine would ask for a loss
        with pytest.raises(RuntimeError, match="not trained"):
            quiet_fit(m, images, cfg)
        return
    before = {k: v.clone() for k, v in m.backbone.state_dict().items()}
    history = quiet_fit(m, images, cfg)
    assert [h["epoch"] for h in history] == [1, 2]
    assert all(math.isfinite(h["train_loss"]) for h in history)
    assert all(math.isfinite(v) for h in history for k, v in h.items() if k.startswith("train_"))
    assert not all(torch.equal(v, before[k]) for k, v in m.backbone.state_dict().items())


@pytest.mark.parametrize("name", NAMES)
def test_input_sides_are_what_it_feeds_and_the_backbone_accepts(name):
    """``input_sides`` (the config-time check) names every side the method feeds the backbone at 32 px."""
    cls = METHODS.get(name)
    declared = cls.input_sides(SMALL_PARAMS[name], ViewConfig(), SIDE)
    assert declared and all(isinstance(w, str) and isinstance(px, int) and px > 0 for w, px in declared)
    backbone = tiny_backbone(spec_for(name)).eval()
    with torch.no_grad():
        for what, px in declared:
            out = backbone(torch.rand(2, 3, px, px, generator=torch.Generator().manual_seed(px)))
            assert out.shape == (2, backbone.num_features) and torch.isfinite(out).all(), (what, px)
    if not trains(name):
        return
    m = make(name)
    # sides reaching the network's first layer (ResNet stem, ViT patch embedding: MAE bypasses Backbone.forward)
    first = next(mod for mod in m.backbone.net.modules() if isinstance(mod, nn.Conv2d) and mod.in_channels == 3)
    fed = []
    first.register_forward_pre_hook(lambda mod, args: fed.append(tuple(args[0].shape[-2:])))
    loss_of(m)
    # exactly the declared sides; a fixed-size network (ViT) gets every input resampled to its own size
    expected = {m.backbone.input_size} if m.backbone.fixed_size else {(px, px) for _, px in declared}
    assert set(fed) == expected, (fed, declared)


@pytest.mark.parametrize("name", ["byol", "clip", "deepcluster", "dino", "mae", "moco_v2", "rotation", "swav"])
def test_resume_is_bit_identical(name, tmp_path):
    """Buffers (step counters, center, queue, pseudo-labels) and re-run hooks make a resumed run equal an
    uninterrupted one."""
    images = images_uint8(32)
    h_a, s_a, h_b, s_b = fit_resumed(lambda: make(name, images=images, steps_per_epoch=2, prepare=False),
                                     images, tmp_path)
    assert h_a == h_b and len(h_b) == 2
    assert s_a.keys() == s_b.keys() and all(torch.equal(s_a[k], s_b[k]) for k in s_a)
