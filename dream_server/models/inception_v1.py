"""InceptionV1 (BVLC GoogLeNet as trained for TensorFlow's inception5h): the classic DeepDream look.

Attribute names and shapes match the PyTorch conversion that Lucent loads, so that its state dict
loads strictly. All padding is explicit, as in the TensorFlow graph the weights come from.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .base import GlobalPoolClassifier

LRN = {"size": 9, "alpha": 9.99999974738e-05, "beta": 0.5, "k": 1.0}

# name: (in, 1x1, 3x3 bottleneck, 3x3, 5x5 bottleneck, 5x5, pool reduce)
MIXED_BLOCKS = {
    "mixed3a": (192, 64, 96, 128, 16, 32, 32),
    "mixed3b": (256, 128, 128, 192, 32, 96, 64),
    "mixed4a": (480, 192, 96, 204, 16, 48, 64),
    "mixed4b": (508, 160, 112, 224, 24, 64, 64),
    "mixed4c": (512, 128, 128, 256, 24, 64, 64),
    "mixed4d": (512, 112, 144, 288, 32, 64, 64),
    "mixed4e": (528, 256, 160, 320, 32, 128, 128),
    "mixed5a": (832, 256, 160, 320, 48, 128, 128),
    "mixed5b": (832, 384, 192, 384, 48, 128, 128),
}
# Blocks whose input is first max-pooled with stride 2; mixed3a's is response-normalised before.
DOWNSAMPLED_BEFORE = {"mixed3a", "mixed4a", "mixed5a"}
NORMALISED_BEFORE = {"mixed3a"}
NUM_CLASSES = 1008


class InceptionV1(nn.Module):
    """Flat container of the converted weights; `named_stages` wires them into layers."""

    def __init__(self) -> None:
        super().__init__()
        self.conv2d0_pre_relu_conv = nn.Conv2d(3, 64, 7, stride=2)
        self.conv2d1_pre_relu_conv = nn.Conv2d(64, 64, 1)
        self.conv2d2_pre_relu_conv = nn.Conv2d(64, 192, 3)
        for name, (c_in, c1, c3r, c3, c5r, c5, cp) in MIXED_BLOCKS.items():
            setattr(self, f"{name}_1x1_pre_relu_conv", nn.Conv2d(c_in, c1, 1))
            setattr(self, f"{name}_3x3_bottleneck_pre_relu_conv", nn.Conv2d(c_in, c3r, 1))
            setattr(self, f"{name}_5x5_bottleneck_pre_relu_conv", nn.Conv2d(c_in, c5r, 1))
            setattr(self, f"{name}_pool_reduce_pre_relu_conv", nn.Conv2d(c_in, cp, 1))
            setattr(self, f"{name}_3x3_pre_relu_conv", nn.Conv2d(c3r, c3, 3))
            setattr(self, f"{name}_5x5_pre_relu_conv", nn.Conv2d(c5r, c5, 5))
        self.softmax2_pre_activation_matmul = nn.Linear(1024, NUM_CLASSES)

    def named_stages(self) -> list[tuple[str, nn.Module]]:
        stages: list[tuple[str, nn.Module]] = [
            ("conv2d0", _Conv2d0(self.conv2d0_pre_relu_conv)),
            ("conv2d1", _Conv2d1(self.conv2d1_pre_relu_conv)),
            ("conv2d2", _Conv2d2(self.conv2d2_pre_relu_conv)),
        ]
        for name in MIXED_BLOCKS:
            convs = [
                getattr(self, f"{name}_{part}_pre_relu_conv")
                for part in ("1x1", "3x3_bottleneck", "3x3", "5x5_bottleneck", "5x5", "pool_reduce")
            ]
            stages.append(
                (
                    name,
                    _Mixed(
                        *convs,
                        normalise=name in NORMALISED_BEFORE,
                        downsample=name in DOWNSAMPLED_BEFORE,
                    ),
                )
            )
        stages.append(("logits", GlobalPoolClassifier(self.softmax2_pre_activation_matmul)))
        return stages


def _max_pool_same(x: torch.Tensor, stride: int) -> torch.Tensor:
    pad = (0, 1, 0, 1) if stride == 2 else (1, 1, 1, 1)
    return F.max_pool2d(F.pad(x, pad, value=float("-inf")), kernel_size=3, stride=stride)


class _Conv2d0(nn.Module):
    def __init__(self, conv: nn.Conv2d) -> None:
        super().__init__()
        self.conv = conv

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.conv(F.pad(x, (2, 3, 2, 3))))


class _Conv2d1(nn.Module):
    def __init__(self, conv: nn.Conv2d) -> None:
        super().__init__()
        self.conv = conv

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.local_response_norm(_max_pool_same(x, 2), **LRN)
        return F.relu(self.conv(x))


class _Conv2d2(nn.Module):
    def __init__(self, conv: nn.Conv2d) -> None:
        super().__init__()
        self.conv = conv

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.conv(F.pad(x, (1, 1, 1, 1))))


class _Mixed(nn.Module):
    def __init__(
        self,
        c1: nn.Conv2d,
        c3r: nn.Conv2d,
        c3: nn.Conv2d,
        c5r: nn.Conv2d,
        c5: nn.Conv2d,
        cp: nn.Conv2d,
        normalise: bool,
        downsample: bool,
    ) -> None:
        super().__init__()
        self.c1, self.c3r, self.c3, self.c5r, self.c5, self.cp = c1, c3r, c3, c5r, c5, cp
        self.normalise = normalise
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.normalise:
            x = F.local_response_norm(x, **LRN)
        if self.downsample:
            x = _max_pool_same(x, 2)
        branch1 = F.relu(self.c1(x))
        branch3 = F.relu(self.c3(F.pad(F.relu(self.c3r(x)), (1, 1, 1, 1))))
        branch5 = F.relu(self.c5(F.pad(F.relu(self.c5r(x)), (2, 2, 2, 2))))
        branch_pool = F.relu(self.cp(_max_pool_same(x, 1)))
        return torch.cat((branch1, branch3, branch5, branch_pool), 1)


def normalize_inception_v1(image: torch.Tensor) -> torch.Tensor:
    """The TensorFlow graph's input range: RGB 0..1 to -117..138."""
    return image * 255.0 - 117.0
