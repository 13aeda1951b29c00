import math
import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dlbench.classify import SupervisedObjective
from dlbench.data.augment import AugmentConfig
from dlbench.errors import CheckpointError
from dlbench.train import engine
from dlbench.train.engine import (TrainConfig, data_placement, epoch_generator, fit, load_checkpoint, param_groups,
                                  steps_per_epoch)
from dlbench.train.hooks import SnapshotHook
from dlbench.train.schedules import build_schedule

pytestmark = pytest.mark.usefixtures("one_thread")


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                 nn.Linear(4, 3))

    def forward(self, x):
        return self.net(x)


def data(n=40):
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (n, 8, 8, 3), generator=g, dtype=torch.uint8), torch.randint(0, 3, (n,), generator=g)


class Crash(Exception):
    pass


def crash_after(epochs):
    """A validate callback that kills the run after ``epochs`` epochs (their checkpoints are kept)."""
    calls = {"n": 0}

    def validate():
        calls["n"] += 1
        if calls["n"] > epochs:
            raise Crash
        return {}

    return validate


def run(epochs, ckpt=None, stop_after=None, fingerprint="a"):
    torch.manual_seed(0)
    model = Tiny()
    obj = SupervisedObjective(model, AugmentConfig(crop_scale=(0.6, 1.0), flip=True, brightness=0.2))
    cfg = TrainConfig(epochs=epochs, batch_size=16, lr=0.05, seed=3, warmup_epochs=1, checkpoint_min_seconds=0)
    x, y = data()
    if stop_after is not None:  # simulate a crash: train a prefix of the schedule, keep its checkpoint
        with pytest.raises(Crash):
            fit(obj, x, y, cfg, checkpoint_path=ckpt, fingerprint=fingerprint, progress=False,
                validate=crash_after(stop_after))
        torch.manual_seed(123)  # a fresh process would not share the global RNG state
        model = Tiny()
        obj = SupervisedObjective(model, obj.aug)
    hist = fit(obj, x, y, cfg, checkpoint_path=ckpt, fingerprint=fingerprint, progress=False)
    return model, hist


def same_weights(a: nn.Module | dict, b: nn.Module | dict) -> bool:
    sa = a if isinstance(a, dict) else a.state_dict()
    sb = b if isinstance(b, dict) else b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.fixture
def optimizers(monkeypatch):
    """The optimisers fit builds (to read their param groups and the lr of each step)."""
    made = []
    real = engine.make_optimizer

    def capture(model, cfg):
        opt = real(model, cfg)
        made.append(opt)
        return opt

    monkeypatch.setattr(engine, "make_optimizer", capture)
    return made


class CE:
    """Plain cross-entropy, no augmentation: the hand-written loops below can reproduce it."""

    def __init__(self, model):
        self.model = model

    def training_loss(self, batch, gen):
        return F.cross_entropy(self.model(batch.images), batch.labels), {}


# ---- resume, stale and truncated checkpoints (kept from before the hooks) -------------------------

def test_resume_after_crash_is_bit_identical(tmp_path):
    ref, ref_hist = run(5)
    ckpt = tmp_path / "ckpt.pt"
    resumed, hist = run(5, ckpt=ckpt, stop_after=3)
    assert same_weights(ref, resumed)
    assert [h["train_loss"] for h in hist] == [h["train_loss"] for h in ref_hist]


def test_stale_checkpoint_is_ignored(tmp_path, capsys):
    ckpt = tmp_path / "ckpt.pt"
    run(5, ckpt=ckpt, stop_after=2, fingerprint="old")
    ref, _ = run(5)
    model, _ = run(5, ckpt=ckpt, fingerprint="new")
    assert "different recipe" in capsys.readouterr().err
    assert same_weights(ref, model)


def test_truncated_checkpoint_names_file(tmp_path):
    ckpt = tmp_path / "ckpt.pt"
    run(5, ckpt=ckpt, stop_after=2)
    ckpt.write_bytes(ckpt.read_bytes()[:100])
    with pytest.raises(CheckpointError, match=r"ckpt\.pt: truncated or corrupt"):
        run(5, ckpt=ckpt)


