"""Job resources for the cluster: a runtime that fits each job's work, and whether it wants a GPU.

The runtime of a job is estimated from the work its recipe describes: images seen (epochs x
split size x views per image) times the backbone's FLOPs per image at its input size (counted
by ``torch.utils.flop_counter`` on the meta device: no weights, no compute), times 3 for a
training step (forward + backward), divided by an assumed sustained throughput
(``cluster.gpu_tflops``, default 20 TFLOP/s: a conservative share of a V100/A100 for small
convnets; ``cluster.cpu_gflops`` per core on CPU jobs), times ``cluster.safety`` (2), clamped
to ``[min_minutes, max_minutes]``. The SLURM executor reads the ``runtime`` resource in minutes.
"""

from __future__ import annotations

import functools
import json
import math
from typing import Any

DEFAULTS = {"gpu_tflops": 20.0, "cpu_gflops": 20.0, "safety": 2.0, "min_minutes": 15, "max_minutes": 4320}
TRAIN_FACTOR = 3.0  # forward + backward ~ 3 forwards
# forward-pass equivalents per image and step of each pretraining kind (default: two trained views = 6):
# a trained view costs 3, a momentum teacher's view 1, a local crop at half the side a quarter
PASSES = {"random": 0.0, "clip_weights": 0.0, "rotation": 3.0, "colorization": 3.0, "inpainting": 3.0,
          "deepcluster": 4.0,
          "moco_v2": 4.0, "byol": 8.0, "swav": 7.5, "dino": 9.5, "jigsaw": 6.75, "relative_location": 1.5, "mae": 1.1,
          "clip": 4.0}  # CLIP: the image tower's 3 plus its small text tower


def wants_gpu(device: str) -> bool:
    """``auto`` (and any cuda device) asks the cluster for a GPU; only ``cpu`` does not."""
    return device != "cpu"


@functools.cache
def _flops(spec_json: str, side: int) -> float:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from dlbench.models.backbones import build_backbone

    spec = {k: v for k, v in json.loads(spec_json).items() if k != "weights"}
    with torch.device("meta"):
        backbone = build_backbone(spec, (side, side)).eval()  # batch statistics of one image: eval mode
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            backbone(torch.empty(1, 3, *backbone.input_size))
    return float(counter.get_total_flops())


def backbone_flops(spec: dict[str, Any], side: int) -> float:
    """Forward FLOPs of one image through the backbone at its input size."""
    return _flops(json.dumps(spec, sort_keys=True), int(side))


def _split_size(dataset: str, split: str | None) -> int:
    from dlbench.data.registry import load_all

    if not split:
        return 0
    return int((load_all().get(dataset).sizes or {}).get(split, 50000))


def _minutes(flops: float, cfg: dict[str, Any], gpu: bool, threads: int) -> int:
    c = {**DEFAULTS, **(cfg.get("cluster") or {})}
    rate = c["gpu_tflops"] * 1e12 if gpu else c["cpu_gflops"] * 1e9 * max(1, threads)
    minutes = 5 + c["safety"] * flops / rate / 60  # 5: start-up, data loading, evaluation passes
    return int(min(c["max_minutes"], max(c["min_minutes"], math.ceil(minutes))))


def job_minutes(cfg: dict[str, Any], recipe: dict[str, Any], stage: str, threads: int = 1) -> int:
    """Estimated runtime of one training job (supervised, pretrain or adapt) in minutes."""
    from dlbench.data.registry import load_all

    dataset = recipe["dataset"]
    side = load_all().get(dataset).image_size
    spec = recipe.get("backbone_spec") or cfg["backbones"][recipe["id"].split("/")[1]]
    per_image = backbone_flops(spec, side)
    if stage == "pretrain":
        from dlbench.pretrain.base import load_all as load_methods

        cls = load_methods().get(recipe["kind"])  # language-image kinds train on their caption split
        split = (cls.resolve_params(recipe.get("params"))["caption_split"] if cls.needs_captions
                 else recipe["unlabeled_split"])
        train, images = recipe["train"], _split_size(dataset, split)
        passes = PASSES.get(recipe["kind"], 2 * TRAIN_FACTOR)
    else:
        train = (recipe.get("params") or {}).get("train")
        images = _split_size(dataset, recipe["train_split"])
        if train:  # a label-fraction variant trains on that share of the split (frozen jobs embed all of it)
            images = max(1, round(images * float((recipe.get("params") or {}).get("fraction") or 1.0)))
        passes = TRAIN_FACTOR
    epochs = int(train["epochs"]) if train else 1
    if not train:  # frozen features: one pass over train and val
        passes, images = 1.0, images + _split_size(dataset, recipe.get("val_split"))
    return _minutes(epochs * images * passes * per_image, cfg, wants_gpu(cfg["device"]), threads)


def eval_minutes(cfg: dict[str, Any], dataset: str, spec: dict[str, Any], splits: list[str], models: int = 1) -> int:
    """Estimated runtime of an evaluate job: every eval split through each model once."""
    from dlbench.data.registry import load_all

    side = load_all().get(dataset).image_size
    images = 0
    for s in splits:
        name, _, rest = s.partition("=")
        parts = rest.split(":")
        images += int(parts[4]) if len(parts) == 5 else _split_size(parts[0], parts[1])
    return _minutes(models * images * backbone_flops(spec, side), cfg, wants_gpu(cfg["device"]), 1)
