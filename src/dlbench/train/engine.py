"""The one training engine: every pretraining, adaptation and compression stage trains through ``fit``.

What it owns, so that methods do not re-implement it: batching from in-memory uint8
tensors (the whole set on the device when it fits, else batch by batch through pinned host
memory), gradient accumulation and clipping, the optimizer with its parameter groups (no
decay on 1-D parameters, per-prefix lr / weight-decay multipliers, layer-wise lr decay), the
lr schedule (``dlbench.train.schedules``), bf16 autocast (``dlbench.device.autocast``) and
channels_last, frozen reference models, hooks, a progress bar, per-epoch history, and
resumable checkpoints. Data order and augmentation randomness are derived from
(seed, epoch), and checkpoints are taken at epoch boundaries together with the objective's and
hooks' own state, so a run killed at any point and resumed ends bit-identical (on CPU) to an
uninterrupted one. The engine knows no method: everything method-specific is the objective's.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn
from tqdm import tqdm

from dlbench.device import autocast, pick_device
from dlbench.errors import CheckpointError
from dlbench.io import atomic_path
from dlbench.train.schedules import Schedule, build_schedule, lr_factor

__all__ = ["Batch", "CheckpointError", "Objective", "TrainConfig", "data_placement", "epoch_generator", "fit",
           "load_checkpoint", "lr_factor", "make_optimizer", "param_groups", "remove_checkpoint", "save_checkpoint",
           "steps_per_epoch"]


@dataclass
class Batch:
    """One training batch as an objective sees it, on the training device."""

    images: torch.Tensor  # float N x C x H x W in [0, 1] (channels_last when configured), not augmented
    labels: torch.Tensor  # int64 N; -1 where the split is unlabeled
    indices: torch.Tensor  # int64 N: the rows of these images in the training set (per-image state)


class Objective(Protocol):
    """What a method supplies: the module(s) to optimise and a loss on one raw batch.

    Optional, used when defined (on the objective and on every object of ``fit(hooks=...)``):

    - ``before_epoch(epoch, generator)``: start of every epoch, also the first one after a
      resume (DeepCluster re-clusters there); ``epoch`` is 0-based.
    - ``after_step(step, total_steps)``: after each optimiser step (momentum encoders).
    - ``after_epoch(epoch)``: after the epoch's last step, before validation; ``epoch`` is the
      number of completed epochs (1-based): snapshot collection.
    - ``on_fit_end()``: once, after the last epoch.
    - ``objective_state() -> dict`` with ``load_objective_state(dict)``: state outside the model
      (SWAG moments, collected snapshots) saved in every checkpoint and restored on resume. It
      must be tensors, lists, dicts, numbers, strings (checkpoints load with ``weights_only``).
    - ``frozen`` (objective only): an ``nn.Module`` of reference models (teachers, zero-shot
      models) that the engine moves to the device and keeps in eval mode, without gradients,
      outside the optimiser and outside checkpoints.
    """

    model: nn.Module

    def training_loss(self, batch: Batch, gen: torch.Generator) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The loss on one raw batch (augmentation is the objective's), and stats for the history."""
        ...


DEVICE_DATA = ("auto", "device", "host")
_INT_FIELDS = ("epochs", "batch_size", "accumulate", "checkpoint_every", "val_every", "seed")
_FLOAT_FIELDS = ("lr", "momentum", "weight_decay", "warmup_epochs", "checkpoint_min_seconds")


def _number(name: str, value: Any, kind: type) -> Any:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ValueError(f"train.{name} must be a number, got {value!r}")
    try:
        number = float(value)
    except ValueError:
        raise ValueError(f"train.{name} must be a number, got {value!r}") from None
    if kind is int:
        if not number.is_integer():
            raise ValueError(f"train.{name} must be an integer, got {value!r}")
        return int(number)
    return number


def _multipliers(name: str, d: Any) -> dict[str, float]:
    if not isinstance(d, Mapping):
        raise ValueError(f"train.{name} must map parameter-name prefixes to multipliers, got {d!r}")
    out = {str(k): _number(f"{name}.{k}", v, float) for k, v in d.items()}
    bad = [k for k, v in out.items() if v < 0]
    if bad:
        raise ValueError(f"train.{name}: multipliers must be >= 0 ({', '.join(bad)})")
    return out


