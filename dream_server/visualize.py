"""Feature visualization: optimise images from noise until a unit of the network fires.

The same gradient ascent as DeepDream, started from noise instead of a photo, with what keeps
the optimum a picture rather than high-frequency static (Olah et al., Distill 2017): images
parameterised in a decorrelated colour space and a 1/f-scaled Fourier basis, random transforms
every step, optional pixel penalties, and a diversity term across the batch.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from dream_link.wire import Progress, ProgressCallback

from . import transforms
from .dream import StopCheck
from .errors import DreamCancelled, InvalidParameter
from .models import FeatureModel
from .models.base import INPUT
from .objectives import (
    Objective,
    channel,
    class_logit,
    diversity,
    high_frequency,
    layer,
    neuron,
    total_variation,
)

# Lucid's colour decorrelation: the square root of ImageNet's colour covariance, normalised.
COLOR_CORRELATION_SVD_SQRT = torch.tensor(
    [[0.26, 0.09, 0.02], [0.27, 0.00, -0.05], [0.27, -0.09, 0.03]]
)
COLOR_DECORRELATION = COLOR_CORRELATION_SVD_SQRT / COLOR_CORRELATION_SVD_SQRT.norm(dim=0).max()


class FourierImage(nn.Module):
    """A batch of images as Fourier coefficients scaled by 1/frequency, in decorrelated colour.

    Gradient steps on these coefficients change all frequencies at a similar rate, instead of
    the high frequencies the pixel gradient is dominated by (Lucid's `fft_image`).
    """

    def __init__(self, batch: int, size: int, generator: torch.Generator, decay: float = 1.0):
        super().__init__()
        fy = torch.fft.fftfreq(size)[:, None]
        fx = torch.fft.rfftfreq(size)[None, :]
        frequencies = torch.sqrt(fx * fx + fy * fy)
        self.register_buffer("scale", 1.0 / frequencies.clamp(min=1.0 / size) ** decay)
        shape = (batch, 3, *frequencies.shape, 2)
        self.spectrum = nn.Parameter(torch.randn(shape, generator=generator) * 0.01)
        self.size = size

    def forward(self) -> torch.Tensor:
        spectrum = torch.view_as_complex(self.spectrum) * self.scale
        image = torch.fft.irfft2(spectrum, s=(self.size, self.size), norm="ortho") / 4.0
        return to_rgb(image)


class PixelImage(nn.Module):
    """Plain pixels, for comparison: no decorrelation, no Fourier basis."""

    def __init__(self, batch: int, size: int, generator: torch.Generator) -> None:
        super().__init__()
        self.pixels = nn.Parameter(torch.randn(batch, 3, size, size, generator=generator) * 0.01)

    def forward(self) -> torch.Tensor:
        return torch.sigmoid(self.pixels)


def to_rgb(decorrelated: torch.Tensor) -> torch.Tensor:
    matrix = COLOR_DECORRELATION.to(decorrelated.device)
    return torch.sigmoid(torch.einsum("bchw,dc->bdhw", decorrelated, matrix))


def target(params, model: FeatureModel) -> Objective:  # noqa: ANN001 - VisualizeParams
    """The unit to show: a class logit, a neuron, a channel, or a whole layer."""
    if params.class_name:
        return class_logit(params.class_name)
    model.check_layers([params.layer])
    if params.layer == INPUT:
        raise InvalidParameter("Name a layer of the network, not its input.")
    if params.neuron:
        index, x, y = (int(part) for part in params.neuron.split(","))
        _check_channel(model, params.layer, index)
        _check_position(model, params.layer, params.size, x, y)
        return neuron(params.layer, index, x, y)
    if params.channel >= 0:
        _check_channel(model, params.layer, params.channel)
        return channel(params.layer, params.channel)
    return layer(params.layer)


def _check_channel(model: FeatureModel, name: str, index: int) -> None:
    count = model.channel_count(name)
    if not 0 <= index < count:
        raise InvalidParameter(f"Layer '{name}' has channels 0 to {count - 1}; got {index}.")


def _check_position(model: FeatureModel, name: str, size: int, x: int, y: int) -> None:
    device = next(model.parameters()).device
    with torch.no_grad():
        grid = model(torch.zeros(1, 3, size, size, device=device), [name])[name].shape[2:]
    if len(grid) != 2:
        raise InvalidParameter(
            f"Layer '{name}' has no grid of positions: show one of its channels instead "
            f"(--channel; for logits, a class index)."
        )
    height, width = grid
    if not (0 <= x < width and 0 <= y < height):
        raise InvalidParameter(
            f"Layer '{name}' is a grid of {width}x{height} positions for images of {size} px: "
            f"X goes from 0 to {width - 1} and Y from 0 to {height - 1}; got {x},{y}."
        )


def full_objective(params, model: FeatureModel) -> Objective:  # noqa: ANN001
    """The target plus the optional diversity term and pixel penalties, with their weights."""
    objective = target(params, model)
    if params.diversity:
        style_layer = params.layer if not params.class_name else "logits"
        objective = objective + params.diversity * diversity(style_layer)
    if params.tv:
        objective = objective - params.tv * total_variation()
    if params.frequency:
        objective = objective - params.frequency * high_frequency()
    return objective


def render(
    model: FeatureModel,
    objective: Objective,
    params,  # noqa: ANN001 - VisualizeParams
    on_progress: ProgressCallback | None = None,
    should_stop: StopCheck | None = None,
) -> np.ndarray:
    """Optimise `params.samples` images from noise; returns (N, size, size, 3) uint8."""
    device = next(model.parameters()).device
    generator = torch.Generator().manual_seed(params.seed)
    image = _parameterisation(params, generator).to(device)
    optimizer = torch.optim.Adam(image.parameters(), lr=params.learning_rate)
    transform = transforms.STANDARD if params.robustness else transforms.NONE
    for step in range(params.steps):
        if should_stop and should_stop():
            raise DreamCancelled()
        optimizer.zero_grad()
        pixels = image()
        seen = _at_least(transform(pixels, generator), model.min_input_size)
        activations = dict(model(seen, objective.layers - {INPUT}))
        activations[INPUT] = pixels
        (-objective(activations)).backward()
        optimizer.step()
        if on_progress:
            on_progress(Progress((step + 1) / params.steps, 0, 1, step, params.steps))
    with torch.no_grad():
        final = image().clamp(0, 1)
    return (final.permute(0, 2, 3, 1).cpu().numpy() * 255).round().astype(np.uint8)


def _parameterisation(params, generator: torch.Generator) -> nn.Module:  # noqa: ANN001
    if params.param == "fft":
        return FourierImage(params.samples, params.size, generator)
    return PixelImage(params.samples, params.size, generator)


def _at_least(images: torch.Tensor, size: int) -> torch.Tensor:
    if min(images.shape[-2:]) >= size:
        return images
    scale = size / min(images.shape[-2:])
    return torch.nn.functional.interpolate(images, scale_factor=scale, mode="bilinear")


def atlas_objective(name: str, channels: list[int]) -> Objective:
    """Image i of the batch shows channel `channels[i]` of the layer: a whole atlas in one run."""

    def score(acts) -> torch.Tensor:  # noqa: ANN001
        values = acts[name].float()
        return sum(values[i, c].mean() for i, c in enumerate(channels))

    return Objective(score, frozenset({name}), f"atlas of {name}")


def interesting_channels(model: FeatureModel, name: str, count: int,
                         photos: list[np.ndarray]) -> list[int]:  # fmt: skip
    """The channels of a layer that respond most, on average, to real photos."""
    device = next(model.parameters()).device
    totals = None
    with torch.no_grad():
        for photo in photos:
            x = torch.from_numpy(photo[:, :, :3].astype(np.float32) / 255).permute(2, 0, 1)[None]
            response = model(x.to(device), [name])[name].mean(dim=(0, 2, 3))
            totals = response if totals is None else totals + response
    return totals.argsort(descending=True)[:count].tolist()


def subject(params) -> str:  # noqa: ANN001 - VisualizeParams
    """What the samples show, e.g. `block7/5`, `block9/3,4,4` or `class goldfish`."""
    if params.class_name:
        return f"class {params.class_name}"
    if params.neuron:
        return f"{params.layer}/{params.neuron.replace(' ', '')}"
    return f"{params.layer}/{params.channel}" if params.channel >= 0 else params.layer


def sample_labels(params) -> list[str]:  # noqa: ANN001 - VisualizeParams
    """What each sample shows, e.g. `block7/5 #2`, for sheets and layer names."""
    return [f"{subject(params)} #{i + 1}" for i in range(params.samples)]


def grid_shape(count: int) -> tuple[int, int]:
    """(rows, columns) of the most nearly square grid that holds `count` images."""
    columns = math.ceil(math.sqrt(count))
    return math.ceil(count / columns), columns
