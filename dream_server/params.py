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

from .errors import InvalidParameter
from .models import DEFAULT_MODEL, MODELS, PRESETS

CUSTOM_PRESET = "custom"


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
    cli_only: bool = False
    """A setting of the machine the engine runs on, not of the dream (e.g. the device)."""

    @property
    def attr(self) -> str:
        return self.name.replace("-", "_")

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
        return entry


def _number(value: float | None) -> str:
    return f"{value:g}" if value is not None else "?"


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
        "What to dream of, from fine to coarse; 'custom' uses the layers below.",
        choices=(*PRESETS, CUSTOM_PRESET),
    ),
    Param(
        "layers",
        "string",
        "",
        "Layers",
        "Custom objective: LAYER[:WEIGHT] terms separated by commas; LAYER/CHANNEL excites one "
        "channel, class/NAME an ImageNet class; a negative weight un-dreams "
        "(e.g. block10:1,block5:0.5). Setting it implies preset 'custom'.",
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
        "Big images are dreamed in tiles of about this many pixels; smaller uses less memory.",
        minimum=128,
        maximum=4096,
    ),
    Param(
        "device",
        "choice",
        "auto",
        "Device",
        "Where to compute: auto picks CUDA, then Apple MPS, then the CPU.",
        choices=("auto", "cuda", "mps", "cpu"),
        cli_only=True,
    ),
)

PARAMETERS_BY_NAME = {param.name: param for param in DREAM_PARAMETERS}


_PYTHON_TYPES = {"int": int, "float": float, "bool": bool, "choice": str, "string": str}


class _DreamParamsMethods:
    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> DreamParams:
        """Validate a {name: value} mapping (names as in the CLI and the protocol)."""
        unknown = sorted(set(values) - set(PARAMETERS_BY_NAME))
        if unknown:
            raise InvalidParameter(
                f"Unknown parameter {', '.join(repr(u) for u in unknown)}. Known parameters: "
                f"{', '.join(PARAMETERS_BY_NAME)}."
            )
        checked = {
            PARAMETERS_BY_NAME[name].attr: PARAMETERS_BY_NAME[name].validate(value)
            for name, value in values.items()
        }
        if checked.get("layers", "").strip() and "preset" not in values:
            checked["preset"] = CUSTOM_PRESET
        if checked.get("preset") == CUSTOM_PRESET and not checked.get("layers", "").strip():
            raise InvalidParameter(
                "Preset 'custom' needs layers, e.g. block10:1,block5:0.5 "
                "(`deepdream --list-layers MODEL` lists them)."
            )
        return cls(**checked)

    def to_mapping(self) -> dict[str, Any]:
        return {param.name: getattr(self, param.attr) for param in DREAM_PARAMETERS}


DreamParams = make_dataclass(
    "DreamParams",
    [
        (param.attr, _PYTHON_TYPES[param.kind], field(default=param.default))
        for param in DREAM_PARAMETERS
    ],
    bases=(_DreamParamsMethods,),
    frozen=True,
    namespace={"__module__": __name__},
)
DreamParams.__doc__ = """Validated dream settings, one attribute per parameter (`octave_scale` for
`octave-scale`); build with `DreamParams.from_mapping`."""


def parameter_schema(include_cli_only: bool = False) -> list[dict[str, Any]]:
    return [p.schema() for p in DREAM_PARAMETERS if include_cli_only or not p.cli_only]


if __name__ == "__main__":  # install.py writes this next to the GIMP plug-in
    import json
    import sys

    json.dump(parameter_schema(), sys.stdout, indent=1)
