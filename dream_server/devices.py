"""Where the engine computes: CUDA, then Apple MPS, then the CPU, and in which precision."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

import torch

from .errors import InvalidParameter

log = logging.getLogger(__name__)


def select_device(requested: str = "auto") -> torch.device:
    """The device to use: `auto` takes the fastest one present; a named one must exist."""
    if requested == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    available = {
        "cpu": True,
        "cuda": torch.cuda.is_available(),
        "mps": torch.backends.mps.is_available(),
    }
    if requested not in available:
        raise InvalidParameter(f"Unknown device '{requested}': use auto, cuda, mps or cpu.")
    if not available[requested]:
        raise InvalidParameter(
            f"The device '{requested}' is not available on this machine (PyTorch "
            f"{torch.__version__} sees none): use --device auto or --device cpu."
        )
    return torch.device(requested)


def prefers_bfloat16(device: torch.device) -> bool:
    """Whether bf16 autocast is faster here with dreams as good (see bench/precision.py).

    CUDA GPUs from Ampere on and CPUs with AMX or AVX-512 BF16 run bf16 convolutions natively;
    elsewhere bf16 is emulated and slower than fp32.
    """
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return bool(torch.backends.mkldnn.is_available()) and _cpu_has_native_bf16()
    return False


def _cpu_has_native_bf16() -> bool:
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            flags = next((line for line in cpuinfo if line.startswith("flags")), "")
    except OSError:
        return False
    return "amx_bf16" in flags.split() or "avx512_bf16" in flags.split()


@contextlib.contextmanager
def precision(device: torch.device, bfloat16: bool) -> Iterator[None]:
    if bfloat16:
        with torch.autocast(device.type, dtype=torch.bfloat16):
            yield
    else:
        yield
