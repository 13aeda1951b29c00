"""Backbone sources: where a backbone's architecture (and optionally its weights) come from.

Config names a backbone as ``{source: timm, model: <name>, kwargs: {...}, weights: <file>, ...}``.
Each source is registered under its config name and turns such a spec into a headless network
(``forward(normalised x) -> N x D`` pooled features) plus the preprocessing it was made for
(mean, std, input size). ``timm`` is here, ``open_clip`` in ``dlbench.models.clip`` (registered on
first use). Weights come only from a local file named in config: nothing is downloaded at run time.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dlbench.registry import Registry

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
SPEC_KEYS = {"source", "model", "kwargs", "weights", "cifar_stem", "stem_stride", "mean", "std", "input_size",
             "config"}


class BackboneSpecError(ValueError):
    """A backbone spec names an unknown model, an unknown key, or weights that do not fit."""


@dataclass(frozen=True)
class Built:
    net: nn.Module  # headless network on normalised input
    mean: tuple[float, ...]
    std: tuple[float, ...]
    fixed_size: tuple[int, int] | None  # the only input size the network accepts (ViT position grid), else None


@dataclass(frozen=True)
class Source:
    name: str
    check: Callable[[str, dict[str, Any]], None]  # (config key, spec): raise BackboneSpecError naming the key
    build: Callable[[dict[str, Any]], Built]


SOURCES: Registry[Source] = Registry("backbone source")


def register_all() -> None:
    """Import the modules that register the other sources (cheap: their libraries load on first build)."""
    import dlbench.models.clip  # noqa: F401  (open_clip)


def source_of(spec: dict[str, Any]) -> Source:
    register_all()
    return SOURCES.get(spec.get("source", "timm"))


def check_spec(name: str, spec: dict[str, Any]) -> None:
    """Fail at config time, naming ``backbones.<name>.<key>``, when a spec cannot be built."""
    unknown = sorted(set(spec) - SPEC_KEYS)
    if unknown:
        raise BackboneSpecError(f"unknown config key backbones.{name}.{unknown[0]}; allowed here: {sorted(SPEC_KEYS)}")
    register_all()
    if spec.get("source", "timm") not in SOURCES:
        raise BackboneSpecError(f"backbones.{name}.source: unknown backbone source {spec['source']!r}; "
                                f"known: {', '.join(SOURCES.names())}")
    source_of(spec).check(name, spec)
    weights = spec.get("weights")
    if weights and not Path(weights).is_file():
        raise BackboneSpecError(f"backbones.{name}.weights: file {weights!r} not found (weights are read from a "
                                f"local file; nothing is downloaded)")


def read_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """A state dict from ``.safetensors`` or a tensors-only torch file (``weights_only``: no pickle code runs)."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    state = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("state_dict", "model", "module"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    return {k.removeprefix("module."): v for k, v in state.items()}


def load_weights_into(net: nn.Module, path: str | Path, skip_prefixes: tuple[str, ...] = ()) -> None:
    """Load a weights file into ``net`` strictly, except classifier keys (``skip_prefixes``) the headless net lacks."""
    state = {k: v for k, v in read_weights(path).items() if not k.startswith(skip_prefixes)}
    missing, unexpected = net.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise BackboneSpecError(f"{path}: weights do not fit the backbone (missing {sorted(missing)[:5]}, "
                                f"unexpected {sorted(unexpected)[:5]})")


# ---- timm ---------------------------------------------------------------------------------------

_RESNETS = ("resnet", "resnext", "wide_resnet", "seresnet", "seresnext")


def _timm_check(name: str, spec: dict[str, Any]) -> None:
    import timm

    if "config" in spec:
        raise BackboneSpecError(f"backbones.{name}.config: only open_clip backbones take an inline config")
    arch = spec.get("model")
    if not arch or not timm.is_model(arch):
        raise BackboneSpecError(f"backbones.{name}.model: unknown timm model {arch!r} (see timm.list_models())")
    if spec.get("cifar_stem") and not arch.startswith(_RESNETS):
        raise BackboneSpecError(f"backbones.{name}.cifar_stem: only ResNet-family models have the stem to replace")


def _timm_kwargs(spec: dict[str, Any]) -> dict[str, Any]:
    return {k: tuple(v) if isinstance(v, list) else v for k, v in (spec.get("kwargs") or {}).items()}


def _fixed_size(net: nn.Module) -> tuple[int, int] | None:
    """The input size a timm ViT-style net insists on (position grid, ``strict_img_size``), else None."""
    pe = getattr(net, "patch_embed", None)
    if pe is None or getattr(net, "dynamic_img_size", False) or not getattr(pe, "strict_img_size", True):
        return None
    size = getattr(pe, "img_size", None)
    return (int(size[0]), int(size[1])) if size is not None else None


def _timm_build(spec: dict[str, Any]) -> Built:
    import timm

    net = timm.create_model(spec["model"], pretrained=False, num_classes=0, **_timm_kwargs(spec))
    if spec.get("cifar_stem"):  # SimCLR/solo-learn's CIFAR change: one 3x3 conv, no max-pool
        out_ch = net.conv1.out_channels if isinstance(net.conv1, nn.Conv2d) else net.bn1.num_features
        net.conv1 = nn.Conv2d(3, out_ch, kernel_size=3, stride=int(spec.get("stem_stride", 1)), padding=1, bias=False)
        net.maxpool = nn.Identity()
    if spec.get("weights"):
        classifier = net.pretrained_cfg.get("classifier") or ()
        load_weights_into(net, spec["weights"], tuple(f"{c}." for c in
                                                      ([classifier] if isinstance(classifier, str) else classifier)))
    # the statistics the weights were trained with; a random init gets ImageNet's (timm's default)
    cfg = (net.pretrained_cfg or {}) if spec.get("weights") else {}
    return Built(net=net, mean=tuple(cfg.get("mean", IMAGENET_MEAN)), std=tuple(cfg.get("std", IMAGENET_STD)),
                 fixed_size=_fixed_size(net))


SOURCES.add("timm", Source(name="timm", check=_timm_check, build=_timm_build))
