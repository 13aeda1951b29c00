"""Training-engine overhead: engine throughput / bare PyTorch loop throughput, same model and data.

Both sides train the default config's backbone with AdamW on the same uint8 images (no
augmentation, so only the engine's own work — schedule, stats, progress, checkpoint — differs),
alternating which goes first, several times in one process; medians are compared. Target: ratio >= 0.95.

    python benchmarks/train_overhead.py [--epochs 3] [--repeats 6] [--threads 2]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
import yaml

from dlbench.config import supervised_recipe, validate
from dlbench.data.augment import AugmentConfig, normalize
from dlbench.models.backbones import build_classifier
from dlbench.train.engine import TrainConfig, fit, make_optimizer
from dlbench.train.supervised import SupervisedObjective

ROOT = Path(__file__).resolve().parents[1]


def bare_loop(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, cfg: TrainConfig) -> float:
    """The loop a user would write by hand; returns images/s."""
    opt = make_optimizer(model, cfg)
    model.train()
    n, bs = len(images), cfg.batch_size
    t0 = time.perf_counter()
    for epoch in range(cfg.epochs):
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(epoch))
        for i in range(n // bs):
            idx = perm[i * bs:(i + 1) * bs]
            x = normalize(images[idx].permute(0, 3, 1, 2).float().div_(255))
            loss = F.cross_entropy(model(x), labels[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return cfg.epochs * (n // bs) * bs / (time.perf_counter() - t0)


def engine_loop(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, cfg: TrainConfig) -> float:
    obj = SupervisedObjective(model, AugmentConfig(crop_scale=(1.0, 1.0), flip=False))
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        fit(obj, images, labels, cfg, checkpoint_path=Path(tmp) / "ckpt.pt", device=torch.device("cpu"))
        seconds = time.perf_counter() - t0
    n, bs = len(images), cfg.batch_size
    return cfg.epochs * (n // bs) * bs / seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=str(ROOT / "config.yaml"))
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=6)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--n", type=int, default=1000)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cfg_all = validate(yaml.safe_load(Path(args.config).read_text()))
    run = cfg_all["supervised"]["runs"][0]
    recipe = supervised_recipe(cfg_all, run["dataset"], run["backbone"], seed=0)
    spec = recipe["backbone_spec"]
    cfg = TrainConfig(seed=0, **{**recipe["train"], "epochs": args.epochs})
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (args.n, 32, 32, 3), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, 10, (args.n,), generator=g)
    bare, engine = [], []
    pair = [("bare", bare_loop, bare), ("engine", engine_loop, engine)]
    for r in range(args.repeats):
        for name, fn, out in (pair if r % 2 == 0 else pair[::-1]):  # alternate order: no position bias
            torch.manual_seed(0)
            model = build_classifier(spec, 10)
            out.append(fn(model, images, labels, cfg))
            print(f"repeat {r + 1}: {name:6s} {out[-1]:8.1f} images/s", flush=True)
    ratio = statistics.median(engine) / statistics.median(bare)
    print(f"backbone {run['backbone']} ({spec['timm']}), batch {cfg.batch_size}, {args.n} images, {args.threads} threads")
    print(f"bare loop   median {statistics.median(bare):8.1f} images/s")
    print(f"engine      median {statistics.median(engine):8.1f} images/s")
    print(f"engine / bare throughput ratio: {ratio:.3f} (target >= 0.95)")


if __name__ == "__main__":
    main()
