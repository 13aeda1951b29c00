"""The report's sections: a registry, so each course topic is one module.

A section registers its key, title and blurb, the figures it owns (file name, caption, the
function that draws it from the tables), and a ``render`` that returns its HTML parts (or an
empty list when the config has nothing for it). Figures and captions reach both the HTML report
and ``snakemake --report`` from here; nothing else lists them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from dlbench.registry import Registry

Tables = dict[str, pd.DataFrame]  # metrics, summary, history, tsne (empty frames when absent); findings (if computed)


@dataclass(frozen=True)
class Figure:
    name: str  # file name under <results>/figures
    caption: str
    draw: Callable[[Tables, Path], None]  # (tables, output path): writes the PNG (a placeholder without data)


@dataclass(frozen=True)
class Section:
    key: str
    title: str
    blurb: str
    order: int
    figures: tuple[Figure, ...] = ()
    render: Callable[[Tables, Path], list[str]] = field(default=lambda tables, figures: [])

    def caption(self, name: str) -> str:
        return next(f.caption for f in self.figures if f.name == name)


SECTIONS: Registry[Section] = Registry("report section")


def register_section(section: Section) -> Section:
    return SECTIONS.add(section.key, section)


def load_all() -> list[Section]:
    """Every section, in report order (importing the section modules registers them)."""
    from dlbench.report import baseline, clip, planned, ssl  # noqa: F401

    return sorted((SECTIONS.get(k) for k in SECTIONS), key=lambda s: s.order)


def all_figures() -> list[tuple[Section, Figure]]:
    return [(s, f) for s in load_all() for f in s.figures]


def figure_names() -> list[str]:
    return [f.name for _, f in all_figures()]