def test_bad_train_config():
    with pytest.raises(ValueError, match="epochs"):
        TrainConfig(epochs=-1)
    with pytest.raises(ValueError, match="accumulate"):
        TrainConfig(epochs=1, accumulate=0)
    with pytest.raises(ValueError, match="device_data"):
        TrainConfig(epochs=1, device_data="gpu")
    with pytest.raises(ValueError, match="grad_clip"):
        TrainConfig(epochs=1, grad_clip=0)


def test_from_dict_names_unknown_keys_and_lists_known():
    with pytest.raises(ValueError, match=r"unknown train config key\(s\): clip, lr_mult; known: epochs, batch_size,"):
        TrainConfig.from_dict({"epochs": 1, "clip": 1.0, "lr_mult": {}})
    with pytest.raises(ValueError, match="epochs is required"):
        TrainConfig.from_dict({"lr": 0.1})
    cfg = TrainConfig.from_dict({"epochs": 2, "lr": "1e-3", "grad_clip": 1, "schedule": "swa"}, seed=7)
    assert (cfg.seed, cfg.lr, cfg.grad_clip, cfg.schedule) == (7, 0.001, 1.0, "swa")


# ---- schedules as the optimiser sees them ------------------------------------------------------

class LrRecorder:
    """Records the lr of every optimiser step, and the order of the engine's calls."""

    def __init__(self, optimizers):
        self.optimizers = optimizers
        self.lrs, self.calls = [], []

    def after_step(self, step, total_steps):
        self.lrs.append(self.optimizers[-1].param_groups[0]["lr"])
        self.calls.append(("step", step))

    def after_epoch(self, epoch):
        self.calls.append(("epoch", epoch))

    def on_fit_end(self):
        self.calls.append(("end",))


SCHEDULE_CASES = [
    ("warmup_cosine", {}, 1.0),
    ("constant", {}, 1.0),
    ("step", {"milestones": [2, 3]}, 0.0),
    ("cosine_restarts", {"cycles": 2}, 0.0),
    ("cyclic", {"cycle_epochs": 2}, 0.0),
    ("swa", {"swa_start": 0.5, "swa_ratio": 0.2}, 0.0),
]


@pytest.mark.parametrize("name,params,warmup", SCHEDULE_CASES)
def test_schedule_curve_seen_by_optimizer(name, params, warmup, optimizers):
    x, y = data()  # 40 images, batch 8: 5 steps per epoch, 4 epochs: 20 steps
    torch.manual_seed(0)
    cfg = TrainConfig(epochs=4, batch_size=8, lr=0.2, warmup_epochs=warmup, schedule=name, schedule_params=params)
    rec = LrRecorder(optimizers)
    fit(CE(Tiny()), x, y, cfg, progress=False, hooks=[rec])
    s = build_schedule(name, params)
    assert rec.lrs == [0.2 * s.factor(i, 20, 5, 5 if warmup else 0) for i in range(20)]
    hand = {  # hand-computed points of each formula
        "warmup_cosine": {0: 0.2 / 5, 4: 0.2, 5: 0.2, 20 - 1: 0.2 * 0.5 * (1 + math.cos(14 / 15 * math.pi))},
        "constant": {0: 0.2 / 5, 19: 0.2},
        "step": {9: 0.2, 10: 0.02, 15: 0.002},
        "cosine_restarts": {0: 0.2, 5: 0.1, 10: 0.2},
        "cyclic": {4: 0.2 * 0.01, 9: 0.2, 14: 0.2 * 0.01},  # c = 10 steps: minimum at i % 10 == 4
        "swa": {5: 0.2, 8: 0.2 * (1 - 0.8 * 0.3 / 0.4), 9: 0.2 * 0.2, 19: 0.2 * 0.2},  # t = step / 10
    }[name]
    for step, lr in hand.items():
        assert rec.lrs[step] == pytest.approx(lr, rel=1e-6), step
    epochs = [c for c in rec.calls if c[0] == "epoch"]
    assert epochs == [("epoch", 1), ("epoch", 2), ("epoch", 3), ("epoch", 4)] and rec.calls[-1] == ("end",)
    assert rec.calls.index(("epoch", 1)) == 5  # after the epoch's 5 steps


