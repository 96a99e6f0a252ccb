"""How fast motion dreams and how steady dreamed video is, in one run.

1. Zoom: 512x512 frames from the coffee sample, default settings, as `deepdream zoom` makes
   them (the first frame a still dream, the ones after it 5 steps per octave). Seconds per
   frame (median) and frames per minute.
2. Video: 640x360 frames of a camera panning 3 px a frame across the rocket photo (the cat,
   upscaled), default settings, as `deepdream video` makes them (2 steps per octave after the
   first, 0.9 of the dream carried). For each way of dreaming frame after frame: seconds per
   frame, frames per minute, the unsteadiness (mean difference of each dreamed frame from the
   one before moved by the pan, in levels of 255) and the activation gain, side by side.

Run: .venv/bin/python bench/motion_speed.py [--frames 7]
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
from dream_server.motion import CameraMove, Carry, steady_sequence, zoom_sequence  # noqa: E402
from dream_server.params import DreamParams, VideoParams, ZoomParams  # noqa: E402

SAMPLES = Path(__file__).resolve().parent.parent / "dream_server" / "samples"
PAN_PX = 3


def zoom_figures(engine: Engine, frames: int) -> None:
    start = np.asarray(Image.open(SAMPLES / "coffee.png").convert("RGB").resize((512, 512)))
    params, zoom = DreamParams(), ZoomParams()
    seconds: list[float] = []

    def dream(frame: np.ndarray, index: int) -> np.ndarray:
        frame_params = params if index == 0 else replace(params, steps=zoom.steps_per_frame)
        began = time.perf_counter()
        dreamed = engine.dream(frame, frame_params)
        seconds.append(time.perf_counter() - began)
        return dreamed

    for _ in zoom_sequence(start, CameraMove.of(zoom), frames, dream):
        pass
    first, rest = seconds[0], statistics.median(seconds[1:])
    print(f"zoom, 512x512 on {engine.device}, default settings ({frames} frames)")
    print(f"{'':34}{'s/frame':>10}{'frames/min':>12}")
    print(f"{'first frame (a still dream)':34}{first:>10.2f}{60 / first:>12.1f}")
    print(f"{'each frame after it (median)':34}{rest:>10.2f}{60 / rest:>12.1f}")


def panned_clip(frames: int) -> list[np.ndarray]:
    cat = Image.open(SAMPLES / "chelsea.png").convert("RGB")
    wide = np.asarray(cat.resize((640 + PAN_PX * frames, 427), Image.LANCZOS))
    return [
        np.ascontiguousarray(wide[30:390, PAN_PX * k : PAN_PX * k + 640]) for k in range(frames)
    ]


def unsteadiness(frames: list[np.ndarray]) -> float:
    return float(np.mean([
        np.abs(b[8:-8, 8 : -8 - PAN_PX].astype(np.float32) - a[8:-8, 8 + PAN_PX : -8]).mean()
        for a, b in zip(frames, frames[1:], strict=False)
    ]))  # fmt: skip


def video_figures(engine: Engine, frames: int) -> None:
    clip = panned_clip(frames)
    params, video = DreamParams(), VideoParams()
    print(f"\nvideo, 640x360 panned {PAN_PX} px a frame, on {engine.device}, default settings "
          f"({frames} frames; the source itself: {unsteadiness(clip):.2f})")  # fmt: skip
    print(f"{'':30}{'s/frame':>10}{'frames/min':>12}{'unsteadiness':>14}{'gain':>8}")
    for name, carry in (("each frame on its own", None),
                        ("blended (no flow)", Carry(video.blend, flow=False)),
                        ("following the flow", Carry(video.blend, flow=True))):  # fmt: skip

        def dream(frame: np.ndarray, index: int, carry: Carry | None = carry) -> np.ndarray:
            alone = carry is None or index == 0
            return engine.dream(
                frame, params if alone else replace(params, steps=video.steps_per_frame)
            )

        dreamed, seconds = [], []  # each frame's whole cost: the flow and the dream
        began = time.perf_counter()
        for frame in steady_sequence(clip, carry, dream):
            dreamed.append(frame)
            seconds.append(time.perf_counter() - began)
            began = time.perf_counter()
        gain = statistics.mean(engine.activation(d, params) / engine.activation(c, params)
                               for d, c in zip(dreamed, clip, strict=True))  # fmt: skip
        per_frame = statistics.median(seconds[1:])
        print(f"{name:30}{per_frame:>10.2f}{60 / per_frame:>12.1f}{unsteadiness(dreamed):>14.2f}"
              f"{gain:>8.2f}")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--frames", type=int, default=7)
    args = parser.parse_args()
    engine = Engine("auto")
    engine.dream(np.zeros((128, 128, 3), np.uint8), DreamParams())  # warm up
    zoom_figures(engine, args.frames)
    video_figures(engine, args.frames)


if __name__ == "__main__":
    main()
