"""Dream a 6000x4000 photo in this fresh process and print seconds and peak memory as JSON.

Run: .venv/bin/python bench/big_dream.py [--octaves 2] [--steps 1]
(tests/test_tiling.py runs it too, to hold the engine to bounded memory).
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from dream_server.engine import Engine
from dream_server.params import DreamParams

SAMPLE = Path(__file__).resolve().parent.parent / "dream_server" / "samples" / "coffee.png"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--octaves", type=int, default=2)
    parser.add_argument("--steps", type=int, default=1)
    parser.add_argument("--tile-size", type=int, default=512)
    args = parser.parse_args()
    torch.set_num_threads(2)
    photo = Image.open(SAMPLE).convert("RGB").resize((6000, 4000), Image.BICUBIC)
    image = np.asarray(photo)
    engine = Engine("cpu")
    params = DreamParams.from_mapping(
        {"octaves": args.octaves, "steps": args.steps, "tile-size": args.tile_size}
    )
    start = time.perf_counter()
    result = engine.dream(image, params)
    report = {
        "size": "6000x4000",
        "octaves": args.octaves,
        "steps": args.steps,
        "seconds": round(time.perf_counter() - start, 1),
        "peak_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "shape": list(result.shape),
        "mean_change": round(float(np.abs(result.astype(np.float32) - image).mean()), 2),
    }
    print(json.dumps(report))


if __name__ == "__main__":
    main()