# ---- frozen modules ----------------------------------------------------------------------------

class Distill:
    """A student with a frozen teacher (batch norm: eval mode must keep its running stats)."""

    def __init__(self):
        self.model = Tiny()
        self.frozen = nn.ModuleDict({"teacher": nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(),
                                                              nn.LazyLinear(3))})
        self.frozen["teacher"](torch.zeros(1, 3, 8, 8))  # materialise the lazy layer
        self.seen = []

    def training_loss(self, batch, gen):
        teacher = self.frozen["teacher"]
        self.seen.append((teacher.training, next(teacher.parameters()).device == batch.images.device,
                          any(p.requires_grad for p in teacher.parameters())))
        with torch.no_grad():
            target = teacher(batch.images).softmax(1)
        return F.cross_entropy(self.model(batch.images), target), {}

    def before_epoch(self, epoch, gen):
        self.frozen.train()  # a careless objective: the engine must put the teacher back in eval


def test_frozen_module_stays_eval_on_device_outside_optimizer_and_checkpoint(tmp_path, optimizers):
    torch.manual_seed(0)
    obj = Distill()
    bn_before = copy.deepcopy(obj.frozen["teacher"][1].state_dict())
    teacher_before = copy.deepcopy(obj.frozen.state_dict())
    x, y = data()
    cfg = TrainConfig(epochs=3, batch_size=8, checkpoint_min_seconds=0)
    fit(obj, x, y, cfg, progress=False, checkpoint_path=tmp_path / "ckpt.pt", device=torch.device("cpu"))
    assert obj.seen and all(s == (False, True, False) for s in obj.seen)
    opt_params = {id(p) for g in optimizers[-1].param_groups for p in g["params"]}
    assert opt_params == {id(p) for p in obj.model.parameters()}
    assert not opt_params & {id(p) for p in obj.frozen.parameters()}
    assert same_weights(obj.frozen["teacher"][1].state_dict(), bn_before)  # running stats untouched
    assert same_weights(obj.frozen.state_dict(), teacher_before)
    state = load_checkpoint(tmp_path / "ckpt.pt")
    assert set(state["model"]) == set(obj.model.state_dict())
    assert not any("teacher" in k for k in state["model"]) and "frozen" not in state


def test_frozen_module_sharing_parameters_is_refused():
    obj = CE(Tiny())
    obj.frozen = nn.ModuleDict({"ref": obj.model.net[0]})
    x, y = data()
    with pytest.raises(ValueError, match="shares parameters"):
        fit(obj, x, y, TrainConfig(epochs=1, batch_size=8), progress=False)


# ---- objective and hook state across a kill + resume -------------------------------------------

class RunningSum(CE):
    """An objective with state outside the model: the sum of every batch loss, and a batch count."""

    def __init__(self, model):
        super().__init__(model)
        self.total = torch.zeros((), dtype=torch.float64)
        self.batches = 0

    def training_loss(self, batch, gen):
        loss, stats = super().training_loss(batch, gen)
        self.total += loss.detach().double()
        self.batches += 1
        return loss, stats

    def objective_state(self):
        return {"total": self.total.clone(), "batches": self.batches}

    def load_objective_state(self, state):
        self.total = state["total"].clone()
        self.batches = int(state["batches"])


class WeightSum:
    """A hook with state: the running sum of the first conv's weights after every step."""

    def __init__(self, model):
        self.model = model
        self.acc = torch.zeros_like(model.net[0].weight)

    def after_step(self, step, total_steps):
        self.acc += self.model.net[0].weight.detach()

    def objective_state(self):
        return {"acc": self.acc}

    def load_objective_state(self, state):
        self.acc = state["acc"].clone()


