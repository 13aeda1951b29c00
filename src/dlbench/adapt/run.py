"""The ``adapt`` stage: one pretrained backbone -> one classifier per configured protocol (+ t-SNE)."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from dlbench.adapt.base import AdaptContext, load_all, run_order
from dlbench.data.loader import balanced_subset, dataset_meta, labeled_splits, load_tensors
from dlbench.io import atomic_path, write_json
from dlbench.models.backbones import build_backbone
from dlbench.models.checkpoint import load_backbone, save_model
from dlbench.provenance import provenance
from dlbench.train.engine import pick_device, remove_checkpoint
from dlbench.train.supervised import model_id


def tsne_frame(features: torch.Tensor, labels: torch.Tensor, stage: str, seed: int) -> pd.DataFrame:
    from sklearn.manifold import TSNE

    xy = TSNE(n_components=2, perplexity=min(30.0, (len(features) - 1) / 3), init="pca", random_state=seed,
              max_iter=500).fit_transform(features.double().numpy())
    return pd.DataFrame({"x": xy[:, 0].astype(np.float32), "y": xy[:, 1].astype(np.float32),
                         "label": labels.numpy().astype(np.int64), "stage": stage})


def adapt(recipe: dict[str, Any], pretrained_dir: str | Path, data_root: str | Path, out_dirs: dict[str, str],
          tsne_out: str | Path | None = None, device: str = "auto",
          log=lambda s: print(s, file=sys.stderr, flush=True)) -> dict[str, dict[str, Any]]:
    """Run every protocol of ``out_dirs`` (name -> model dir) on the backbone in ``pretrained_dir``."""
    from dlbench.pretrain.run import embed

    dev = pick_device(device)
    protocols = load_all()
    backbone, parent = load_backbone(pretrained_dir)
    meta = dataset_meta(data_root, recipe["dataset"])
    train_x, train_y, val_x, val_y = labeled_splits(data_root, recipe["dataset"], recipe["train_split"],
                                                    recipe.get("val_split"))
    ctx = AdaptContext(backbone_state=backbone.state_dict(), build_backbone=lambda: build_backbone(parent["backbone_spec"]),
                       num_classes=len(meta["classes"]), train_images=train_x, train_labels=train_y,
                       val_images=val_x, val_labels=val_y, device=dev, seed=int(recipe["seed"]), recipe=recipe)
    results = {}
    for name in run_order(list(out_dirs)):
        params = (recipe.get("protocols") or {}).get(name, {})
        torch.manual_seed(ctx.seed)
        t0 = time.perf_counter()
        log(f"adapt {parent['model_id']} with protocol {name!r}")
        model, info = protocols.get(name).run(ctx, params)
        seconds = time.perf_counter() - t0
        ctx.done[name] = model
        if name not in out_dirs:
            continue
        history = info.pop("history", None)
        checkpoint = info.pop("checkpoint", None)
        out = Path(out_dirs[name])
        model_meta = {
            "model_id": model_id({**recipe, "adapt": name}),
            "recipe": {**recipe, "adapt": name, "params": params},
            "parts": {**parent["parts"], "adapt": name},
            "parent": parent["model_id"],
            "backbone_spec": parent["backbone_spec"],
            "num_classes": ctx.num_classes,
            "classes": meta["classes"],
            "input_size": parent["input_size"],
            "head": info.pop("head"),
            "adapt_info": info,
            "adapt_seconds": seconds,
            "train_seconds": float(parent.get("train_seconds", 0.0)) + seconds,  # pretraining + adaptation
            "provenance": provenance(recipe["dataset"]),
        }
        if history is not None:
            write_json(out / "history.json", history)
        save_model(out, model.cpu(), model_meta)
        model.to(dev)
        remove_checkpoint(Path(checkpoint) if checkpoint else None)
        results[name] = model_meta
        log(f"  {name}: {seconds:.1f}s")
    if tsne_out is not None:
        test_x, test_y, _ = load_tensors(data_root, recipe["dataset"], recipe.get("tsne_split", "test"))
        idx = balanced_subset(test_y, int(recipe.get("tsne_points", 500)))
        frames = [tsne_frame(embed(ctx.pretrained_backbone(), test_x[idx], dev), test_y[idx], "pretrained", ctx.seed)]
        if "finetune" in ctx.done:
            frames.append(tsne_frame(embed(ctx.done["finetune"].backbone, test_x[idx], dev), test_y[idx], "finetuned",
                                     ctx.seed))
        with atomic_path(tsne_out) as tmp:
            pd.concat(frames, ignore_index=True).to_parquet(tmp, index=False)
    return results
