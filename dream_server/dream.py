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

from dream_link.wire import Progress, ProgressCallback

from .devices import precision, tune_for
from .errors import DreamCancelled, InvalidImage, OutOfMemory
from .imaging import Pixels, check_mask, keep_colours
from .models import FeatureModel
from .objectives import Objective
from .params import DreamParams

log = logging.getLogger(__name__)

MAX_ENLARGED_SIDE = 8192
"""Images too small for the network are enlarged; a sliver may not become a giant."""

MIN_TILE_SIZE = 128
MAX_BATCH = 16
PROBE_SIZE = 256
"""A probe window this size measures what a window pixel costs in device memory."""
FULL_SIZE_BUFFERS = 6
"""Full-size float32 RGB buffers a dream holds at once: the base, the image, its rolled copy,
the gradient and its rolled copy, and the octave's base."""

FP16_SCORE_SCALE = 2.0**16
"""Where fp16 gradients start: a tile's mean activation spreads 1/N over N values, below
fp16's smallest normal number for a 512 px tile; this lifts them well into its range."""

StopCheck = Callable[[], bool]


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


@dataclass(frozen=True)
class TilePlan:
    """How the gradient of a big image is computed: tiles of about `size` pixels on a side,
    up to `batch` windows of the same shape at once."""

    size: int
    batch: int = 1


@dataclass(frozen=True)
class Window:
    """One tile of the image, and the larger window around it that the network sees."""

    tile: tuple[slice, slice]
    window: tuple[slice, slice]
    inside: tuple[slice, slice]
    """Where the tile lies within the window."""

    @property
    def shape(self) -> tuple[int, int]:
        return (
            self.window[0].stop - self.window[0].start,
            self.window[1].stop - self.window[1].start,
        )


def tile_windows(height: int, width: int, tile_size: int, halo: int) -> list[Window]:
    """Tiles that cover every pixel once, each in a window reaching `halo` pixels beyond it.

    All windows have one shape: at the image's border, where there is nothing beyond the tile,
    a window reaches further inwards instead. So the network runs on one input shape per
    octave, which cuDNN's autotuner times once, and which batches.
    """
    rows, columns = split_evenly(height, tile_size), split_evenly(width, tile_size)
    window_height = min(height, max(b - a for a, b in rows) + 2 * halo)
    window_width = min(width, max(b - a for a, b in columns) + 2 * halo)
    windows = []
    for top, bottom in rows:
        window_top = min(max(0, top - halo), height - window_height)
        for left, right in columns:
            window_left = min(max(0, left - halo), width - window_width)
            windows.append(
                Window(
                    tile=(slice(top, bottom), slice(left, right)),
                    window=(
                        slice(window_top, window_top + window_height),
                        slice(window_left, window_left + window_width),
                    ),
                    inside=(
                        slice(top - window_top, bottom - window_top),
                        slice(left - window_left, right - window_left),
                    ),
                )
            )
    return windows