@dataclass
class TrainConfig:
    """One training recipe (config ``train:``), checked on construction so config validation fails early.

    The default recipe is the one the embedded CPU benchmark was tuned with; the knobs below
    exist for the recipes of the methods that need them (cited where each default comes from).
    """

    epochs: int
    batch_size: int = 128  # images per micro-batch (per forward/backward)
    optimizer: str = "sgd"  # sgd (Nesterov when momentum > 0) | adamw
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4  # never on 1-D parameters (biases, norms), the usual SGD and AdamW recipe
    warmup_epochs: float = 1.0  # linear warm-up (Goyal et al. 2017), rounded to whole optimiser steps
    seed: int = 0
    checkpoint_every: int = 1  # epochs between checkpoints ...
    # epochs between validation passes (and always after the last): a label-fraction fine-tune makes
    # many short epochs, where validating on the whole val split every epoch would cost more than training
    val_every: int = 1
    checkpoint_min_seconds: float = 30.0  # ... and at least this long since the last one (bounds I/O overhead)
    amp: bool = True  # bf16 autocast where it is fast (dlbench.device.autocast)
    channels_last: bool = True  # on CPU too: 1.6x faster for narrow ResNets at 32x32 (benchmarks/)
    schedule: str = "warmup_cosine"  # a name in dlbench.train.schedules.SCHEDULES
    schedule_params: dict[str, Any] = field(default_factory=dict)  # checked against the schedule's fields
    grad_clip: float | None = None  # max global gradient norm (WiSE-FT fine-tunes with 1.0); None: off
    accumulate: int = 1  # micro-batches per optimiser step (effective batch = batch_size * accumulate)
    lr_mults: dict[str, float] = field(default_factory=dict)  # param-name prefix -> lr multiplier (longest wins)
    wd_mults: dict[str, float] = field(default_factory=dict)  # param-name prefix -> weight-decay multiplier
    layer_decay: float | None = None  # layer-wise lr decay (BEiT, MAE fine-tuning use 0.65-0.75); None: off
    device_data: str = "auto"  # auto | device | host: where the uint8 training set lives (see data_placement)

    def __post_init__(self) -> None:
        for name in _INT_FIELDS:
            setattr(self, name, _number(name, getattr(self, name), int))
        for name in _FLOAT_FIELDS:
            setattr(self, name, _number(name, getattr(self, name), float))
        if self.epochs < 1:
            raise ValueError(f"epochs must be >= 1, got {self.epochs}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.accumulate < 1:
            raise ValueError(f"accumulate must be >= 1, got {self.accumulate}")
        if self.checkpoint_every < 1:
            raise ValueError(f"checkpoint_every must be >= 1, got {self.checkpoint_every}")
        if self.val_every < 1:
            raise ValueError(f"val_every must be >= 1, got {self.val_every}")
        if self.optimizer not in ("sgd", "adamw"):
            raise ValueError(f"optimizer must be 'sgd' or 'adamw', got {self.optimizer!r}")
        if self.lr < 0 or self.weight_decay < 0 or self.warmup_epochs < 0:
            raise ValueError("lr, weight_decay and warmup_epochs must be >= 0")
        if self.grad_clip is not None:
            self.grad_clip = _number("grad_clip", self.grad_clip, float)
            if not self.grad_clip > 0:
                raise ValueError(f"grad_clip must be > 0 (or null: off), got {self.grad_clip}")
        if self.layer_decay is not None:
            self.layer_decay = _number("layer_decay", self.layer_decay, float)
            if not 0 < self.layer_decay <= 1:
                raise ValueError(f"layer_decay must be in (0, 1] (or null: off), got {self.layer_decay}")
        if self.device_data not in DEVICE_DATA:
            raise ValueError(f"device_data must be one of {', '.join(DEVICE_DATA)}, got {self.device_data!r}")
        self.lr_mults = _multipliers("lr_mults", self.lr_mults)
        self.wd_mults = _multipliers("wd_mults", self.wd_mults)
        if not isinstance(self.schedule_params, Mapping):
            raise ValueError(f"schedule_params must be a mapping, got {self.schedule_params!r}")
        self.schedule_params = dict(self.schedule_params)
        self.build_schedule()  # unknown schedule or parameter: ValueError now, at config time

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None, *, seed: int | None = None) -> TrainConfig:
        """The config from a ``train:`` mapping; ValueError naming unknown keys (and listing the known ones)."""
        d = dict(d or {})
        known = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(d) - set(known))
        if unknown:
            raise ValueError(f"unknown train config key(s): {', '.join(unknown)}; known: {', '.join(known)}")
        if seed is not None:
            d["seed"] = seed
        if "epochs" not in d:
            raise ValueError("train.epochs is required")
        return cls(**d)

    def build_schedule(self) -> Schedule:
        return build_schedule(self.schedule, self.schedule_params)