def stateful_run(ckpt=None, stop_after=None):
    x, y = data()
    cfg = TrainConfig(epochs=5, batch_size=8, lr=0.05, seed=1, checkpoint_min_seconds=0)

    def build():
        torch.manual_seed(0)
        model = Tiny()
        return RunningSum(model), [WeightSum(model), SnapshotHook(model, epochs=[1, 3, 5], steps=[7])]

    obj, hooks = build()
    if stop_after is not None:
        with pytest.raises(Crash):
            fit(obj, x, y, cfg, checkpoint_path=ckpt, progress=False, hooks=hooks, validate=crash_after(stop_after))
        torch.manual_seed(123)
        obj, hooks = build()
    fit(obj, x, y, cfg, checkpoint_path=ckpt, progress=False, hooks=hooks)
    return obj, hooks


def test_objective_and_hook_state_survive_kill_and_resume(tmp_path):
    ref, ref_hooks = stateful_run()
    obj, hooks = stateful_run(ckpt=tmp_path / "ckpt.pt", stop_after=3)
    assert obj.batches == ref.batches == 25
    assert torch.equal(obj.total, ref.total)
    assert torch.equal(hooks[0].acc, ref_hooks[0].acc)
    assert hooks[1].points == ref_hooks[1].points == [{"epoch": 1}, {"step": 7}, {"epoch": 3}, {"epoch": 5}]
    assert all(same_weights(a, b) for a, b in zip(hooks[1].snapshots, ref_hooks[1].snapshots))
    assert same_weights(obj.model, ref.model)


def test_state_that_weights_only_cannot_load_fails_at_save(tmp_path):
    class Bad(CE):
        def objective_state(self):
            return {"when": object()}

        def load_objective_state(self, state):
            pass

    x, y = data()
    with pytest.raises(TypeError, match=r"objective_state\[0\]\.when: a object cannot go into a checkpoint"):
        fit(Bad(Tiny()), x, y, TrainConfig(epochs=2, batch_size=8, checkpoint_min_seconds=0),
            checkpoint_path=tmp_path / "c.pt", progress=False)


# ---- accumulation and clipping against a hand-written loop -------------------------------------

@pytest.mark.parametrize("accumulate,clip", [(3, 0.05), (1, 0.05), (3, None)])
def test_accumulation_and_clipping_equal_a_hand_loop(accumulate, clip):
    """Bit-identical (torch.equal): same init, data order, op order and parameter order."""
    x, y = data()
    cfg = TrainConfig(epochs=2, batch_size=4, accumulate=accumulate, grad_clip=clip, lr=0.1, weight_decay=1e-3,
                      warmup_epochs=0, schedule="constant", seed=5, channels_last=False, amp=False)
    torch.manual_seed(0)
    model = Tiny()
    ref = copy.deepcopy(model)
    hist = fit(CE(model), x, y, cfg, progress=False)

    decay = [p for p in ref.parameters() if p.ndim > 1]
    no_decay = [p for p in ref.parameters() if p.ndim <= 1]
    opt = torch.optim.SGD([{"params": decay, "weight_decay": 1e-3}, {"params": no_decay, "weight_decay": 0.0}],
                          lr=0.1, momentum=0.9, nesterov=True)
    steps = len(x) // (4 * accumulate)
    norms = []
    for epoch in range(2):
        perm = torch.randperm(len(x), generator=epoch_generator(5, epoch))
        for i in range(steps):
            opt.zero_grad()
            for j in range(accumulate):
                idx = perm[(i * accumulate + j) * 4:(i * accumulate + j + 1) * 4]
                loss = F.cross_entropy(ref(x[idx].permute(0, 3, 1, 2).float() / 255), y[idx])
                (loss / accumulate if accumulate > 1 else loss).backward()
            if clip is not None:
                norms.append(float(torch.nn.utils.clip_grad_norm_(decay + no_decay, clip)))
            opt.step()
    assert same_weights(model, ref)
    assert steps_per_epoch(len(x), cfg) == steps == len(x) // (4 * accumulate)
    assert len(hist) == 2 and hist[0]["images_per_s"] > 0
    if clip is not None:
        assert max(norms) > clip  # clipping did act


