"""The frozen, truncatable network every objective and dream loop works with."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import torch
from torch import nn

from ..errors import UnknownLayer

INPUT = "input"
"""The pseudo-layer holding the image itself, for objectives that regularise pixels."""


class FeatureModel(nn.Module):
    """A pretrained classifier cut into named stages that runs only as deep as it is asked to.

    Input is RGB in 0..1 with shape (N, 3, H, W); each model brings its own normalisation.
    Asking for `block5` runs the stages up to `block5` and nothing after it, which is what
    makes shallow dreams cheap.
    """

    def __init__(
        self,
        name: str,
        stages: Sequence[tuple[str, nn.Module]],
        normalize: Callable[[torch.Tensor], torch.Tensor],
        min_input_size: int,
    ) -> None:
        super().__init__()
        self.name = name
        self.stages = nn.ModuleDict(stages)
        self._normalize = normalize
        self.min_input_size = min_input_size
        self._channel_counts: dict[str, int] | None = None
        self.eval()
        self.requires_grad_(False)

    @property
    def layer_names(self) -> list[str]:
        return list(self.stages.keys())

    def check_layers(self, layers: Iterable[str]) -> None:
        unknown = [layer for layer in layers if layer not in self.stages and layer != INPUT]
        if unknown:
            raise UnknownLayer(
                f"Model '{self.name}' has no layer {', '.join(repr(u) for u in unknown)}. "
                f"Its layers are: {', '.join(self.layer_names)} "
                f"(`deepdream --list-layers {self.name}` describes them)."
            )

    def channel_count(self, layer: str) -> int:
        """How many channels a layer has (measured once with a small probe image)."""
        if self._channel_counts is None:
            param = next(self.parameters())
            probe = torch.zeros(1, 3, self.min_input_size, self.min_input_size, device=param.device)
            with torch.no_grad():
                outputs = self(probe, self.layer_names)
            self._channel_counts = {name: out.shape[1] for name, out in outputs.items()}
        return self._channel_counts[layer]

    def forward(self, image: torch.Tensor, layers: Iterable[str]) -> dict[str, torch.Tensor]:
        wanted = set(layers)
        self.check_layers(wanted)
        activations: dict[str, torch.Tensor] = {}
        if INPUT in wanted:
            activations[INPUT] = image
            if len(wanted) == 1:
                return activations
        x = self._normalize(image)
        for name, stage in self.stages.items():
            x = stage(x)
            if name in wanted:
                activations[name] = x
                if len(activations) == len(wanted):
                    break
        return activations

    def train(self, mode: bool = True) -> FeatureModel:
        # Batch-norm statistics and dropout must never change: the model is a fixed measuring
        # instrument, so it stays in eval mode whatever a caller asks.
        return super().train(False)


class GlobalPoolClassifier(nn.Module):
    """Average pooling, flatten and the final linear layer: the stage that yields the logits."""

    def __init__(self, fc: nn.Module, pool: nn.Module | None = None) -> None:
        super().__init__()
        self.pool = pool if pool is not None else nn.AdaptiveAvgPool2d(1)
        self.fc = fc

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(x), 1))


def fold_batchnorm(module: nn.Module) -> int:
    """Fold every BatchNorm2d into the Conv2d registered just before it; returns how many.

    Valid only where the forward pass applies that batch norm directly to that convolution's
    output, which holds for every model in the zoo. Saves one elementwise pass forward and
    backward per convolution.
    """
    folded: set[int] = set()
    for parent in list(module.modules()):
        children = list(parent.named_children())
        for (_, conv), (bn_name, bn) in zip(children, children[1:], strict=False):
            if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
                if id(bn) not in folded:  # a module shared by two parents folds once
                    _fold_into(conv, bn)
                    folded.add(id(bn))
                setattr(parent, bn_name, nn.Identity())
    return len(folded)


@torch.no_grad()
def _fold_into(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> None:
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    conv.weight.mul_(scale.reshape(-1, 1, 1, 1))
    bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
    new_bias = (bias - bn.running_mean) * scale + bn.bias
    conv.bias = nn.Parameter(new_bias, requires_grad=False)
