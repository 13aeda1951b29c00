"""Tables -> figures (seaborn, PNG). Figures read only the Parquet tables, never a model.

Every figure belongs to a report section (``dlbench.report.sections``); this module draws them
all, each a placeholder image when the config has no data for it.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from dlbench.report.plotting import theme
from dlbench.report.sections import Tables, all_figures


def read_tables(tables_dir: str | Path) -> Tables:
    """metrics, summary, history and tsne as DataFrames (empty frames for tables that are absent)."""
    tables = Path(tables_dir)
    empty = {"metrics": pd.DataFrame(columns=["model_id", "split", "shift", "acc"]),
             "summary": pd.DataFrame(columns=["dataset", "backbone"]),
             "history": pd.DataFrame(columns=["model_id", "epoch"]),
             "tsne": pd.DataFrame(columns=["model_id", "panel", "x", "y", "label", "class"])}
    return {name: pd.read_parquet(tables / f"{name}.parquet") if (tables / f"{name}.parquet").exists() else frame
            for name, frame in empty.items()}


def figure_names() -> list[str]:
    """Every figure file the report layer writes (the Snakefile's targets)."""
    return [f.name for _, f in all_figures()]


def make_figures(tables_dir: str | Path, out_dir: str | Path) -> None:
    theme()
    tables = read_tables(tables_dir)
    for _, figure in all_figures():
        figure.draw(tables, Path(out_dir) / figure.name)
