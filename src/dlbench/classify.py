"""Classifier training: the supervised objective and the one fit used by every labeled stage.

Supervised training from scratch, fine-tuning and LP-FT all train a ``Classifier`` with
cross-entropy on one augmented view through the engine; only the starting weights and the
recipe differ. Validation accuracy and loss on the val split are logged every epoch.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from dlbench.data.augment import AugmentConfig, augment
from dlbench.models.inference import predict_logits
from dlbench.train.engine import Batch, TrainConfig, fit


class SupervisedObjective:
    """Cross-entropy on one augmented view (label smoothing optional); batch accuracy for the history."""

    def __init__(self, model: torch.nn.Module, aug: AugmentConfig, label_smoothing: float = 0.0) -> None:
        self.model = model
        self.aug = aug
        self.label_smoothing = float(label_smoothing)

    def training_loss(self, batch: Batch, gen: torch.Generator) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        logits = self.model(augment(batch.images, self.aug, gen)).float()
        return self.classification_loss(logits, batch.labels)

    def classification_loss(self, logits: torch.Tensor,
                            labels: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        loss = F.cross_entropy(logits, labels, label_smoothing=self.label_smoothing)
        return loss, {"acc": (logits.detach().argmax(1) == labels).float().mean()}


def val_metrics(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor,
                device: torch.device) -> dict[str, float]:
    logits = predict_logits(model, images, device=device)
    return {"loss": float(F.cross_entropy(logits, labels)), "acc": float((logits.argmax(1) == labels).float().mean())}


def fit_classifier(model: torch.nn.Module, train: tuple[torch.Tensor, torch.Tensor],
                   val: tuple[torch.Tensor, torch.Tensor] | None, params: dict[str, Any], *, seed: int,
                   device: torch.device, checkpoint: Path | None = None, fingerprint: str = "",
                   hooks: tuple = (),
                   objective: Callable[..., SupervisedObjective] = SupervisedObjective) -> list[dict[str, float]]:
    """Train ``model`` per ``params`` (``train``, ``augment``, ``label_smoothing``); return the history.

    ``objective(model, aug, label_smoothing)`` builds the objective: ``SupervisedObjective`` or a
    subclass that adds a term (Lipsum-FT's regulariser).
    """
    cfg = TrainConfig.from_dict(params["train"], seed=seed)
    objective = objective(model, AugmentConfig.from_dict(params.get("augment")),
                          float(params.get("label_smoothing", 0.0)))
    validate = (lambda: val_metrics(model, val[0], val[1], device)) if val is not None else None
    return fit(objective, train[0], train[1], cfg, checkpoint_path=checkpoint, fingerprint=fingerprint,
               device=device, validate=validate, hooks=hooks)
