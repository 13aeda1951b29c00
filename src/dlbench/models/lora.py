"""LoRA layers on an open_clip image tower through ``peft``, and the ``lora`` card transform.

The training kind is ``dlbench.adapt.lora`` (which layers and why are in its docstring); this module
is what ``load_model`` needs to rebuild a model whose card lists a LoRA transform, so it lives with
the models (evaluation never imports a method).
"""

from __future__ import annotations

from typing import Any

from torch import nn

from dlbench.models.clip import OpenClipNet
from dlbench.models.transforms import register_transform


def lora_targets(visual: nn.Module) -> list[str]:
    """The names (in ``visual``) of the layers LoRA adapts; see the module doc."""
    names = [n for n, m in visual.named_modules() if isinstance(m, nn.MultiheadAttention)]
    names += [n for n, m in visual.named_modules()
              if isinstance(m, nn.Linear) and n.endswith(("mlp.c_fc", "mlp.c_proj"))]
    if not names:
        names = [n for n, m in visual.named_modules() if isinstance(m, nn.Conv2d)
                 and n.split(".")[0].startswith("layer") and ".downsample." not in n]
    if not names:
        raise ValueError(f"no LoRA targets in the image tower ({type(visual).__name__}): no attention, MLP or "
                         f"residual-stage convolution layers")
    return names


def add_lora(net: OpenClipNet, spec: dict[str, Any]) -> list[str]:
    """Wrap the image tower in peft's LoRA (base weights frozen); return the targets."""
    from peft import LoraConfig, get_peft_model

    visual = net.clip.visual
    targets = lora_targets(visual)
    config = LoraConfig(r=int(spec["rank"]), lora_alpha=float(spec["lora_alpha"]),
                        lora_dropout=float(spec.get("lora_dropout", 0.0)), target_modules=targets, bias="none")
    net.clip.visual = get_peft_model(visual, config)
    return targets


def merge_lora(net: OpenClipNet) -> None:
    """Fold every update into its base weight and remove the wrappers (the plain tower again)."""
    net.clip.visual = net.clip.visual.merge_and_unload()


@register_transform("lora")
def lora_transform(model: nn.Module, spec: dict[str, Any]) -> nn.Module:
    """Replay on load: a merged LoRA is already in the weights; an unmerged one gets its wrappers back."""
    if not spec.get("merged", False):
        add_lora(model.backbone.net, spec)
    return model