# ---- parameter groups --------------------------------------------------------------------------

def groups_by_name(groups):
    return {n: (g["lr_scale"], g["weight_decay"]) for g in groups for n in g["names"]}


def test_default_groups_are_decay_then_no_decay():
    groups = param_groups(Tiny(), TrainConfig(epochs=1, weight_decay=0.01))
    assert [g["names"] for g in groups] == [["net.0.weight", "net.4.weight"], ["net.0.bias", "net.4.bias"]]
    assert [(g["lr_scale"], g["weight_decay"]) for g in groups] == [(1.0, 0.01), (1.0, 0.0)]


def test_lr_and_wd_multipliers_reach_their_groups(optimizers):
    cfg = TrainConfig(epochs=1, batch_size=8, lr=0.1, weight_decay=0.01, warmup_epochs=0, schedule="constant",
                      lr_mults={"net": 2.0, "net.4": 10.0}, wd_mults={"net.0": 0.5})
    rec = LrRecorder(optimizers)
    x, y = data()
    fit(CE(Tiny()), x, y, cfg, progress=False, hooks=[rec])
    groups = optimizers[-1].param_groups
    assert groups_by_name(groups) == {"net.0.weight": (2.0, 0.005), "net.0.bias": (2.0, 0.0),  # longest prefix wins
                                      "net.4.weight": (10.0, 0.01), "net.4.bias": (10.0, 0.0)}
    assert {n: g["lr"] for g in groups for n in g["names"]} == {
        "net.0.weight": 0.1 * 2.0, "net.0.bias": 0.1 * 2.0, "net.4.weight": 0.1 * 10.0, "net.4.bias": 0.1 * 10.0}
    with pytest.raises(ValueError, match="prefix 'head' matches no parameter"):
        param_groups(Tiny(), TrainConfig(epochs=1, lr_mults={"head": 10.0}))
    with pytest.raises(ValueError, match="prefix 'ne' matches no parameter"):  # whole components only
        param_groups(Tiny(), TrainConfig(epochs=1, wd_mults={"net.4": 0.0, "net.": 1.0, "ne": 1.0}))


def test_layer_decay_on_a_tiny_vit():
    import timm

    class ViTClassifier(nn.Module):
        def __init__(self):
            super().__init__()
            self.backbone = timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=8, depth=2,
                                              embed_dim=48, num_heads=3, num_classes=0)
            self.head = nn.Linear(48, 3)

    model = ViTClassifier()
    cfg = TrainConfig(epochs=1, layer_decay=0.5, lr_mults={"head": 10.0}, weight_decay=0.05)
    scales = {n: s for n, (s, _) in groups_by_name(param_groups(model, cfg)).items()}
    assert set(scales) == {n for n, _ in model.named_parameters()}
    # timm's matcher: stem (cls/pos/patch_embed) 0, blocks.0 1, blocks.1 2, the final norm joins the last
    # block (MATCH_PREV_GROUP) 2; K = 3; the head, outside the timm net, 3
    assert scales["backbone.cls_token"] == scales["backbone.patch_embed.proj.weight"] == 0.5 ** 3
    assert scales["backbone.blocks.0.attn.qkv.weight"] == scales["backbone.blocks.0.norm1.bias"] == 0.5 ** 2
    assert scales["backbone.blocks.1.mlp.fc2.weight"] == scales["backbone.norm.weight"] == 0.5
    assert scales["head.weight"] == scales["head.bias"] == 10.0
    with pytest.raises(ValueError, match="group_matcher"):
        param_groups(Tiny(), TrainConfig(epochs=1, layer_decay=0.75))


# ---- snapshots ---------------------------------------------------------------------------------

