"""Pixel arrays in and out of the engine: layouts, bit depths, alpha, masks, blending.

The engine dreams on RGB floats in 0..1. Users bring gray or RGB, with or without alpha, in
8 or 16 bits or float. This module converts in and back without losing anything the dream did
not touch: alpha passes through bit for bit, and where the mask is 0 the output is the input.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import InvalidImage

MAX_PIXELS = 400_000_000
"""A sanity bound (20000 x 20000): beyond it a typo is likelier than a real image."""

LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)
_SCALE = {np.dtype(np.uint8): 255.0, np.dtype(np.uint16): 65535.0}


@dataclass(frozen=True)
class Pixels:
    """An image as the user gave it, split into the colour the engine dreams on and the rest."""

    original: np.ndarray
    """(H, W, C) as given: uint8, uint16, float32 or float64, C in 1..4."""
    rgb: np.ndarray
    """(H, W, 3) float32 in 0..1: what the network sees (gray is repeated)."""

    @classmethod
    def from_array(cls, array: np.ndarray) -> Pixels:
        image = cls.check_array(array)
        colour = to_unit_float(image[:, :, :3] if image.shape[2] >= 3 else image[:, :, :1])
        if not np.isfinite(colour).all():
            raise InvalidImage("The image holds NaN or infinite values: fix them first.")
        if colour.shape[2] == 1:
            rgb = np.repeat(colour, 3, axis=2)
        else:  # never clip the caller's own float array
            rgb = colour.copy() if np.shares_memory(colour, image) else colour
        return cls(image, np.clip(rgb, 0.0, 1.0, out=rgb))

    @staticmethod
    def check_array(array: np.ndarray) -> np.ndarray:
        """The array as (H, W, C), or InvalidImage saying what is wrong with its shape or type."""
        image = np.asarray(array)
        if image.ndim == 2:
            image = image[:, :, None]
        if image.ndim != 3 or not 1 <= image.shape[2] <= 4:
            raise InvalidImage(
                f"Expected an image of shape (height, width, 1-4 channels); got {image.shape}."
            )
        height, width, _ = image.shape
        if height == 0 or width == 0:
            raise InvalidImage(f"The image is empty ({width}x{height} pixels): nothing to dream.")
        if height * width > MAX_PIXELS:
            raise InvalidImage(
                f"The image is {width}x{height} pixels, more than the limit of "
                f"{MAX_PIXELS // 1_000_000} megapixels: scale it down or dream on a part of it."
            )
        if image.dtype not in (np.uint8, np.uint16, np.float32, np.float64):
            raise InvalidImage(
                f"Pixels of type {image.dtype} are not supported: use 8 or 16-bit integers "
                "or floats in 0..1."
            )
        return image

    @property
    def is_gray(self) -> bool:
        return self.original.shape[2] in (1, 2)

    @property
    def has_alpha(self) -> bool:
        return self.original.shape[2] in (2, 4)

    def compose(
        self, dreamed_rgb: np.ndarray, strength: float = 1.0, mask: np.ndarray | None = None
    ) -> np.ndarray:
        """The dream blended into the original, in the original's layout and type.

        Each pixel moves from the original towards the dream by `strength * mask`; where that is
        0 the original value is returned exactly, and alpha is always the original's.
        """
        blended = (dreamed_rgb @ LUMA[:, None] if self.is_gray else dreamed_rgb).astype(np.float32)
        weight = np.full(self.original.shape[:2], float(strength), dtype=np.float32)
        if mask is not None:
            weight *= mask
        weight = weight[:, :, None]
        colour_channels = 1 if self.is_gray else 3
        before = self.original[:, :, :colour_channels]
        before_unit = to_unit_float(before)
        # In place: a 6000x4000 image has 288 MB in every float copy.
        blended -= before_unit
        blended *= weight
        blended += before_unit
        del before_unit
        result = self.original.copy()
        np.copyto(
            result[:, :, :colour_channels],
            from_unit_float(blended, self.original.dtype),
            where=weight > 0,
        )
        return result


def to_unit_float(values: np.ndarray) -> np.ndarray:
    scale = _SCALE.get(values.dtype)
    if scale is None:
        return values.astype(np.float32, copy=False)
    unit = values.astype(np.float32)
    unit /= np.float32(scale)
    return unit


def from_unit_float(values: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Values in 0..1 as `dtype`; works in place on `values`, which must be a float32 scratch."""
    np.clip(values, 0.0, 1.0, out=values)
    scale = _SCALE.get(np.dtype(dtype))
    if scale is None:
        return values.astype(dtype, copy=False)
    values *= np.float32(scale)
    return np.rint(values, out=values).astype(dtype)


