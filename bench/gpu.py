"""The engine on a CUDA GPU: agreement with the CPU, speed, memory, and fp32 against autocast.

    python bench/gpu.py [--quick]

One run prints one table. Rows:
- 1024x768 with the defaults (preset animals, 4 octaves x 10 steps) on the CPU and on the GPU
  in fp32, bf16 and fp16: seconds (median), the activation gain (the preset's objective on the
  dream over the same on the photo, both measured by the CPU in fp32), the gain relative to the
  GPU's fp32, and the mean pixel difference from the CPU's dream (0-255);
- 6000x4000 with the defaults in fp32 and in bf16: seconds and peak memory;
- the same photo on a card with 8 GB free (the rest taken by a ballast allocation), with the
  tile plan the engine chose, and once more with a plan forced far too large, which must run
  out of memory and recover by planning again with smaller tiles.
Runs in well under 5 minutes on one H200.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dream_server import dream as dream_module  # noqa: E402
from dream_server.engine import Engine  # noqa: E402
from dream_server.params import DreamParams  # noqa: E402

PHOTO = Path(__file__).resolve().parent.parent / "dream_server" / "samples" / "coffee.png"
GIB = 2**30


def photo(width: int, height: int) -> np.ndarray:
    return np.array(Image.open(PHOTO).convert("RGB").resize((width, height), Image.BICUBIC))


def timed(engine: Engine, image: np.ndarray, params: DreamParams) -> tuple[np.ndarray, float]:
    torch.cuda.synchronize() if engine.device.type == "cuda" else None
    started = time.perf_counter()
    result = engine.dream(image, params)
    return result, time.perf_counter() - started


def gain(cpu: Engine, params: DreamParams, dreamed: np.ndarray, original: np.ndarray) -> float:
    model = cpu.model(params.model)
    objective = cpu.objective(params, model)

    def score(pixels: np.ndarray) -> float:
        x = torch.from_numpy(pixels.astype(np.float32) / 255).permute(2, 0, 1)[None]
        with torch.no_grad():
            return float(objective(model(x, objective.layers)))

    return score(dreamed) / score(original)


def peak_of(run) -> tuple[object, float, float]:  # noqa: ANN001
    """run() -> result; with its seconds and peak device memory in GiB over what was held."""
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    held = torch.cuda.memory_allocated()
    started = time.perf_counter()
    result = run()
    torch.cuda.synchronize()
    return result, time.perf_counter() - started, (torch.cuda.max_memory_allocated() - held) / GIB


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats, smaller big photo")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("bench/gpu.py needs a CUDA GPU; this machine has none.", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    repeats = 2 if args.quick else 5
    big = (1500, 1000) if args.quick else (6000, 4000)
    params = DreamParams()
    image = photo(1024, 768)
    rows: list[tuple[str, ...]] = []
    name = torch.cuda.get_device_name()
    print(f"{name}, torch {torch.__version__}, CPU threads {torch.get_num_threads()}", flush=True)

    cpu = Engine("cpu")
    cpu_dream, cpu_seconds = timed(cpu, image, params)
    cpu_gain = gain(cpu, params, cpu_dream, image)
    rows.append(("1024x768 CPU fp32", f"{cpu_seconds:.2f}", "", f"{cpu_gain:.3f}", "", ""))
    print(rows[-1], flush=True)

    gains = {}
    for precision in ("fp32", "bf16", "fp16"):
        engine = Engine("cuda", precision=precision)
        timed(engine, image, params)  # warm-up: cuDNN times its algorithms per tile shape
        seconds, result = [], None
        for _ in range(repeats):
            result, took = timed(engine, image, params)
            seconds.append(took)
        gains[precision] = gain(cpu, params, result, image)
        difference = np.abs(result.astype(np.float32) - cpu_dream).mean()
        rows.append((
            f"1024x768 CUDA {precision}", f"{statistics.median(seconds):.3f}", "",
            f"{gains[precision]:.3f}", f"{gains[precision] / gains['fp32']:.3f}",
            f"{difference:.2f}",
        ))  # fmt: skip
        print(rows[-1], flush=True)
        del engine
        torch.cuda.empty_cache()

    large = photo(*big)
    for precision in ("fp32", "bf16"):
        engine = Engine("cuda", precision=precision)
        label = precision
        engine.dream(photo(640, 480), DreamParams(octaves=1, steps=1))  # loads the model
        _, seconds, peak = peak_of(lambda engine=engine: engine.dream(large, params))
        rows.append((f"{big[0]}x{big[1]} CUDA {label}", f"{seconds:.2f}", f"{peak:.2f}", "",
                     "", ""))  # fmt: skip
        print(rows[-1], flush=True)
        del engine
        torch.cuda.empty_cache()

    engine = Engine("cuda")
    engine.dream(photo(640, 480), DreamParams(octaves=1, steps=1))
    torch.cuda.empty_cache()
    free, _ = torch.cuda.mem_get_info()
    ballast = torch.empty(max(0, free - 8 * GIB), dtype=torch.uint8, device="cuda")
    model = engine.model(params.model)
    objective = engine.objective(params, model)
    plan = dream_module.plan_tiles(model, objective, engine.autocast, 512, big[::-1])
    _, seconds, peak = peak_of(lambda: engine.dream(large, params))
    rows.append((f"{big[0]}x{big[1]} 8 GB free", f"{seconds:.2f}", f"{peak:.2f}", "", "",
                 f"tiles {plan.size} x{plan.batch}"))  # fmt: skip
    print(rows[-1], flush=True)

    original_plan = dream_module.plan_tiles
    forced = iter([dream_module.TilePlan(4096, 16)])
    dream_module.plan_tiles = lambda *a, **k: next(forced, None) or original_plan(*a, **k)
    try:
        _, seconds, peak = peak_of(lambda: engine.dream(large, params))
        outcome = "recovered"
    except Exception as err:  # noqa: BLE001 - the row says what happened
        seconds, peak, outcome = float("nan"), float("nan"), f"failed: {err}"
    finally:
        dream_module.plan_tiles = original_plan
    rows.append((f"{big[0]}x{big[1]} 8 GB, 4096 x16 forced", f"{seconds:.2f}", f"{peak:.2f}",
                 "", "", outcome))  # fmt: skip
    print(rows[-1], flush=True)
    del ballast

    header = ("run", "seconds", "peak GiB", "gain", "vs fp32", "|GPU-CPU| / note")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    print(f"\n{name}; defaults (preset animals, 4 octaves x 1.4, 10 steps), median of {repeats}")
    for row in [header, *rows]:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