class GradientAscent:
    """Gradient ascent on an image for one objective, on one model and device."""

    halo = 16
    """Pixels of context each tile sees beyond its own: with 16 a tiled dream gains as much as
    a whole-image one (3.83x on block10, 16 seeds), without it 1% less; it costs 7% more time."""

    def __init__(
        self,
        model: FeatureModel,
        objective: Objective,
        params: DreamParams,
        plan: TilePlan | None = None,
        autocast: torch.dtype | None = None,
        on_progress: ProgressCallback | None = None,
        should_stop: StopCheck | None = None,
    ) -> None:
        self.model = model
        self.objective = objective
        self.params = params
        self.plan = plan or TilePlan(params.tile_size)
        self.autocast = autocast
        self.on_progress = on_progress
        self.should_stop = should_stop
        self.device = next(model.parameters()).device
        # fp16 gradients of a mean over a whole tile underflow; the step is normalised by the
        # gradient's mean magnitude, so any constant factor on the score is free to take.
        self.score_scale = FP16_SCORE_SCALE if autocast == torch.float16 else 1.0
        self.generator = torch.Generator().manual_seed(params.seed)
        self.resize = _resize_wrapped if params.tileable else _resize
        """Between octaves: a tileable dream's image is periodic, and so are its resizes."""

    def run(self, base: torch.Tensor) -> torch.Tensor:
        """Dream on `base`, (1, 3, H, W) in 0..1 on the model's device; returns the same shape."""
        p = self.params
        height, width = base.shape[-2:]
        sizes = octave_sizes(height, width, p.octaves, p.octave_scale, self.model.min_input_size)
        total_work = sum(h * w for h, w in sizes) * p.steps
        done_work = 0
        detail = torch.zeros_like(base[..., : sizes[0][0], : sizes[0][1]])
        for octave, size in enumerate(sizes):
            octave_base = self.resize(base, size)
            # Re-inject the detail dreamed so far, enlarged to this octave.
            image = self.resize(detail, size).add_(octave_base).clamp_(0, 1)
            for step in range(p.steps):
                if self.should_stop and self.should_stop():
                    raise DreamCancelled()
                image = self.step(image)
                done_work += size[0] * size[1]
                if self.on_progress:
                    fraction = done_work / total_work
                    self.on_progress(Progress(fraction, octave, len(sizes), step, p.steps))
                if p.max_change and _rms(image - octave_base) >= p.max_change:
                    log.info("Stopped at octave %d step %d: max-change reached", octave, step)
                    return (base + self.resize(image - octave_base, (height, width))).clamp_(0, 1)
            detail = image.sub_(octave_base)  # the image itself is not needed any more
        return detail.add_(octave_base)

    def step(self, image: torch.Tensor) -> torch.Tensor:
        """One ascent step; updates `image` in place (big images have no room for copies)."""
        p = self.params
        height, width = image.shape[-2:]
        shift_y, shift_x = self._random_shift(height), self._random_shift(width)
        rolled_gradient = self.gradient(torch.roll(image, (shift_y, shift_x), (2, 3)))
        gradient = torch.roll(rolled_gradient, (-shift_y, -shift_x), (2, 3))
        del rolled_gradient  # full-size buffers: a 6000x4000 image has 288 MB in each
        gradient = normalize_scales(gradient, p.smoothness, p.tileable)
        gradient.mul_((p.step_size / 255.0) / (gradient.abs().mean() + 1e-8))
        return image.add_(gradient).clamp_(0, 1)

    def _random_shift(self, length: int) -> int:
        # The jitter alone, as in the classic notebook: it moves the tile borders too, and the
        # halo hides them. Rolling by up to a whole tile (TF's tiled notebook) would bring the
        # roll's wrap-around seam into mid-image, where the network dreams across a false edge:
        # 3% less gain at bench/dream_speed.py's settings (mean of 16 seeds).
        span = self.params.jitter
        if self.params.tileable and span:  # no false edge to bring in: the image wraps
            return int(torch.randint(0, length, (1,), generator=self.generator))
        if span == 0:
            return 0
        return int(torch.randint(-span, span + 1, (1,), generator=self.generator))

    def gradient(self, image: torch.Tensor) -> torch.Tensor:
        """The objective's gradient over the whole image (see `tiled_gradient`); for a tileable
        dream, with the image wrapped around by the halo, so that the network sees across its
        edges as it sees across any other line."""
        if not self.params.tileable:
            return self.tiled_gradient(image)
        margin = min(self.halo, *image.shape[-2:])
        wrapped = F.pad(image, (margin, margin, margin, margin), mode="circular")
        return self.tiled_gradient(wrapped)[..., margin:-margin, margin:-margin].contiguous()

    def tiled_gradient(self, image: torch.Tensor) -> torch.Tensor:
        """The objective's gradient over the whole image, computed tile by tile.

        Every pixel takes its gradient from exactly one tile. Each tile's window reaches `halo`
        pixels into its neighbours, so that the network sees the image around the tile's edge
        rather than zero padding, and its score is weighted by the window's share of the image,
        so that every tile's gradient has the scale of the whole image's. Windows go through
        the network up to the plan's batch at once.
        """
        height, width = image.shape[-2:]
        gradient = torch.empty_like(image)
        windows = tile_windows(height, width, self.plan.size, self.halo)
        window_height, window_width = windows[0].shape
        share = window_height * window_width / (height * width)
        # Batches of even size: one input shape for the autotuner, however many windows.
        batch = math.ceil(len(windows) / math.ceil(len(windows) / self.plan.batch))
        for first in range(0, len(windows), batch):
            if self.should_stop and self.should_stop():  # a big image's step takes a while
                raise DreamCancelled()
            group = windows[first : first + batch]
            views = [image[(..., *w.window)] for w in group]
            pixels = views[0] if len(views) == 1 else torch.cat(views)
            group_gradient = self.window_gradient(pixels, share)
            for index, w in enumerate(group):
                gradient[(..., *w.tile)] = group_gradient[(slice(index, index + 1), ..., *w.inside)]
        return gradient

    def window_gradient(self, pixels: torch.Tensor, share: float) -> torch.Tensor:
        """The gradient of the objective, times `share`, for a batch of windows."""
        pixels = pixels.contiguous(memory_format=torch.channels_last).requires_grad_(True)
        while True:
            with precision(self.device, self.autocast):
                score = self.objective(self.model(pixels, self.objective.layers))
            (gradient,) = torch.autograd.grad(score * (share * self.score_scale), pixels)
            if self.score_scale == 1.0:
                return gradient
            if bool(torch.isfinite(gradient).all()):
                return gradient.div_(self.score_scale)
            if self.score_scale > 1.0:
                self.score_scale = max(1.0, self.score_scale / 256)
                log.debug("fp16 gradient overflowed: score scale down to %g", self.score_scale)
            else:
                log.warning("fp16 gradients overflow even unscaled: going on in fp32")
                self.autocast = None


