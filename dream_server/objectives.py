"""Objectives: what the gradient ascent makes bigger, as small values that compose.

An objective maps the activations of a forward pass to one number to maximise. Objectives add,
subtract and scale (`layer("block10") + 0.5 * channel("block5", 7)`, `-layer("block3")` to
un-dream), and each knows which layers it reads so the model runs only as deep as needed.
The dream loop and the feature-visualization loop only ever call them.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

import torch

from .errors import InvalidParameter, UnknownLayer
from .models import FeatureModel, imagenet_classes, model_spec
from .models.base import INPUT

Activations = Mapping[str, torch.Tensor]


@dataclass(frozen=True)
class Objective:
    score: Callable[[Activations], torch.Tensor]
    layers: frozenset[str]
    description: str

    def __call__(self, activations: Activations) -> torch.Tensor:
        return self.score(activations)

    def __add__(self, other: Objective | float) -> Objective:
        if not isinstance(other, Objective):
            return self if other == 0 else NotImplemented
        return Objective(
            lambda acts: self(acts) + other(acts),
            self.layers | other.layers,
            f"{self.description} + {other.description}",
        )

    __radd__ = __add__

    def __mul__(self, factor: float) -> Objective:
        if isinstance(factor, Objective):
            return NotImplemented
        return Objective(
            lambda acts: factor * self(acts), self.layers, f"{factor:g} * {self.description}"
        )

    __rmul__ = __mul__

    def __neg__(self) -> Objective:
        return -1.0 * self

    def __sub__(self, other: Objective | float) -> Objective:
        return self + (-other)


def layer(name: str) -> Objective:
    """Excite everything in a layer: the mean squared activation (DeepDream's L2 objective)."""
    return Objective(
        lambda acts: _per_image_mean(acts[name].float().square()), frozenset({name}), name
    )


def channel(name: str, index: int) -> Objective:
    """Excite one channel of a layer: its mean activation (for logits, one class's logit)."""

    def score(acts: Activations) -> torch.Tensor:
        values = acts[name][:, index].float()
        return values.sum() if values.ndim == 1 else _per_image_mean(values)

    return Objective(score, frozenset({name}), f"{name}/{index}")


def neuron(name: str, index: int, x: int | None = None, y: int | None = None) -> Objective:
    """Excite one channel at one position of the layer's grid (the centre by default)."""

    def score(acts: Activations) -> torch.Tensor:
        values = acts[name][:, index].float()
        row = values.shape[-2] // 2 if y is None else min(y, values.shape[-2] - 1)
        col = values.shape[-1] // 2 if x is None else min(x, values.shape[-1] - 1)
        return values[:, row, col].sum()

    where = "" if x is None and y is None else f"@{x},{y}"
    return Objective(score, frozenset({name}), f"{name}/{index}{where}")


def class_logit(class_name: str) -> Objective:
    """Make the image look more like an ImageNet class, named as in ImageNet ("tabby")."""
    index = imagenet_class_index(class_name)
    return Objective(
        lambda acts: acts["logits"][:, index].float().sum(), frozenset({"logits"}), class_name
    )


def guide(name: str, guide_features: torch.Tensor) -> Objective:
    """Pull each position towards the most similar feature of a guide image.

    `guide_features` is the guide's activations at `name`, shape (channels, positions): the
    classic notebook's `objective_guide`, where the dream borrows what the guide shows.
    """
    reference = guide_features.float()

    def score(acts: Activations) -> torch.Tensor:
        features = acts[name].float().flatten(2)  # (batch, channels, positions)
        similarity = torch.einsum("bcm,cn->bmn", features, reference)
        matched = reference.t()[similarity.argmax(-1)]  # (batch, positions, channels)
        return (features.transpose(1, 2) * matched).sum(-1).mean(-1).sum()

    return Objective(score, frozenset({name}), f"guide@{name}")


def diversity(name: str) -> Objective:
    """Reward a batch whose images differ in style at a layer (Lucid's `diversity`).

    The negative mean cosine similarity between the Gram matrices of the batch's images: higher
    when each image shows the objective in its own way.
    """

    def score(acts: Activations) -> torch.Tensor:
        features = acts[name].float().flatten(2)
        grams = torch.nn.functional.normalize(
            (features @ features.transpose(1, 2)).flatten(1), dim=1
        )
        batch = len(grams)
        if batch < 2:
            return grams.new_zeros(())
        similarity = grams @ grams.t()
        return -(similarity.sum() - similarity.diagonal().sum()) / batch

    return Objective(score, frozenset({name}), f"diversity@{name}")


def total_variation() -> Objective:
    """Penalise differences between neighbouring pixels (to be subtracted, with a weight)."""

    def score(acts: Activations) -> torch.Tensor:
        image = acts[INPUT]
        dy = (image[..., 1:, :] - image[..., :-1, :]).abs().flatten(1).mean(1)
        dx = (image[..., :, 1:] - image[..., :, :-1]).abs().flatten(1).mean(1)
        return (dx + dy).sum()

    return Objective(score, frozenset({INPUT}), "total variation")


def high_frequency() -> Objective:
    """The energy the image has above a 3x3 blur (to be subtracted, with a weight)."""

    def score(acts: Activations) -> torch.Tensor:
        image = acts[INPUT]
        blurred = torch.nn.functional.avg_pool2d(image, 3, stride=1, padding=1,
                                                 count_include_pad=False)  # fmt: skip
        return (image - blurred).square().flatten(1).mean(1).sum()

    return Objective(score, frozenset({INPUT}), "high frequencies")


def _per_image_mean(values: torch.Tensor) -> torch.Tensor:
    # Sum over the batch so each image of a batch gets the gradient it would get alone.
    return values.flatten(1).mean(1).sum()


def imagenet_class_index(class_name: str) -> int:
    classes = imagenet_classes()
    lowered = [c.lower() for c in classes]
    wanted = class_name.strip().lower()
    if wanted in lowered:
        return lowered.index(wanted)
    close = [c for c in classes if wanted in c.lower()][:5]
    hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    raise InvalidParameter(f"'{class_name}' is not an ImageNet class name.{hint}")


def sum_of(weighted: Iterable[tuple[Objective, float]]) -> Objective:
    total: Objective | float = 0
    for objective, weight in weighted:
        total = total + weight * objective
    if not isinstance(total, Objective):
        raise InvalidParameter("The objective is empty: name at least one layer.")
    return total


def parse_objective(text: str, model: FeatureModel) -> Objective:
    """An objective from the `layers` syntax: `block10:1,block5/42:0.5,class/tabby:-1`.

    Each comma-separated term is LAYER, LAYER/CHANNEL or class/NAME, with an optional :WEIGHT
    (1 when left out; negative weights un-dream).
    """
    terms = []
    for raw in text.split(","):
        term = raw.strip()
        if not term:
            continue
        target, weight = term, 1.0
        if ":" in term:
            target, _, weight_text = term.rpartition(":")
            try:
                weight = float(weight_text)
            except ValueError:
                weight = math.nan
            if not math.isfinite(weight):
                raise InvalidParameter(
                    f"'{term}': the weight after ':' must be a number, e.g. block10:0.5."
                )
        terms.append((_parse_target(target.strip(), model), weight))
    return sum_of(terms)


def _parse_target(target: str, model: FeatureModel) -> Objective:
    name, _, detail = target.partition("/")
    if name == "class":
        if not model_spec(model.name).imagenet_classes:
            raise InvalidParameter(
                f"Model '{model.name}' does not use the ImageNet class list; "
                "class objectives need effnet-lite0, googlenet, vgg16 or resnet50."
            )
        return class_logit(detail)
    model.check_layers([name])
    if not detail:
        return layer(name)
    try:
        index = int(detail)
    except ValueError:
        raise InvalidParameter(
            f"'{target}': the part after '/' must be a channel number, e.g. {name}/7."
        ) from None
    channels = model.channel_count(name)
    if not 0 <= index < channels:
        raise UnknownLayer(f"Layer '{name}' has channels 0 to {channels - 1}; got {index}.")
    return channel(name, index)


def weighted_layers(weights: Mapping[str, float]) -> Objective:
    """The L2 objective over several layers with weights, as presets define them."""
    return sum_of((layer(name), weight) for name, weight in weights.items())
