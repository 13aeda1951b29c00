"""Training-engine overhead: the engine against a bare loop that uses the same speed settings.

Three loops train the default config's backbone (``backbones.resnet10s``) with the supervised
recipe's optimiser and batch on the same uint8 images, in one process, several times in
rotating order; medians are compared:

- engine: ``fit`` with ``dlbench.classify.SupervisedObjective`` at identity augmentation, the
  default progress bar and checkpoint policy: everything a real run pays for.
- fair bare loop: the loop one would write by hand with every speed setting the engine uses:
  channels_last model and inputs, ``dlbench.device.autocast`` exactly when the engine enables
  it, the engine's optimiser (``make_optimizer``: the same parameter groups), the same
  per-epoch shuffle and uint8 gather. Constant lr, no stats, no determinism switch, no hooks.
- plain loop: the same, in fp32 NCHW without autocast.

Line 1, engine / fair bare (target >= 0.97): the engine's own overhead, as the median over repeats of
the ratio within each repeat (the two loops run seconds apart, so a change in the shared machine's load
between repeats cancels; the ratio of the two medians is printed too). Line 2, fair bare /
plain: what the speed settings buy (before they were in the bare loop, the old
engine / bare ratio of 1.28-1.30 measured them, not overhead). Each loop's time includes its
setup (moving the model, building the optimiser). Timings on a shared CPU are noisy: run it
several times, with ``--threads 1`` and ``--threads 2``.

    python benchmarks/train_overhead.py [--epochs 3] [--repeats 6] [--threads 2] [--n 1000]
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
import yaml

from dlbench.data.augment import AugmentConfig
from dlbench.device import amp_available, autocast, cpu_has_fast_bf16
from dlbench.models.backbones import build_classifier
from dlbench.train.engine import TrainConfig, epoch_generator, fit, make_optimizer

ROOT = Path(__file__).resolve().parents[1]
DEVICE = torch.device("cpu")


def bare_loop(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, cfg: TrainConfig,
              fast: bool) -> float:
    """The hand-written loop; ``fast``: the engine's speed settings. Returns images/s."""
    t0 = time.perf_counter()
    model = model.to(DEVICE)
    if fast and cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = make_optimizer(model, cfg)
    amp = autocast(DEVICE, cfg.amp) if fast else contextlib.nullcontext()
    fmt = torch.channels_last if fast and cfg.channels_last else torch.contiguous_format
    model.train()
    n, bs = len(images), cfg.batch_size
    for epoch in range(cfg.epochs):
        perm = torch.randperm(n, generator=epoch_generator(cfg.seed, epoch))
        for i in range(n // bs):
            idx = perm[i * bs:(i + 1) * bs]
            x = images[idx].permute(0, 3, 1, 2).float().div_(255).contiguous(memory_format=fmt)
            with amp:
                loss = F.cross_entropy(model(x).float(), labels[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return cfg.epochs * (n // bs) * bs / (time.perf_counter() - t0)


def engine_loop(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, cfg: TrainConfig) -> float:
    from dlbench.classify import SupervisedObjective

    obj = SupervisedObjective(model, AugmentConfig(crop_scale=(1.0, 1.0), flip=False))
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        fit(obj, images, labels, cfg, checkpoint_path=Path(tmp) / "ckpt.pt", device=DEVICE, log=lambda s: None)
        seconds = time.perf_counter() - t0
    n, bs = len(images), cfg.batch_size
    return cfg.epochs * (n // bs) * bs / seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=str(ROOT / "config.yaml"))
    ap.add_argument("--backbone", default="resnet10s")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=6)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--n", type=int, default=1000)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cfg_all = yaml.safe_load(Path(args.config).read_text())
    spec = cfg_all["backbones"][args.backbone]

    def build() -> torch.nn.Module:
        return build_classifier(spec, 10, (32, 32))
    train = {k: v for k, v in cfg_all["supervised"]["train"].items()}  # batch 50, AdamW: the supervised recipe
    cfg = TrainConfig.from_dict({**train, "epochs": args.epochs}, seed=0)
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (args.n, 32, 32, 3), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, 10, (args.n,), generator=g)
    loops = {"engine": lambda m: engine_loop(m, images, labels, cfg),
             "bare": lambda m: bare_loop(m, images, labels, cfg, fast=True),
             "plain": lambda m: bare_loop(m, images, labels, cfg, fast=False)}
    warm = TrainConfig.from_dict({**train, "epochs": 1}, seed=0)  # untimed: oneDNN primitives, allocator
    engine_loop(build(), images, labels, warm)
    bare_loop(build(), images, labels, warm, fast=True)
    bare_loop(build(), images, labels, warm, fast=False)
    speeds: dict[str, list[float]] = {k: [] for k in loops}
    orders = list(itertools.permutations(loops))
    for r in range(args.repeats):
        for name in orders[r % len(orders)]:  # rotate the order: no position bias
            torch.manual_seed(0)
            speeds[name].append(loops[name](build()))
            print(f"repeat {r + 1}: {name:6s} {speeds[name][-1]:8.1f} images/s", flush=True)
    med = {k: statistics.median(v) for k, v in speeds.items()}
    amp_on = cfg.amp and amp_available(DEVICE)
    print(f"backbone {args.backbone} {spec}")
    print(f"batch {cfg.batch_size}, {cfg.optimizer}, {args.n} images x {args.epochs} epochs, {args.threads} threads, "
          f"{args.repeats} repeats; channels_last {cfg.channels_last}; bf16 autocast "
          f"{'ON' if amp_on else 'OFF'} (cpu_has_fast_bf16()={cpu_has_fast_bf16()}"
          f"{'' if amp_on else ': bf16 would be emulated and slower here, so the engine and the fair loop both skip it'})")
    for k in loops:
        print(f"{k:6s} median {med[k]:8.1f} images/s  (all: {', '.join(f'{v:.0f}' for v in speeds[k])})")
    paired = [e / b for e, b in zip(speeds["engine"], speeds["bare"])]
    print(f"engine / fair bare loop, per repeat: {', '.join(f'{r:.3f}' for r in paired)}")
    print(f"engine / fair bare loop throughput: {statistics.median(paired):.3f} median of per-repeat ratios, "
          f"{med['engine'] / med['bare']:.3f} ratio of medians (target >= 0.97)")
    print(f"fair bare loop / plain fp32 NCHW loop: {med['bare'] / med['plain']:.3f} (what the speed settings buy)")


if __name__ == "__main__":
    main()
