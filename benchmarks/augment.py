"""Batched augmentation throughput / per-sample torchvision.transforms.v2 throughput.

Same augmentations on both sides: random resized crop (scale 0.6-1, ratio 3/4-4/3) back to
32x32, horizontal flip, colour jitter (brightness, contrast, saturation 0.4), from uint8
images to float tensors in [0, 1]. Target: ratio >= 5.

    python benchmarks/augment.py [--n 4096] [--batch 256] [--threads 2]
"""

from __future__ import annotations

import argparse
import time

import torch
from torchvision.transforms import v2

from dlbench.data.augment import AugmentConfig, augment, to_float


def per_sample(images: torch.Tensor, size: int) -> float:
    tf = v2.Compose([
        v2.RandomResizedCrop(size, scale=(0.6, 1.0), ratio=(3 / 4, 4 / 3), antialias=True),
        v2.RandomHorizontalFlip(),
        v2.ColorJitter(brightness=0.4, contrast=0.4, saturation=0.4),
        v2.ToDtype(torch.float32, scale=True),
    ])
    chw = images.permute(0, 3, 1, 2)
    t0 = time.perf_counter()
    for img in chw:
        tf(img)
    return len(images) / (time.perf_counter() - t0)


def batched(images: torch.Tensor, batch: int) -> float:
    cfg = AugmentConfig(crop_scale=(0.6, 1.0), flip=True, brightness=0.4, contrast=0.4, saturation=0.4)
    gen = torch.Generator().manual_seed(0)
    t0 = time.perf_counter()
    for i in range(0, len(images), batch):
        augment(to_float(images[i:i + batch]), cfg, gen)
    return len(images) / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=4096)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    images = torch.randint(0, 256, (args.n, 32, 32, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    per_sample(images[:256], 32)  # warm-up
    batched(images[:512], args.batch)
    ps = per_sample(images, 32)
    bt = batched(images, args.batch)
    print(f"per-sample torchvision.transforms.v2: {ps:10.1f} images/s")
    print(f"batched dlbench.data.augment:         {bt:10.1f} images/s (batch {args.batch})")
    print(f"batched / per-sample throughput ratio: {bt / ps:.1f}x (target >= 5x)")


if __name__ == "__main__":
    main()