# ---- parameter groups ---------------------------------------------------------------------------

def _matches(name: str, prefix: str) -> bool:
    """Prefixes match whole dotted components: ``layer1`` matches ``layer1.0.conv1.weight``, not ``layer10``."""
    return name == prefix or name.startswith(prefix if prefix.endswith(".") else prefix + ".")


def _prefix_value(name: str, table: Mapping[str, float]) -> float:
    """The multiplier of the longest prefix of ``name`` in ``table``, else 1."""
    best, value = -1, 1.0
    for prefix, mult in table.items():
        if _matches(name, prefix) and len(prefix) > best:
            best, value = len(prefix), mult
    return value


def _check_prefixes(names: Sequence[str], table: Mapping[str, float], what: str) -> None:
    for prefix in table:
        if not any(_matches(n, prefix) for n in names):
            raise ValueError(f"train.{what}: prefix {prefix!r} matches no parameter of the model "
                             f"(parameters start: {', '.join(names[:6])}, ...)")


def layer_scales(model: nn.Module, layer_decay: float) -> dict[str, float]:
    """BEiT / MAE layer-wise lr decay: ``layer_decay ** (K - id)`` per parameter name.

    Layer ids come from timm's ``group_matcher`` of the first submodule that has one
    (``group_parameters(net, net.group_matcher(coarse=False), reverse=True)``), K = max id + 1;
    every parameter outside that network (the head) has id K, so its scale is 1.
    """
    from timm.models import group_parameters

    for prefix, net in model.named_modules():
        if callable(getattr(net, "group_matcher", None)):
            break
    else:
        raise ValueError("train.layer_decay needs a timm network (one with group_matcher) inside objective.model")
    layer_map = group_parameters(net, net.group_matcher(coarse=False), reverse=True)
    k = max(layer_map.values()) + 1
    pre = f"{prefix}." if prefix else ""
    ids = {f"{pre}{n}": i for n, i in layer_map.items()}
    return {n: layer_decay ** (k - ids.get(n, k)) for n, _ in model.named_parameters()}


def param_groups(model: nn.Module, cfg: TrainConfig) -> list[dict[str, Any]]:
    """The optimiser's groups: one per (lr scale, weight decay), decaying groups first.

    No weight decay on 1-D parameters (biases, norms); ``lr_mults`` / ``layer_decay`` give each
    group an ``lr_scale`` (the engine sets ``lr = cfg.lr * factor * lr_scale``), ``wd_mults``
    scale the decay. Parameters without ``requires_grad`` are left out.
    With no multipliers this is the original [decay, no-decay] pair, in that order.
    """
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    names = [n for n, _ in named]
    _check_prefixes(names, cfg.lr_mults, "lr_mults")
    _check_prefixes(names, cfg.wd_mults, "wd_mults")
    scales = layer_scales(model, cfg.layer_decay) if cfg.layer_decay is not None else {}
    groups: dict[tuple[bool, float, float], dict[str, Any]] = {}
    for n, p in named:
        lr_scale = _prefix_value(n, cfg.lr_mults) * scales.get(n, 1.0)
        decays = p.ndim > 1
        wd = cfg.weight_decay * _prefix_value(n, cfg.wd_mults) if decays else 0.0
        key = (not decays, lr_scale, wd)
        group = groups.setdefault(key, {"params": [], "names": [], "weight_decay": wd, "lr_scale": lr_scale})
        group["params"].append(p)
        group["names"].append(n)
    return [groups[k] for k in sorted(groups, key=lambda k: k[0])]  # stable: decaying first, else first seen


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """SGD (Nesterov when momentum > 0) or AdamW over ``param_groups``."""
    groups = param_groups(model, cfg)
    if not groups:
        raise ValueError("objective.model has no trainable parameters")
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.momentum > 0)
    return torch.optim.AdamW(groups, lr=cfg.lr)


