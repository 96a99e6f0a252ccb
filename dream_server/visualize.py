"""Feature visualization: optimise images from noise until a unit of the network fires.

The same gradient ascent as DeepDream, started from noise instead of a photo, with what keeps
the optimum a picture rather than high-frequency static (Olah et al., Distill 2017): images
parameterised in a decorrelated colour space and a 1/f-scaled Fourier basis (or, MACO, only
the phase of a spectrum fixed to photos'), random transforms every step, optional pixel
penalties, and a diversity term across the batch. Started from a photo instead, on a leash to
it, the same loop accentuates one of the photo's features.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from dream_link.wire import Progress, ProgressCallback

from . import SAMPLES, transforms
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

    def __init__(self, batch: int, size: int | tuple[int, int], generator: torch.Generator,
                 decay: float = 1.0) -> None:  # fmt: skip
        super().__init__()
        self.shape = (size, size) if isinstance(size, int) else size
        frequencies = _frequencies(*self.shape)
        self.register_buffer("scale", 1.0 / frequencies.clamp(min=1.0 / max(self.shape)) ** decay)
        shape = (batch, 3, *frequencies.shape, 2)
        self.spectrum = nn.Parameter(torch.randn(shape, generator=generator) * 0.01)

    def decorrelated(self) -> torch.Tensor:
        spectrum = torch.view_as_complex(self.spectrum) * self.scale
        return torch.fft.irfft2(spectrum, s=self.shape, norm="ortho") / 4.0

    def forward(self) -> torch.Tensor:
        return to_rgb(self.decorrelated())


class PhotoImage(FourierImage):
    """A photo plus a change grown in the decorrelated Fourier basis, for feature accentuation
    (Hamblin et al. 2024): at the start it is the photo itself, and each step adds smooth,
    natural-coloured shapes to it rather than pixel static."""

    def __init__(self, photo: torch.Tensor, batch: int, generator: torch.Generator) -> None:
        super().__init__(batch, tuple(photo.shape[-2:]), generator)
        with torch.no_grad():
            self.spectrum.zero_()
        # the change adds to the photo's logits, so that it can never leave 0..1
        self.register_buffer("base", _logit(photo[None]))

    def forward(self) -> torch.Tensor:
        matrix = COLOR_DECORRELATION.to(self.base.device)
        change = torch.einsum("bchw,dc->bdhw", self.decorrelated(), matrix)
        return torch.sigmoid(self.base + change)


class MagnitudeImage(nn.Module):
    """MACO (Fel et al. 2023): only the phase of the spectrum is optimised; its magnitude is
    fixed to the spectrum of natural photos, so the images keep their statistics, and the
    high-frequency static the 1/f basis lets grow at large sizes and deep layers has no room."""

    def __init__(self, batch: int, size: int, generator: torch.Generator) -> None:
        super().__init__()
        self.shape = (size, size)
        spectrum = natural_spectrum()
        frequencies = _frequencies(size, size).clamp(min=1.0 / size)
        magnitude = frequencies[None] ** -spectrum.slopes[:, None, None]
        magnitude[:, 0, 0] = 0.0  # the mean is set apart, below
        self.register_buffer("magnitude", magnitude)
        self.register_buffer("spread", spectrum.spreads[None, :, None, None])
        self.register_buffer("middle", spectrum.means[None, :, None, None])
        phase = (torch.rand((batch, 3, *frequencies.shape), generator=generator) * 2 - 1) * math.pi
        self.phase = nn.Parameter(phase)

    def forward(self) -> torch.Tensor:
        spectrum = torch.polar(self.magnitude.expand_as(self.phase), self.phase)
        image = torch.fft.irfft2(spectrum, s=self.shape, norm="ortho")
        image = image / image.flatten(2).std(dim=2)[..., None, None]
        matrix = COLOR_DECORRELATION.to(image.device)
        return torch.sigmoid(torch.einsum("bchw,dc->bdhw", image * self.spread + self.middle,
                                          matrix))  # fmt: skip


def _frequencies(height: int, width: int) -> torch.Tensor:
    fy = torch.fft.fftfreq(height)[:, None]
    fx = torch.fft.rfftfreq(width)[None, :]
    return torch.sqrt(fx * fx + fy * fy)


@dataclass(frozen=True)
class NaturalSpectrum:
    """How photos' spectra fall with frequency, per decorrelated colour channel: amplitude
    ~ frequency^-slope; and the channels' means and spreads in that space."""

    slopes: torch.Tensor
    means: torch.Tensor
    spreads: torch.Tensor


