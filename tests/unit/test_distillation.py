"""Distillation family (BYOL, SimSiam, Barlow Twins, VICReg, DINO): losses, teachers, schedules, a short fit."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from torch import nn

from dlbench.models.backbones import build_backbone
from dlbench.pretrain import losses
from dlbench.pretrain.base import METHODS, PretrainSetup, cosine_momentum
from dlbench.pretrain.distillation import BYOL, DINO
from dlbench.pretrain.views import ViewConfig, make_view
from dlbench.train.engine import TrainConfig, fit

SPEC = {"timm": "resnet18", "kwargs": {"layers": [1, 1, 1, 1], "channels": [8, 16, 32, 64], "stem_width": 8},
        "cifar_stem": True, "stem_stride": 2}
SMALL: dict[str, dict[str, Any]] = {
    "byol": {"proj_hidden": 32, "proj_dim": 16, "pred_hidden": 32},
    "simsiam": {"proj_hidden": 32, "proj_dim": 32, "pred_hidden": 8},
    "barlow_twins": {"proj_hidden": 32, "proj_dim": 32},
    "vicreg": {"proj_hidden": 32, "proj_dim": 32},
    "dino": {"head_hidden": 32, "bottleneck": 16, "out_dim": 64},
}
WIDTH_KEYS = ("proj_dim", "out_dim")
N_IMAGES, BATCH = 64, 16

@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tensors here are tiny: one intra-op thread is faster and does not thrash when the CPU is shared."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def images_uint8(n: int = N_IMAGES, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (n, 32, 32, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def make(name: str, params: dict[str, Any] | None = None, images: torch.Tensor | None = None,
         epochs: int = 2, steps_per_epoch: int = 4):
    torch.manual_seed(0)
    setup = PretrainSetup(backbone=build_backbone(SPEC), backbone_spec=SPEC,
                          params=dict(SMALL[name] if params is None else params), views=ViewConfig(),
                          input_size=(32, 32), images=images_uint8() if images is None else images,
                          epochs=epochs, steps_per_epoch=steps_per_epoch)
    return METHODS.get(name)(setup)


def loss_of(method, seed: int = 0):
    x = method.setup.images[:BATCH].permute(0, 3, 1, 2).float().div(255)
    return method.training_loss(x, torch.full((BATCH,), -1), torch.Generator().manual_seed(seed))


def sgd_step(method, lr: float = 0.1) -> None:
    opt = torch.optim.SGD([p for p in method.model.parameters() if p.requires_grad], lr=lr)
    loss, _ = loss_of(method)
    opt.zero_grad()
    loss.backward()
    opt.step()


def fit_resumed(make_method, images: torch.Tensor, tmp_path) -> tuple[list, dict, list, dict]:
    """(history, state) of an uninterrupted 2-epoch fit and of one killed after epoch 1 and resumed."""
    labels = torch.full((len(images),), -1, dtype=torch.long)
    cfg = TrainConfig(epochs=2, batch_size=BATCH, optimizer="adamw", lr=1e-3, checkpoint_min_seconds=0)
    kw = {"device": torch.device("cpu"), "progress": False, "log": lambda s: None}
    whole = make_method()
    h_whole = fit(whole, images, labels, cfg, **kw)
    ckpt = tmp_path / "ckpt.pt"
    epochs_seen = []

    def stop_in_epoch_2() -> dict:
        epochs_seen.append(1)
        if len(epochs_seen) == 2:
            raise KeyboardInterrupt  # after epoch 1's checkpoint, before epoch 2's end
        return {}

    with pytest.raises(KeyboardInterrupt):
        fit(make_method(), images, labels, cfg, checkpoint_path=ckpt, validate=stop_in_epoch_2, **kw)
    resumed = make_method()
    h_resumed = fit(resumed, images, labels, cfg, checkpoint_path=ckpt, **kw)
    strip = lambda h: [{k: v for k, v in r.items() if k not in ("seconds", "images_per_s")} for r in h]  # noqa: E731
    return strip(h_whole), whole.model.state_dict(), strip(h_resumed), resumed.model.state_dict()


# --------------------------------------------------------------------------- every method


@pytest.mark.parametrize("name", sorted(SMALL))
def test_registered_finite_loss_and_backbone_gradients(name):
    assert METHODS.get(name).family == "distillation"
    m = make(name)
    loss, stats = loss_of(m)
    assert loss.ndim == 0 and torch.isfinite(loss)
    assert all(v.ndim == 0 and not v.requires_grad and torch.isfinite(v) for v in stats.values())
    loss.backward()
    grads = [p.grad for p in m.backbone.parameters()]
    assert all(g is not None for g in grads)
    assert sum(float(g.abs().sum()) for g in grads) > 0


@pytest.mark.parametrize("name", sorted(SMALL))
def test_same_generator_seed_gives_bit_identical_loss(name):
    a, b = make(name), make(name)
    la, lb = loss_of(a, seed=3)[0], loss_of(b, seed=3)[0]
    assert torch.equal(la, lb)
    assert not torch.equal(la, loss_of(a, seed=4)[0])


@pytest.mark.parametrize("name", sorted(SMALL))
def test_params_override_defaults_and_unknown_params_raise(name):
    cls = METHODS.get(name)
    m = make(name)
    assert m.params == {**cls.defaults, **SMALL[name]}
    widths = {mod.out_features for mod in m.model.modules() if isinstance(mod, nn.Linear)}
    assert widths & {v for k, v in SMALL[name].items() if k in WIDTH_KEYS}
    with pytest.raises(ValueError, match="unknown parameter"):
        make(name, params={**SMALL[name], "no_such_param": 1})


@pytest.mark.parametrize("name", sorted(SMALL))
def test_short_fit_reports_finite_history(name):
    images = images_uint8(32)
    m = make(name, images=images, steps_per_epoch=2)
    cfg = TrainConfig(epochs=2, batch_size=BATCH, optimizer="adamw", lr=1e-3, checkpoint_min_seconds=0)
    history = fit(m, images, torch.full((32,), -1, dtype=torch.long), cfg, device=torch.device("cpu"),
                  progress=False, log=lambda s: None)
    assert [h["epoch"] for h in history] == [1, 2]
    assert all(math.isfinite(h["train_loss"]) for h in history)


def test_dino_resume_is_bit_identical(tmp_path):
    """Buffers (step counter, center, pseudo-labels) and re-run hooks make a resumed run equal an uninterrupted one."""
    images = images_uint8(32)
    h_a, s_a, h_b, s_b = fit_resumed(lambda: make("dino", images=images, steps_per_epoch=2), images, tmp_path)
    assert h_a == h_b and len(h_b) == 2
    assert s_a.keys() == s_b.keys() and all(torch.equal(s_a[k], s_b[k]) for k in s_a)


# --------------------------------------------------------------------------- teachers (BYOL, DINO)


@pytest.mark.parametrize("name", ["byol", "dino"])
def test_teacher_follows_the_scheduled_ema_and_gets_no_gradient(name):
    m = make(name)
    teacher = m.target if isinstance(m, BYOL) else m.teacher
    head = m.projector if isinstance(m, BYOL) else m.head
    t0 = [p.clone() for p in teacher.parameters()]
    sgd_step(m)
    assert all(not p.requires_grad and p.grad is None for p in teacher.parameters())
    online = [p.detach().clone() for p in (*m.backbone.parameters(), *head.parameters())]
    m.after_step(3, 8)
    mom = cosine_momentum(0.99, 3, 8)
    assert m.momentum == mom and 0.99 < mom < 1
    for t, a, o in zip(teacher.parameters(), t0, online, strict=True):
        torch.testing.assert_close(t, mom * a + (1 - mom) * o)
    assert not any(p.requires_grad for p in teacher.parameters())


def test_byol_loss_is_symmetric_byol_loss_with_solarised_second_view():
    m = make("byol")
    x = m.setup.images[:BATCH].permute(0, 3, 1, 2).float().div(255)
    loss, _ = m.training_loss(x, torch.full((BATCH,), -1), torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(0)
    v1 = make_view(x, m.setup.views, g)
    v2 = make_view(x, m.setup.views.with_(solarize_p=0.2), g)
    p1, p2 = (m.predictor(m.projector(m.encode(v))) for v in (v1, v2))
    expected = losses.byol_loss(p1, m.target(v2)) + losses.byol_loss(p2, m.target(v1))
    torch.testing.assert_close(loss, expected)


# --------------------------------------------------------------------------- DINO


def test_dino_center_follows_the_ema_of_the_teacher_outputs():
    m = make("dino")
    assert isinstance(m, DINO)
    with torch.no_grad():
        m.state.center.fill_(0.5)
    sgd_step(m)
    teacher_out = m._teacher_out.clone()
    assert teacher_out.shape == (2 * BATCH, 64) and not teacher_out.requires_grad
    m.after_step(0, 8)
    torch.testing.assert_close(m.state.center, 0.9 * 0.5 + 0.1 * teacher_out.mean(0, keepdim=True))
    assert m._teacher_out is None and m.state.center.grad is None


def test_dino_teacher_temperature_warmup():
    m = make("dino", params={**SMALL["dino"], "warmup_teacher_temp_epochs": 1})  # 4 steps of warm-up
    assert m.teacher_temperature(0) == pytest.approx(0.04)
    assert m.teacher_temperature(2) == pytest.approx(0.055)
    assert m.teacher_temperature(4) == pytest.approx(0.07)
    assert m.teacher_temperature(7) == pytest.approx(0.07)
    assert make("dino").warmup_steps == 2  # default: 30% of 2 epochs x 4 steps
    # the loss uses the temperature of the current step (the step counter buffer)
    assert float(loss_of(m)[1]["teacher_temp"]) == pytest.approx(0.04)
    for step in range(2):
        m.after_step(step, 8)
    assert m.counter.value == 2
    assert float(loss_of(m)[1]["teacher_temp"]) == pytest.approx(0.055)
    assert "counter.steps" in m.model.state_dict() and "center.center" in m.model.state_dict()


def test_dino_prototype_layer_frozen_during_the_first_steps_and_local_crops_small():
    m = make("dino", params={**SMALL["dino"], "freeze_last_layer_steps": 1})
    assert m.views.local_crops == 2 and m.views.local_size == 16
    for step in range(2):
        m.model.zero_grad(set_to_none=True)
        loss, _ = loss_of(m)
        loss.backward()
        assert (m.head.last.weight.grad is None) == (step < 1)
        assert m.head.mlp[0].weight.grad.abs().sum() > 0
        m.after_step(step, 8)
    with torch.no_grad():
        out = m.head(torch.randn(4, m.feature_dim))
    assert out.shape == (4, 64) and float(out.abs().max()) <= 1 + 1e-5  # cosine to unit prototypes


# --------------------------------------------------------------------------- SimSiam, VICReg, Barlow Twins


def test_simsiam_loss_is_symmetric_neg_cosine_and_heads_have_the_paper_shape():
    m = make("simsiam")
    x = m.setup.images[:BATCH].permute(0, 3, 1, 2).float().div(255)
    loss, stats = m.training_loss(x, torch.full((BATCH,), -1), torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(0)
    z1, z2 = (m.projector(m.encode(make_view(x, m.setup.views, g))) for _ in range(2))
    expected = 0.5 * (losses.neg_cosine(m.predictor(z1), z2) + losses.neg_cosine(m.predictor(z2), z1))
    torch.testing.assert_close(loss, expected)
    assert -1 <= float(loss.detach()) <= 1 and 0 < float(stats["z_std"]) <= 1
    assert isinstance(m.projector[-1], nn.BatchNorm1d)  # 3-layer projector ends in BN
    assert m.predictor[0].out_features == 8  # bottleneck predictor


def test_vicreg_loss_is_the_weighted_sum_of_its_logged_terms():
    m = make("vicreg", params={**SMALL["vicreg"], "cov_coeff": 2.0})
    loss, stats = loss_of(m)
    assert set(stats) == {"invariance", "variance", "covariance"}
    expected = 25 * stats["invariance"] + 25 * stats["variance"] + 2.0 * stats["covariance"]
    torch.testing.assert_close(loss.detach(), expected)


def test_barlow_twins_off_diagonal_weight_is_used():
    a = make("barlow_twins")
    b = make("barlow_twins", params={**SMALL["barlow_twins"], "lambda_offdiag": 0.0})
    la, lb = loss_of(a)[0], loss_of(b)[0]
    assert float(la.detach()) > float(lb.detach()) > 0
