"""The one training engine: every pretraining, adaptation and compression stage trains through ``fit``.

What it owns, so that methods do not re-implement it: batching from in-memory uint8
tensors, the optimizer and warm-up + cosine schedule, AMP (bf16) and channels_last on
CUDA, a progress bar, per-epoch history, and resumable checkpoints. Data order and
augmentation randomness are derived from (seed, epoch), and checkpoints are taken at
epoch boundaries, so a run killed at any point and resumed ends bit-identical (on CPU)
to an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import math
import os
import random
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from dlbench.io import atomic_path


class Objective(Protocol):
    """What a method supplies: the module(s) to optimise and a loss on one raw batch.

    Optional hooks, called when defined: ``before_epoch(epoch, generator)`` at the start of
    every epoch (also the first one after a resume; DeepCluster re-clusters there) and
    ``after_step(step, total_steps)`` after each optimiser step (momentum encoders). An
    objective with ``wants_indices = True`` receives the batch's row indices into the
    training images in place of ``labels`` (methods that keep per-image state).
    """

    model: nn.Module

    def training_loss(self, images: torch.Tensor, labels: torch.Tensor,
                      gen: torch.Generator) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``images``: float N x C x H x W in [0, 1] on the device, not yet augmented."""
        ...


@dataclass
class TrainConfig:
    epochs: int
    batch_size: int = 128
    optimizer: str = "sgd"
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    warmup_epochs: float = 1.0
    seed: int = 0
    checkpoint_every: int = 1  # epochs between checkpoints ...
    checkpoint_min_seconds: float = 30.0  # ... and at least this long since the last one (bounds I/O overhead)
    amp: bool = True
    channels_last: bool = True
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise ValueError(f"epochs must be >= 1, got {self.epochs}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.optimizer not in ("sgd", "adamw"):
            raise ValueError(f"optimizer must be 'sgd' or 'adamw', got {self.optimizer!r}")


class CheckpointError(RuntimeError):
    pass


def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def cpu_has_fast_bf16() -> bool:
    """True where oneDNN has native bf16 kernels (AVX512-BF16/AMX); elsewhere bf16 is emulated and slow."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def set_threads(threads: int | None) -> None:
    if threads:
        torch.set_num_threads(threads)


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """No weight decay on biases and norm parameters (standard for both SGD and AdamW recipes)."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 else decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.momentum > 0)
    return torch.optim.AdamW(groups, lr=cfg.lr)


def lr_factor(step: int, total: int, warmup: int) -> float:
    """Linear warm-up from 0 over ``warmup`` steps, then cosine decay to 0 at ``total``."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def epoch_generator(seed: int, epoch: int, salt: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 1_000_003 + epoch * 7919 + salt)


def _rng_state() -> dict[str, Any]:
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state()[1].tolist(),
            "python": repr(random.getstate())}


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_checkpoint(path: Path) -> dict[str, Any]:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises RuntimeError/EOFError/UnpicklingError variants
        raise CheckpointError(f"{path}: truncated or corrupt checkpoint ({type(e).__name__}: {e}); "
                              f"delete it to train from scratch") from None


def fit(objective: Objective, images: torch.Tensor, labels: torch.Tensor, cfg: TrainConfig, *,
        checkpoint_path: Path | None = None, fingerprint: str = "", device: torch.device | None = None,
        validate: Callable[[], dict[str, float]] | None = None,
        log: Callable[[str], None] = lambda s: print(s, file=sys.stderr, flush=True),
        progress: bool = True) -> list[dict[str, float]]:
    """Train ``objective.model`` on uint8 N x H x W x C ``images``; return the per-epoch history.

    ``fingerprint`` identifies the recipe: a checkpoint written by another recipe is ignored
    (logged), so a changed config never resumes from stale state.
    """
    device = device or pick_device()
    model = objective.model.to(device)
    use_cuda = device.type == "cuda"
    if cfg.channels_last:  # on CPU too: 1.6x faster for narrow ResNets at 32x32 (benchmarks/)
        model = model.to(memory_format=torch.channels_last)
    if not use_cuda:
        torch.use_deterministic_algorithms(True, warn_only=True)
    optimizer = make_optimizer(model, cfg)
    n = len(images)
    drop_last = n >= cfg.batch_size
    steps_per_epoch = n // cfg.batch_size if drop_last else 1
    total_steps = steps_per_epoch * cfg.epochs
    warmup = int(round(cfg.warmup_epochs * steps_per_epoch))
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
            history = list(state["history"])
            start_epoch = int(state["epoch"])
            log(f"resuming from checkpoint {checkpoint_path} at epoch {start_epoch}/{cfg.epochs}")

    images_dev = images.to(device) if use_cuda else images
    labels_dev = labels.to(device)
    # bf16 autocast on CUDA and CPU alike (CPU: 1.6x faster for the small ResNets here where the
    # CPU has AVX512-BF16/AMX; losses are computed in float32 by every objective).
    amp_ok = use_cuda or cpu_has_fast_bf16()
    amp = torch.autocast(device.type, dtype=torch.bfloat16) if (cfg.amp and amp_ok) else contextlib.nullcontext()

    wants_indices = bool(getattr(objective, "wants_indices", False))
    last_save = time.perf_counter()
    for epoch in range(start_epoch, cfg.epochs):
        model.train()
        torch.manual_seed(cfg.seed * 1_000_003 + epoch)
        order_gen = epoch_generator(cfg.seed, epoch)
        aug_gen = epoch_generator(cfg.seed, epoch, salt=1)
        perm = torch.randperm(n, generator=order_gen)
        t0 = time.perf_counter()
        if hasattr(objective, "before_epoch"):
            objective.before_epoch(epoch, epoch_generator(cfg.seed, epoch, salt=2))
            model.train()
        sums: dict[str, torch.Tensor] = {}
        bar = tqdm(range(steps_per_epoch), desc=f"epoch {epoch + 1}/{cfg.epochs}", file=sys.stderr,
                   mininterval=2.0, ascii=True, disable=not progress, leave=False)
        for i in bar:
            step = epoch * steps_per_epoch + i
            factor = lr_factor(step, total_steps, warmup)
            for group in optimizer.param_groups:
                group["lr"] = cfg.lr * factor
            idx = perm[i * cfg.batch_size:(i + 1) * cfg.batch_size] if drop_last else perm
            x = images_dev[idx.to(images_dev.device)].permute(0, 3, 1, 2).float().div_(255)
            if cfg.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            y = idx.to(labels_dev.device) if wants_indices else labels_dev[idx.to(labels_dev.device)]
            with amp:
                loss, stats = objective.training_loss(x, y, aug_gen)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if hasattr(objective, "after_step"):
                objective.after_step(step, total_steps)
            for k, v in {"loss": loss, **stats}.items():
                v = v.detach().float()
                sums[k] = sums[k] + v if k in sums else v
        seconds = time.perf_counter() - t0
        record = {"epoch": epoch + 1, "lr": cfg.lr * lr_factor((epoch + 1) * steps_per_epoch - 1, total_steps, warmup),
                  "seconds": seconds, "images_per_s": steps_per_epoch * (cfg.batch_size if drop_last else n) / seconds}
        record.update({f"train_{k}": float(v) / steps_per_epoch for k, v in sums.items()})
        if validate is not None:
            model.eval()
            record.update({f"val_{k}": v for k, v in validate().items()})
        history.append(record)
        log(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in record.items()))
        last = epoch + 1 == cfg.epochs
        due = (epoch + 1) % cfg.checkpoint_every == 0 and time.perf_counter() - last_save >= cfg.checkpoint_min_seconds
        if checkpoint_path is not None and not last and due:
            last_save = time.perf_counter()
            save_checkpoint(checkpoint_path, {
                "fingerprint": fingerprint, "epoch": epoch + 1, "model": model.state_dict(),
                "optimizer": optimizer.state_dict(), "scheduler": {"step": (epoch + 1) * steps_per_epoch},
                "rng": _rng_state(), "history": history, "config": asdict(cfg)})
    model.eval()
    return history


def remove_checkpoint(path: Path | None) -> None:
    """Called once the final outputs are written: the resumable state is no longer needed."""
    if path is not None and path.exists():
        os.remove(path)
