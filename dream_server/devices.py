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
from .params import DEVICE_CHOICES

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
    kind, _, index = requested.partition(":")
    available = {
        "cpu": True,
        "cuda": torch.cuda.is_available(),
        "mps": torch.backends.mps.is_available(),
    }
    if kind not in available or (index and (kind != "cuda" or not index.isdigit())):
        raise InvalidParameter(
            f"Unknown device '{requested}': use {', '.join(DEVICE_CHOICES)}, or cuda:N."
        )
    if not available[kind] or (index and int(index) >= torch.cuda.device_count()):
        raise InvalidParameter(
            f"The device '{requested}' is not available on this machine (PyTorch "
            f"{torch.__version__} sees {_present()}): choose auto or cpu instead."
        )
    return torch.device(requested)


def devices(requested: str = "auto") -> list[str]:
    """The devices of a comma-separated list, one worker each; `auto` is every CUDA GPU, else
    Apple's MPS, else the CPU."""
    if requested.strip() == "auto":
        if torch.cuda.is_available():
            return [f"cuda:{index}" for index in range(torch.cuda.device_count())]
        return [str(select_device("auto"))]
    names = [name.strip() for name in requested.split(",") if name.strip()]
    if not names:
        raise InvalidParameter("Name at least one device, e.g. --devices cuda:0,cuda:1.")
    for name in names:
        select_device(name)
    return names


def _present() -> str:
    found = [f"cuda:{index}" for index in range(torch.cuda.device_count())]
    if torch.backends.mps.is_available():
        found.append("mps")
    return ", ".join([*found, "cpu"])


PRECISIONS = {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}
"""The precisions a dream's network can run in: fp32, or autocast to a 16-bit type."""


def autocast_dtype(requested: str = "auto") -> torch.dtype | None:
    """The 16-bit type to autocast the network to on `device`, or None for fp32.

    `auto` is fp32 everywhere, by measurement. On an H200 (bench/gpu.py, 1024x768, defaults)
    both autocasts keep the dream, with activation gains within 1% of fp32's (bf16 0.997x,
    fp16 0.991x), but neither is faster: 0.27 s (bf16) and 0.33 s (fp16) against 0.22 s. The
    network is small and its depthwise convolutions move memory rather than multiply, so the
    casts cost more than the halved traffic saves. fp16 runs with its score scaled so that
    small gradients survive. On a 2-core AMX CPU tiled fp32 steps were faster than bf16 ones
    too (0.26 s against 0.31 s at 1024x768), with bf16 gradients 30% off on average.
    """
    if requested == "auto":
        return None
    if requested not in PRECISIONS:
        raise InvalidParameter(
            f"Unknown precision '{requested}': use auto, {', '.join(PRECISIONS)}."
        )
    return PRECISIONS[requested]


def tune_for(device: torch.device) -> None:
    """Settings that make dream steps fast on `device`, set once per process."""
    if device.type == "cpu":
        keep_cpu_memory_mapped()
    elif device.type == "cuda":
        # A dream runs the same few tile shapes hundreds of times: cuDNN's autotuner times its
        # algorithms once per shape and keeps the fastest.
        torch.backends.cudnn.benchmark = True


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
def precision(device: torch.device, dtype: torch.dtype | None) -> Iterator[None]:
    if dtype is None:
        yield
    else:
        with torch.autocast(device.type, dtype=dtype):
            yield
