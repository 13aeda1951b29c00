"""Shared plotting helpers: one theme, atomic PNG output, placeholders for figures without data."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import seaborn as sns  # noqa: E402

from dlbench.io import atomic_path  # noqa: E402

DPI = 110


def theme() -> None:
    sns.set_theme(style="whitegrid", context="paper")


def save(fig: plt.Figure, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=DPI, bbox_inches="tight")
    plt.close(fig)


def placeholder(path: Path, text: str) -> None:
    """A small image saying why a figure is empty (the report still renders every figure it lists)."""
    fig, ax = plt.subplots(figsize=(5, 2))
    ax.axis("off")
    ax.text(0.5, 0.5, text, ha="center", va="center")
    save(fig, path)
