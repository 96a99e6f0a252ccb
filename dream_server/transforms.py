"""Small random transforms for transformation robustness (Lucid/Lucent's `standard_transforms`).

Each transform takes an image batch and a torch.Generator and returns a batch; `compose` chains
them. With the same generator state they do the same thing, so renders are reproducible.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

Transform = Callable[[torch.Tensor, torch.Generator], torch.Tensor]


def _pick(options: Sequence, generator: torch.Generator):  # noqa: ANN202
    return options[int(torch.randint(len(options), (1,), generator=generator))]


def pad(width: int, value: float = 0.5) -> Transform:
    """Pad with a constant so that jitter and rotation never bring the border into view."""
    return lambda image, generator: F.pad(image, (width,) * 4, mode="constant", value=value)


def jitter(distance: int) -> Transform:
    """Crop at a random offset of up to `distance` pixels."""

    def transform(image: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        dx, dy = (int(torch.randint(distance, (1,), generator=generator)) for _ in range(2))
        height, width = image.shape[-2:]
        return image[..., dy : height - distance + dy, dx : width - distance + dx]

    return transform


def random_scale(scales: Sequence[float]) -> Transform:
    def transform(image: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        scale = _pick(scales, generator)
        height, width = image.shape[-2:]
        size = (max(1, round(height * scale)), max(1, round(width * scale)))
        return F.interpolate(image, size=size, mode="bilinear", align_corners=False)

    return transform


def random_rotate(degrees: Sequence[float]) -> Transform:
    def transform(image: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        angle = math.radians(_pick(degrees, generator))
        cos, sin = math.cos(angle), math.sin(angle)
        theta = image.new_tensor([[cos, -sin, 0.0], [sin, cos, 0.0]]).expand(len(image), 2, 3)
        grid = F.affine_grid(theta, list(image.shape), align_corners=False)
        return F.grid_sample(image, grid, mode="bilinear", padding_mode="reflection",
                             align_corners=False)  # fmt: skip

    return transform


def compose(transforms: Sequence[Transform]) -> Transform:
    def transform(image: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        for step in transforms:
            image = step(image, generator)
        return image

    return transform


STANDARD = compose([
    pad(12),
    jitter(8),
    random_scale([1 + (i - 5) / 50 for i in range(11)]),
    random_rotate(list(range(-10, 11))),
    jitter(4),
])  # fmt: skip
"""Lucid's standard transforms: pad 12, jitter 8, scale 0.9-1.1, rotate -10..10 deg, jitter 4."""

NONE: Transform = compose([])
