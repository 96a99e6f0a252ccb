"""The one definition of the dream parameters.

The `deepdream` command builds its flags from it, the daemon validates wire messages with it and
sends it to clients as a JSON schema, and the GIMP dialog builds its widgets from that schema: a
parameter added here appears everywhere under the same name (`octave-scale`, `--octave-scale`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, make_dataclass
from typing import Any

from dream_link.wire import CUSTOM_PRESET

from .catalogue import DEFAULT_MODEL, MODELS, PRESET_LOOKS, PRESETS
from .errors import InvalidParameter

DEVICE_CHOICES = ("auto", "cuda", "mps", "cpu")


@dataclass(frozen=True)
class Param:
    name: str
    kind: str
    """One of "int", "float", "bool", "choice", "string"."""
    default: Any
    label: str
    help: str
    minimum: float | None = None
    maximum: float | None = None
    choices: tuple[str, ...] = ()
    choice_help: dict[str, str] = field(default_factory=dict)
    """A line on what each choice gives, where its name alone does not say."""
    cli_only: bool = False
    """A setting of the machine the engine runs on, not of the dream (e.g. the device)."""
    python_name: str = ""
    """The attribute name where the name is no Python identifier (`class` is `class_name`)."""
    aliases: tuple[str, ...] = ()
    """Extra command-line flags (`-n` for `--samples`)."""

    @property
    def attr(self) -> str:
        return self.python_name or self.name.replace("-", "_")

    def validate(self, value: Any) -> Any:
        """The value in its canonical type, or InvalidParameter saying what is allowed."""
        if self.kind == "bool":
            if isinstance(value, bool):
                return value
            raise self._error(value, "true or false")
        if self.kind == "int":
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise self._error(value, f"a whole number {self._range_text()}")
            if isinstance(value, float) and not value.is_integer():
                raise self._error(value, f"a whole number {self._range_text()}")
            value = int(value)
        elif self.kind == "float":
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise self._error(value, f"a number {self._range_text()}")
            value = float(value)
            if not math.isfinite(value):
                raise self._error(value, f"a number {self._range_text()}")
        elif self.kind in ("choice", "string"):
            if not isinstance(value, str):
                raise self._error(value, "text")
            if self.kind == "choice" and value not in self.choices:
                raise self._error(value, f"one of {', '.join(self.choices)}")
            if len(value) > 1000:
                raise self._error(value[:20] + "...", "at most 1000 characters")
            return value
        if (self.minimum is not None and value < self.minimum) or (
            self.maximum is not None and value > self.maximum
        ):
            noun = "a whole number" if self.kind == "int" else "a number"
            raise self._error(value, f"{noun} {self._range_text()}")
        return value

    def _range_text(self) -> str:
        return f"from {_number(self.minimum)} to {_number(self.maximum)}"

    def _error(self, value: Any, expected: str) -> InvalidParameter:
        return InvalidParameter(f"'{self.name}' must be {expected}; got {value!r}.")

    def schema(self) -> dict[str, Any]:
        """The JSON form sent to clients, from which the GIMP dialog builds its widgets."""
        entry: dict[str, Any] = {
            "name": self.name,
            "kind": self.kind,
            "default": self.default,
            "label": self.label,
            "help": self.help,
        }
        if self.minimum is not None:
            entry["minimum"] = self.minimum
            entry["maximum"] = self.maximum
        if self.choices:
            entry["choices"] = list(self.choices)
        if self.choice_help:
            entry["choice_help"] = dict(self.choice_help)
        return entry


def _number(value: float | None) -> str:
    if value is None:
        return "?"
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


DREAM_PARAMETERS: tuple[Param, ...] = (
    Param(
        "model",
        "choice",
        DEFAULT_MODEL,
        "Model",
        "The network that dreams. effnet-lite0 is built in; the others download once.",
        choices=tuple(MODELS),
    ),
    Param(
        "preset",
        "choice",
        "animals",
        "Preset",
        "What to dream of, from fine to coarse; 'custom' dreams the layers typed below.",
        choices=(*PRESETS, CUSTOM_PRESET),
        choice_help={**PRESET_LOOKS, CUSTOM_PRESET: "the layers typed in Layers"},
    ),
    Param(
        "layers",
        "string",
        "",
        "Layers",
        "Custom objective: LAYER[:WEIGHT] terms separated by commas; LAYER/CHANNEL excites one "
        "channel, class/NAME an ImageNet class; a negative weight un-dreams "
        "(e.g. block10:1,block5:0.5). When set, these layers are dreamed, whatever the preset.",
    ),
    Param(
        "octaves",
        "int",
        4,
        "Octaves",
        "How many scales to dream at; more octaves give larger structures.",
        minimum=1,
        maximum=12,
    ),
    Param(
        "octave-scale",
        "float",
        1.4,
        "Octave scale",
        "Size ratio between one octave and the next.",
        minimum=1.05,
        maximum=3.0,
    ),
    Param("steps", "int", 10, "Steps", "Gradient-ascent steps per octave.", minimum=1, maximum=500),
    Param(
        "step-size",
        "float",
        1.5,
        "Step size",
        "How far each step moves the pixels (on the 0-255 scale).",
        minimum=0.0,
        maximum=20.0,
    ),
    Param(
        "jitter",
        "int",
        32,
        "Jitter",
        "Random shift in pixels before each step, which avoids grid artefacts.",
        minimum=0,
        maximum=512,
    ),
    Param(
        "smoothness",
        "float",
        0.0,
        "Smoothness",
        "Smooths the gradient across scales: 0 is the classic look, 1 gives soft, "
        "large-scale shapes.",
        minimum=0.0,
        maximum=1.0,
    ),
    Param(
        "strength",
        "float",
        1.0,
        "Strength",
        "Blend of the dream with the original: 0 keeps the original, 1 is the full dream.",
        minimum=0.0,
        maximum=1.0,
    ),
    Param(
        "keep-colors",
        "bool",
        False,
        "Keep colors",
        "Dream on brightness only and keep the original colours.",
    ),
    Param(
        "tileable",
        "bool",
        False,
        "Tileable result",
        "The dream wraps around the image's edges, so that the result tiles without seams "
        "(textures, patterns, backgrounds): the edges are first blended with the middle, as "
        "GIMP's Tile Seamless does, then dreamed across.",
    ),
    Param(
        "seed",
        "int",
        0,
        "Seed",
        "Random seed: the same seed and input give the same dream.",
        minimum=0,
        maximum=2**31 - 1,
    ),
    Param(
        "max-change",
        "float",
        0.0,
        "Max change",
        "Stop once the image has changed this much (RMS, 0-1 scale); 0 means no limit.",
        minimum=0.0,
        maximum=1.0,
    ),
    Param(
        "tile-size",
        "int",
        512,
        "Tile size",
        "Big images are dreamed in tiles of about this many pixels on a side (0.75 to 1.5 "
        "times it); smaller uses less memory.",
        minimum=128,
        maximum=4096,
    ),
    Param(
        "device",
        "choice",
        "auto",
        "Device",
        "Where to compute: auto picks CUDA, then Apple MPS, then the CPU.",
        choices=DEVICE_CHOICES,
        cli_only=True,
    ),
)


VISUALIZE_PARAMETERS: tuple[Param, ...] = (
    Param("model", "choice", DEFAULT_MODEL, "Model", "The network whose units are shown.",
          choices=tuple(MODELS)),
    Param("layer", "string", "block7", "Layer",
          "The layer to show (`deepdream --list-layers MODEL` lists them)."),
    Param("channel", "int", -1, "Channel",
          "One channel (feature) of the layer to show; -1 shows what the whole layer responds "
          "to.",
          minimum=-1, maximum=4095),
    Param("neuron", "string", "", "One spot only",
          "One neuron instead of a whole channel: CHANNEL,X,Y on the layer's grid."),
    Param("class", "string", "", "Class",
          "An ImageNet class to show instead of a layer (e.g. 'goldfish').",
          python_name="class_name"),
    Param("samples", "int", 4, "Samples", "How many images to render side by side.",
          minimum=1, maximum=16, aliases=("-n",)),
    Param("size", "int", 256, "Size", "Width and height of each image in pixels.",
          minimum=64, maximum=1024),
    Param("steps", "int", 256, "Steps", "Optimisation steps.", minimum=1, maximum=4096),
    Param("diversity", "float", 0.0, "Diversity",
          "Pushes the samples apart in style, so that side by side they show the range of what "
          "the unit responds to; 0 lets each find its own way.",
          minimum=0.0, maximum=1000.0),
    Param("tv", "float", 30.0, "Smoothing",
          "Smooths away pixel static: higher gives calmer, flatter images, 0 none (it penalises "
          "differences between neighbouring pixels; 30 costs the unit nothing).",
          minimum=0.0, maximum=1000.0),
    Param("frequency", "float", 0.0, "Broad shapes",
          "Higher gives broader shapes with less fine texture, 0 none (it penalises the energy "
          "above a 3x3 blur).",
          minimum=0.0, maximum=10000.0),
    Param("robustness", "bool", True, "Robust shapes",
          "Jitters, scales and rotates the image a little at every step, so that only shapes "
          "that survive it grow: off gives sharper but noisier patterns."),
    Param("param", "choice", "fft", "Grow from",
          "fft: grows smooth colours and shapes from a frequency basis (clearer images); "
          "maco: keeps the spectrum of real photos and changes only where things are (least "
          "static at 512 px and up, and for deep layers); pixel: grows raw pixels (noisier, as "
          "in early feature visualization). Accentuating a photo always grows from it.",
          choices=("fft", "maco", "pixel"),
          choice_help={"fft": "smooth colours and shapes",
                       "maco": "a photo's textures, least static when large",
                       "pixel": "raw pixels, noisier"}),
    Param("exemplars-each", "int", 4, "How many",
          "With photos to look in (--exemplars): how many patches of them to put beside each "
          "channel, the ones that excite it most, at most 2 from one photo.",
          minimum=1, maximum=16),
    Param("leash", "float", 10.0, "Stay close to the photo",
          "Accentuating a photo: how close the result stays to it; higher keeps more of the "
          "photo, 0 lets the feature take over.", minimum=0.0, maximum=100.0),
    Param("learning-rate", "float", 0.05, "Step size",
          "How far each optimisation step moves the image; higher is faster but rougher.",
          minimum=0.0001, maximum=1.0),
    Param("seed", "int", 0, "Seed", "Random seed: the same seed gives the same images.",
          minimum=0, maximum=2**31 - 1),
    Param("device", "choice", "auto", "Device",
          "Where to compute: auto picks CUDA, then Apple MPS, then the CPU.",
          choices=DEVICE_CHOICES, cli_only=True),
)  # fmt: skip

CHANNELS_PARAMETERS: tuple[Param, ...] = (
    *(p for p in VISUALIZE_PARAMETERS if p.name in ("model", "layer")),
    Param("top", "int", 8, "Channels", "How many of the layer's channels to name, strongest "
          "first.", minimum=1, maximum=64),
    *(p for p in VISUALIZE_PARAMETERS if p.name == "device"),
)  # fmt: skip
"""Which channels of a layer a photo excites most (`deepdream channels`, the `channels`
request)."""
SHEET_LOOK_PARAMETERS = tuple(
    p for p in VISUALIZE_PARAMETERS
    if p.name not in ("model", "layer", "channel", "neuron", "class", "samples", "leash", "device")
)  # fmt: skip
"""How the renders on a sheet of channels look: feature visualization's settings."""
ACCENTUATE_PARAMETERS = tuple(
    p for p in VISUALIZE_PARAMETERS
    if p.name not in ("samples", "size", "diversity", "tv", "frequency", "param", "exemplars-each")
)  # fmt: skip
"""Feature visualization's settings that accentuating a photo uses: it grows from the photo,
at its size, held by the leash rather than by pixel penalties."""

