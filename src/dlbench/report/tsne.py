"""t-SNE of the embeddings that evaluation cached, for the models a report section shows.

The report layer computes it from ``<results>/predictions/<id>/embeddings.parquet`` (a fixed
class-balanced test subset per model), so any model — CLIP, ensemble members, compressed
models — can get one without running a network again.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from dlbench.evaluate.outputs import read_embeddings
from dlbench.ids import ModelId
from dlbench.io import atomic_path


def tsne_2d(features: np.ndarray, seed: int) -> np.ndarray:
    """2-D t-SNE of ``features`` (Barnes-Hut), on one OpenMP thread: for a few hundred points the
    threads only spin, and on a busy machine (parallel DAG jobs) two of them took 15 s where one
    takes 0.1 s."""
    from sklearn.manifold import TSNE
    from threadpoolctl import threadpool_limits  # a dependency of scikit-learn

    perplexity = min(30.0, (len(features) - 1) / 3)
    with threadpool_limits(limits=1):
        return TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed,
                    max_iter=500).fit_transform(features.astype(np.float64))


def write_tsne(results_dir: str | Path, panels: dict[str, str], out: str | Path) -> None:
    """One row per point: model id and its parts, ``panel`` (e.g. pretrained / finetuned), x, y, label, class."""
    frames = []
    for model_id, panel in panels.items():
        feats, labels, classes = read_embeddings(Path(results_dir) / "predictions" / model_id / "embeddings.parquet")
        mid = ModelId.parse(model_id)
        xy = tsne_2d(feats, mid.seed)
        frames.append(pd.DataFrame({"model_id": model_id, **mid.parts(), "panel": panel,
                                    "x": xy[:, 0].astype(np.float32), "y": xy[:, 1].astype(np.float32),
                                    "label": labels.astype(np.int64), "class": classes}))
    df = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(
        columns=["model_id", "panel", "x", "y", "label", "class"])
    with atomic_path(out) as tmp:
        df.to_parquet(tmp, index=False)
