"""Dreams that move: the endless zoom, each frame dreamed on the last one after a camera move.

The pieces compose: `CameraMove.apply` moves a frame, `zoom_sequence` walks a dream function
along the moves. The dream function is the caller's (an engine's `dream` with its parameters),
so this module knows nothing of models, files or progress bars.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch

from .errors import InvalidParameter
from .params import ZoomParams

FrameDream = Callable[[np.ndarray, int], np.ndarray]
"""Dreams on a frame, given its number (from 0); returns it in the same layout."""


@dataclass(frozen=True)
class CameraMove:
    """How the camera moves between two frames, about the frame's centre (ZOOM_PARAMETERS says
    what each may be)."""

    zoom: float = 1.05
    """Scale per frame: over 1 moves in, under 1 moves out."""
    rotate: float = 0.0
    """Degrees per frame, clockwise on screen."""
    shift: tuple[float, float] = (0.0, 0.0)
    """Pixels per frame that the picture moves, right and down."""

    @classmethod
    def of(cls, params: ZoomParams) -> CameraMove:
        return cls(params.zoom, params.rotate, (params.shift_x, params.shift_y))

    def apply(self, image: np.ndarray) -> np.ndarray:
        """The image as the moved camera sees it: same size, layout and type. What comes into
        view from outside the frame is the frame's reflection (no black borders to dream on)."""
        height, width = image.shape[:2]
        pixels = torch.from_numpy(np.ascontiguousarray(image, np.float32))
        pixels = pixels.reshape(height, width, -1).permute(2, 0, 1)[None]
        moved = torch.nn.functional.grid_sample(
            pixels,
            self._sampling_grid(width, height),
            mode="bicubic",
            padding_mode="reflection",
            align_corners=False,
        )[0].permute(1, 2, 0)
        moved = moved.reshape(image.shape).numpy()
        if image.dtype == np.uint8:
            return np.clip(np.rint(moved), 0, 255).astype(np.uint8)
        return moved.astype(image.dtype)

    def _sampling_grid(self, width: int, height: int) -> torch.Tensor:
        """For each output pixel, where it comes from in the input, in grid_sample's units."""
        angle = math.radians(self.rotate)
        # Output = centre + zoom * R(angle) * (input - centre) + shift; this is its inverse, in
        # pixels about the centre, then scaled to grid_sample's [-1, 1] on each axis.
        inverse = (
            np.array([[math.cos(angle), math.sin(angle)], [-math.sin(angle), math.cos(angle)]])
            / self.zoom
        )
        offset = -inverse @ np.asarray(self.shift, np.float64)
        to_unit = np.diag([2.0 / width, 2.0 / height])
        theta = np.zeros((2, 3))
        theta[:, :2] = to_unit @ inverse @ np.linalg.inv(to_unit)
        theta[:, 2] = to_unit @ offset
        return torch.nn.functional.affine_grid(
            torch.tensor(theta, dtype=torch.float32)[None],
            [1, 1, height, width],
            align_corners=False,
        )


def zoom_sequence(
    first: np.ndarray, move: CameraMove, frames: int, dream: FrameDream, start: int = 0,
    previous: np.ndarray | None = None,
) -> Iterator[np.ndarray]:  # fmt: skip
    """Frames `start`.. of the zoom: frame 0 is `dream(first, 0)`; frame k is the dream on frame
    k-1 moved by the camera. Frames stream out one by one; only the last is kept. To continue a
    sequence from frame `start`, pass the frame before it as `previous`."""
    if frames < 1:
        raise InvalidParameter(f"A zoom needs at least one frame; got {frames}.")
    if start > 0 and previous is None:
        raise ValueError("continuing a sequence needs the frame before `start`")
    frame = previous
    for index in range(start, frames):
        frame = dream(first if index == 0 else move.apply(frame), index)
        yield frame
