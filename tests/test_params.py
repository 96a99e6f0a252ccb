"""One definition of the dream parameters serves the command line, the protocol and the dialog."""

from __future__ import annotations

import json

import pytest

from dream_server.cli import build_parser, given_values
from dream_server.errors import InvalidParameter
from dream_server.params import DREAM_PARAMETERS, DreamParams, parameter_schema


def test_every_parameter_is_a_flag_of_the_same_name_with_its_help():
    help_text = build_parser().format_help()
    for param in DREAM_PARAMETERS:
        assert f"--{param.name}" in help_text
        first_words = " ".join(param.help.split()[:3])
        assert first_words in " ".join(help_text.split()), param.name


def test_the_defaults_are_the_documented_classic_dream():
    # README's table of options; an empty request, over the wire or on the command line,
    # gets exactly these.
    documented = {
        "model": "effnet-lite0", "preset": "animals", "layers": "", "octaves": 4,
        "octave-scale": 1.4, "steps": 10, "step-size": 1.5, "jitter": 32, "smoothness": 0.0,
        "strength": 1.0, "keep-colors": False, "tileable": False, "seed": 0, "max-change": 0.0,
        "tile-size": 512, "device": "auto",
    }  # fmt: skip
    assert DreamParams.from_mapping({}).to_mapping() == documented
    flags = build_parser().parse_args(["in.png", "-o", "out.png", "--octave-scale", "2"])
    from_flags = DreamParams.from_mapping(given_values(flags, DREAM_PARAMETERS)).to_mapping()
    assert from_flags == {**documented, "octave-scale": 2.0}


def test_the_schema_is_json_and_leaves_out_machine_settings():
    schema = json.loads(json.dumps(parameter_schema()))
    names = [entry["name"] for entry in schema]
    assert "octave-scale" in names and "keep-colors" in names and "device" not in names
    steps = next(entry for entry in schema if entry["name"] == "steps")
    assert steps == {
        "name": "steps",
        "kind": "int",
        "default": 10,
        "label": "Steps",
        "help": "Gradient-ascent steps per octave.",
        "minimum": 1,
        "maximum": 500,
    }


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"steps": 0}, "'steps' must be a whole number from 1 to 500"),
        ({"steps": 2.5}, "whole number"),
        ({"steps": True}, "whole number"),
        ({"strength": float("nan")}, "'strength' must be a number from 0 to 1"),
        ({"strength": "1"}, "must be a number"),
        ({"keep-colors": 1}, "true or false"),
        ({"preset": "dogs"}, "one of strokes, textures"),
        ({"model": 3}, "must be text"),
        ({"octave_scale": 1.4}, "Unknown parameter 'octave_scale'"),
        ({"preset": "custom"}, "needs layers"),
    ],
)
def test_bad_values_are_refused_with_what_is_allowed(values, message):
    with pytest.raises(InvalidParameter, match=message.replace("(", r"\(")):
        DreamParams.from_mapping(values)


def test_layers_typed_beside_a_preset_are_the_layers_dreamed():
    params = DreamParams.from_mapping({"preset": "objects", "layers": "block5"})
    assert params.preset == "custom" and params.layers == "block5"


def test_giving_layers_implies_the_custom_preset():
    params = DreamParams.from_mapping({"layers": "block3:1", "octave-scale": 2})
    assert params.preset == "custom" and params.octave_scale == 2.0
    assert DreamParams.from_mapping(params.to_mapping()) == params
