"""Hand-written parameter-efficient structures for an open_clip ViT image tower, and their card transforms.

- Visual prompt tuning (Jia et al. 2022, VPT): ``P`` learnable tokens inserted after the class token
  at the input of the first Transformer block (``shallow``), or, ``deep``, a fresh set of ``P`` tokens
  replacing the previous block's prompt outputs at the input of every block. The class token is
  still the one pooled (open_clip's ``tok`` pooling; towers that average tokens are refused, since
  the prompts would enter the average). Prompts are initialised uniformly in ±sqrt(6 / (3·p² + D))
  (VPT's Xavier-style init over the patch embedding's fan-in, p the patch size).
- Bottleneck adapters (Houlsby et al. 2019): ``x + up(GELU(down(x)))`` with D -> r -> D after the
  attention and after the MLP of every block (on their outputs, before the residual sums), the up
  projection zero-initialised so that training starts from the frozen model exactly.

Both change the model's structure: the card lists them as transforms (``{"kind": "vpt", ...}``,
``{"kind": "adapter", ...}``) and ``load_model`` rebuilds them before loading the weights. Only ViT
towers have tokens and blocks; the ResNet tower is refused with a clear error.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from dlbench.models.clip import OpenClipNet
from dlbench.models.transforms import register_transform


def vit_tower(net: OpenClipNet, what: str) -> nn.Module:
    visual = net.clip.visual
    if not hasattr(visual, "transformer") or not hasattr(visual, "class_embedding"):
        raise ValueError(f"{what} needs a ViT image tower (tokens and Transformer blocks); this CLIP's is "
                         f"{type(visual).__name__}")
    if not getattr(visual.transformer, "batch_first", True):
        raise ValueError(f"{what} needs open_clip's batch-first Transformer")
    return visual


class PromptedInput(nn.Module):
    """``ln_pre`` followed by inserting the first block's prompts after the class token."""

    def __init__(self, ln_pre: nn.Module, prompts: nn.Parameter) -> None:
        super().__init__()
        self.ln_pre, self.prompts = ln_pre, prompts

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.ln_pre(x)
        p = self.prompts.to(x.dtype).expand(x.shape[0], -1, -1)
        return torch.cat([x[:, :1], p, x[:, 1:]], dim=1)


class PromptedBlock(nn.Module):
    """A Transformer block whose input prompt positions (1 .. P) are replaced by its own prompts (deep VPT)."""

    def __init__(self, block: nn.Module, prompts: nn.Parameter) -> None:
        super().__init__()
        self.block, self.prompts = block, prompts

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        n = self.prompts.shape[0]
        p = self.prompts.to(x.dtype).expand(x.shape[0], -1, -1)
        return self.block(torch.cat([x[:, :1], p, x[:, 1 + n:]], dim=1), *args, **kwargs)


def add_prompts(net: OpenClipNet, prompts: int, deep: bool) -> int:
    """Insert VPT prompts into the tower; return the number of prompt parameters."""
    visual = vit_tower(net, "vpt")
    if getattr(visual, "pool_type", "tok") != "tok" or getattr(visual, "attn_pool", None) is not None:
        raise ValueError("vpt needs class-token pooling (pool_type 'tok'): averaged tokens would include the prompts")
    if int(prompts) < 1:
        raise ValueError(f"vpt prompts must be >= 1, got {prompts}")
    width = visual.class_embedding.shape[-1]
    patch = visual.conv1.kernel_size[0]
    bound = math.sqrt(6.0 / (3 * patch * patch + width))
    blocks = visual.transformer.resblocks

    def fresh() -> nn.Parameter:
        return nn.Parameter(torch.empty(int(prompts), width, device=visual.class_embedding.device).uniform_(-bound, bound))

    visual.ln_pre = PromptedInput(visual.ln_pre, fresh())
    if deep:
        for i in range(1, len(blocks)):
            blocks[i] = PromptedBlock(blocks[i], fresh())
    return int(prompts) * width * (len(blocks) if deep else 1)


class Adapter(nn.Module):
    """``y + up(GELU(down(y)))`` on the output ``y`` of the wrapped module (zero-initialised ``up``)."""

    def __init__(self, inner: nn.Module, width: int, bottleneck: int) -> None:
        super().__init__()
        self.inner = inner
        self.down, self.up = nn.Linear(width, bottleneck), nn.Linear(bottleneck, width)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.inner(x)
        return y + self.up(nn.functional.gelu(self.down(y)))


def add_adapters(net: OpenClipNet, bottleneck: int) -> int:
    """Adapters after the attention and the MLP of every block (wrapping their layer scales); returns the
    number of adapter parameters."""
    visual = vit_tower(net, "adapter")
    if int(bottleneck) < 1:
        raise ValueError(f"adapter bottleneck must be >= 1, got {bottleneck}")
    width = visual.class_embedding.shape[-1]
    count = 0
    for block in visual.transformer.resblocks:
        for name in ("ls_1", "ls_2"):
            wrapped = Adapter(getattr(block, name), width, int(bottleneck)).to(visual.class_embedding.device)
            setattr(block, name, wrapped)
            count += sum(p.numel() for n, p in wrapped.named_parameters() if not n.startswith("inner."))
    return count


@register_transform("vpt")
def vpt_transform(model: nn.Module, spec: dict[str, Any]) -> nn.Module:
    add_prompts(model.backbone.net, int(spec["prompts"]), bool(spec["deep"]))
    return model


@register_transform("adapter")
def adapter_transform(model: nn.Module, spec: dict[str, Any]) -> nn.Module:
    add_adapters(model.backbone.net, int(spec["bottleneck"]))
    return model
