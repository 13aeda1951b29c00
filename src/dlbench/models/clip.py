"""CLIP models from open_clip: the ``open_clip`` backbone source, offline tokenization, zero-shot heads.

A spec ``{source: open_clip, model: ViT-B-32-quickgelu, weights: <file>}`` builds open_clip's model
by name (``-quickgelu`` names for OpenAI's weights, as open_clip documents) and loads weights from a
local file only (safetensors, or the open_clip / OpenAI checkpoint format read with
``weights_only=True``); ``{source: open_clip, config: {embed_dim, vision_cfg, text_cfg}}`` builds
open_clip's ``CLIP`` class on an inline config (the offline tiny CLIP that the ``clip`` pretraining
kind trains from scratch). Nothing is downloaded: open_clip's tokenizer for these models is its
bundled BPE vocabulary.

:class:`OpenClipNet` is the headless network a :class:`~dlbench.models.backbones.Backbone` wraps:
``forward`` is the image tower (``encode_image``: the projected, not yet normalised embedding), and
the text tower travels with it for zero-shot heads (``encode_text``). The text tower is frozen
(``requires_grad`` False) when built, since classifiers train the image tower only; the methods that
train it (CLIP pretraining, FLYP) unfreeze it. The backbone normalises with the model's own
statistics (OpenAI's CLIP mean and std) and resizes to its input size, both recorded in the card.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from dlbench.models.sources import SOURCES, BackboneSpecError, Built, Source


class OpenClipNet(nn.Module):
    """An open_clip model as a headless image network; ``encode_text`` for zero-shot heads."""

    def __init__(self, clip: nn.Module, context_length: int) -> None:
        super().__init__()
        self.clip = clip
        self.context_length = int(context_length)
        self.text_parameters_trainable(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.clip.encode_image(x)

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.clip.encode_text(tokens)

    @property
    def logit_scale(self) -> torch.Tensor:
        """exp of the learned log temperature, clamped at 100 as in CLIP's training."""
        return self.clip.logit_scale.exp().clamp(max=100.0)

    def text_modules(self) -> list[nn.Module]:
        return [m for m in (getattr(self.clip, n, None) for n in ("transformer", "token_embedding", "ln_final", "text"))
                if isinstance(m, nn.Module)]

    def text_parameters(self) -> list[nn.Parameter]:
        params = [p for m in self.text_modules() for p in m.parameters()]
        for name in ("positional_embedding", "text_projection"):
            p = getattr(self.clip, name, None)
            if isinstance(p, nn.Parameter):
                params.append(p)
        return params

    def text_parameters_trainable(self, trainable: bool) -> None:
        """Freeze or unfreeze the text tower and the logit scale (the image tower keeps its state)."""
        for p in [*self.text_parameters(), self.clip.logit_scale]:
            p.requires_grad_(trainable)


def tokenizer_for(net: OpenClipNet, spec: dict[str, Any]):
    """open_clip's tokenizer for the model: its bundled BPE (``SimpleTokenizer``), no network."""
    from open_clip.tokenizer import SimpleTokenizer

    if spec.get("model") and not spec.get("config"):
        import open_clip

        cfg = open_clip.get_model_config(spec["model"]) or {}
        if (cfg.get("text_cfg") or {}).get("hf_tokenizer_name"):
            raise BackboneSpecError(f"open_clip model {spec['model']!r} uses a Hugging Face tokenizer, which would be "
                                    f"downloaded; dlbench supports the models with open_clip's bundled BPE tokenizer")
    return SimpleTokenizer(context_length=net.context_length)


def tokenize(net: OpenClipNet, spec: dict[str, Any], texts: Sequence[str]) -> torch.Tensor:
    """Token ids (N x context length, int64) of ``texts``."""
    return tokenizer_for(net, spec)(list(texts)).long()


@torch.no_grad()
def zeroshot_weights(net: OpenClipNet, spec: dict[str, Any], classes: Sequence[str], templates: Sequence[str],
                     device: torch.device | str = "cpu", batch: int = 256) -> torch.Tensor:
    """K x D class embeddings: for each class, every prompt's text embedding l2-normalised, their mean,
    normalised again (Radford et al. 2021; wise-ft's ``get_zeroshot_classifier``, CLIP_benchmark)."""
    if not templates:
        raise ValueError("zero-shot heads need prompt templates (the dataset's meta.json prompt_templates)")
    was = net.training
    net.eval()
    out = []
    for name in classes:
        tokens = tokenize(net, spec, [t.format(name) for t in templates]).to(device)
        emb = torch.cat([net.encode_text(tokens[i:i + batch]).float() for i in range(0, len(tokens), batch)])
        out.append(F.normalize(F.normalize(emb, dim=-1).mean(0), dim=-1))
    net.train(was)
    return torch.stack(out)


