"""What every self-supervised method shares: its registry, its inputs and its base class.

A method is one class in the module of its family (``pretext``, ``contrastive``,
``self_distillation``, ``masked``), registered under its config name (its *kind*) with
``@register_method``.
It is an engine ``Objective``: the engine owns batching, optimiser, schedule, AMP,
checkpoints and history; the method owns its heads, its views and its loss. Its
``model`` is one ``nn.Module`` holding the backbone and every head and buffer (momentum
encoders, queues, centres, prototypes), so checkpoints capture the whole state.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from dlbench.models.backbones import Backbone
from dlbench.pretrain.views import ViewConfig
from dlbench.registry import Registry
from dlbench.train.engine import Batch


@dataclass
class PretrainSetup:
    """Everything a method may need, built by the pretrain runner."""

    backbone: Backbone  # forward(x in [0, 1]) -> N x backbone.num_features; normalises itself
    backbone_spec: dict[str, Any]
    params: dict[str, Any]  # the method's hyper-parameters: its ``defaults`` updated by config
    views: ViewConfig
    input_size: tuple[int, int]
    images: torch.Tensor | None = None  # the unlabeled split, uint8 N x H x W x C (DeepCluster re-clusters it)
    captions: list[str] | None = None  # the captions of ``images`` (methods with ``needs_captions``)
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    epochs: int = 1
    steps_per_epoch: int = 1
    seed: int = 0


class PretrainMethod:
    """Base class: subclasses set ``defaults``, build heads in ``__init__`` and define ``training_loss``.

    Optional hooks the engine calls when present: ``after_step(step, total_steps)`` (momentum
    updates, temperature schedules) and ``before_epoch(epoch, generator)`` (re-clustering).
    ``knobs`` maps the names a sweep may vary to their place in the variant's config.
    """

    name: ClassVar[str] = ""
    family: ClassVar[str] = ""
    defaults: ClassVar[dict[str, Any]] = {}
    requires: ClassVar[str | None] = None  # "vit": only Vision Transformer backbones; "open_clip": only CLIP models
    # True: trains on (image, caption) pairs of the split named by its ``caption_split`` parameter, not
    # on the dataset's unlabeled split (language-image pretraining)
    needs_captions: ClassVar[bool] = False
    trains: ClassVar[bool] = True  # False: the runner saves the initial weights (the random baseline)
    needs_weights: ClassVar[bool] = False  # True: the backbone spec must name a ``weights`` file (released models)
    knobs: ClassVar[dict[str, str]] = {"epochs": "train.epochs", "lr": "train.lr"}

    def __init__(self, setup: PretrainSetup) -> None:
        self.setup = setup
        self.params = self.resolve_params(setup.params)
        self.backbone = setup.backbone
        self.model = nn.ModuleDict({"backbone": self.backbone})

    @classmethod
    def resolve_params(cls, params: dict[str, Any] | None) -> dict[str, Any]:
        """The method's ``defaults`` updated by config; an unknown key fails naming it (also at config time)."""
        params = dict(params or {})
        unknown = sorted(set(params) - set(cls.defaults))
        if unknown:
            raise ValueError(f"unknown parameter {unknown[0]!r} of pretrain kind {cls.name!r}; "
                             f"known: {', '.join(sorted(cls.defaults)) or '(none)'}")
        return {**cls.defaults, **params}

    @classmethod
    def input_sides(cls, params: dict[str, Any], views: ViewConfig, side: int) -> list[tuple[str, int]]:
        """Every (what, side in px) this method feeds the backbone, for the config-time check that
        each one survives the backbone's reduction (``side``: the training images' side)."""
        return [("views", int(views.size or side))]

    @property
    def feature_dim(self) -> int:
        return int(self.backbone.num_features)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Backbone features of float images in [0, 1] (the backbone normalises, as at evaluation)."""
        return self.backbone(x)

    def training_loss(self, batch: Batch, gen: torch.Generator) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        raise NotImplementedError


METHODS: Registry[type[PretrainMethod]] = Registry("pretrain method")


def register_method(name: str, family: str) -> Callable[[type[PretrainMethod]], type[PretrainMethod]]:
    """Class decorator: ``@register_method("simclr", family="contrastive")``."""

    def decorator(cls: type[PretrainMethod]) -> type[PretrainMethod]:
        cls.name, cls.family = name, family
        return METHODS.add(name, cls)

    return decorator


def load_all() -> Registry[type[PretrainMethod]]:
    """Import every module of this package so that its registrations run.

    Discovery, not a list: a new method is one new module here plus its name in config.
    """
    import importlib
    import pkgutil

    import dlbench.pretrain as package

    for info in pkgutil.iter_modules(package.__path__):
        importlib.import_module(f"dlbench.pretrain.{info.name}")
    return METHODS


def mlp(in_dim: int, hidden: int, out: int, layers: int = 2, last_bn: bool = False) -> nn.Sequential:
    """Projector / predictor MLP: (Linear-BN-ReLU) x (layers-1), then Linear (+ BN without affine)."""
    mods: list[nn.Module] = []
    dim = in_dim
    for _ in range(layers - 1):
        mods += [nn.Linear(dim, hidden, bias=False), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True)]
        dim = hidden
    mods.append(nn.Linear(dim, out, bias=not last_bn))
    if last_bn:
        mods.append(nn.BatchNorm1d(out, affine=False))
    return nn.Sequential(*mods)
