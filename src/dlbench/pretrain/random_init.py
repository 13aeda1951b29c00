"""``random``: no pretraining. The baseline every method must beat (random-init + probe)."""

from __future__ import annotations

import torch

from dlbench.pretrain.base import PretrainMethod, register_method
from dlbench.train.engine import Batch


@register_method("random", family="baseline")
class RandomInit(PretrainMethod):
    """Zero training epochs: the pretrain runner saves the seeded initial weights as they are."""

    trains = False
    knobs: dict[str, str] = {}  # nothing to sweep

    def training_loss(self, batch: Batch, gen: torch.Generator) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        raise RuntimeError("the random baseline is not trained")