ZOOM_PARAMETERS: tuple[Param, ...] = (
    Param("frames", "int", 30, "Frames", "How many frames the zoom has.",
          minimum=1, maximum=10000),
    Param("zoom", "float", 1.05, "Zoom per frame",
          "How much closer each frame comes: 1.05 is 5% a frame; under 1 moves away.",
          minimum=0.5, maximum=2.0),
    Param("rotate", "float", 0.0, "Turn per frame", "Degrees the picture turns each frame, "
          "clockwise; negative turns it the other way.", minimum=-45.0, maximum=45.0),
    Param("shift-x", "float", 0.0, "Drift right", "Pixels the picture drifts right each frame "
          "(negative: left).", minimum=-1000.0, maximum=1000.0),
    Param("shift-y", "float", 0.0, "Drift down", "Pixels the picture drifts down each frame "
          "(negative: up).", minimum=-1000.0, maximum=1000.0),
    Param("steps-per-frame", "int", 5, "Steps per frame",
          "Steps per octave on each frame after the first: the picture already carries the "
          "dream, so a few add to it.", minimum=1, maximum=500),
    Param("fps", "float", 12.0, "Playback speed", "How fast the animation plays, in frames "
          "per second.",
          minimum=1.0, maximum=120.0),
)  # fmt: skip
"""How the camera moves through an endless zoom, and how fast it plays; with the dream's."""