NATURAL_BAND = 0.1
"""The spectra are fitted up to this frequency (cycles per pixel): above it, a photo's spectrum
falls faster by its lens's blur and its compression, which a render at 512 px should not copy
(with it, the renders came out blurred: 0.04% of their power above half the Nyquist frequency
against 2-4% in the photos)."""


@functools.cache
def natural_spectrum() -> NaturalSpectrum:
    """Fitted from the project's own sample photos: for each channel, the least-squares line
    through the log of the photos' summed amplitude against the log of the frequency."""
    from .imagefile import read_image  # the sample photos' reader; only MACO needs it

    size, slopes, values = 256, [], []
    rings = None
    for path in sorted(SAMPLES.glob("*.png")):
        rgb = torch.from_numpy(read_image(path)[:, :, :3].astype(np.float32) / 255)
        rgb = rgb.permute(2, 0, 1)[None]
        side = min(rgb.shape[-2:])
        top, left = (rgb.shape[-2] - side) // 2, (rgb.shape[-1] - side) // 2
        square = nn.functional.interpolate(rgb[..., top : top + side, left : left + side],
                                           size=(size, size), mode="area")  # fmt: skip
        decorrelated = _from_rgb(square)[0]
        values.append(decorrelated.flatten(1))
        amplitude = torch.fft.rfft2(decorrelated - decorrelated.mean((1, 2), keepdim=True),
                                    norm="ortho").abs()  # fmt: skip
        rings = amplitude if rings is None else rings + amplitude
    frequencies = _frequencies(size, size)
    usable = (frequencies >= 2.0 / size) & (frequencies <= NATURAL_BAND)
    x = frequencies[usable].log()
    for amplitudes in rings:
        y = amplitudes[usable].log()
        slope = ((x - x.mean()) * (y - y.mean())).sum() / (x - x.mean()).square().sum()
        slopes.append(-slope)
    pixels = torch.cat(values, dim=1)
    return NaturalSpectrum(torch.stack(slopes), pixels.mean(1), pixels.std(1))


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


def _logit(rgb: torch.Tensor) -> torch.Tensor:
    return torch.logit(rgb.clamp(0.5 / 255, 1 - 0.5 / 255))


def _from_rgb(rgb: torch.Tensor) -> torch.Tensor:
    """The inverse of to_rgb: RGB in 0..1 back to the decorrelated space it maps from."""
    logits = _logit(rgb)
    inverse = torch.linalg.inv(COLOR_DECORRELATION).to(rgb.device)
    return torch.einsum("bchw,dc->bdhw", logits, inverse)


def target(params, model: FeatureModel,  # noqa: ANN001 - VisualizeParams
           shape: tuple[int, int] | None = None) -> Objective:  # fmt: skip
    """The unit to show: a class logit, a neuron, a channel, or a whole layer; a neuron's
    position is on the grid of images of `shape` (height, width), by default `params.size`."""
    if params.class_name:
        return class_logit(params.class_name)
    model.check_layers([params.layer])
    if params.layer == INPUT:
        raise InvalidParameter("Name a layer of the network, not its input.")
    if params.neuron:
        index, x, y = (int(part) for part in params.neuron.split(","))
        _check_channel(model, params.layer, index)
        _check_position(model, params.layer, shape or (params.size, params.size), x, y)
        return neuron(params.layer, index, x, y)
    if params.channel >= 0:
        _check_channel(model, params.layer, params.channel)
        return channel(params.layer, params.channel)
    return layer(params.layer)


def _check_channel(model: FeatureModel, name: str, index: int) -> None:
    count = model.channel_count(name)
    if not 0 <= index < count:
        raise InvalidParameter(f"Layer '{name}' has channels 0 to {count - 1}; got {index}.")