def test_snapshot_hook_equals_runs_stopped_at_those_epochs():
    x, y = data()

    def train(epochs, hooks_for=None):
        torch.manual_seed(0)
        model = Tiny()
        hooks = hooks_for(model) if hooks_for else []
        cfg = TrainConfig(epochs=epochs, batch_size=8, lr=0.05, schedule="constant", warmup_epochs=1, seed=2)
        fit(CE(model), x, y, cfg, progress=False, hooks=hooks)
        return model, hooks

    _, (hook,) = train(4, lambda m: [SnapshotHook(m, epochs=[1, 3], steps=[9])])  # 5 steps/epoch: step 9 ends epoch 2
    assert hook.points == [{"epoch": 1}, {"step": 9}, {"epoch": 3}]
    for snap, epochs in zip(hook.snapshots, (1, 2, 3)):
        assert same_weights(snap, train(epochs)[0])
    assert all(v.device.type == "cpu" for v in hook.snapshots[0].values())


def test_snapshot_hook_at_schedule_points():
    cfg = TrainConfig(epochs=4, batch_size=8, schedule="cyclic", schedule_params={"cycle_epochs": 2}, warmup_epochs=0)
    hook = SnapshotHook.at_schedule_points(Tiny(), cfg, 40)
    assert sorted(hook.steps) == [4, 14]  # c = 10 steps, minimum at i % 10 == 4
    with pytest.raises(ValueError, match="no snapshot points"):
        SnapshotHook.at_schedule_points(Tiny(), TrainConfig(epochs=1), 40)


# ---- where the training data lives -------------------------------------------------------------

def test_device_data_policy():
    cuda = torch.device("cuda")
    assert data_placement("auto", cuda, nbytes=249, free_bytes=1000) == "device"
    assert data_placement("auto", cuda, nbytes=250, free_bytes=1000) == "host"
    assert data_placement("auto", cuda, nbytes=10 ** 12, free_bytes=10 ** 11) == "host"
    assert data_placement("device", cuda, nbytes=10 ** 12, free_bytes=1) == "device"
    assert data_placement("host", cuda, nbytes=1, free_bytes=10 ** 12) == "host"
    assert data_placement("auto", torch.device("cpu"), nbytes=10 ** 15) == "device"  # on CPU: nothing is copied
    with pytest.raises(ValueError, match="device_data"):
        data_placement("gpu", cuda, 1, 1)


def test_host_batches_equal_default_path_on_cpu():
    x, y = data()
    results = []
    for mode in ("auto", "host"):
        torch.manual_seed(0)
        model = Tiny()
        obj = SupervisedObjective(model, AugmentConfig(crop_scale=(0.6, 1.0), flip=True))
        hist = fit(obj, x, y, TrainConfig(epochs=2, batch_size=8, device_data=mode), progress=False)
        results.append((model, [h["train_loss"] for h in hist]))
    assert same_weights(results[0][0], results[1][0])
    assert results[0][1] == results[1][1]


def test_val_every_validates_every_kth_epoch_and_the_last_without_changing_training():
    """val_every skips validation passes only: the same weights, val metrics on epochs 2, 4 and 5 (the last)."""
    def train(val_every):
        torch.manual_seed(0)
        model = Tiny()
        obj = SupervisedObjective(model, AugmentConfig(crop_scale=(0.6, 1.0), flip=True))
        cfg = TrainConfig(epochs=5, batch_size=16, lr=0.05, seed=3, val_every=val_every)
        x, y = data()
        hist = fit(obj, x, y, cfg, progress=False, validate=lambda: {"acc": 0.5})
        return model, hist

    every, h1 = train(1)
    sparse, h2 = train(2)
    assert [r["epoch"] for r in h2 if "val_acc" in r] == [2, 4, 5]
    assert all("val_acc" in r for r in h1)
    for a, b in zip(every.state_dict().values(), sparse.state_dict().values()):
        assert torch.equal(a, b)
    with pytest.raises(ValueError, match="val_every"):
        TrainConfig(epochs=1, val_every=0)
