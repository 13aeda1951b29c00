"""The ``supervised`` stage: backbone + linear head trained from scratch on the labeled train split.

The baseline every pretraining method is compared with (homework 3: "about 71-72% on STL-10").
Its model id is ``dataset/backbone/none/supervised/none/none/seedN``: no parent.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from dlbench.cards import trainable_count
from dlbench.classify import fit_classifier
from dlbench.device import pick_device
from dlbench.models.backbones import build_classifier
from dlbench.stage import fingerprint, history_seconds, load_labeled, write_model
from dlbench.train.engine import remove_checkpoint


def train_supervised(recipe: dict[str, Any], data_root: str | Path, out_dir: str | Path,
                     checkpoint_path: str | Path | None = None, device: str = "auto") -> dict[str, Any]:
    """Train per ``recipe`` (``dlbench.plan``) and write the model directory; return its card."""
    dev = pick_device(device)
    data = load_labeled(data_root, recipe)
    torch.manual_seed(int(recipe["seed"]))
    model = build_classifier(recipe["backbone_spec"], len(data.classes), data.image_size)
    ckpt = Path(checkpoint_path) if checkpoint_path else None
    history = fit_classifier(model, (data.train_x, data.train_y), (data.val_x, data.val_y), recipe["params"],
                             seed=int(recipe["seed"]), device=dev, checkpoint=ckpt, fingerprint=fingerprint(recipe))
    card = write_model(out_dir, model, recipe=recipe, kind="supervised", family="supervised", stage="adapt",
                       classes=data.classes, history=history, train_seconds=history_seconds(history),
                       trainable_params=trainable_count(model))
    remove_checkpoint(ckpt)
    return card
