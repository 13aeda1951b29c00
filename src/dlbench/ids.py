"""Model ids: the one place that formats and parses them.

A model id is the recipe chain ``dataset/backbone/pretrain/adapt/ensemble/compress/seedN``
(``none`` where a stage does not apply), e.g. ``shapes/resnet10s/simclr/finetune/none/none/seed0``.
Each slot after ``backbone`` holds a *variant name* declared in config; a sweep value is part of
its name (``finetune-lr0.001``), so names may carry decimals, signs and exponents. The Snakemake
rules use :data:`PATTERN` and :data:`WILDCARD_CONSTRAINTS` from here, so a name the config accepts
is always one the wildcards accept.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, fields, replace

SLOTS = ("dataset", "backbone", "pretrain", "adapt", "ensemble", "compress")
NONE = "none"
NAME_REGEX = r"[A-Za-z0-9][A-Za-z0-9_.+-]*"
_NAME = re.compile(rf"^{NAME_REGEX}$")
PATTERN = "{dataset}/{backbone}/{pretrain}/{adapt}/{ensemble}/{compress}/seed{seed}"
WILDCARD_CONSTRAINTS = {**{slot: NAME_REGEX for slot in SLOTS}, "seed": "[0-9]+"}


class BadIdError(ValueError):
    """A string is not a model id, or a slot holds a name the wildcards cannot match."""


def check_name(name: str, where: str = "name") -> str:
    """``name`` if it can be a slot of a model id (a path part the wildcards accept), else BadIdError."""
    if not isinstance(name, str) or not _NAME.match(name) or name.endswith("."):
        raise BadIdError(f"{where}: {name!r} cannot be part of a model id; use letters, digits and _ . + - "
                         f"(starting with a letter or digit)")
    return name


def format_value(value: float | int | str) -> str:
    """A sweep value as it appears in a variant name: ``0.001``, ``1e-05``, ``20``, ``0.5``, ``0`` (for 0.0)."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        return str(int(value)) if abs(value) >= 1 or value == 0 else repr(value)
    return str(value)


def sweep_name(base: str, values: dict[str, float | int | str]) -> str:
    """The name of one point of a sweep: ``base-knob1value1-knob2value2`` (knobs in the given order)."""
    return check_name("-".join([base, *(f"{k}{format_value(v)}" for k, v in values.items())]))


@dataclass(frozen=True, order=True)
class ModelId:
    dataset: str
    backbone: str
    pretrain: str = NONE
    adapt: str = NONE
    ensemble: str = NONE
    compress: str = NONE
    seed: int = 0

    def __post_init__(self) -> None:
        for slot in SLOTS:
            check_name(getattr(self, slot), f"model id slot {slot}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise BadIdError(f"model id seed must be a non-negative integer, got {self.seed!r}")

    def __str__(self) -> str:
        return PATTERN.format(**self.parts())

    def parts(self) -> dict[str, str | int]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def with_(self, **changes: str | int) -> "ModelId":
        return replace(self, **changes)

    @property
    def last_stage(self) -> str:
        """The last slot that is not ``none`` among the stages (``backbone`` for an untrained id)."""
        for slot in reversed(SLOTS[2:]):
            if getattr(self, slot) != NONE:
                return slot
        return "backbone"

    @classmethod
    def parse(cls, text: str) -> "ModelId":
        parts = str(text).strip("/").split("/")
        if len(parts) != 7 or not parts[6].startswith("seed") or not parts[6][4:].isdigit():
            raise BadIdError(f"{text!r} is not a model id ({PATTERN})")
        return cls(*parts[:6], seed=int(parts[6][4:]))

    @classmethod
    def from_wildcards(cls, wildcards: object) -> "ModelId":
        """From a Snakemake wildcards object (or any mapping/attribute holder) with every slot."""
        get = wildcards.get if isinstance(wildcards, dict) else lambda k: getattr(wildcards, k)
        return cls(*(str(get(s)) for s in SLOTS), seed=int(get("seed")))
