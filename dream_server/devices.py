"""Where the engine computes: CUDA, then Apple MPS, then the CPU, and in which precision."""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import logging
from collections.abc import Iterator

import torch

from .errors import InvalidParameter

log = logging.getLogger(__name__)

# glibc mallopt parameters
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3


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
    """Whether to run the network under bf16 autocast on this device.

    On GPUs with native bf16 (Ampere and later) it halves memory traffic. On CPUs it does not
    pay: measured on a 2-core AMX machine, tiled fp32 steps were faster than bf16 ones
    (0.26 s against 0.31 s at 1024x768) while bf16 gradients differed from fp32 by 30% on
    average. A bf16 forward pass with an fp32 backward did no better: 65 ms against 48 per
    512x384 tile, with gradients 30-57% off. So the CPU stays in fp32.
    """
    return device.type == "cuda" and torch.cuda.is_bf16_supported()


@functools.cache
def keep_cpu_memory_mapped() -> bool:
    """Let glibc reuse freed activation buffers instead of returning them to the kernel.

    A dream step allocates and frees the same large activation buffers over and over. By default
    glibc hands buffers over a few MB straight back to the kernel, which must then zero fresh
    pages for the next step: 15-20% of a CPU step here (bench/dream_speed.py). Buffers up to
    32 MB now stay in the heap, which returns memory to the kernel only above 256 MB free.
    """
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):
        return False  # not glibc (macOS, Windows, musl): nothing to tune
    ok = all(
        mallopt(option, value)
        for option, value in (
            (_M_MMAP_THRESHOLD, 32 << 20),
            (_M_TRIM_THRESHOLD, 256 << 20),
            (_M_TOP_PAD, 16 << 20),
        )
    )
    log.debug("glibc allocator tuned for reuse: %s", ok)
    return ok


@contextlib.contextmanager
def precision(device: torch.device, bfloat16: bool) -> Iterator[None]:
    if bfloat16:
        with torch.autocast(device.type, dtype=torch.bfloat16):
            yield
    else:
        yield
