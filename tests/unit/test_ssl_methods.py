"""What every contrastive and distillation method must do: register under its family, give a finite loss
with backbone gradients, draw its views only from the generator, take params, and fit through the engine.

The family files (test_contrastive.py, test_distillation.py) test what is particular to each method.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from dlbench.pretrain.base import METHODS
from dlbench.train.engine import TrainConfig, fit

from .ssl_helpers import BATCH, SMALL, SMALL_PARAMS, WIDTH_KEYS, fit_resumed, images_uint8, loss_of, make

CASES = [(family, name) for family, methods in SMALL.items() for name in sorted(methods)]
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("family, name", CASES)
def test_registered_finite_loss_and_backbone_gradients(family, name):
    assert METHODS.get(name).family == family
    m = make(name)
    loss, stats = loss_of(m)
    assert loss.ndim == 0 and torch.isfinite(loss)
    assert all(v.ndim == 0 and not v.requires_grad and torch.isfinite(v) for v in stats.values())
    loss.backward()
    grads = [p.grad for p in m.backbone.parameters()]
    assert all(g is not None for g in grads)
    assert sum(float(g.abs().sum()) for g in grads) > 0


@pytest.mark.parametrize("family, name", CASES)
def test_same_generator_seed_gives_bit_identical_loss(family, name):
    a, b = make(name), make(name)
    la, lb = loss_of(a, seed=3)[0], loss_of(b, seed=3)[0]
    assert torch.equal(la, lb)
    assert not torch.equal(la, loss_of(a, seed=4)[0])  # the views do come from the generator


@pytest.mark.parametrize("family, name", CASES)
def test_params_override_defaults_and_unknown_params_raise(family, name):
    cls = METHODS.get(name)
    m = make(name)
    assert m.params == {**cls.defaults, **SMALL_PARAMS[name]}
    widths = {mod.out_features for mod in m.model.modules() if isinstance(mod, nn.Linear)}
    assert widths & {v for k, v in SMALL_PARAMS[name].items() if k in WIDTH_KEYS}
    with pytest.raises(ValueError, match="unknown parameter"):
        make(name, params={**SMALL_PARAMS[name], "no_such_param": 1})


@pytest.mark.parametrize("family, name", CASES)
def test_short_fit_reports_finite_history(family, name):
    """The engine drives the hooks (after_step, before_epoch) and, for DeepCluster, passes row indices."""
    images = images_uint8(32)
    m = make(name, images=images, steps_per_epoch=2)
    cfg = TrainConfig(epochs=2, batch_size=BATCH, optimizer="adamw", lr=1e-3, checkpoint_min_seconds=0)
    history = fit(m, images, torch.full((32,), -1, dtype=torch.long), cfg, device=torch.device("cpu"),
                  progress=False, log=lambda s: None)
    assert [h["epoch"] for h in history] == [1, 2]
    assert all(math.isfinite(h["train_loss"]) for h in history)


@pytest.mark.parametrize("name", ["deepcluster", "dino"])
def test_resume_is_bit_identical(name, tmp_path):
    """Buffers (step counter, center, pseudo-labels) and re-run hooks make a resumed run equal an uninterrupted one."""
    images = images_uint8(32)
    h_a, s_a, h_b, s_b = fit_resumed(lambda: make(name, images=images, steps_per_epoch=2), images, tmp_path)
    assert h_a == h_b and len(h_b) == 2
    assert s_a.keys() == s_b.keys() and all(torch.equal(s_a[k], s_b[k]) for k in s_a)
