"""LoRA (Hu et al. 2022) on CLIP's image tower, through the ``peft`` library.

Each target layer W gets a trainable low-rank update (α/r)·B·A (A: r x in, B: out x r, B = 0 at the
start, so training starts from the zero-shot model exactly); everything else in the tower is frozen.
Targets (``dlbench.models.lora.lora_targets``): on a ViT tower every ``nn.MultiheadAttention`` module as a whole (peft's
MHA layer adapts its fused q/k/v in-projection and its out-projection together; targeting ``out_proj``
alone would leave q, k, v untouched) plus the MLP's ``c_fc`` and ``c_proj`` linears. open_clip's
ResNet tower calls its attention pool's projection weights directly
(``F.multi_head_attention_forward``), so a LoRA wrapper there would never run; on that tower the
targets are the residual stages' convolutions (peft's Conv2d LoRA), the downsampling shortcuts
excepted. Batch-norm statistics still update, as in any fine-tune.

The zero-shot head trains with the adapters by default (``train_head``; it is K x D, small against
any tower). After training the update is merged into W (``merge_and_unload``), so the saved model
has the zero-shot model's structure and runs at its speed; the card records the merge as a
transform (``{"kind": "lora", "merged": true, ...}``), and ``trainable_params`` counts the
adapters and the head only. Defaults: r = 8, α = 16 (Hu et al. 2022 use r 1-8 with α of the order
of r), lr and epochs from the run's ``finetune`` recipe (LoRA tolerates, and usually needs, a
higher lr than full fine-tuning; set ``train.lr`` per variant).
"""

from __future__ import annotations

from typing import Any

from dlbench.adapt.base import AdaptContext, register_kind
from dlbench.adapt.finetune import TRAINED_KNOBS
from dlbench.adapt.peft import PEFT, fit_peft
from dlbench.models.backbones import Classifier
from dlbench.models.clip import OpenClipNet
from dlbench.models.lora import add_lora, merge_lora

LORA = {"rank": 8, "lora_alpha": 16.0, "lora_dropout": 0.0}


def check_params(params: dict[str, Any]) -> None:
    if int(params["rank"]) < 1:
        raise ValueError(f"lora rank must be >= 1, got {params['rank']}")
    if not 0 <= float(params["lora_dropout"]) < 1:
        raise ValueError(f"lora lora_dropout must be in [0, 1), got {params['lora_dropout']}")


@register_kind("lora", family="peft", job="train", defaults={**PEFT, **LORA}, required=("train",),
               knobs={**TRAINED_KNOBS, "rank": "rank"}, of="zeroshot", requires="open_clip",
               description="LoRA adapters on the image tower via peft, merged after training (Hu et al. 2022)")
def lora(ctx: AdaptContext, params: dict[str, Any]) -> tuple[Classifier, dict[str, Any]]:
    check_params(params)
    spec = {"kind": "lora", "merged": True, "rank": int(params["rank"]), "lora_alpha": float(params["lora_alpha"]),
            "lora_dropout": float(params["lora_dropout"])}

    def attach(net: OpenClipNet) -> dict[str, Any]:
        return {**spec, "targets": add_lora(net, spec)}

    backbone, model, info, transform = fit_peft(ctx, params, attach, "lora")
    merge_lora(backbone.net)
    return model, {**info, "transforms": [transform]}