VIDEO_PARAMETERS: tuple[Param, ...] = (
    Param("start", "float", 0.0, "Start", "Seconds into the clip where the dream starts.",
          minimum=0.0, maximum=86400.0),
    Param("duration", "float", 0.0, "Duration", "Seconds of the clip to dream; 0: to its end.",
          minimum=0.0, maximum=86400.0),
    Param("flow", "bool", True, "Follow the motion",
          "Carry each frame's dream onto the next along the optical flow, so that it moves with "
          "the picture instead of flickering; off blends the last dreamed frame in as it is."),
    Param("blend", "float", 0.9, "Carry over",
          "How much of the last frame's dream the next frame starts from: higher is steadier, "
          "lower lets the dream change faster.", minimum=0.0, maximum=1.0),
    Param("steps-per-frame", "int", 2, "Steps per frame",
          "Steps per octave on each frame after the first, which starts from the last one's "
          "dream: more adds more new dream per frame, and more flicker.",
          minimum=1, maximum=500),
)  # fmt: skip
"""How a video is dreamed frame after frame; with the dream's."""
FRAMES_PARAMETERS = tuple(p for p in VIDEO_PARAMETERS if p.name not in ("start", "duration"))
"""How an animation's frames are dreamed one after the other (DeepDream Frames in GIMP): a
video's settings, less where in a clip to start and stop."""

