"""The one evaluation path: models x eval splits -> cached logits, costs and embeddings, run once.

An eval split is named ``NAME=DATASET:SPLIT`` or, for the computed corruption suite,
``NAME=DATASET:SPLIT:CORRUPTION:SEVERITY[:MAX_IMAGES]``; corrupted splits are read from the
cache that rule ``corruptions`` wrote (``corrupted_root``), or computed here when there is none
(by-hand use). Evaluation is method-blind: it loads any model directory with ``load_model`` and
runs it through the one batched-inference function. Several models in one call share the
loading of each split (the frozen-feature variants of one backbone are evaluated together) and,
where their backbones are identical, one backbone pass per batch (``shared_backbones``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from dlbench.data.corrupted import split_name
from dlbench.data.loader import balanced_subset, load_tensors
from dlbench.device import pick_device
from dlbench.evaluate.outputs import write_embeddings, write_logits
from dlbench.io import write_json
from dlbench.models.checkpoint import WEIGHTS, load_model
from dlbench.models.backbones import Classifier
from dlbench.models.inference import embed, predict_logits, predict_shared

STATISTICS_BUFFERS = ("running_mean", "running_var", "num_batches_tracked")


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


def split_images(data_root: str | Path, spec: EvalSplit, corrupted_root: str | Path | None = None,
                 seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
    """Load one eval split: a stored split, a cached corruption, or (no cache) a corruption computed here."""
    if spec.corruption and corrupted_root is not None:
        images, labels, split = load_tensors(corrupted_root, spec.dataset,
                                             split_name(spec.split, spec.corruption, spec.severity))
    else:
        images, labels, split = load_tensors(data_root, spec.dataset, spec.split)
        if spec.corruption:
            from dlbench.data.corruptions import corrupt

            if spec.max_images and spec.max_images < len(labels):
                keep = balanced_subset(labels, spec.max_images)
                images, labels = images[keep], labels[keep]
            images = corrupt(images.permute(0, 3, 1, 2), spec.corruption, int(spec.severity),
                             seed=seed).permute(0, 2, 3, 1).contiguous()
    info = {"dataset": spec.dataset, "source_split": spec.split, "shift": split.info.get("shift", "id"),
            "corruption": split.info.get("corruption"), "severity": split.info.get("severity")}
    if spec.corruption:
        info.update(shift="corruption", corruption=spec.corruption, severity=int(spec.severity))
    if (labels < 0).any():
        raise ValueError(f"eval split {spec}: has unlabeled images")
    return images, labels, info


@torch.no_grad()
def measure_latency(model: nn.Module, input_size: tuple[int, int], device: torch.device,
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


def weight_tensors(model: nn.Module) -> list[torch.Tensor]:
    """Every tensor that is part of the model's weights: parameters and persistent buffers (a kNN bank,
    packed quantized weights), but not batch-norm statistics."""
    names = {n for n, _ in model.named_buffers()}
    state = model.state_dict()
    return [t for k, t in state.items() if k not in names or not k.endswith(STATISTICS_BUFFERS)]


def model_costs(model: nn.Module, model_dir: Path, card: dict[str, Any], dev: torch.device,
                repeats: int = 30) -> dict[str, Any]:
    tensors = weight_tensors(model)
    return {"params": int(sum(t.numel() for t in tensors)),
            "trainable_params": card.get("trainable_params"),
            "nonzero_params": int(sum(int((t != 0).sum()) for t in tensors)),
            "size_bytes": Path(model_dir, WEIGHTS).stat().st_size,
            "latency_ms": measure_latency(model, tuple(model.input_size), dev, repeats=repeats),
            "latency_device": str(dev), "train_seconds": float(card.get("total_train_seconds", 0.0))}


def shared_backbones(models: list[tuple[nn.Module, dict[str, Any]]]) -> list[list[int]]:
    """Indices of the models grouped by identical backbone (same spec, preprocessing and weights; plain
    ``Classifier``, no transforms): each group's backbone runs once per batch (linear probe and kNN of
    one pretrained model), which gives the same logits as running every model alone."""
    groups: list[list[int]] = []
    for i, (model, card) in enumerate(models):
        for members in groups:
            other, other_card = models[members[0]]
            if _same_backbone(model, card, other, other_card):
                members.append(i)
                break
        else:
            groups.append([i])
    return groups


def _same_backbone(a: nn.Module, card_a: dict[str, Any], b: nn.Module, card_b: dict[str, Any]) -> bool:
    if type(a) is not Classifier or type(b) is not Classifier:
        return False
    sa, sb = card_a["model"], card_b["model"]
    if (sa.get("transforms") or sb.get("transforms") or sa.get("backbone") != sb.get("backbone")
            or sa.get("preprocess") != sb.get("preprocess")):
        return False
    wa, wb = a.backbone.state_dict(), b.backbone.state_dict()
    return wa.keys() == wb.keys() and all(wa[k].dtype == wb[k].dtype and wa[k].shape == wb[k].shape
                                          and torch.equal(wa[k], wb[k]) for k in wa)


@dataclass(frozen=True)
class EvalJob:
    model_dir: Path
    logits: Path
    costs: Path
    embeddings: Path | None = None


def evaluate_models(jobs: list[EvalJob], splits: list[EvalSplit], data_root: str | Path, *,
                    corrupted_root: str | Path | None = None, embedding_split: str | None = None,
                    embedding_points: int = 300, device: str = "auto", latency_repeats: int = 30,
                    seed: int = 0) -> list[dict[str, Any]]:
    """For each job: every split's logits (one Parquet), the costs, and the embeddings of a fixed
    class-balanced subset of ``embedding_split`` (``DATASET:SPLIT``). A model's files are the same
    whether it is evaluated alone or with others."""
    dev = pick_device(device)
    names = [s.name for s in splits]
    if len(set(names)) != len(names):
        raise ValueError(f"duplicate eval split names in {names}")
    models = []
    for job in jobs:
        model, card = load_model(job.model_dir)
        models.append((model.to(dev).to(memory_format=torch.channels_last), card))
    results: list[list] = [[] for _ in jobs]
    shared = shared_backbones(models)
    for i, spec in enumerate(splits):
        t0 = time.perf_counter()
        images, labels, info = split_images(data_root, spec, corrupted_root, seed=seed)
        outputs: dict[int, torch.Tensor] = {}
        for members in shared:
            if len(members) == 1:
                outputs[members[0]] = predict_logits(models[members[0]][0], images, device=dev)
            else:
                heads = [models[j][0].head for j in members]
                for j, out in zip(members, predict_shared(models[members[0]][0].backbone, heads, images, device=dev)):
                    outputs[j] = out
        accs = []
        for j, res in enumerate(results):
            logits = outputs[j].numpy()
            if logits.shape[1] <= int(labels.max()):
                raise ValueError(f"eval split {spec}: label {int(labels.max())} outside the model's "
                                 f"{logits.shape[1]} classes")
            res.append((spec.name, logits, labels.numpy(), info))
            accs.append(float((logits.argmax(1) == labels.numpy()).mean()))
        print(f"[{i + 1}/{len(splits)}] {spec.name}: n={len(labels)} acc={' '.join(f'{a:.4f}' for a in accs)} "
              f"({time.perf_counter() - t0:.1f}s)", flush=True)
    if embedding_split and any(j.embeddings for j in jobs):
        dataset, split = embedding_split.split(":")
        images, labels, _ = load_tensors(data_root, dataset, split)
        keep = balanced_subset(labels, embedding_points)
        images, labels = images[keep], labels[keep]
    out = []
    for job, (model, card), res in zip(jobs, models, results):
        classes = card["model"].get("classes") or []
        write_logits(job.logits, res, classes)
        if job.embeddings is not None and embedding_split:
            feats = embed(model.backbone, images, device=dev).numpy()
            write_embeddings(job.embeddings, feats, labels.numpy(), classes, embedding_split)
        costs = model_costs(model, job.model_dir, card, dev, latency_repeats)
        write_json(job.costs, costs)
        out.append(costs)
    return out