def normalize_scales(
    gradient: torch.Tensor, smoothness: float, periodic: bool = False, levels: int = 4
) -> torch.Tensor:
    """Even out the gradient's frequency bands (Laplacian-pyramid normalisation).

    Each band is divided by its standard deviation raised to `smoothness`: 0 changes nothing
    (the classic look), 1 gives every band equal weight, so the coarse structure that raw
    gradients drown in pixel-level noise comes through. A `periodic` gradient (a tileable
    dream's) is resized as one.
    """
    resize = _resize_wrapped if periodic else _resize
    if smoothness <= 0:
        return gradient
    bands = []
    current = gradient
    for _ in range(levels - 1):
        if min(current.shape[-2:]) < 4:
            break
        if periodic:
            low = resize(current, (current.shape[-2] // 2, current.shape[-1] // 2))
        else:
            low = F.interpolate(current, scale_factor=0.5, mode="bilinear", antialias=True)
        bands.append(current - resize(low, current.shape[-2:]))
        current = low
    bands.append(current)
    merged = bands[-1] / (bands[-1].std() + 1e-8) ** smoothness
    for band in reversed(bands[:-1]):
        merged = resize(merged, band.shape[-2:]) + band / (band.std() + 1e-8) ** smoothness
    return merged


def _resize(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    if tuple(image.shape[-2:]) == tuple(size):
        return image
    shrinking = size[0] < image.shape[-2]
    return F.interpolate(
        image, size=size, mode="bilinear", align_corners=False, antialias=shrinking
    )


def _resize_wrapped(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """`_resize` of a periodic image: each side is resized with a copy of the image on either
    side of it, then cut out, so that the pixels at an edge are made from those across it."""
    if tuple(image.shape[-2:]) == tuple(size):
        return image
    height, width = image.shape[-2:]
    rows = _resize(torch.cat([image] * 3, dim=2), (3 * size[0], width))[
        ..., size[0] : 2 * size[0], :
    ]
    both = _resize(torch.cat([rows] * 3, dim=3), (size[0], 3 * size[1]))
    return both[..., size[1] : 2 * size[1]].contiguous()


SEAMLESS_BAND = 0.25
"""The share of each side, at either edge, where a tileable dream's image is blended with its
copy shifted by half a side: the middle half stays the photo, with all its detail."""


def seamless(rgb: np.ndarray) -> np.ndarray:
    """The image blended with itself shifted by half its width, then the result with itself
    shifted by half its height, the shifted copy taking over towards the edges (as GIMP's Tile
    Seamless blends): its opposite edges meet as its middle does."""
    for axis in (1, 0):
        length = rgb.shape[axis]
        from_edge = np.minimum(np.arange(length) + 0.5, length - 0.5 - np.arange(length))
        ramp = np.clip(from_edge / (SEAMLESS_BAND * length), 0.0, 1.0)
        weight = (np.sin(np.pi / 2 * ramp) ** 2).astype(np.float32)
        weight = weight[:, None, None] if axis == 0 else weight[None, :, None]
        shifted = np.roll(rgb, length // 2, axis=axis)
        rgb = shifted + weight * (rgb - shifted)
    return rgb.astype(np.float32)


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
    params: DreamParams,
    mask: np.ndarray | None = None,
    autocast: torch.dtype | None = None,
    on_progress: ProgressCallback | None = None,
    should_stop: StopCheck | None = None,
) -> np.ndarray:
    """Dream on an (H, W, C) array and return one of the same shape and type.

    Gray and RGB, with or without alpha, 8/16-bit or float. Alpha comes back bit for bit, and
    where `mask` (H, W, 0..1) is 0 the pixels come back exactly as they were. With strength 0
    the input itself comes back. `params` gives the ascent, the strength and keep-colors; its
    model and objective fields are the caller's to turn into `model` and `objective`.
    """
    if params.strength == 0:  # nothing changes: no float conversion, no copy of a big image
        return Pixels.check_array(image)
    pixels = Pixels.from_array(image)
    height, width = pixels.rgb.shape[:2]
    weights = check_mask(mask, (height, width)) if mask is not None else None
    if weights is not None and not weights.any():
        return pixels.original.copy()
    device = next(model.parameters()).device
    tune_for(device)
    resize = _resize_wrapped if params.tileable else _resize
    start_rgb = seamless(pixels.rgb) if params.tileable else pixels.rgb
    base = _to_device(start_rgb, device)
    # Images smaller than the network can see are dreamed enlarged, then shrunk back.
    enlarge = model.min_input_size / min(height, width)
    if enlarge > 1:
        working_size = (math.ceil(height * enlarge), math.ceil(width * enlarge))
        if max(working_size) > MAX_ENLARGED_SIDE:
            raise InvalidImage(
                f"The image is {width}x{height} pixels: too thin to dream on (the network needs "
                f"{model.min_input_size} pixels on the short side). Make it wider or taller."
            )
        base = resize(base, working_size)
    size = tuple(base.shape[-2:])
    plan = plan_tiles(model, objective, autocast, params.tile_size, size)
    dreamed = _ascend(model, objective, params, plan, autocast, base, on_progress, should_stop)
    if dreamed is None and device.type != "cpu":
        # Free what the failed attempt held, then plan again in what is free now, with half
        # the tile and half the share of memory.
        if device.type == "cuda":
            torch.cuda.empty_cache()
        retry = plan_tiles(
            model, objective, autocast, max(MIN_TILE_SIZE, plan.size // 2), size, 0.5
        )
        log.warning(
            "Out of %s memory with tiles of %d px (%d at once): retrying with %d px (%d at once)",
            device.type.upper(), plan.size, plan.batch, retry.size, retry.batch,
        )  # fmt: skip
        plan = retry
        dreamed = _ascend(model, objective, params, plan, autocast, base, on_progress, should_stop)
    if dreamed is None:
        raise OutOfMemory(
            f"The {device.type.upper()} ran out of memory dreaming {width}x{height} pixels with "
            f"tiles of {plan.size}: use a smaller tile size or a smaller image or selection"
            + (", or close other programs that use the GPU." if device.type != "cpu" else ".")
        )
    if enlarge > 1:
        dreamed = resize(dreamed, (height, width))
    dreamed_rgb = _to_host(dreamed)
    if params.keep_colors:
        dreamed_rgb = keep_colours(start_rgb, dreamed_rgb)
    if params.tileable:  # less strength blends back the seamless image, not the seams
        dreamed_rgb = start_rgb + params.strength * (dreamed_rgb - start_rgb)
        return pixels.compose(dreamed_rgb, 1.0, weights)
    return pixels.compose(dreamed_rgb, params.strength, weights)


def _ascend(
    model: FeatureModel,
    objective: Objective,
    params: DreamParams,
    plan: TilePlan,
    autocast: torch.dtype | None,
    base: torch.Tensor,
    on_progress: ProgressCallback | None,
    should_stop: StopCheck | None,
) -> torch.Tensor | None:
    """The dreamed image, or None where the device ran out of memory."""
    try:
        ascent = GradientAscent(model, objective, params, plan, autocast, on_progress, should_stop)
        return ascent.run(base)
    except (torch.OutOfMemoryError, MemoryError, RuntimeError) as err:
        if not _is_out_of_memory(err):
            raise
    # Returning from outside the except clause drops the traceback, and with it the tensors
    # of the failed attempt, so that their memory can be given back.
    return None


def _to_device(rgb: np.ndarray, device: torch.device) -> torch.Tensor:
    """(H, W, 3) float32 on the host to (1, 3, H, W) on `device`, channels last in memory."""
    tensor = torch.from_numpy(rgb).permute(2, 0, 1)[None]
    if device.type != "cuda":
        return tensor.to(device)
    # Page-locked memory lets the copy run by DMA, without a staging copy through the driver.
    return tensor.pin_memory().to(device, non_blocking=True)


def _to_host(image: torch.Tensor) -> np.ndarray:
    """(1, 3, H, W) on any device to (H, W, 3) float32 on the host."""
    rgb = image[0].permute(1, 2, 0).float()
    if rgb.device.type != "cuda":
        return rgb.cpu().numpy()
    host = torch.empty(rgb.shape, dtype=torch.float32, pin_memory=True)
    host.copy_(rgb, non_blocking=True)
    torch.cuda.current_stream(rgb.device).synchronize()
    return host.numpy()


def plan_tiles(
    model: FeatureModel,
    objective: Objective,
    autocast: torch.dtype | None,
    tile_size: int,
    image_size: tuple[int, int],
    headroom: float = 0.8,
) -> TilePlan:
    """Tiles that fit the device's free memory, before the dream starts.

    On a CUDA device the memory that one window pixel costs the network (its activations kept
    for the backward pass) is measured on a small probe; what is free, less the full-size
    buffers of the dream itself, then sets the largest tile up to `tile_size` and how many
    windows run at once. Other devices use `tile_size` one window at a time: a CPU gains
    nothing from batches, and MPS reports no free memory. `headroom` is the share of the free
    memory a plan may use: the allocator rounds up and fragments.
    """
    device = next(model.parameters()).device
    if device.type != "cuda":
        return TilePlan(tile_size)
    free, _ = torch.cuda.mem_get_info(device)
    free += torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    image_bytes = FULL_SIZE_BUFFERS * 3 * 4 * image_size[0] * image_size[1]
    budget = (free - image_bytes) * headroom
    per_pixel = _bytes_per_window_pixel(model, objective, autocast)

    def window_pixels(size: int) -> int:
        height, width = tile_windows(*image_size, size, GradientAscent.halo)[0].shape
        return height * width

    size = tile_size
    while size > MIN_TILE_SIZE and window_pixels(size) * per_pixel > budget:
        size = max(MIN_TILE_SIZE, int(size * 0.8))
    batch = int(max(1, min(MAX_BATCH, budget // (window_pixels(size) * per_pixel))))
    log.info(
        "Tiles of %d px, up to %d at once (%.0f MB free, %.0f bytes per window pixel)",
        size, batch, free / 2**20, per_pixel,
    )  # fmt: skip
    return TilePlan(size, batch)


def _bytes_per_window_pixel(
    model: FeatureModel, objective: Objective, autocast: torch.dtype | None
) -> float:
    """What a window pixel costs a step in device memory, measured on one probe window."""
    device = next(model.parameters()).device
    probe = torch.rand(1, 3, PROBE_SIZE, PROBE_SIZE, device=device)
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    ascent = GradientAscent(model, objective, DreamParams(), autocast=autocast)
    ascent.window_gradient(probe, share=1.0)
    peak = torch.cuda.max_memory_allocated(device) - before
    return peak / PROBE_SIZE**2
