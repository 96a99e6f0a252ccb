"""Seconds for a 4-image, 256 px, 256-step channel visualization on effnet-lite0.

Target on the 2-core CPU: under 40 s. Pass --device cuda on a GPU machine.
Run: .venv/bin/python bench/visualize_speed.py [--repeats 3] [--device cpu]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from dream_server.engine import Engine
from dream_server.params import VisualizeParams


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.set_num_threads(2)
    engine = Engine(args.device)
    params = VisualizeParams.from_mapping(
        {"layer": "block7", "channel": 5, "samples": 4, "size": 256, "steps": 256}
    )
    engine.model(params.model)
    times = []
    for seed in range(args.repeats):
        start = time.perf_counter()
        engine.visualize(VisualizeParams.from_mapping({**params.to_mapping(), "seed": seed}))
        times.append(time.perf_counter() - start)
    print(
        f"4 x 256 px x 256 steps, block7 channel 5, effnet-lite0 on {engine.device}: "
        f"median {statistics.median(times):.1f} s of {args.repeats} "
        f"(min {min(times):.1f}, max {max(times):.1f}); target under 40 s on the CPU"
    )


if __name__ == "__main__":
    main()
