"""Which networks one can dream with: their layer catalogue, presets and weights.

Plain data, importable without torch, so that `deepdream --help`, `--list-models` and argument
errors answer at once. The networks themselves are built in `models.zoo`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .errors import UnknownModel
from .weights import WeightsFile

if TYPE_CHECKING:
    from .models.zoo import Network

PRESET_LOOKS = {
    "strokes": "brush strokes and hatching",
    "textures": "fine textures, like fabric or bark",
    "patterns": "ornaments, swirls and grids",
    "parts": "eyes, scales, wheels: parts of things",
    "animals": "animal faces, eyes and fur",
    "objects": "whole objects and buildings",
}
"""What each preset looks like, the same on every model (each picks its own layers for it)."""
PRESETS = tuple(PRESET_LOOKS)
DEFAULT_MODEL = "effnet-lite0"
RESNET50_BLOCKS = {"layer1": 3, "layer2": 4, "layer3": 6, "layer4": 3}


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
    weights: WeightsFile | None
    """Where the weights download from; None for weights that ship with the package."""
    imagenet_classes: bool
    """Whether `logits` are the 1000 ImageNet classes, so class objectives can name them."""
    min_input_size: int = 64

    @property
    def layer_names(self) -> list[str]:
        return [layer.name for layer in self.layers]

    @property
    def network(self) -> Network:
        """How to build the network, cut it into stages and normalise its input (imports torch)."""
        from .models.zoo import NETWORKS

        return NETWORKS[self.name]

    def build(self) -> Any:
        """The bare network whose state dict the weights file holds."""
        return self.network.build()

    def stages(self, net: Any) -> list:
        """The named layers of that network once its batch norms are folded, shallow to deep."""
        return self.network.stages(net)

    def normalize(self, image: Any) -> Any:
        return self.network.normalize(image)


def _layers(*pairs: tuple[str, str]) -> tuple[LayerInfo, ...]:
    return tuple(LayerInfo(name, description) for name, description in pairs)


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
