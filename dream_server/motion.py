"""Dreams that move: the endless zoom, and video whose dream moves with the picture.

The pieces compose: `CameraMove.apply` moves a frame and `zoom_sequence` walks a dream function
along the moves; `Carry.start` carries one frame's dream onto the next video frame (along the
optical flow, `follow_flow`) and `steady_sequence` walks a dream function along a clip. The
dream function is the caller's (an engine's `dream` with its parameters), so this module knows
nothing of models, files or progress bars.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, replace

import numpy as np
import torch

from .errors import InvalidParameter
from .params import DreamParams, ZoomParams

FrameDream = Callable[[np.ndarray, int], np.ndarray]
"""Dreams on a frame, given its number (from 0); returns it in the same layout."""


def frame_params(
    params: DreamParams, index: int, steps_per_frame: int, new_seed: bool
) -> DreamParams:
    """The dream settings of frame `index` of a motion: the first frame is a still dream; each
    after it starts from a picture that carries the dream already, so it takes
    `steps_per_frame` steps per octave, with a seed of its own where `new_seed` (a zoom's new
    detail should not repeat the last frame's jitter)."""
    if index == 0:
        return params
    seed = (params.seed + index) % 2**31 if new_seed else params.seed
    return replace(params, steps=steps_per_frame, seed=seed)


@dataclass(frozen=True)
class CameraMove:
    """How the camera moves between two frames, about the frame's centre (ZOOM_PARAMETERS says
    what each may be)."""

    zoom: float = 1.0
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


@dataclass(frozen=True)
class Carry:
    """How a video's dreamed frame passes its dream on to the next source frame.

    With `flow`, the previous frame's dream (dreamed minus source) is moved along the optical
    flow between the two source frames and added to the next one, `weight` of it, except where
    the flow is not to be trusted (what comes into view, what moves behind something): the
    forward and backward flows disagree there. Without, the previous dreamed frame is blended
    into the next one as it is, `weight` of it (DeepDreamVideo's way: moving things smear).
    """

    weight: float
    flow: bool

    def start(
        self, source: np.ndarray, previous_source: np.ndarray, previous_dreamed: np.ndarray
    ) -> np.ndarray:
        """What the next frame's dream starts from: its source with the dream carried over."""
        current = source.astype(np.float32)
        if not self.flow:
            blended = (1 - self.weight) * current + self.weight * previous_dreamed
            return np.clip(np.rint(blended), 0, 255).astype(np.uint8)
        dream = previous_dreamed.astype(np.float32) - previous_source.astype(np.float32)
        carried, trusted = follow_flow(dream, previous_source, source)
        started = current + self.weight * carried * trusted[:, :, None]
        return np.clip(np.rint(started), 0, 255).astype(np.uint8)


FLOW_DISAGREEMENT_PX = 1.0
"""Where following the flow there and back lands further than this from where it started, the
flow is not trusted (occlusions, things coming into view)."""


def follow_flow(
    values: np.ndarray, before: np.ndarray, after: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """`values` laid on the `before` frame, moved to where its content is in the `after` frame
    (OpenCV's DIS optical flow on the gray frames); and a 0/1 map of where that is trusted."""
    import cv2

    gray_before = cv2.cvtColor(before, cv2.COLOR_RGB2GRAY)
    gray_after = cv2.cvtColor(after, cv2.COLOR_RGB2GRAY)
    dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
    back = dis.calc(gray_after, gray_before, None)  # for each pixel after: where it was before
    forth = dis.calc(gray_before, gray_after, None)
    height, width = gray_after.shape
    grid_x, grid_y = np.meshgrid(np.arange(width, dtype=np.float32),
                                 np.arange(height, dtype=np.float32))  # fmt: skip
    from_x, from_y = grid_x + back[:, :, 0], grid_y + back[:, :, 1]
    moved = cv2.remap(values, from_x, from_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    forth_there = cv2.remap(forth, from_x, from_y, cv2.INTER_LINEAR,
                            borderMode=cv2.BORDER_REPLICATE)  # fmt: skip
    round_trip = np.hypot(
        back[:, :, 0] + forth_there[:, :, 0], back[:, :, 1] + forth_there[:, :, 1]
    )
    inside = (from_x >= 0) & (from_x <= width - 1) & (from_y >= 0) & (from_y <= height - 1)
    trusted = ((round_trip < FLOW_DISAGREEMENT_PX) & inside).astype(np.float32)
    return moved.reshape(values.shape), trusted


def steady_sequence(
    sources: Iterable[np.ndarray], carry: Carry | None, dream: FrameDream, start: int = 0,
    previous: tuple[np.ndarray, np.ndarray] | None = None,
) -> Iterator[np.ndarray]:  # fmt: skip
    """Dreamed frames of a video, one per source frame: the first dreamed on its own, each next
    one from its source with the previous dream carried over (`carry`; None dreams each frame
    on its own). Frames stream through; only the previous pair is kept. To continue from frame
    `start`, give `sources` from there and `previous` = (source, dreamed) of the frame before."""
    previous_source, previous_dreamed = previous if previous is not None else (None, None)
    for index, source in enumerate(sources, start):
        if carry is None or previous_source is None:
            begin = source
        else:
            begin = carry.start(source, previous_source, previous_dreamed)
        dreamed = dream(begin, index)
        yield dreamed
        previous_source, previous_dreamed = source, dreamed
