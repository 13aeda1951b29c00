"""Hooks for ``fit(hooks=...)``: objects the engine calls alongside the objective.

A hook may define any of ``before_epoch(epoch, generator)``, ``after_step(step, total_steps)``,
``after_epoch(epoch)``, ``on_fit_end()`` and the checkpointed pair ``objective_state()`` /
``load_objective_state(state)`` (see ``dlbench.train.engine.Objective``). They know no method.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from dlbench.train.engine import TrainConfig, steps_per_epoch


class SnapshotHook:
    """Copies ``model.state_dict()`` (CPU clones) at chosen epochs and/or optimiser steps.

    One training stage can so write several models: the cycle ends of Snapshot Ensembles
    (Huang et al. 2017), the lr minima of FGE (Garipov et al. 2018), or plain epoch checkpoints.
    ``epochs`` are completed-epoch counts (1-based, as ``after_epoch`` receives them); ``steps``
    are 0-based optimiser steps, taken right after that step. ``snapshots[i]`` was taken at
    ``points[i]`` (``{"epoch": e}`` or ``{"step": s}``, in the order taken). The snapshots are
    part of the checkpoint, so a killed and resumed run collects the same ones.

        hook = SnapshotHook(model, epochs=[10, 20, 30])
        fit(objective, images, labels, cfg, hooks=[hook])
        for state in hook.snapshots: ...

        hook = SnapshotHook.at_schedule_points(model, cfg, len(images))  # SSE / FGE / SWA points
    """

    def __init__(self, model: nn.Module, epochs: Iterable[int] = (), steps: Iterable[int] = ()) -> None:
        self.model = model
        self.epochs = frozenset(int(e) for e in epochs)
        self.steps = frozenset(int(s) for s in steps)
        if not self.epochs and not self.steps:
            raise ValueError("SnapshotHook needs epochs and/or steps at which to take snapshots")
        self.snapshots: list[dict[str, torch.Tensor]] = []
        self.points: list[dict[str, int]] = []

    @classmethod
    def at_schedule_points(cls, model: nn.Module, cfg: TrainConfig, n_train: int) -> SnapshotHook:
        """Snapshots at the schedule's own points (``Schedule.snapshot_steps``) for ``n_train`` images."""
        spe = steps_per_epoch(n_train, cfg)
        steps = cfg.build_schedule().snapshot_steps(spe * cfg.epochs, spe)
        if not steps:
            raise ValueError(f"schedule {cfg.schedule!r} has no snapshot points; give SnapshotHook epochs or steps")
        return cls(model, steps=steps)

    def _take(self, point: dict[str, int]) -> None:
        self.snapshots.append({k: v.detach().to("cpu", copy=True) for k, v in self.model.state_dict().items()})
        self.points.append(point)

    def after_step(self, step: int, total_steps: int) -> None:
        if step in self.steps:
            self._take({"step": step})

    def after_epoch(self, epoch: int) -> None:
        if epoch in self.epochs:
            self._take({"epoch": epoch})

    def objective_state(self) -> dict[str, Any]:
        return {"snapshots": self.snapshots, "points": self.points}

    def load_objective_state(self, state: dict[str, Any]) -> None:
        self.snapshots = [dict(s) for s in state["snapshots"]]
        self.points = [dict(p) for p in state["points"]]
