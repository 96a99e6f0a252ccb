"""From dream parameters to a dreamed image: the entry point the CLI and the daemon share.

Keeps the last few models loaded on one device, turns a preset or a `layers` text into an
objective, and runs the dream loop.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from dream_link.wire import ProgressCallback

from . import explore, visualize
from .devices import autocast_dtype, select_device, tune_for
from .dream import StopCheck, dream
from .errors import InvalidParameter
from .explore import ChannelStrength, Exemplar
from .imaging import Pixels, at_most, resized, shape_at_most
from .models import FeatureModel, load_model, model_spec
from .objectives import Objective, guide, parse_objective, sum_of, weighted_layers
from .params import (
    CUSTOM_PRESET,
    ChannelsParams,
    DreamParams,
    VisualizeParams,
)
from .weights import DownloadProgress

log = logging.getLogger(__name__)

ACCENTUATE_SIDE = 1024
"""Photos are accentuated with their longer side at most this, and the change scaled up onto
the photo: the optimisation keeps every step's activations for its gradient (a phone photo's
would be gigabytes), and the change is smooth shapes, not detail."""
GUIDE_MAX_SIDE = 512
"""Guide images are shrunk to this: their features are a small reference set, not a canvas."""


class Engine:
    """Dreams on one device, keeping up to `max_models` models loaded and warm."""

    def __init__(
        self,
        device: str = "auto",
        max_models: int = 2,
        weights_files: dict[str, Path] | None = None,
        on_download: DownloadProgress | None = None,
        precision: str = "auto",
    ) -> None:
        self.device = select_device(device)
        self.autocast = autocast_dtype(precision)
        tune_for(self.device)
        self.max_models = max_models
        self.weights_files = dict(weights_files or {})
        self.on_download = on_download
        self._models: OrderedDict[str, FeatureModel] = OrderedDict()

    @property
    def loaded_models(self) -> list[str]:
        return list(self._models)

    def unload_models(self) -> None:
        """Let go of every loaded model: the next job loads its own again."""
        if self._models:
            log.info("Unloaded %s: idle", ", ".join(self._models))
        self._models.clear()

    def model(self, name: str) -> FeatureModel:
        if name in self._models:
            self._models.move_to_end(name)
            return self._models[name]
        model = load_model(name, self.device, self.weights_files.get(name), self.on_download)
        self._models[name] = model
        while len(self._models) > self.max_models:
            evicted, _ = self._models.popitem(last=False)
            log.info("Unloaded %s to make room", evicted)
        return model

    def objective(
        self, params: DreamParams, model: FeatureModel, guide_image: np.ndarray | None = None
    ) -> Objective:
        """The preset's layers, or the custom `layers` text; with a guide, matched to it."""
        if params.preset == CUSTOM_PRESET:
            objective = parse_objective(params.layers, model)
        else:
            objective = weighted_layers(model_spec(model.name).presets[params.preset])
        if guide_image is None:
            return objective
        return self._guided(objective, model, guide_image)

    def _guided(self, objective: Objective, model: FeatureModel, image: np.ndarray) -> Objective:
        rgb = at_most(Pixels.from_array(image).rgb, GUIDE_MAX_SIDE)
        tensor = torch.from_numpy(rgb).permute(2, 0, 1)[None].to(self.device)
        layers = sorted(objective.layers - {"logits"})
        if not layers:
            raise InvalidParameter(
                "A guide image steers layers, not classes: choose a preset or name a layer "
                "(e.g. --layers block10), or leave out the guide."
            )
        with torch.no_grad():
            features = model(tensor, layers)
        return sum_of((guide(name, features[name][0].flatten(1)), 1.0) for name in layers)

    def dream(
        self,
        image: np.ndarray,
        params: DreamParams,
        mask: np.ndarray | None = None,
        guide_image: np.ndarray | None = None,
        on_progress: ProgressCallback | None = None,
        should_stop: StopCheck | None = None,
    ) -> np.ndarray:
        model = self.model(params.model)
        objective = self.objective(params, model, guide_image)
        log.info("Dreaming %s on %s with %s", image.shape, params.model, objective.description)
        return dream(
            model,
            image,
            objective,
            params,
            mask=mask,
            autocast=self.autocast,
            on_progress=on_progress,
            should_stop=should_stop,
        )

    def activation(self, image: np.ndarray, params: DreamParams) -> float:
        """How strongly the image excites what `params` dream of: a dream raises it, and its
        ratio to the undreamed image's is the dream's activation gain."""
        model = self.model(params.model)
        return self._score(model, self.objective(params, model), image)

    def check(self, params: DreamParams | VisualizeParams | ChannelsParams,
              photo_shape: tuple[int, int] | None = None) -> None:  # fmt: skip
        """Raise the InvalidParameter the job would fail with, after loading the model: a
        dream's layers text, a unit to show (or to accentuate in a photo of `photo_shape`,
        (height, width)), a layer to look at."""
        model = self.model(params.model)
        if isinstance(params, DreamParams):
            self.objective(params, model)
        elif isinstance(params, VisualizeParams):
            seen = photo_shape and shape_at_most(*photo_shape, ACCENTUATE_SIDE)
            visualize.target(params, model, seen)
        else:
            explore.check_layer(model, params.layer)

    def unit_activation(self, params: VisualizeParams, image: np.ndarray) -> float:
        """How strongly the image excites the unit `params` shows (its channel, neuron or
        class): what accentuation raises."""
        model = self.model(params.model)
        return self._score(model, visualize.target(params, model, image.shape[:2]), image)

    def _score(self, model: FeatureModel, objective: Objective, image: np.ndarray) -> float:
        rgb = Pixels.from_array(image).rgb
        tensor = torch.from_numpy(rgb).permute(2, 0, 1)[None].to(self.device)
        with torch.no_grad():
            return float(objective(model(tensor, objective.layers)))

    def strongest_channels(self, image: np.ndarray, params: ChannelsParams,
                           mask: np.ndarray | None = None) -> list[ChannelStrength]:  # fmt: skip
        """The channels of `params.layer` the image excites most, where the mask is white."""
        model = self.model(params.model)
        return explore.strongest_channels(model, params.layer, image, mask, params.top)

    def exemplars(self, params: VisualizeParams, channels: list[int],
                  photos: Iterable[tuple[str, np.ndarray]]) -> list[list[Exemplar]]:  # fmt: skip
        """For each channel of `params.layer`, the patches of the photos that excite it most,
        at the renders' size."""
        model = self.model(params.model)
        found = explore.exemplars(model, params.layer, channels, photos,
                                  params.exemplars_each, params.size)  # fmt: skip
        return [found[channel] for channel in channels]

    def visualize(
        self,
        params: VisualizeParams,
        channels: list[int] | None = None,
        on_progress: ProgressCallback | None = None,
        should_stop: StopCheck | None = None,
        photo: np.ndarray | None = None,
    ) -> np.ndarray:
        """Feature visualizations from noise, (N, size, size, 3) uint8.

        With `channels`, an atlas: one image per channel of `params.layer`. With a `photo`,
        feature accentuation: the photo with the unit turned up, (N, H, W, 3).
        """
        model = self.model(params.model)
        start = None
        if photo is not None:
            rgb = Pixels.from_array(photo).rgb
            seen = at_most(rgb, ACCENTUATE_SIDE)
            start = torch.from_numpy(seen).permute(2, 0, 1).to(self.device)
            objective = visualize.accentuation_objective(params, model, start)
        elif channels is None:
            objective = visualize.full_objective(params, model)
        else:
            for index in channels:
                visualize.target(replace(params, channel=index, neuron=""), model)
            params = replace(params, samples=len(channels))
            objective = visualize.atlas_objective(params.layer, channels)
        log.info("Visualizing %s on %s", objective.description, params.model)
        images = visualize.render(model, objective, params, on_progress, should_stop, start)
        if photo is None or seen is rgb:
            return images
        return np.stack([_changed_as(seen, image, rgb) for image in images])


def _changed_as(seen: np.ndarray, result: np.ndarray, photo: np.ndarray) -> np.ndarray:
    """The photo (float) changed as `seen`, a smaller copy of it, changed into `result` (u8):
    the change scaled up onto it."""
    height, width = photo.shape[:2]
    change = resized(result.astype(np.float32) / 255, height, width) - resized(seen, height, width)
    return ((photo + change).clip(0, 1) * 255).round().astype(np.uint8)