# ---- data ---------------------------------------------------------------------------------------

def data_placement(mode: str, device: torch.device, nbytes: int, free_bytes: int | None = None) -> str:
    """Where the uint8 training set lives during ``fit``: ``"device"`` or ``"host"``.

    ``auto``: on CUDA the whole set goes to the GPU only when it takes under a quarter of the
    free memory (``torch.cuda.mem_get_info``, or ``free_bytes``), leaving room for activations;
    otherwise it stays on the host and each batch is gathered into pinned memory and copied.
    Other devices (CPU, MPS: memory shared with the host) get ``device``, which on CPU copies
    nothing. ``device`` / ``host`` force the choice.
    """
    if mode not in DEVICE_DATA:
        raise ValueError(f"device_data must be one of {', '.join(DEVICE_DATA)}, got {mode!r}")
    if mode != "auto":
        return mode
    if device.type != "cuda":
        return "device"
    if free_bytes is None:
        free_bytes = int(torch.cuda.mem_get_info(device)[0])
    return "device" if nbytes < free_bytes / 4 else "host"


def batch_plan(n: int, cfg: TrainConfig) -> tuple[int, int, int]:
    """(optimiser steps per epoch, micro-batches per step, images per micro-batch).

    ``n // (batch_size * accumulate)`` steps of ``accumulate`` micro-batches (the remainder of
    the shuffled set is dropped); a set smaller than that makes one step of its whole
    micro-batches, and a set smaller than one batch one step on all of it.
    """
    bs, acc = cfg.batch_size, cfg.accumulate
    if n >= bs * acc:
        return n // (bs * acc), acc, bs
    if n >= bs:
        return 1, n // bs, bs
    return 1, 1, n


def steps_per_epoch(n: int, cfg: TrainConfig) -> int:
    """Optimiser steps per epoch on ``n`` training images (what schedules and hooks count)."""
    return batch_plan(n, cfg)[0]


def epoch_generator(seed: int, epoch: int, salt: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 1_000_003 + epoch * 7919 + salt)


# ---- checkpoints --------------------------------------------------------------------------------

_ATOMS = (bool, int, float, str, type(None))


def _check_state(obj: Any, path: str) -> None:
    """Fail at save time (naming the entry) on what ``torch.load(weights_only=True)`` would refuse."""
    if isinstance(obj, (torch.Tensor, *_ATOMS)):
        return
    if isinstance(obj, Mapping):
        for k, v in obj.items():
            if not isinstance(k, (str, int)):
                raise TypeError(f"{path}: key {k!r} is not a str or int")
            _check_state(v, f"{path}.{k}")
        return
    if isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            _check_state(v, f"{path}[{i}]")
        return
    raise TypeError(f"{path}: a {type(obj).__name__} cannot go into a checkpoint (loaded with weights_only=True); "
                    f"use tensors, lists, dicts, numbers and strings")


def _rng_state() -> dict[str, Any]:
    return {"torch": torch.get_rng_state()}


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_checkpoint(path: Path) -> dict[str, Any]:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises RuntimeError/EOFError/UnpicklingError variants
        raise CheckpointError(f"{path}: truncated or corrupt checkpoint ({type(e).__name__}: {e}); "
                              f"delete it to train from scratch") from None


def remove_checkpoint(path: Path | None) -> None:
    """Called once the final outputs are written: the resumable state is no longer needed."""
    if path is not None and path.exists():
        os.remove(path)


# ---- fit ----------------------------------------------------------------------------------------

def _frozen_module(objective: Any, model: nn.Module, device: torch.device, channels_last: bool) -> nn.Module | None:
    frozen = getattr(objective, "frozen", None)
    if frozen is None:
        return None
    if not isinstance(frozen, nn.Module):
        raise ValueError(f"objective.frozen must be an nn.Module (e.g. nn.ModuleDict), got {type(frozen).__name__}")
    trained = {id(p) for p in model.parameters()}
    shared = [n for n, p in frozen.named_parameters() if id(p) in trained]
    if shared:
        raise ValueError(f"objective.frozen shares parameters with objective.model ({', '.join(shared[:5])}); "
                         f"a frozen module must not be trained")
    frozen.to(device)
    if channels_last:
        frozen.to(memory_format=torch.channels_last)
    frozen.requires_grad_(False)
    return frozen.eval()


