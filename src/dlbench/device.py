"""Device choice, thread count and the one autocast policy, shared by training and evaluation.

bf16 autocast is used on CUDA and on CPUs whose oneDNN has native bf16 kernels (AVX512-BF16 /
AMX): there it is ~1.6x faster for the small ResNets of the embedded default; elsewhere bf16 is
emulated and slower, so it stays off. Every loss is computed in float32 by its objective.
"""

from __future__ import annotations

import contextlib
import functools
import re

import torch

DEVICE_PATTERN = r"^(auto|cpu|cuda(:[0-9]+)?|mps)$"


def pick_device(name: str = "auto") -> torch.device:
    """``auto``: CUDA when available, else CPU; otherwise the named device (checked)."""
    if not re.match(DEVICE_PATTERN, str(name)):
        raise ValueError(f"device {name!r}: use auto, cpu, cuda, cuda:N or mps")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


@functools.cache
def cpu_has_fast_bf16() -> bool:
    """True where oneDNN has native bf16 kernels (AVX512-BF16/AMX); elsewhere bf16 is emulated and slow."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def amp_available(device: torch.device) -> bool:
    return device.type == "cuda" or (device.type == "cpu" and cpu_has_fast_bf16())


def autocast(device: torch.device, enabled: bool = True) -> contextlib.AbstractContextManager:
    """bf16 autocast where it is fast on ``device`` (see module doc), else a no-op context."""
    if enabled and amp_available(device):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def set_threads(threads: int | None) -> None:
    """Intra-op threads (Snakemake passes the job's ``threads``); 0/None keeps torch's default."""
    if threads:
        torch.set_num_threads(int(threads))
