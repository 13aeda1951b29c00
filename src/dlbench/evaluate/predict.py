"""The one evaluation path: a model x an eval split -> cached logits (Parquet), run exactly once.

An eval split is named ``NAME=DATASET:SPLIT`` or, for a corruption computed on the fly from
a clean split, ``NAME=DATASET:SPLIT:CORRUPTION:SEVERITY``. Logits are written with the
labels and the split's shift tags (Parquet key-value metadata), so every metric, ensemble
and figure downstream is computed from these files without touching a network again.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
import torch.nn.functional as F

from dlbench.data.augment import normalize
from dlbench.data.loader import balanced_subset, load_tensors
from dlbench.io import atomic_path, write_json


@dataclass(frozen=True)
class EvalSplit:
    name: str
    dataset: str
    split: str
    corruption: str | None = None
    severity: int | None = None
    max_images: int | None = None  # corruptions only: a class-balanced subset of the clean split

    @classmethod
    def parse(cls, text: str) -> "EvalSplit":
        """``NAME=DATASET:SPLIT[:CORRUPTION:SEVERITY[:MAX_IMAGES]]``."""
        name, sep, rest = text.partition("=")
        parts = rest.split(":")
        if not sep or len(parts) not in (2, 4, 5) or not all(parts) or not name:
            raise ValueError(f"bad eval split {text!r}; expected NAME=DATASET:SPLIT[:CORRUPTION:SEVERITY[:MAX_IMAGES]]")
        if len(parts) >= 4:
            max_images = int(parts[4]) if len(parts) == 5 else None
            if max_images is not None and max_images < 1:
                raise ValueError(f"bad eval split {text!r}: MAX_IMAGES must be >= 1, got {max_images}")
            return cls(name, parts[0], parts[1], parts[2], int(parts[3]), max_images)
        return cls(name, parts[0], parts[1])

    def __str__(self) -> str:
        tail = f":{self.corruption}:{self.severity}" if self.corruption else ""
        tail += f":{self.max_images}" if self.max_images else ""
        return f"{self.name}={self.dataset}:{self.split}{tail}"


@torch.no_grad()
def predict_logits(model: torch.nn.Module, images: torch.Tensor, *, device: torch.device | str = "cpu",
                   batch_size: int = 512, input_size: tuple[int, int] | None = None) -> torch.Tensor:
    """float32 logits for uint8 N x H x W x C images, resized to ``input_size`` when it differs."""
    model.eval()
    device = torch.device(device)
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else torch.autocast("cpu", enabled=False)
    out = []
    for i in range(0, len(images), batch_size):
        x = images[i:i + batch_size].to(device).permute(0, 3, 1, 2).float().div_(255)
        if input_size is not None and tuple(x.shape[-2:]) != tuple(input_size):
            x = F.interpolate(x, size=tuple(input_size), mode="bilinear", antialias=True, align_corners=False)
        with amp:
            out.append(model(normalize(x)).float().cpu())
    return torch.cat(out) if out else torch.empty(0)


def split_images(data_root: str | Path, spec: EvalSplit, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
    """Load (and, for on-the-fly corruptions, corrupt deterministically) one eval split."""
    images, labels, split = load_tensors(data_root, spec.dataset, spec.split)
    info = {"dataset": spec.dataset, "source_split": spec.split, "shift": split.info.get("shift", "id"),
            "corruption": split.info.get("corruption"), "severity": split.info.get("severity")}
    if spec.corruption:
        from dlbench.data.corruptions import corrupt

        if spec.max_images and spec.max_images < len(labels):
            keep = balanced_subset(labels, spec.max_images)
            images, labels = images[keep], labels[keep]

        nchw = corrupt(images.permute(0, 3, 1, 2), spec.corruption, int(spec.severity), seed=seed)
        images = nchw.permute(0, 2, 3, 1).contiguous()
        info.update(shift="corruption", corruption=spec.corruption, severity=int(spec.severity))
    if (labels < 0).any():
        raise ValueError(f"eval split {spec}: has unlabeled images")
    return images, labels, info


def write_logits(path: str | Path, results: list[tuple[str, np.ndarray, np.ndarray, dict[str, Any]]]) -> None:
    """One Parquet per model: columns ``split``, ``label``, ``logit_<c>``; split tags in the metadata."""
    splits = [np.full(len(labels), name) for name, _, labels, _ in results]
    logits = np.concatenate([r[1] for r in results]).astype(np.float32)
    cols: dict[str, pa.Array] = {
        "split": pa.array(np.concatenate(splits)).dictionary_encode(),
        "label": pa.array(np.concatenate([r[2] for r in results]).astype(np.int64)),
    }
    for c in range(logits.shape[1]):
        cols[f"logit_{c}"] = pa.array(logits[:, c])
    info = {name: meta for name, _, _, meta in results}
    table = pa.table(cols).replace_schema_metadata({"dlbench_splits": json.dumps(info, sort_keys=True)})
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)


def read_logits(path: str | Path) -> dict[str, tuple[np.ndarray, np.ndarray, dict[str, Any]]]:
    """``{split: (logits N x K, labels N, tags)}`` from a file written by ``write_logits``."""
    table = pq.read_table(path)
    info = json.loads((table.schema.metadata or {}).get(b"dlbench_splits", b"{}"))
    names = sorted((n for n in table.column_names if n.startswith("logit_")), key=lambda n: int(n.split("_")[1]))
    logits = np.stack([table.column(n).to_numpy() for n in names], axis=1)
    labels = table.column("label").to_numpy()
    split_col = np.asarray(table.column("split").to_pylist())
    return {name: (logits[split_col == name], labels[split_col == name], tags) for name, tags in info.items()}


@torch.no_grad()
def measure_latency(model: torch.nn.Module, input_size: tuple[int, int], device: torch.device,
                    repeats: int = 30, batch: int = 1) -> float:
    """Median forward time in ms for one batch of ``batch`` images (after warm-up)."""
    x = torch.rand(batch, 3, *input_size, device=device)
    for _ in range(5):
        model(x)
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        model(x)
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append((time.perf_counter() - t0) * 1000)
    return float(np.median(times))


def model_costs(model: torch.nn.Module, model_dir: Path, meta: dict[str, Any], dev: torch.device) -> dict[str, Any]:
    from dlbench.models.checkpoint import WEIGHTS

    params = sum(p.numel() for p in model.parameters())  # a kNN bank is a buffer: it shows in size_bytes
    nonzero = sum(int((p != 0).sum()) for p in model.parameters())
    return {"params": int(params), "nonzero_params": int(nonzero),
            "size_bytes": Path(model_dir, WEIGHTS).stat().st_size,
            "latency_ms": measure_latency(model, tuple(meta["input_size"]), dev), "latency_device": str(dev),
            "train_seconds": float(meta.get("train_seconds", 0.0))}


def evaluate_models(jobs: list[tuple[str | Path, str | Path, str | Path]], splits: list[EvalSplit],
                    data_root: str | Path, device: str = "auto", seed: int = 0) -> list[dict[str, Any]]:
    """For each ``(model_dir, logits_out, costs_out)``: every split's logits (one Parquet) and the costs.

    Several models in one call share the loading (and, for corruptions, the computing) of each
    eval split, which is most of the cost for small models; each model's files are the same as
    when it is evaluated alone.
    """
    from dlbench.models.checkpoint import load_model
    from dlbench.train.engine import pick_device

    dev = pick_device(device)
    names = [s.name for s in splits]
    if len(set(names)) != len(names):
        raise ValueError(f"duplicate eval split names in {names}")
    models = []
    for model_dir, _, _ in jobs:
        model, meta = load_model(model_dir)
        models.append((model.to(dev).to(memory_format=torch.channels_last), meta))
    results: list[list] = [[] for _ in jobs]
    for i, spec in enumerate(splits):
        t0 = time.perf_counter()
        images, labels, info = split_images(data_root, spec, seed=seed)
        accs = []
        for (model, meta), res in zip(models, results):
            logits = predict_logits(model, images, device=dev, input_size=tuple(meta["input_size"])).numpy()
            if logits.shape[1] <= int(labels.max()):
                raise ValueError(f"eval split {spec}: label {int(labels.max())} outside the model's "
                                 f"{logits.shape[1]} classes")
            res.append((spec.name, logits, labels.numpy(), info))
            accs.append(float((logits.argmax(1) == labels.numpy()).mean()))
        print(f"[{i + 1}/{len(splits)}] {spec.name}: n={len(labels)} acc={' '.join(f'{a:.4f}' for a in accs)} "
              f"({time.perf_counter() - t0:.1f}s)", flush=True)
    all_costs = []
    for (model_dir, out, costs_out), (model, meta), res in zip(jobs, models, results):
        write_logits(out, res)
        costs = model_costs(model, Path(model_dir), meta, dev)
        write_json(costs_out, costs)
        all_costs.append(costs)
    return all_costs


def evaluate_model(model_dir: str | Path, splits: list[EvalSplit], data_root: str | Path, out: str | Path,
                   costs_out: str | Path, device: str = "auto", seed: int = 0) -> dict[str, Any]:
    """Write all splits' logits to ``out`` (one Parquet) and the model's costs to ``costs_out``."""
    return evaluate_models([(model_dir, out, costs_out)], splits, data_root, device=device, seed=seed)[0]
