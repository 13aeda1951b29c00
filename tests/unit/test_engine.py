import pytest
import torch
from torch import nn

from dlbench.data.augment import AugmentConfig
from dlbench.train.engine import CheckpointError, TrainConfig, fit, lr_factor
from dlbench.train.supervised import SupervisedObjective


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                 nn.Linear(4, 3))

    def forward(self, x):
        return self.net(x)


def data():
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (40, 8, 8, 3), generator=g, dtype=torch.uint8), torch.randint(0, 3, (40,), generator=g)


def run(epochs, ckpt=None, stop_after=None, fingerprint="a"):
    torch.manual_seed(0)
    model = Tiny()
    obj = SupervisedObjective(model, AugmentConfig(crop_scale=(0.6, 1.0), flip=True, brightness=0.2))
    cfg = TrainConfig(epochs=epochs, batch_size=16, lr=0.05, seed=3, warmup_epochs=1, checkpoint_min_seconds=0)
    x, y = data()
    if stop_after is not None:  # simulate a crash: train a prefix of the schedule, keep its checkpoint
        cfg_full = cfg

        class Crash(Exception):
            pass

        calls = {"n": 0}

        def crash_validate():
            calls["n"] += 1
            if calls["n"] > stop_after:
                raise Crash
            return {}

        with pytest.raises(Crash):
            fit(obj, x, y, cfg_full, checkpoint_path=ckpt, fingerprint=fingerprint, progress=False,
                validate=crash_validate)
        torch.manual_seed(123)  # a fresh process would not share the global RNG state
        model = Tiny()
        obj = SupervisedObjective(model, obj.aug)
    hist = fit(obj, x, y, cfg, checkpoint_path=ckpt, fingerprint=fingerprint, progress=False)
    return model, hist


def test_resume_after_crash_is_bit_identical(tmp_path):
    ref, ref_hist = run(5)
    ckpt = tmp_path / "ckpt.pt"
    resumed, hist = run(5, ckpt=ckpt, stop_after=3)
    for a, b in zip(ref.state_dict().values(), resumed.state_dict().values()):
        assert torch.equal(a, b)
    assert [h["train_loss"] for h in hist] == [h["train_loss"] for h in ref_hist]


def test_stale_checkpoint_is_ignored(tmp_path, capsys):
    ckpt = tmp_path / "ckpt.pt"
    run(5, ckpt=ckpt, stop_after=2, fingerprint="old")
    ref, _ = run(5)
    model, _ = run(5, ckpt=ckpt, fingerprint="new")
    assert "different recipe" in capsys.readouterr().err
    for a, b in zip(ref.state_dict().values(), model.state_dict().values()):
        assert torch.equal(a, b)


def test_truncated_checkpoint_names_file(tmp_path):
    ckpt = tmp_path / "ckpt.pt"
    run(5, ckpt=ckpt, stop_after=2)
    ckpt.write_bytes(ckpt.read_bytes()[:100])
    with pytest.raises(CheckpointError, match=r"ckpt\.pt: truncated or corrupt"):
        run(5, ckpt=ckpt)


def test_schedule_warmup_then_cosine():
    assert lr_factor(0, 100, 10) == pytest.approx(0.1)
    assert lr_factor(9, 100, 10) == pytest.approx(1.0)
    assert lr_factor(10, 100, 10) == pytest.approx(1.0)
    assert lr_factor(55, 100, 10) == pytest.approx(0.5)
    assert lr_factor(100, 100, 10) == pytest.approx(0.0)


def test_bad_train_config():
    with pytest.raises(ValueError, match="epochs"):
        TrainConfig(epochs=-1)