def fit(objective: Objective, images: torch.Tensor, labels: torch.Tensor, cfg: TrainConfig, *,
        checkpoint_path: Path | None = None, fingerprint: str = "", device: torch.device | None = None,
        validate: Callable[[], dict[str, float]] | None = None,
        log: Callable[[str], None] = lambda s: print(s, file=sys.stderr, flush=True),
        progress: bool = True, hooks: Sequence[object] = ()) -> list[dict[str, float]]:
    """Train ``objective.model`` on uint8 N x H x W x C ``images``; return the per-epoch history.

    ``fingerprint`` identifies the recipe: a checkpoint written by another recipe is ignored
    (logged), so a changed config never resumes from stale state. ``hooks``: objects with any of
    the optional methods of :class:`Objective` (called after the objective's, in order).
    """
    device = device or pick_device()
    model = objective.model.to(device)
    if cfg.channels_last:  # on CPU too: 1.6x faster for narrow ResNets at 32x32 (benchmarks/)
        model = model.to(memory_format=torch.channels_last)
    frozen = _frozen_module(objective, model, device, cfg.channels_last)
    optimizer = make_optimizer(model, cfg)
    clip_params = [p for g in optimizer.param_groups for p in g["params"]] if cfg.grad_clip is not None else []
    schedule = cfg.build_schedule()
    n = len(images)
    spe, micro_per_step, micro = batch_plan(n, cfg)
    total_steps = spe * cfg.epochs
    warmup = int(round(cfg.warmup_epochs * spe))
    parties = [objective, *hooks]
    stateful = [o if callable(getattr(o, "objective_state", None)) else None for o in parties]
    history: list[dict[str, float]] = []
    start_epoch = 0

    if checkpoint_path is not None and checkpoint_path.exists():
        state = load_checkpoint(checkpoint_path)
        if state.get("fingerprint") != fingerprint:
            log(f"ignoring checkpoint {checkpoint_path}: written by a different recipe")
        else:
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            torch.set_rng_state(state["rng"]["torch"])
            saved = state.get("objective_state") or [None] * len(parties)
            if len(saved) != len(parties):
                raise CheckpointError(f"{checkpoint_path}: holds state for {len(saved) - 1} hooks, fit got "
                                      f"{len(hooks)}; delete it to train from scratch")
            for party, s in zip(stateful, saved):
                if party is not None and s is not None:
                    party.load_objective_state(s)
            history = list(state["history"])
            start_epoch = int(state["epoch"])
            log(f"resuming from checkpoint {checkpoint_path} at epoch {start_epoch}/{cfg.epochs}")
    groups = optimizer.param_groups  # after a resume: load_state_dict replaced the group dicts

    placement = data_placement(cfg.device_data, device, images.numel() * images.element_size())
    use_cuda = device.type == "cuda"
    images_dev = images.to(device) if placement == "device" else images
    labels_dev = labels.to(device)
    amp = autocast(device, cfg.amp)
    channels_last = torch.channels_last if cfg.channels_last else None

    def fetch(idx: torch.Tensor, rows: torch.Tensor) -> Batch:
        if placement == "device":
            raw = images_dev[rows]
        else:  # gather on the host into pinned memory (cached by torch's host allocator), copy async
            raw = torch.empty((len(idx), *images.shape[1:]), dtype=images.dtype, pin_memory=use_cuda)
            torch.index_select(images, 0, idx, out=raw)
            raw = raw.to(device, non_blocking=True)
        # uint8 NHWC permuted to NCHW is already channels_last-strided; .float() keeps that layout
        x = raw.permute(0, 3, 1, 2).float().div_(255)
        if channels_last is not None:
            x = x.contiguous(memory_format=channels_last)  # a no-op here; kept for non-NHWC-contiguous inputs
        return Batch(images=x, labels=labels_dev[rows], indices=rows)

    def call(method: str, *args: Any) -> None:
        for party in parties:
            fn = getattr(party, method, None)
            if fn is not None:
                fn(*args)

    def train_mode() -> None:
        model.train()
        if frozen is not None:
            frozen.eval()

    after_step = [fn for fn in (getattr(p, "after_step", None) for p in parties) if fn is not None]
    # CPU: deterministic kernels where torch has a choice (index_copy_, put_, ...), for the bit-identical
    # resume. Without its NaN fill of every new tensor (fill_uninitialized_memory): that fill was 12% of
    # a resnet10s step here (benchmarks/train_overhead.py) and changes nothing a correct kernel computes.
    deterministic = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
                     torch.utils.deterministic.fill_uninitialized_memory)
    if not use_cuda:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.utils.deterministic.fill_uninitialized_memory = False
    try:
        last_save = time.perf_counter()
        for epoch in range(start_epoch, cfg.epochs):
            train_mode()
            torch.manual_seed(cfg.seed * 1_000_003 + epoch)
            order_gen = epoch_generator(cfg.seed, epoch)
            aug_gen = epoch_generator(cfg.seed, epoch, salt=1)
            perm = torch.randperm(n, generator=order_gen)
            perm_dev = perm.to(device)
            t0 = time.perf_counter()
            for k, party in enumerate(parties):
                if hasattr(party, "before_epoch"):  # each its own generator: a hook never shifts the objective's
                    party.before_epoch(epoch, epoch_generator(cfg.seed, epoch, salt=2 + k))
            train_mode()
            stats_seen: list[dict[str, torch.Tensor]] = []
            bar = tqdm(range(spe), desc=f"epoch {epoch + 1}/{cfg.epochs}", file=sys.stderr,
                       mininterval=2.0, ascii=True, disable=not progress, leave=False)
            for i in bar:
                step = epoch * spe + i
                lr = cfg.lr * schedule.factor(step, total_steps, spe, warmup)
                for group in groups:
                    group["lr"] = lr * group["lr_scale"]
                optimizer.zero_grad(set_to_none=True)
                for j in range(micro_per_step):
                    lo = (i * micro_per_step + j) * micro
                    batch = fetch(perm[lo:lo + micro], perm_dev[lo:lo + micro])
                    with amp:
                        loss, stats = objective.training_loss(batch, aug_gen)
                    (loss / micro_per_step if micro_per_step > 1 else loss).backward()
                    stats_seen.append({"loss": loss.detach(), **{k: v.detach() for k, v in stats.items()}})
                if clip_params:
                    torch.nn.utils.clip_grad_norm_(clip_params, cfg.grad_clip)
                optimizer.step()
                for fn in after_step:
                    fn(step, total_steps)
            seconds = time.perf_counter() - t0
            record: dict[str, Any] = {
                "epoch": epoch + 1,
                "lr": cfg.lr * schedule.factor((epoch + 1) * spe - 1, total_steps, spe, warmup),
                "seconds": seconds, "images_per_s": spe * micro_per_step * micro / seconds}
            record.update(_mean_stats(stats_seen))
            call("after_epoch", epoch + 1)
            if validate is not None and ((epoch + 1) % cfg.val_every == 0 or epoch + 1 == cfg.epochs):
                model.eval()
                record.update({f"val_{k}": v for k, v in validate().items()})
            history.append(record)
            log(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in record.items()))
            last = epoch + 1 == cfg.epochs
            due = ((epoch + 1) % cfg.checkpoint_every == 0
                   and time.perf_counter() - last_save >= cfg.checkpoint_min_seconds)
            if checkpoint_path is not None and not last and due:
                extra = [party.objective_state() if party is not None else None for party in stateful]
                _check_state(extra, "objective_state")
                save_checkpoint(checkpoint_path, {
                    "fingerprint": fingerprint, "epoch": epoch + 1, "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(), "scheduler": {"step": (epoch + 1) * spe},
                    "rng": _rng_state(), "history": history, "config": asdict(cfg), "objective_state": extra})
                last_save = time.perf_counter()
        model.eval()
        call("on_fit_end")
    finally:
        if not use_cuda:  # leave the process as it was: evaluation and other code after fit are unaffected
            torch.use_deterministic_algorithms(deterministic[0], warn_only=deterministic[1])
            torch.utils.deterministic.fill_uninitialized_memory = deterministic[2]
    return history


def _mean_stats(seen: list[dict[str, torch.Tensor]]) -> dict[str, float]:
    """``train_<stat>``: each stat's mean over the epoch's micro-batches (summed in float32, in order)."""
    out: dict[str, float] = {}
    if not seen:
        return out
    for k in seen[0]:
        values = [s[k].float() for s in seen if k in s]
        total = values[0]
        for v in values[1:]:
            total = total + v
        out[f"train_{k}"] = float(total) / len(values)
    return out