_PYTHON_TYPES = {"int": int, "float": float, "bool": bool, "choice": str, "string": str}


class _ParamSet:
    """Validation shared by the parameter classes; each sets PARAMETERS."""

    PARAMETERS: tuple[Param, ...] = ()

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]):  # noqa: ANN206 - returns cls
        """Validate a {name: value} mapping (names as in the CLI and the protocol)."""
        by_name = {param.name: param for param in cls.PARAMETERS}
        unknown = sorted(set(values) - set(by_name))
        if unknown:
            raise InvalidParameter(
                f"Unknown parameter {', '.join(repr(u) for u in unknown)}. Known parameters: "
                f"{', '.join(by_name)}."
            )
        checked = {by_name[name].attr: by_name[name].validate(v) for name, v in values.items()}
        return cls(**cls._complete(checked, values))

    @staticmethod
    def _complete(checked: dict[str, Any], given: Mapping[str, Any]) -> dict[str, Any]:
        return checked

    def to_mapping(self) -> dict[str, Any]:
        return {param.name: getattr(self, param.attr) for param in self.PARAMETERS}


class _DreamChecks(_ParamSet):
    PARAMETERS = DREAM_PARAMETERS

    @staticmethod
    def _complete(checked: dict[str, Any], given: Mapping[str, Any]) -> dict[str, Any]:
        if checked.get("layers", "").strip():  # layers typed mean those layers
            checked["preset"] = CUSTOM_PRESET
        if checked.get("preset") == CUSTOM_PRESET and not checked.get("layers", "").strip():
            raise InvalidParameter(
                "Preset 'custom' needs layers, e.g. block10:1,block5:0.5 "
                "(`deepdream --list-layers MODEL` lists them)."
            )
        return checked


