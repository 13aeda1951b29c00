"""Self-distillation family (BYOL, SimSiam, Barlow Twins, VICReg, DINO): teachers, schedules, each method's loss,
and the components it shares with contrastive (momentum teacher, multi-crop).

What every method must do is in test_ssl_methods.py."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from dlbench.pretrain import losses
from dlbench.pretrain.components import (MomentumTeacher, cosine_momentum, ema_update, encode_views, local_crop_size,
                                         multicrop_config)
from dlbench.pretrain.self_distillation import BYOL, DINO
from dlbench.pretrain.views import ViewConfig, make_view

from .ssl_helpers import BATCH, SMALL_PARAMS as SMALL, VIT_SPEC, first_batch, loss_of, make, sgd_step

pytestmark = pytest.mark.usefixtures("one_thread")


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
    b = first_batch(m)
    x = b.images
    loss, _ = m.training_loss(b, torch.Generator().manual_seed(0))
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
    b = first_batch(m)
    x = b.images
    loss, stats = m.training_loss(b, torch.Generator().manual_seed(0))
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


# --------------------------------------------------------------------------- shared components


def test_teacher_is_a_frozen_normalising_copy_and_ema_copies_buffers():
    m = make("byol")
    t = m.target
    assert isinstance(t, MomentumTeacher) and t.backbone is not m.backbone
    assert torch.equal(t.backbone.mean, m.backbone.mean) and torch.equal(t.backbone.std, m.backbone.std)
    x = first_batch(m).images
    m.model.eval()
    with torch.no_grad():  # a fresh copy: the same output as the online branch on [0, 1] images
        torch.testing.assert_close(t(x), m.projector(m.encode(x)))
    with torch.no_grad():
        m.backbone.net.bn1.running_mean.add_(1.0)
    ema_update(t.backbone, m.backbone, 0.5)
    assert torch.equal(t.backbone.net.bn1.running_mean, m.backbone.net.bn1.running_mean)  # buffers copied
    assert cosine_momentum(0.99, 0, 10) == pytest.approx(0.99) and cosine_momentum(0.99, 10, 10) == pytest.approx(1)


def test_local_crop_size_and_multicrop_on_a_fixed_size_vit():
    assert local_crop_size(False, 32, None) == 16 and local_crop_size(False, 32, 12) == 12
    assert local_crop_size(False, 12, None) == 8  # never below 8 px
    assert local_crop_size(True, 32, 12) == 32  # one input size only: small area, full side
    m = make("dino", spec=VIT_SPEC)
    assert m.backbone.fixed_size and m.views.local_size == 32 and m.views.local_crops == 2
    resnet = make("dino").backbone
    assert not resnet.fixed_size and multicrop_config(m.setup, resnet, 3, None).local_size == 16
    m.setup.views = ViewConfig(size=24)  # global views resized: local crops follow the global side
    assert multicrop_config(m.setup, m.backbone, 3, None) == ViewConfig(size=24, local_crops=3, local_size=24)
    assert multicrop_config(m.setup, resnet, 3, None).local_size == 12
    m.setup.views = ViewConfig()
    loss, _ = loss_of(m)
    assert torch.isfinite(loss)


def test_encode_views_groups_consecutive_views_of_one_size():
    calls = []

    def encode(x):
        calls.append(tuple(x.shape))
        return x.mean((2, 3))

    views = [torch.rand(4, 3, s, s) for s in (32, 32, 16, 16, 16, 32)]
    out = encode_views(encode, views)
    assert calls == [(8, 3, 32, 32), (12, 3, 16, 16), (4, 3, 32, 32)]  # BN sees each run of one size together
    assert all(torch.allclose(o, v.mean((2, 3))) for o, v in zip(out, views, strict=True))
