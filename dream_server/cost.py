"""How long a job will take on this server, from how long its last jobs took.

A job's work is counted in units whose time grows with them in proportion: for a dream, the
pixels of each octave times the steps taken on them (a zoom is its frames' dreams); for feature
visualization, the samples' pixels times the steps. The server notes the seconds per unit of
its last jobs of each kind and model, and an estimate is the work times their median.
"""

from __future__ import annotations

import collections
import statistics
from dataclasses import replace

from .dream import octave_sizes
from .params import DreamParams, VisualizeParams, ZoomParams

KEPT_JOBS = 8
"""The last jobs of a kind whose pace an estimate is made from: recent enough to follow a
server that got busier, enough that one odd job does not sway it."""

Work = tuple[str, str, float]
"""What a job computes: its kind ("dream" or "visualize"), its model, and its units."""


def dream_work(width: int, height: int, params: DreamParams) -> Work:
    pixels = sum(h * w for h, w in octave_sizes(height, width, params.octaves,
                                                params.octave_scale, 1))  # fmt: skip
    return "dream", params.model, float(pixels * params.steps)


def zoom_work(width: int, height: int, params: DreamParams, zoom: ZoomParams) -> Work:
    """The first frame's dream, then each later frame's, with its steps per frame."""
    return frames_work(width, height, params, zoom.frames, zoom.steps_per_frame)


def frames_work(width: int, height: int, params: DreamParams, count: int, steps: int) -> Work:
    """An animation's frames: the first dreamed fully, each next one `steps` per octave."""
    _, model, first = dream_work(width, height, params)
    _, _, later = dream_work(width, height, replace(params, steps=steps))
    return "dream", model, first + (count - 1) * later


def visualize_work(params: VisualizeParams, pixels: int | None = None,
                   samples: int | None = None) -> Work:  # fmt: skip
    """Its images' pixels times the steps: `samples` images (an atlas's channels) of `pixels`
    (a photo's, accentuated), by default the parameters' own."""
    pixels = params.size**2 if pixels is None else pixels
    samples = params.samples if samples is None else samples
    return "visualize", params.model, float(samples * pixels * params.steps)


class Paces:
    """The seconds per unit of work of this server's last jobs, by kind and model."""

    def __init__(self) -> None:
        self._paces: dict[tuple[str, str], collections.deque] = {}

    def note(self, work: Work, seconds: float) -> None:
        kind, model, units = work
        if units > 0:
            self._paces.setdefault((kind, model), collections.deque(maxlen=KEPT_JOBS)).append(
                seconds / units
            )

    def estimate(self, work: Work) -> tuple[float | None, int]:
        """Seconds for that work, from how many jobs; None before a job of its kind and model
        has ended here."""
        kind, model, units = work
        paces = self._paces.get((kind, model))
        if not paces:
            return None, 0
        return units * statistics.median(paces), len(paces)