def _check_position(model: FeatureModel, name: str, shape: tuple[int, int], x: int,
                    y: int) -> None:  # fmt: skip
    device = next(model.parameters()).device
    with torch.no_grad():
        grid = model(torch.zeros(1, 3, *shape, device=device), [name])[name].shape[2:]
    if len(grid) != 2:
        raise InvalidParameter(
            f"Layer '{name}' has no grid of positions: show one of its channels instead "
            f"(--channel; for logits, a class index)."
        )
    height, width = grid
    if not (0 <= x < width and 0 <= y < height):
        raise InvalidParameter(
            f"Layer '{name}' is a grid of {width}x{height} positions for images of "
            f"{shape[1]}x{shape[0]} px: "
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
    photo: torch.Tensor | None = None,
) -> np.ndarray:
    """Optimise `params.samples` images from noise, or from the photo (3, H, W) when given;
    returns (N, size, size, 3) uint8, or (N, H, W, 3)."""
    device = next(model.parameters()).device
    generator = torch.Generator().manual_seed(params.seed)
    image = _parameterisation(params, generator, photo).to(device)
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


def _parameterisation(params, generator: torch.Generator,  # noqa: ANN001
                      photo: torch.Tensor | None) -> nn.Module:  # fmt: skip
    if photo is not None:
        return PhotoImage(photo, params.samples, generator)
    if params.param == "fft":
        return FourierImage(params.samples, params.size, generator)
    if params.param == "maco":
        return MagnitudeImage(params.samples, params.size, generator)
    return PixelImage(params.samples, params.size, generator)


LEASH_SCALE = 0.01
"""The mean squared change (0-1 scale; an RMS change of a tenth of the range) that a leash of 1
weighs as much as the target rising by its layer's typical activation."""


def leash(photo: torch.Tensor) -> Objective:
    """Stay close to the photo: minus each image's mean squared difference from it (to be
    added with a weight)."""

    def score(acts) -> torch.Tensor:  # noqa: ANN001
        change = acts[INPUT] - photo.to(acts[INPUT].device)
        return -change.square().flatten(1).mean(1).sum() / LEASH_SCALE

    return Objective(score, frozenset({INPUT}), "leash to the photo")


def accentuation_objective(params, model: FeatureModel,  # noqa: ANN001 - VisualizeParams
                           photo: torch.Tensor) -> Objective:  # fmt: skip
    """The target, in units of its layer's typical activation on the photo (so that one leash
    weight means the same for every layer and class), held to the photo by the leash."""
    unit = target(params, model, tuple(photo.shape[-2:]))
    device = next(model.parameters()).device
    with torch.no_grad():
        acts = model(_at_least(photo[None].to(device), model.min_input_size), unit.layers)
    typical = torch.cat([a.float().flatten() for a in acts.values()]).square().mean().sqrt()
    return (1.0 / max(float(typical), 1e-6)) * unit + params.leash * leash(photo[None])


def where_changed(photo: np.ndarray, result: np.ndarray) -> np.ndarray:
    """(H, W) uint8: 255 where an accentuated image differs most from its photo, 0 where it
    does not (the colour distance, smoothed, relative to its 99th percentile): a layer mask
    that keeps the change where it happened."""
    distance = np.linalg.norm(result.astype(np.float32) - photo.astype(np.float32), axis=2)
    blurred = torch.nn.functional.avg_pool2d(
        torch.from_numpy(distance)[None, None], 9, stride=1, padding=4, count_include_pad=False
    )[0, 0].numpy()
    top = max(float(np.percentile(blurred, 99)), 1e-6)
    return (np.clip(blurred / top, 0, 1) * 255).round().astype(np.uint8)


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


def subject(params, channels: list[int] | None = None) -> str:  # noqa: ANN001 - VisualizeParams
    """What the samples show, e.g. `block7/5`, `block9/3,4,4`, `class goldfish`, or for an
    atlas of `channels` `block7 channels`."""
    if channels:
        return f"{params.layer} channels"
    if params.class_name:
        return f"class {params.class_name}"
    if params.neuron:
        return f"{params.layer}/{params.neuron.replace(' ', '')}"
    return f"{params.layer}/{params.channel}" if params.channel >= 0 else params.layer


def sample_labels(params, channels: list[int] | None = None) -> list[str]:  # noqa: ANN001
    """What each sample shows, e.g. `block7/5 #2`, or for an atlas of `channels` each one's
    name (`block7/42`, what Layers takes), for sheets and layer names."""
    if channels:
        return [f"{params.layer}/{channel}" for channel in channels]
    return [f"{subject(params)} #{i + 1}" for i in range(params.samples)]


def grid_shape(count: int) -> tuple[int, int]:
    """(rows, columns) of the most nearly square grid that holds `count` images."""
    columns = math.ceil(math.sqrt(count))
    return math.ceil(count / columns), columns
