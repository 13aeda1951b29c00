"""Learning-rate schedules of the one training engine, by config name (``train.schedule``).

Each schedule is a small frozen dataclass built from ``train.schedule_params`` and exposes
``factor(step, total_steps, steps_per_epoch, warmup_steps)``: the engine sets every parameter
group's lr to ``cfg.lr * factor * group multiplier`` before optimiser step ``step`` (0-based;
steps are optimiser steps, so gradient accumulation does not stretch a schedule).

Warm-up (``train.warmup_epochs``, rounded to whole steps) is the same for every schedule: a
linear ramp ``(step + 1) / warmup_steps`` replaces the first ``warmup_steps`` factors. The
decaying schedules (``warmup_cosine``, ``step``) start their decay after it; the cyclic ones
(``cosine_restarts``, ``cyclic``, ``swa``) keep their cycles on the absolute step count, as their
papers' code does. Set ``warmup_epochs: 0`` to get a paper's curve exactly.

Snapshot ensembles and SWA need to know where a schedule ends a cycle or reaches its minimum;
``snapshot_steps`` lists those optimiser steps (``SnapshotHook`` takes them).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any, ClassVar, Protocol

from dlbench.registry import Registry, UnknownNameError


class Schedule(Protocol):
    """What the engine needs from a schedule."""

    def factor(self, step: int, total_steps: int, steps_per_epoch: int, warmup_steps: int) -> float: ...

    def snapshot_steps(self, total_steps: int, steps_per_epoch: int) -> list[int]: ...


SCHEDULES: Registry[type] = Registry("lr schedule")


def lr_factor(step: int, total: int, warmup: int) -> float:
    """Linear warm-up from 0 over ``warmup`` steps, then cosine decay to 0 at ``total``.

    The engine's original formula, kept bit for bit so that runs recorded before schedules
    became configurable reproduce exactly.
    """
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def _epochs_to_steps(epochs: float, steps_per_epoch: int) -> int:
    return int(round(epochs * steps_per_epoch))


class _Base:
    """Parameter checking shared by every schedule; no warm-up or snapshot logic of its own."""

    name: ClassVar[str]

    def snapshot_steps(self, total_steps: int, steps_per_epoch: int) -> list[int]:
        """Optimiser steps after which a snapshot ensemble takes a model (none for this schedule)."""
        return []


@SCHEDULES.register("warmup_cosine")
@dataclass(frozen=True)
class WarmupCosine(_Base):
    """Linear warm-up, then half a cosine to 0 at the end of the run (SGDR without restarts,
    Loshchilov & Hutter 2017; the default of the SSL and fine-tuning recipes here)."""

    name: ClassVar[str] = "warmup_cosine"

    def factor(self, step: int, total_steps: int, steps_per_epoch: int, warmup_steps: int) -> float:
        return lr_factor(step, total_steps, warmup_steps)


@SCHEDULES.register("constant")
@dataclass(frozen=True)
class Constant(_Base):
    """1 after the optional warm-up (linear probes, and SWA-style runs that set their own lr)."""

    name: ClassVar[str] = "constant"

    def factor(self, step: int, total_steps: int, steps_per_epoch: int, warmup_steps: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        return 1.0


@SCHEDULES.register("step")
@dataclass(frozen=True)
class Step(_Base):
    """Multiply by ``gamma`` at each of ``milestones`` (in epochs, may be fractional), after the
    warm-up. gamma 0.1 is the ResNet recipe's (He et al. 2016: /10 at 50% and 75% of the run)."""

    name: ClassVar[str] = "step"
    milestones: tuple[float, ...] = ()
    gamma: float = 0.1

    def __post_init__(self) -> None:
        object.__setattr__(self, "milestones", tuple(float(m) for m in self.milestones))
        if not self.milestones:
            raise ValueError("schedule 'step' needs schedule_params.milestones (epochs, e.g. [20, 30])")
        if list(self.milestones) != sorted(self.milestones) or self.milestones[0] <= 0:
            raise ValueError(f"schedule 'step': milestones must be increasing and > 0, got {list(self.milestones)}")
        if not 0 < self.gamma:
            raise ValueError(f"schedule 'step': gamma must be > 0, got {self.gamma}")

    def factor(self, step: int, total_steps: int, steps_per_epoch: int, warmup_steps: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        passed = sum(step >= _epochs_to_steps(m, steps_per_epoch) for m in self.milestones)
        return self.gamma ** passed


@SCHEDULES.register("cosine_restarts")
@dataclass(frozen=True)
class CosineRestarts(_Base):
    """Snapshot Ensembles (Huang et al. 2017, eq. 2): the run is cut into equal cycles, each a
    cosine from 1 to 0 that restarts at 1; a model is taken at the end of every cycle.

    Cycle length ``L = ceil(total_steps / cycles)`` (their ``ceil(T/M)``), or ``cycle_epochs``
    epochs when given. Default 6 cycles: the paper's CIFAR setting (M = 6).
    """

    name: ClassVar[str] = "cosine_restarts"
    cycles: int | None = None
    cycle_epochs: float | None = None

    def __post_init__(self) -> None:
        if self.cycles is not None and self.cycle_epochs is not None:
            raise ValueError("schedule 'cosine_restarts': give cycles or cycle_epochs, not both")
        if self.cycles is None and self.cycle_epochs is None:
            object.__setattr__(self, "cycles", 6)
        if self.cycles is not None and int(self.cycles) < 1:
            raise ValueError(f"schedule 'cosine_restarts': cycles must be >= 1, got {self.cycles}")
        if self.cycle_epochs is not None and not self.cycle_epochs > 0:
            raise ValueError(f"schedule 'cosine_restarts': cycle_epochs must be > 0, got {self.cycle_epochs}")

    def cycle_steps(self, total_steps: int, steps_per_epoch: int) -> int:
        if self.cycle_epochs is not None:
            return max(1, _epochs_to_steps(self.cycle_epochs, steps_per_epoch))
        return max(1, math.ceil(total_steps / int(self.cycles)))

    def factor(self, step: int, total_steps: int, steps_per_epoch: int, warmup_steps: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        length = self.cycle_steps(total_steps, steps_per_epoch)
        return 0.5 * (math.cos(math.pi * (step % length) / length) + 1)

    def snapshot_steps(self, total_steps: int, steps_per_epoch: int) -> list[int]:
        """The last step of every cycle (and of the run, if the last cycle is cut short)."""
        length = self.cycle_steps(total_steps, steps_per_epoch)
        ends = list(range(length - 1, total_steps, length))
        if not ends or ends[-1] != total_steps - 1:
            ends.append(total_steps - 1)
        return ends


@SCHEDULES.register("cyclic")
@dataclass(frozen=True)
class Cyclic(_Base):
    """Fast Geometric Ensembling (Garipov et al. 2018, their code): a triangle per cycle of
    ``cycle_epochs`` epochs, from 1 down to ``min_ratio`` at mid-cycle and back up.

    ``t = ((i % c) + 1) / c`` over the steps ``i`` of a cycle of ``c`` steps;
    ``t < 0.5: (1 - 2t) + min_ratio * 2t``, else ``(2t - 1) + min_ratio * (2 - 2t)``.
    ``min_ratio`` 0.01 is their lr_1 = 5e-2 -> lr_2 = 5e-4; models are taken at the minima.
    ``cycle_epochs`` default 4: FGE used cycles of 2-4 epochs on CIFAR.
    """

    name: ClassVar[str] = "cyclic"
    cycle_epochs: float = 4.0
    min_ratio: float = 0.01

    def __post_init__(self) -> None:
        if not self.cycle_epochs > 0:
            raise ValueError(f"schedule 'cyclic': cycle_epochs must be > 0, got {self.cycle_epochs}")
        if not 0 <= self.min_ratio <= 1:
            raise ValueError(f"schedule 'cyclic': min_ratio must be in [0, 1], got {self.min_ratio}")

    def cycle_steps(self, steps_per_epoch: int) -> int:
        return max(1, _epochs_to_steps(self.cycle_epochs, steps_per_epoch))

    def factor(self, step: int, total_steps: int, steps_per_epoch: int, warmup_steps: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        c = self.cycle_steps(steps_per_epoch)
        t = ((step % c) + 1) / c
        a1, a2 = 1.0, self.min_ratio
        if t < 0.5:
            return a1 * (1.0 - 2.0 * t) + a2 * 2.0 * t
        return a1 * (2.0 * t - 1.0) + a2 * (2.0 - 2.0 * t)

    def snapshot_steps(self, total_steps: int, steps_per_epoch: int) -> list[int]:
        """The steps with ``(i % c) + 1 == c // 2``: t = 0.5 (the minimum) for even c, the first of
        the two tied lowest steps for odd c. A cycle of one step has no minimum."""
        c = self.cycle_steps(steps_per_epoch)
        if c < 2:
            return []
        return [i for i in range(total_steps) if (i % c) + 1 == c // 2]


@SCHEDULES.register("swa")
@dataclass(frozen=True)
class SWA(_Base):
    """Stochastic Weight Averaging (Izmailov et al. 2018, their code): 1 for the first half of
    the pre-averaging phase, linear down to ``swa_ratio`` until 90% of it, then ``swa_ratio``.

    ``t = step / swa_start_step`` with ``swa_start_step = round(swa_start * total_steps)``;
    ``t <= 0.5: 1; t <= 0.9: 1 - (1 - swa_ratio)(t - 0.5) / 0.4; else swa_ratio``.
    Defaults: averaging over the last quarter of the run (``swa_start`` 0.75; they start at
    161 of 225-300 epochs) at ``swa_ratio`` = swa_lr / lr = 0.05.
    """

    name: ClassVar[str] = "swa"
    swa_start: float = 0.75
    swa_ratio: float = 0.05

    def __post_init__(self) -> None:
        if not 0 < self.swa_start <= 1:
            raise ValueError(f"schedule 'swa': swa_start must be in (0, 1], got {self.swa_start}")
        if not 0 <= self.swa_ratio <= 1:
            raise ValueError(f"schedule 'swa': swa_ratio must be in [0, 1], got {self.swa_ratio}")

    def start_step(self, total_steps: int) -> int:
        return max(1, int(round(self.swa_start * total_steps)))

    def factor(self, step: int, total_steps: int, steps_per_epoch: int, warmup_steps: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        t = step / self.start_step(total_steps)
        if t <= 0.5:
            return 1.0
        if t <= 0.9:
            return 1.0 - (1.0 - self.swa_ratio) * (t - 0.5) / 0.4
        return self.swa_ratio

    def snapshot_steps(self, total_steps: int, steps_per_epoch: int) -> list[int]:
        """The last step of every epoch that ends at or after the averaging start (their code
        averages after each such epoch)."""
        start = self.start_step(total_steps)
        return [k * steps_per_epoch - 1 for k in range(1, total_steps // steps_per_epoch + 1)
                if k * steps_per_epoch >= start]


def build_schedule(name: str, params: dict[str, Any] | None = None) -> Schedule:
    """The schedule ``name`` with ``params``; ValueError naming an unknown schedule or parameter."""
    try:
        cls = SCHEDULES.get(name)
    except UnknownNameError as e:
        raise ValueError(str(e)) from None
    params = dict(params or {})
    known = [f.name for f in fields(cls)]
    unknown = sorted(set(params) - set(known))
    if unknown:
        raise ValueError(f"unknown schedule_params for schedule {name!r}: {', '.join(unknown)}; "
                         f"known: {', '.join(known) or '(none)'}")
    if "milestones" in params and params["milestones"] is not None:
        params["milestones"] = tuple(params["milestones"])
    try:
        return cls(**params)
    except TypeError as e:  # e.g. a list where a number belongs
        raise ValueError(f"schedule {name!r}: bad schedule_params {params}: {e}") from None


def snapshot_steps(name: str, params: dict[str, Any] | None, total_steps: int, steps_per_epoch: int) -> list[int]:
    """Optimiser steps (0-based) after which a snapshot ensemble of this schedule takes a model."""
    return build_schedule(name, params).snapshot_steps(total_steps, steps_per_epoch)
