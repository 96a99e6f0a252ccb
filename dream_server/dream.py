"""The DeepDream loop: gradient ascent on the pixels over an octave pyramid, in tiles.

Per octave the image is the downscaled original plus the detail dreamed so far (detail
re-injection). Per step: roll the image by a random offset (jitter, and it moves tile seams),
take the objective's gradient tile by tile, roll back, smooth it across scales, and move the
pixels by a step normalised by the gradient's mean magnitude.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .devices import precision, prefers_bfloat16
from .errors import DreamCancelled, InvalidImage, OutOfMemory
from .imaging import Pixels, check_mask, keep_colours
from .models import FeatureModel
from .objectives import Objective

log = logging.getLogger(__name__)

MAX_ENLARGED_SIDE = 8192
"""Images too small for the network are enlarged; a sliver may not become a giant."""

ProgressCallback = Callable[[int, int, float], None]
"""Called after every step with (octave index, step index, fraction of all work done)."""
StopCheck = Callable[[], bool]


@dataclass(frozen=True)
class AscentSettings:
    """What the loop needs to know; `DreamParams` carries these plus the rest."""

    octaves: int = 4
    octave_scale: float = 1.4
    steps: int = 10
    step_size: float = 1.5
    jitter: int = 32
    smoothness: float = 0.0
    max_change: float = 0.0
    tile_size: int = 512
    seed: int = 0


def octave_sizes(
    height: int, width: int, octaves: int, scale: float, min_size: int
) -> list[tuple[int, int]]:
    """Sizes from coarse to fine, ending at full size; octaves too small for the net are skipped."""
    sizes = []
    for i in reversed(range(octaves)):
        factor = scale**-i
        size = (round(height * factor), round(width * factor))
        if min(size) >= min_size or i == 0:
            sizes.append(size)
    return sizes


def split_evenly(length: int, tile: int) -> list[tuple[int, int]]:
    """Cut 0..length into near-equal spans, as many as brings each closest to `tile`.

    Spans are under 1.5x `tile` and, unless `length` itself is shorter, at least 0.75x: cutting
    a side just over the tile size into two thin tiles would cost time for nothing (a 549 px
    side is one tile, not two of 275).
    """
    count = max(1, math.floor(length / tile + 0.5))
    edges = [round(i * length / count) for i in range(count + 1)]
    return list(zip(edges, edges[1:], strict=False))


class GradientAscent:
    """Gradient ascent on an image for one objective, on one model and device."""

    halo = 16
    """Pixels of context each tile sees beyond its own: with 16 a tiled dream gains as much as
    a whole-image one (3.83x on block10, 16 seeds), without it 1% less; it costs 7% more time."""

    def __init__(
        self,
        model: FeatureModel,
        objective: Objective,
        settings: AscentSettings,
        on_progress: ProgressCallback | None = None,
        should_stop: StopCheck | None = None,
    ) -> None:
        self.model = model
        self.objective = objective
        self.settings = settings
        self.on_progress = on_progress
        self.should_stop = should_stop
        self.device = next(model.parameters()).device
        self.bfloat16 = prefers_bfloat16(self.device)
        self.generator = torch.Generator().manual_seed(settings.seed)

    def run(self, base: torch.Tensor) -> torch.Tensor:
        """Dream on `base`, (1, 3, H, W) in 0..1 on the model's device; returns the same shape."""
        s = self.settings
        height, width = base.shape[-2:]
        sizes = octave_sizes(height, width, s.octaves, s.octave_scale, self.model.min_input_size)
        total_work = sum(h * w for h, w in sizes) * s.steps
        done_work = 0
        detail = torch.zeros_like(base[..., : sizes[0][0], : sizes[0][1]])
        for octave, size in enumerate(sizes):
            octave_base = _resize(base, size)
            # Re-inject the detail dreamed so far, enlarged to this octave.
            image = _resize(detail, size).add_(octave_base).clamp_(0, 1)
            for step in range(s.steps):
                if self.should_stop and self.should_stop():
                    raise DreamCancelled()
                image = self.step(image)
                done_work += size[0] * size[1]
                if self.on_progress:
                    self.on_progress(octave, step, done_work / total_work)
                if s.max_change and _rms(image - octave_base) >= s.max_change:
                    log.info("Stopped at octave %d step %d: max-change reached", octave, step)
                    return (base + _resize(image - octave_base, (height, width))).clamp_(0, 1)
            detail = image.sub_(octave_base)  # the image itself is not needed any more
        return detail.add_(octave_base)

    def step(self, image: torch.Tensor) -> torch.Tensor:
        """One ascent step; updates `image` in place (big images have no room for copies)."""
        s = self.settings
        height, width = image.shape[-2:]
        shift_y, shift_x = self._random_shift(height), self._random_shift(width)
        rolled_gradient = self.gradient(torch.roll(image, (shift_y, shift_x), (2, 3)))
        gradient = torch.roll(rolled_gradient, (-shift_y, -shift_x), (2, 3))
        del rolled_gradient  # full-size buffers: a 6000x4000 image has 288 MB in each
        gradient = normalize_scales(gradient, s.smoothness)
        gradient.mul_((s.step_size / 255.0) / (gradient.abs().mean() + 1e-8))
        return image.add_(gradient).clamp_(0, 1)

    def _random_shift(self, length: int) -> int:
        # The jitter alone, as in the classic notebook: it moves the tile borders too, and the
        # halo hides them. Rolling by up to a whole tile (TF's tiled notebook) would bring the
        # roll's wrap-around seam into mid-image, where the network dreams across a false edge:
        # 3% less gain at bench/dream_speed.py's settings (mean of 16 seeds).
        span = self.settings.jitter
        if span == 0:
            return 0
        return int(torch.randint(-span, span + 1, (1,), generator=self.generator))

    def gradient(self, image: torch.Tensor) -> torch.Tensor:
        """The objective's gradient over the whole image, computed tile by tile.

        Every pixel takes its gradient from exactly one tile. Each tile's window reaches `halo`
        pixels into its neighbours, so that the network sees the image around the tile's edge
        rather than zero padding, and its score is weighted by the window's share of the image,
        so that every tile's gradient has the scale of the whole image's.
        """
        height, width = image.shape[-2:]
        halo = self.halo
        gradient = torch.empty_like(image)
        for top, bottom in split_evenly(height, self.settings.tile_size):
            for left, right in split_evenly(width, self.settings.tile_size):
                if self.should_stop and self.should_stop():  # a big image's step takes a while
                    raise DreamCancelled()
                window_top, window_bottom = max(0, top - halo), min(height, bottom + halo)
                window_left, window_right = max(0, left - halo), min(width, right + halo)
                window = image[..., window_top:window_bottom, window_left:window_right]
                window = window.contiguous(memory_format=torch.channels_last)
                window.requires_grad_(True)
                share = window.shape[-2] * window.shape[-1] / (height * width)
                with precision(self.device, self.bfloat16):
                    score = self.objective(self.model(window, self.objective.layers)) * share
                (window_gradient,) = torch.autograd.grad(score, window)
                gradient[..., top:bottom, left:right] = window_gradient[
                    ...,
                    top - window_top : bottom - window_top,
                    left - window_left : right - window_left,
                ]
        return gradient


