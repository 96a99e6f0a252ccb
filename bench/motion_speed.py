"""How many zoom frames a minute this machine dreams, in one run.

512x512 frames from the coffee sample, default dream settings: the first frame a full dream, the
ones after it `--steps-per-frame` steps per octave (the CLI's default, 5), as `deepdream zoom`
makes them. Prints seconds per frame (medians) and frames per minute, for the first frame and
for the frames after it, side by side with a still dream of the same size.

Run: .venv/bin/python bench/motion_speed.py [--frames 9]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dream_server.engine import Engine  # noqa: E402
from dream_server.motion import CameraMove, zoom_sequence  # noqa: E402
from dream_server.params import DreamParams, ZoomParams  # noqa: E402

SAMPLE = Path(__file__).resolve().parent.parent / "dream_server" / "samples" / "coffee.png"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--frames", type=int, default=9)
    args = parser.parse_args()
    start = np.asarray(Image.open(SAMPLE).convert("RGB").resize((512, 512)))
    engine = Engine("auto")
    params = DreamParams()
    zoom = ZoomParams()
    engine.dream(start[:128, :128], params)  # warm up
    seconds: list[float] = []

    def dream(frame: np.ndarray, index: int) -> np.ndarray:
        frame_params = params if index == 0 else replace(params, steps=zoom.steps_per_frame)
        began = time.perf_counter()
        dreamed = engine.dream(frame, frame_params)
        seconds.append(time.perf_counter() - began)
        return dreamed

    for _ in zoom_sequence(start, CameraMove.of(zoom), args.frames, dream):
        pass
    first, rest = seconds[0], statistics.median(seconds[1:])
    print(f"512x512 zoom frames on {engine.device}, default settings, "
          f"{zoom.steps_per_frame} steps per octave after the first ({args.frames} frames)")  # fmt: skip
    print(f"{'':34}{'s/frame':>10}{'frames/min':>12}")
    print(f"{'first frame (a still dream)':34}{first:>10.2f}{60 / first:>12.1f}")
    print(f"{'each frame after it (median)':34}{rest:>10.2f}{60 / rest:>12.1f}")


if __name__ == "__main__":
    main()
