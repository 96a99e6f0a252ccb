"""How far a float32 computation of the network may honestly be from the exact one.

Two correct float32 implementations of a convolution sum the same products in different orders
(another CPU's vector width, oneDNN's blocking, cuDNN's algorithms), so they differ by rounding,
and by how much depends on the values and on the depth of the sums, not on the machine the test
runs on. This module estimates that in float64, for the frozen convolution chains the engine
dreams with, by the standard model of rounding:

- a float32 sum of n products carries an error of about u * sqrt(n) times the sum of their
  magnitudes, with random sign (u = 2^-24; Higham & Mary, "A new approach to probabilistic
  rounding error analysis", SIAM J. Sci. Comput. 2019); the backward pass likewise;
- such errors, drawn at random at every convolution, travel through the rest of the network
  as the real ones do: through the weights with their signs, and through the ReLU6 clamps,
  which a perturbation near 0 or 6 may flip; one more run flips every clamp within rounding
  reach of its bound, which a few random runs may miss.

The network is run exactly (float64) once, then a few times with those errors injected; how far
the perturbed runs land from the exact one is the estimate a float32 result is held to.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from dream_server.models.base import FeatureModel, GlobalPoolClassifier
from dream_server.models.frozen_convs import FrozenConvChain, conv2d_same

UNIT_ROUNDOFF = 2.0**-24
RUNS = 3
"""Perturbed runs per estimate."""
RMS_FACTOR = 2.0
"""A result's root-mean-square error may be this many times the perturbed runs' largest
(measured: real float32 paths land at a tenth of the estimate or less, which models plain
sequential sums, where blocked and vectorised ones err less)."""
MAX_FACTOR = 4.0
"""Its largest elementwise error, this many times theirs: extremes of few runs scatter more."""


class _Rounding(torch.autograd.Function):
    """Identity that adds float32-like rounding noise to the gradient passing back through it:
    the error of a backward sum of `depth` products."""

    @staticmethod
    def forward(ctx, x, depth, generator):  # noqa: ANN001, ANN205
        ctx.depth, ctx.generator = depth, generator
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):  # noqa: ANN001, ANN205
        return grad + _noise(grad.abs(), ctx.depth, ctx.generator), None, None


def _noise(magnitude: torch.Tensor, depth: int, generator: torch.Generator) -> torch.Tensor:
    scale = UNIT_ROUNDOFF * math.sqrt(depth)
    return torch.randn(magnitude.shape, generator=generator, dtype=magnitude.dtype) * (
        scale * magnitude
    )


RunMode = "torch.Generator | _KinksFlipped | None"
"""How a float64 run goes: exactly (None), with float32-like rounding errors drawn from a
generator, or with the clamps near their bounds flipped (KINKS_FLIPPED)."""


class _KinksFlipped:
    """The run in which every clamp whose input lies within rounding reach of 0 or 6 takes the
    other side: a float32 result may have it either way, and a few random runs may not show it
    (an input drawn near a kink once failed a test at 2000x the noise runs' error)."""


KINKS_FLIPPED = _KinksFlipped()
KINK_REACH = 3.0
"""Within this many standard deviations of a convolution's own rounding error from a bound, a
clamp may go either way (measured on block4 gradients of random inputs: the noise runs flip a
clamp for 13 inputs in 40, this run for 25, a real float32 path stays under 0.18 of the bound)."""


def _conv(x: torch.Tensor, conv, generator: RunMode) -> torch.Tensor:  # noqa: ANN001
    weight, bias = conv.weight.double(), conv.bias.double()
    noisy = isinstance(generator, torch.Generator)
    if noisy:
        backward_depth = weight.shape[0] // conv.groups * weight.shape[2] * weight.shape[3]
        x = _Rounding.apply(x, backward_depth, generator)
    y = conv2d_same(x, weight, bias, conv.stride, conv.groups)
    if generator is None:
        return F.hardtanh(y, *conv.clamp) if conv.clamp else y
    with torch.no_grad():
        magnitude = conv2d_same(x.abs(), weight.abs(), bias.abs(), conv.stride, conv.groups)
    depth = weight.shape[1] * weight.shape[2] * weight.shape[3] + 1  # products and the bias
    if noisy:
        y = y + _noise(magnitude, depth, generator)
    if not conv.clamp:
        return y
    clamped = F.hardtanh(y, *conv.clamp)
    if noisy:
        return clamped
    low, high = conv.clamp
    reach = KINK_REACH * UNIT_ROUNDOFF * math.sqrt(depth) * magnitude
    near = ((y - low).abs() < reach) | ((y - high).abs() < reach)
    inside = (y > low) & (y < high)
    nearest_bound = torch.where(y - low < high - y, low, high).to(y.dtype)
    other_side = torch.where(inside, nearest_bound, y)  # a passed input clamps, a clamped passes
    return torch.where(near, other_side, clamped)


def _linear(x: torch.Tensor, fc, generator: RunMode) -> torch.Tensor:  # noqa: ANN001
    weight, bias = fc.weight.double(), fc.bias.double()
    y = F.linear(x, weight, bias)
    if isinstance(generator, torch.Generator):
        with torch.no_grad():
            magnitude = F.linear(x.abs(), weight.abs(), bias.abs())
        y = y + _noise(magnitude, weight.shape[1] + 1, generator)
    return y


def _stage(x: torch.Tensor, stage, generator: RunMode) -> torch.Tensor:  # noqa: ANN001
    if isinstance(stage, FrozenConvChain):
        y = x
        for conv in stage.convs:
            y = _conv(y, conv, generator)
        return y + x if stage.skip else y
    if isinstance(stage, GlobalPoolClassifier):
        pooled = x.mean(dim=(2, 3))
        if isinstance(generator, torch.Generator):
            pixels = x.shape[-2] * x.shape[-1]
            pooled = pooled + _noise(x.detach().abs().mean(dim=(2, 3)), pixels, generator)
        return _linear(pooled, stage.fc, generator)
    raise TypeError(f"no rounding model for {type(stage).__name__}")


def forward64(
    model: FeatureModel,
    image: torch.Tensor,
    layers: list[str],
    generator: RunMode = None,
) -> dict[str, torch.Tensor]:
    """The model's activations in float64, run as `generator` says (see RunMode);
    differentiable with respect to `image`."""
    return _through(model.stages.items(), model._normalize(image.double()), layers, generator)


def chain64(chain: FrozenConvChain, x: torch.Tensor, generator: RunMode = None) -> torch.Tensor:
    """One chain's output in float64, run as `generator` says (see RunMode)."""
    return _stage(x.double(), chain, generator)


def _through(stages, x, layers, generator):  # noqa: ANN001, ANN202
    wanted, found = set(layers), {}
    for name, stage in stages:
        x = _stage(x, stage, generator)
        if name in wanted:
            found[name] = x
            if len(found) == len(wanted):
                break
    return found


@dataclass(frozen=True)
class Estimate:
    """The exact value, and how far float32 rounding moved the perturbed runs from it."""

    exact: torch.Tensor
    rms: float
    largest: float


def estimate(run, runs: int = RUNS):  # noqa: ANN001, ANN201
    """`run(generator)` computes a tensor, or a dict of them, in float64: exactly for None,
    perturbed for a torch.Generator, with the clamps near their bounds flipped for
    KINKS_FLIPPED. Returns an `Estimate` for each tensor, in the same shape of result."""
    exact = run(None)
    perturbed = [run(torch.Generator().manual_seed(seed)) for seed in range(runs)]
    perturbed.append(run(KINKS_FLIPPED))
    if isinstance(exact, torch.Tensor):
        return _estimate(exact, perturbed)
    return {key: _estimate(exact[key], [p[key] for p in perturbed]) for key in exact}


def _estimate(exact: torch.Tensor, perturbed: list[torch.Tensor]) -> Estimate:
    exact = exact.detach()
    deviations = [p.detach() - exact for p in perturbed]
    return Estimate(
        exact,
        max(float(d.square().mean().sqrt()) for d in deviations),
        max(float(d.abs().max()) for d in deviations),
    )


def assert_within_rounding(got: torch.Tensor, expected: Estimate, what: str) -> None:
    error = got.double() - expected.exact
    rms, largest = float(error.square().mean().sqrt()), float(error.abs().max())
    assert rms <= RMS_FACTOR * expected.rms and largest <= MAX_FACTOR * expected.largest, (
        f"{what}: error {rms:.3g} RMS and {largest:.3g} at most, where rounding gives "
        f"{expected.rms:.3g} RMS and {expected.largest:.3g} at most"
    )


def jump_at_the_wrap_and_in_the_middle(image: np.ndarray) -> tuple[float, float]:
    """The mean difference between the pixels that meet when the image is tiled (its last
    column and its first, its last row and its first), and between its middle column and row
    and their neighbours: a tileable dream's wrap shows the photo's middle (see `seamless`),
    so its middle is the same content's jump where there never was a seam."""
    pixels = image.astype(np.float32)
    height, width = pixels.shape[:2]
    at_the_wrap = np.concatenate([np.abs(pixels[:, 0] - pixels[:, -1]).ravel(),
                                  np.abs(pixels[0] - pixels[-1]).ravel()])  # fmt: skip
    in_the_middle = np.concatenate([
        np.abs(pixels[:, width // 2] - pixels[:, width // 2 - 1]).ravel(),
        np.abs(pixels[height // 2] - pixels[height // 2 - 1]).ravel(),
    ])  # fmt: skip
    return float(at_the_wrap.mean()), float(in_the_middle.mean())