def normalize_scales(gradient: torch.Tensor, smoothness: float, levels: int = 4) -> torch.Tensor:
    """Even out the gradient's frequency bands (Laplacian-pyramid normalisation).

    Each band is divided by its standard deviation raised to `smoothness`: 0 changes nothing
    (the classic look), 1 gives every band equal weight, so the coarse structure that raw
    gradients drown in pixel-level noise comes through.
    """
    if smoothness <= 0:
        return gradient
    bands = []
    current = gradient
    for _ in range(levels - 1):
        if min(current.shape[-2:]) < 4:
            break
        low = F.interpolate(current, scale_factor=0.5, mode="bilinear", antialias=True)
        bands.append(current - _resize(low, current.shape[-2:]))
        current = low
    bands.append(current)
    merged = bands[-1] / (bands[-1].std() + 1e-8) ** smoothness
    for band in reversed(bands[:-1]):
        merged = _resize(merged, band.shape[-2:]) + band / (band.std() + 1e-8) ** smoothness
    return merged


def _resize(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    if tuple(image.shape[-2:]) == tuple(size):
        return image
    shrinking = size[0] < image.shape[-2]
    return F.interpolate(
        image, size=size, mode="bilinear", align_corners=False, antialias=shrinking
    )


def _is_out_of_memory(err: BaseException) -> bool:
    # The CPU allocator reports exhaustion as a plain RuntimeError.
    return isinstance(err, torch.OutOfMemoryError | MemoryError) or (
        "can't allocate memory" in str(err) or "out of memory" in str(err).lower()
    )


def _rms(values: torch.Tensor) -> float:
    return float(values.square().mean().sqrt())


def dream(
    model: FeatureModel,
    image: np.ndarray,
    objective: Objective,
    settings: AscentSettings,
    strength: float = 1.0,
    keep_colors: bool = False,
    mask: np.ndarray | None = None,
    on_progress: ProgressCallback | None = None,
    should_stop: StopCheck | None = None,
) -> np.ndarray:
    """Dream on an (H, W, C) array and return one of the same shape and type.

    Gray and RGB, with or without alpha, 8/16-bit or float. Alpha comes back bit for bit, and
    where `mask` (H, W, 0..1) is 0 the pixels come back exactly as they were. With strength 0
    the input itself comes back.
    """
    if strength == 0:  # nothing changes: no float conversion, no copy of a big image
        return Pixels.check_array(image)
    pixels = Pixels.from_array(image)
    height, width = pixels.rgb.shape[:2]
    weights = check_mask(mask, (height, width)) if mask is not None else None
    if weights is not None and not weights.any():
        return pixels.original.copy()
    device = next(model.parameters()).device
    base = torch.from_numpy(pixels.rgb).permute(2, 0, 1)[None].to(device)
    # Images smaller than the network can see are dreamed enlarged, then shrunk back.
    enlarge = model.min_input_size / min(height, width)
    if enlarge > 1:
        working_size = (math.ceil(height * enlarge), math.ceil(width * enlarge))
        if max(working_size) > MAX_ENLARGED_SIDE:
            raise InvalidImage(
                f"The image is {width}x{height} pixels: too thin to dream on (the network needs "
                f"{model.min_input_size} pixels on the short side). Make it wider or taller."
            )
        base = _resize(base, working_size)
    ascent = GradientAscent(model, objective, settings, on_progress, should_stop)
    try:
        dreamed = ascent.run(base)
    except (torch.OutOfMemoryError, MemoryError, RuntimeError) as err:
        if not _is_out_of_memory(err):
            raise
        raise OutOfMemory(
            f"The {device.type.upper()} ran out of memory dreaming {width}x{height} pixels with "
            f"tiles of {settings.tile_size}: use a smaller tile size or a smaller image or "
            "selection."
        ) from err
    if enlarge > 1:
        dreamed = _resize(dreamed, (height, width))
    dreamed_rgb = dreamed[0].permute(1, 2, 0).float().cpu().numpy()
    if keep_colors:
        dreamed_rgb = keep_colours(pixels.rgb, dreamed_rgb)
    return pixels.compose(dreamed_rgb, strength, weights)
