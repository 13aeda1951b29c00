"""Each lr schedule's curve against its formula, hand-computed at chosen steps; config errors."""

import math

import pytest

from dlbench.train.engine import TrainConfig
from dlbench.train.schedules import SCHEDULES, build_schedule, lr_factor, snapshot_steps


def curve(name, params=None, total=20, spe=5, warmup=0):
    s = build_schedule(name, params)
    return [s.factor(i, total, spe, warmup) for i in range(total)]


def test_registry_names():
    assert SCHEDULES.names() == ["constant", "cosine_restarts", "cyclic", "step", "swa", "warmup_cosine"]


def test_lr_factor_warmup_then_cosine():
    assert lr_factor(0, 100, 10) == pytest.approx(0.1)
    assert lr_factor(9, 100, 10) == pytest.approx(1.0)
    assert lr_factor(10, 100, 10) == pytest.approx(1.0)
    assert lr_factor(55, 100, 10) == pytest.approx(0.5)
    assert lr_factor(100, 100, 10) == pytest.approx(0.0)


def test_warmup_cosine_is_lr_factor_bit_for_bit():
    s = build_schedule("warmup_cosine")
    assert [s.factor(i, 37, 7, 5) for i in range(37)] == [lr_factor(i, 37, 5) for i in range(37)]


def test_constant():
    assert curve("constant", warmup=4)[:6] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    assert set(curve("constant")) == {1.0}


def test_step_milestones_in_epochs():
    c = curve("step", {"milestones": [1.5, 3]}, total=20, spe=5)  # -> steps 8 (7.5 rounded) and 15
    assert c[:8] == [1.0] * 8
    assert c[8:15] == [pytest.approx(0.1)] * 7
    assert c[15:] == [pytest.approx(0.01)] * 5
    c = curve("step", {"milestones": [2], "gamma": 0.5}, total=20, spe=5, warmup=2)
    assert c[:2] == [0.5, 1.0] and c[9] == 1.0 and c[10] == 0.5


def test_cosine_restarts_sse():
    # Huang et al. eq. 2: 0.5 * (cos(pi * mod(t - 1, ceil(T/M)) / ceil(T/M)) + 1), T = 20, M = 2 -> L = 10
    c = curve("cosine_restarts", {"cycles": 2}, total=20)
    assert c[0] == 1.0 and c[10] == 1.0
    assert c[5] == pytest.approx(0.5) and c[15] == pytest.approx(0.5)
    assert c[9] == pytest.approx(0.5 * (math.cos(math.pi * 0.9) + 1))
    assert snapshot_steps("cosine_restarts", {"cycles": 2}, 20, 5) == [9, 19]
    # ceil(21 / 2) = 11: the second cycle is cut short, its snapshot is the run's last step
    assert snapshot_steps("cosine_restarts", {"cycles": 2}, 21, 7) == [10, 20]
    # cycle_epochs: 2 epochs of 5 steps
    c = curve("cosine_restarts", {"cycle_epochs": 2}, total=25, spe=5)
    assert c[10] == 1.0 and c[20] == 1.0 and c[15] == pytest.approx(0.5)
    assert snapshot_steps("cosine_restarts", {"cycle_epochs": 2}, 25, 5) == [9, 19, 24]
    assert build_schedule("cosine_restarts").cycles == 6
    with pytest.raises(ValueError, match="not both"):
        build_schedule("cosine_restarts", {"cycles": 2, "cycle_epochs": 3})


def test_cyclic_fge():
    # c = 4 steps: t = 0.25, 0.5, 0.75, 1.0 -> 1*(1-0.5)+a2*0.5, a2, 1*0.5+a2*0.5, 1
    a2 = 0.01
    c = curve("cyclic", {"cycle_epochs": 1}, total=8, spe=4)
    assert c[:4] == [pytest.approx(0.5 + a2 * 0.5), pytest.approx(a2), pytest.approx(0.5 + a2 * 0.5), 1.0]
    assert c[4:] == c[:4]
    assert snapshot_steps("cyclic", {"cycle_epochs": 1}, 8, 4) == [1, 5]
    # c = 3 (odd): t = 1/3 and 2/3 tie for the lowest; the first is the snapshot point
    c = curve("cyclic", {"cycle_epochs": 1, "min_ratio": 0.1}, total=6, spe=3)
    low = 1 / 3 + 0.1 * 2 / 3
    assert c[:3] == [pytest.approx(low), pytest.approx(low), 1.0]
    assert snapshot_steps("cyclic", {"cycle_epochs": 1, "min_ratio": 0.1}, 6, 3) == [0, 3]
    assert min(curve("cyclic", {"cycle_epochs": 2}, total=40, spe=5)) == pytest.approx(0.01)


def test_swa():
    # swa_start 0.5 of 40 steps -> t = step / 20
    c = curve("swa", {"swa_start": 0.5, "swa_ratio": 0.05}, total=40, spe=10)
    assert c[10] == 1.0  # t = 0.5
    assert c[14] == pytest.approx(1 - 0.95 * 0.2 / 0.4)  # t = 0.7
    assert c[18] == pytest.approx(0.05)  # t = 0.9
    assert c[19] == c[30] == c[39] == 0.05
    assert snapshot_steps("swa", {"swa_start": 0.5}, 40, 10) == [19, 29, 39]
    s = build_schedule("swa")
    assert (s.swa_start, s.swa_ratio) == (0.75, 0.05)


def test_warmup_overrides_cyclic_schedules():
    c = curve("cyclic", {"cycle_epochs": 1}, total=8, spe=4, warmup=2)
    assert c[:2] == [0.5, 1.0]
    assert c[2] == curve("cyclic", {"cycle_epochs": 1}, total=8, spe=4)[2]


def test_unknown_schedule_and_params():
    with pytest.raises(ValueError, match="unknown lr schedule 'linear'; known: constant"):
        build_schedule("linear")
    with pytest.raises(ValueError, match=r"unknown schedule_params for schedule 'swa': swa_lr; known: swa_start, swa_ratio"):
        build_schedule("swa", {"swa_lr": 0.01})
    with pytest.raises(ValueError, match="milestones"):
        build_schedule("step")
    with pytest.raises(ValueError, match="cycle_epochs"):
        build_schedule("cyclic", {"cycle_epochs": 0})
    with pytest.raises(ValueError, match="bad schedule_params"):
        build_schedule("cyclic", {"cycle_epochs": "two"})
    # the same checks at config time
    with pytest.raises(ValueError, match="unknown lr schedule"):
        TrainConfig(epochs=1, schedule="linear")
    with pytest.raises(ValueError, match="min_ratios"):
        TrainConfig.from_dict({"epochs": 1, "schedule": "cyclic", "schedule_params": {"min_ratios": 0.1}})