def clip_loss(image_emb: torch.Tensor, text_emb: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """CLIP's symmetric InfoNCE over the batch: image i's text is text i, and the other way round
    (pretraining on captions; FLYP on class prompts, where same-class pairs are negatives as in the paper)."""
    logits = scale * F.normalize(image_emb.float(), dim=-1) @ F.normalize(text_emb.float(), dim=-1).T
    target = torch.arange(len(logits), device=logits.device)
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2


class CosineHead(nn.Linear):
    """``Linear(normalize(features))``: the head of a CLIP classifier (wise-ft's ``ClassificationHead``).

    From a zero-shot head its weight is ``logit_scale x`` the class embeddings and its bias 0, so its
    logits are CLIP's; fine-tuning trains weight and bias like any linear head, and WiSE-FT
    interpolates them with the image tower.
    """

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return super().forward(F.normalize(features, dim=-1))

    def spec(self) -> dict[str, Any]:
        return {"kind": "cosine"}

    @classmethod
    def from_class_embeddings(cls, weights: torch.Tensor, scale: float) -> "CosineHead":
        head = cls(weights.shape[1], weights.shape[0])
        with torch.no_grad():
            head.weight.copy_(weights * float(scale))
            head.bias.zero_()
        return head


def zeroshot_head(net: OpenClipNet, spec: dict[str, Any], classes: Sequence[str], templates: Sequence[str],
                  device: torch.device | str = "cpu") -> CosineHead:
    weights = zeroshot_weights(net, spec, classes, templates, device)
    return CosineHead.from_class_embeddings(weights.cpu(), float(net.logit_scale)).to(device)


# ---- the open_clip backbone source --------------------------------------------------------------

CONFIG_KEYS = {"embed_dim", "vision_cfg", "text_cfg", "quick_gelu", "init_logit_scale"}


def _check(name: str, spec: dict[str, Any]) -> None:
    import open_clip

    if bool(spec.get("model")) == bool(spec.get("config")):
        raise BackboneSpecError(f"backbones.{name}: an open_clip backbone names either `model` (an open_clip model "
                                f"name, e.g. ViT-B-32-quickgelu) or `config` (an inline CLIP config), not both")
    if spec.get("model") and open_clip.get_model_config(spec["model"]) is None:
        raise BackboneSpecError(f"backbones.{name}.model: unknown open_clip model {spec['model']!r} "
                                f"(see open_clip.list_models())")
    if spec.get("config"):
        cfg = spec["config"]
        unknown = sorted(set(cfg) - CONFIG_KEYS)
        if unknown:
            raise BackboneSpecError(f"unknown config key backbones.{name}.config.{unknown[0]}; "
                                    f"allowed here: {sorted(CONFIG_KEYS)}")
        for key in ("embed_dim", "vision_cfg", "text_cfg"):
            if key not in cfg:
                raise BackboneSpecError(f"backbones.{name}.config.{key} is required")
    for key in ("cifar_stem", "stem_stride", "kwargs"):
        if key in spec:
            raise BackboneSpecError(f"backbones.{name}.{key}: not an open_clip backbone option")


def _model_config(spec: dict[str, Any]) -> dict[str, Any]:
    import open_clip

    if spec.get("config"):
        return copy.deepcopy(spec["config"])
    cfg = copy.deepcopy(open_clip.get_model_config(spec["model"]))
    if spec["model"].endswith("-quickgelu"):
        cfg["quick_gelu"] = True
    return cfg


def _build(spec: dict[str, Any]) -> Built:
    import open_clip

    cfg = _model_config(spec)
    if "timm_model_name" in cfg.get("vision_cfg", {}) or "hf_model_name" in cfg.get("text_cfg", {}):
        raise BackboneSpecError(f"open_clip model {spec.get('model')!r}: timm / Hugging Face towers are not "
                                f"supported (they would download); use a native CLIP config")
    kwargs = {k: v for k, v in cfg.items() if k in CONFIG_KEYS}
    if "init_logit_scale" in kwargs:
        kwargs["init_logit_scale"] = float(kwargs["init_logit_scale"])
    model = open_clip.CLIP(**kwargs)
    if spec.get("weights"):
        try:
            open_clip.load_checkpoint(model, str(spec["weights"]), strict=True, weights_only=True)
        except RuntimeError as e:
            raise BackboneSpecError(f"{spec['weights']}: weights do not fit open_clip model "
                                    f"{spec.get('model') or 'config'}: {str(e)[:300]}") from None
    pre = getattr(model.visual, "preprocess_cfg", None) or {}
    size = model.visual.image_size
    size = (int(size[0]), int(size[1])) if isinstance(size, (tuple, list)) else (int(size), int(size))
    net = OpenClipNet(model, int(cfg["text_cfg"].get("context_length", 77)))
    return Built(net=net, mean=tuple(pre.get("mean", open_clip.OPENAI_DATASET_MEAN)),
                 std=tuple(pre.get("std", open_clip.OPENAI_DATASET_STD)), fixed_size=size)


SOURCES.add("open_clip", Source(name="open_clip", check=_check, build=_build))