class _VisualizeChecks(_ParamSet):
    PARAMETERS = VISUALIZE_PARAMETERS

    @staticmethod
    def _complete(checked: dict[str, Any], given: Mapping[str, Any]) -> dict[str, Any]:
        neuron = checked.get("neuron", "").strip()
        if neuron:
            parts = neuron.split(",")
            if len(parts) != 3 or not all(p.strip().lstrip("-").isdigit() for p in parts):
                raise InvalidParameter(
                    f"'neuron' must be CHANNEL,X,Y (three whole numbers); got {neuron!r}."
                )
        if neuron and checked.get("channel", -1) >= 0:
            raise InvalidParameter("Give a channel or a neuron, not both.")
        return checked


def _parameter_class(name: str, checks: type[_ParamSet], doc: str) -> type:
    return make_dataclass(
        name,
        [(p.attr, _PYTHON_TYPES[p.kind], field(default=p.default)) for p in checks.PARAMETERS],
        bases=(checks,),
        frozen=True,
        namespace={"__module__": __name__, "__doc__": doc},
    )


DreamParams = _parameter_class(
    "DreamParams", _DreamChecks,
    "Validated dream settings, one attribute per parameter (`octave_scale` for "
    "`octave-scale`); build with `DreamParams.from_mapping`.",
)  # fmt: skip
ZoomParams = _parameter_class(
    "ZoomParams", type("_ZoomChecks", (_ParamSet,), {"PARAMETERS": ZOOM_PARAMETERS}),
    "Validated zoom settings; build with `ZoomParams.from_mapping`.",
)  # fmt: skip
VideoParams = _parameter_class(
    "VideoParams", type("_VideoChecks", (_ParamSet,), {"PARAMETERS": VIDEO_PARAMETERS}),
    "Validated video settings; build with `VideoParams.from_mapping`.",
)  # fmt: skip
VisualizeParams = _parameter_class(
    "VisualizeParams", _VisualizeChecks,
    "Validated feature-visualization settings; build with `VisualizeParams.from_mapping`.",
)  # fmt: skip

ChannelsParams = _parameter_class(
    "ChannelsParams", type("_ChannelsChecks", (_ParamSet,), {"PARAMETERS": CHANNELS_PARAMETERS}),
    "Validated settings of a look at the channels a photo excites; build with "
    "`ChannelsParams.from_mapping`.",
)  # fmt: skip


def parameter_schema(
    parameters: tuple[Param, ...] = DREAM_PARAMETERS, include_cli_only: bool = False
) -> list[dict[str, Any]]:
    return [p.schema() for p in parameters if include_cli_only or not p.cli_only]


PLUGIN_PARAMETERS = {"dream": DREAM_PARAMETERS, "visualize": VISUALIZE_PARAMETERS,
                     "zoom": ZOOM_PARAMETERS, "frames": FRAMES_PARAMETERS,
                     "channels": CHANNELS_PARAMETERS, "sheet-look": SHEET_LOOK_PARAMETERS,
                     "accentuate": ACCENTUATE_PARAMETERS}  # fmt: skip
"""What the GIMP plug-in's procedures and dialogs are built from (install.py writes each)."""


def plugin_schemas() -> dict[str, list[dict[str, Any]]]:
    """The schema of each of PLUGIN_PARAMETERS: a plug-in installed from another release has
    other ones (see dream_link.wire.schema_hash)."""
    return {name: parameter_schema(parameters) for name, parameters in PLUGIN_PARAMETERS.items()}


if __name__ == "__main__":  # install.py writes these next to the GIMP plug-in
    import json
    import sys

    json.dump(plugin_schemas(), sys.stdout, indent=1)
