"""What a network sees in the user's own photos: the channels a photo excites most, and the
patches of a folder of photos that excite a channel most (natural exemplars: people predict what
a unit responds to better from these than from its visualizations, Borowski et al. 2021).

Both only read activations; nothing here optimises an image.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import torch

from .errors import InvalidParameter
from .imaging import Pixels, at_most, check_mask, resized
from .models import FeatureModel
from .models.base import INPUT

ANALYSIS_SIDE = 1024
"""Photos are looked at with their longer side at most this: a phone photo's 4000 pixels would
take minutes on a CPU and show the same channels."""
EXEMPLAR_SIDE = 512
"""The exemplar photos' longer side, as the network looks at them for patches."""
PER_PHOTO = 2
"""Patches one photo may give one channel, so that one photo does not fill a row."""


@dataclass(frozen=True)
class ChannelStrength:
    layer: str
    channel: int
    share: float
    """Its part of the layer's positive activation over the photo (or the selection), 0..1."""

    @property
    def label(self) -> str:
        """The text that dreams this channel when typed into Layers: `block7/42`."""
        return f"{self.layer}/{self.channel}"


@dataclass(frozen=True)
class Exemplar:
    """A square patch of a photo centred where a channel fires most."""

    channel: int
    photo: str
    """The photo's name, as it was given."""
    box: tuple[int, int, int]
    """(left, top, side) in the photo's own pixels."""
    strength: float
    patch: np.ndarray
    """(size, size, 3) uint8, the patch scaled to the size asked for."""


def check_layer(model: FeatureModel, name: str) -> None:
    model.check_layers([name])
    if name == INPUT:
        raise InvalidParameter("Name a layer of the network, not its input.")


def strongest_channels(
    model: FeatureModel, name: str, image: np.ndarray, mask: np.ndarray | None = None, top: int = 8
) -> list[ChannelStrength]:
    """The `top` channels of layer `name` that the image (where the mask is white) excites most,
    strongest first, each with its share of the layer's activation there.

    A channel's strength is its positive activation averaged over the mask's positions: what a
    dream of that channel (`block7/42`) raises. Negative activations are a channel's silence,
    not its response, so they count for nothing.
    """
    check_layer(model, name)
    rgb = Pixels.from_array(image).rgb
    acts = _activations(model, name, at_most(rgb, ANALYSIS_SIDE))[0].clamp(min=0)
    if acts.ndim == 1:  # logits: no grid
        acts = acts[:, None, None]
    weights = torch.ones(acts.shape[1:], device=acts.device)
    if mask is not None:
        mask = check_mask(mask, rgb.shape[:2])
        weights = torch.nn.functional.interpolate(
            torch.from_numpy(np.ascontiguousarray(mask, np.float32))[None, None].to(acts.device),
            size=acts.shape[1:], mode="area")[0, 0]  # fmt: skip
        if float(weights.sum()) <= 0:
            raise InvalidParameter("The mask or selection is empty: select part of the photo.")
    strengths = (acts * weights).sum((1, 2)) / weights.sum()
    total = float(strengths.sum())
    order = strengths.argsort(descending=True)[:top].tolist()
    return [ChannelStrength(name, c, float(strengths[c]) / total if total > 0 else 0.0)
            for c in order]  # fmt: skip


def channels_photos_excite(model: FeatureModel, name: str, photos: Iterable[np.ndarray],
                           count: int) -> list[int]:  # fmt: skip
    """The `count` channels of layer `name` that the photos excite most together: the sum of
    each channel's share over them (an atlas's channels when none are named)."""
    totals: dict[int, float] = {}
    for photo in photos:
        for strength in strongest_channels(model, name, photo, top=model.channel_count(name)):
            totals[strength.channel] = totals.get(strength.channel, 0.0) + strength.share
    return sorted(totals, key=lambda channel: -totals[channel])[:count]


def exemplars(model: FeatureModel, name: str, channels: list[int],
              photos: Iterable[tuple[str, np.ndarray]], count: int = 4,
              size: int = 128) -> dict[int, list[Exemplar]]:  # fmt: skip
    """For each channel, the `count` patches of the photos that excite it most, strongest
    first: at most PER_PHOTO from one photo, each centred on a local maximum of the channel,
    as wide as four of the layer's steps (about what one position of it sees)."""
    check_layer(model, name)
    for channel in channels:
        if not 0 <= channel < model.channel_count(name):
            raise InvalidParameter(f"Layer '{name}' has channels 0 to "
                                   f"{model.channel_count(name) - 1}; got {channel}.")  # fmt: skip
    found: dict[int, list[Exemplar]] = {c: [] for c in channels}
    for photo_name, photo in photos:
        rgb = Pixels.from_array(photo).rgb
        seen = at_most(rgb, EXEMPLAR_SIDE)
        acts = _activations(model, name, seen)[0]
        if acts.ndim != 3:
            raise InvalidParameter(f"Layer '{name}' has no grid of positions to find patches "
                                   "in: choose a layer before the logits.")  # fmt: skip
        scale = rgb.shape[0] / acts.shape[1]  # photo pixels per position
        side = min(round(4 * scale), *rgb.shape[:2])
        for channel in channels:
            for strength, row, column in _peaks(acts[channel], PER_PHOTO):
                left = _clamped(round((column + 0.5) * scale - side / 2), rgb.shape[1] - side)
                top = _clamped(round((row + 0.5) * scale - side / 2), rgb.shape[0] - side)
                patch = _as_u8(resized(rgb[top : top + side, left : left + side], size, size))
                found[channel].append(
                    Exemplar(channel, photo_name, (left, top, side), strength, patch)
                )
        for channel in channels:  # keep only the best few as photos go by
            found[channel] = sorted(found[channel], key=lambda e: -e.strength)[:count]
    return found


def _peaks(values: torch.Tensor, count: int) -> Iterator[tuple[float, int, int]]:
    """The `count` highest local maxima of a (H, W) map (3x3 neighbourhoods), highest first."""
    pooled = torch.nn.functional.max_pool2d(values[None, None], 3, stride=1, padding=1)[0, 0]
    peaks = (values == pooled).flatten().nonzero().flatten()
    best = peaks[values.flatten()[peaks].argsort(descending=True)[:count]]
    width = values.shape[1]
    for index in best.tolist():
        yield float(values.flatten()[index]), index // width, index % width


def _clamped(value: int, highest: int) -> int:
    return max(0, min(value, highest))


def _activations(model: FeatureModel, name: str, rgb: np.ndarray) -> torch.Tensor:
    device = next(model.parameters()).device
    x = torch.from_numpy(rgb).permute(2, 0, 1)[None].to(device)
    if min(x.shape[-2:]) < model.min_input_size:
        factor = model.min_input_size / min(x.shape[-2:])
        x = torch.nn.functional.interpolate(x, scale_factor=factor, mode="bilinear")
    with torch.no_grad():
        return model(x, [name])[name].float()


def _as_u8(rgb: np.ndarray) -> np.ndarray:
    return (rgb * 255).round().astype(np.uint8)
