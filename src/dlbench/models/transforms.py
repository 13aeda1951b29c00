"""Structure-changing transforms, recorded in a model card's ``model.transforms`` list.

A transform changes a model's structure after it is built from its backbone spec and head
(LoRA adapters, pruned channels, quantized layers ...). ``load_model`` replays the card's list
in order on the freshly built model, *then* loads the weights, so every model directory
rebuilds from its card alone. Each transform is registered by the module of its method
(``@register_transform("lora")``); its spec is a JSON dict with at least ``kind``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from dlbench.registry import Registry

Transform = Callable[[nn.Module, dict[str, Any]], nn.Module]  # (model, spec) -> transformed model
TRANSFORMS: Registry[Transform] = Registry("model transform")
# the module that registers each transform kind, imported on first use (peft's import is slow)
MODULES = {"lora": "dlbench.models.lora", "vpt": "dlbench.models.prompts", "adapter": "dlbench.models.prompts"}


def register_transform(kind: str) -> Callable[[Transform], Transform]:
    return TRANSFORMS.register(kind)


def apply_transforms(model: nn.Module, specs: list[dict[str, Any]]) -> nn.Module:
    """Replay recorded transforms in order (each spec: ``{"kind": ..., **params}``)."""
    import importlib

    for spec in specs or []:
        if spec["kind"] not in TRANSFORMS and spec["kind"] in MODULES:
            importlib.import_module(MODULES[spec["kind"]])
        model = TRANSFORMS.get(spec["kind"])(model, spec)
    return model