def check_mask(mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """A (H, W) float32 mask in 0..1 from 8/16-bit or float input of the image's size."""
    mask = np.asarray(mask)
    if mask.ndim == 3 and mask.shape[2] == 1:
        mask = mask[:, :, 0]
    if mask.shape != shape:
        raise InvalidImage(
            f"The mask is {mask.shape[1] if mask.ndim > 1 else '?'}x{mask.shape[0]} but the image "
            f"is {shape[1]}x{shape[0]}: give a gray mask of the same size."
        )
    unit = to_unit_float(mask)
    if not np.isfinite(unit).all():
        raise InvalidImage("The mask holds NaN or infinite values.")
    return np.clip(unit, 0.0, 1.0)


def keep_colours(original_rgb: np.ndarray, dreamed_rgb: np.ndarray) -> np.ndarray:
    """The dream's brightness with the original's colour (YCbCr chroma of the original)."""
    delta = (dreamed_rgb - original_rgb) @ LUMA  # change of luma only
    return np.clip(original_rgb + delta[:, :, None], 0.0, 1.0)


def luminance_ssim(a: np.ndarray, b: np.ndarray) -> float:
    """The structural similarity of two images' luminance (Wang et al. 2004: 11x11 Gaussian
    window of sigma 1.5, on the 0-255 scale): 1 for the same picture, about 0 for unrelated
    ones. How recognisably an accentuated or dreamed image is still its photo."""
    import torch  # the engine's; this module itself needs only numpy

    luma = [torch.from_numpy(to_unit_float(x[:, :, :3]) @ LUMA * 255)[None, None] for x in (a, b)]
    offsets = torch.arange(11, dtype=torch.float32) - 5
    kernel = torch.exp(-offsets.square() / (2 * 1.5**2))
    kernel = (kernel[:, None] * kernel[None, :] / kernel.sum() ** 2)[None, None]

    def mean(x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.conv2d(x, kernel)

    x, y = luma
    mx, my = mean(x), mean(y)
    vx, vy, cov = mean(x * x) - mx * mx, mean(y * y) - my * my, mean(x * y) - mx * my
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    ssim = ((2 * mx * my + c1) * (2 * cov + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
    return float(ssim.mean())


def resized(rgb: np.ndarray, height: int, width: int) -> np.ndarray:
    """An RGB float image (0..1) at another size, antialiased when smaller."""
    import torch  # the engine's; this module itself needs only numpy

    x = torch.from_numpy(np.ascontiguousarray(rgb, np.float32)).permute(2, 0, 1)[None]
    x = torch.nn.functional.interpolate(x, size=(height, width), mode="bilinear", antialias=True)
    return x[0].permute(1, 2, 0).clamp(0, 1).numpy()


def at_most(rgb: np.ndarray, longest: int) -> np.ndarray:
    """The RGB float image with its longer side at most `longest` pixels."""
    shape = shape_at_most(*rgb.shape[:2], longest)
    return rgb if shape == rgb.shape[:2] else resized(rgb, *shape)


def shape_at_most(height: int, width: int, longest: int) -> tuple[int, int]:
    """(height, width) scaled down, if need be, to a longer side of `longest` pixels."""
    factor = longest / max(height, width)
    if factor >= 1:
        return height, width
    return max(1, round(height * factor)), max(1, round(width * factor))
