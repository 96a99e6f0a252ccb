"""The `deepdream` command: dream on image files from a terminal or a script."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from .engine import Engine
from .errors import DreamError
from .imagefile import check_writable, read_image, read_mask, write_image
from .models import MODELS, model_spec
from .params import DREAM_PARAMETERS, DreamParams, Param

EXIT_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130


class OneLineParser(argparse.ArgumentParser):
    """Usage mistakes get one line that says what to do, not a wall of usage text."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: {message} (see {self.prog} --help)\n")


def _argument_type(param: Param):  # noqa: ANN202 - an argparse type callable
    python_type = int if param.kind == "int" else float

    def convert(text: str) -> Any:
        try:
            value = python_type(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        try:
            return param.validate(value)
        except DreamError as err:
            raise argparse.ArgumentTypeError(str(err)) from None

    convert.__name__ = param.kind
    return convert


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="deepdream",
        description="Dream on an image with a pretrained network (DeepDream).",
        epilog="Example: deepdream photo.jpg -o dream.png --preset animals",
    )
    parser.add_argument(
        "input", nargs="?", type=Path, help="image to dream on (PNG, JPEG, WebP, TIFF)"
    )
    parser.add_argument("-o", "--output", type=Path, help="where to write the dream")
    what = parser.add_mutually_exclusive_group()
    for param in DREAM_PARAMETERS:
        target = what if param.name in ("preset", "layers") else parser
        flag = f"--{param.name}"
        common: dict[str, Any] = {"dest": param.attr, "default": argparse.SUPPRESS}
        help_text = f"{param.help} (default: {param.default})"
        if param.kind == "bool":
            target.add_argument(flag, action="store_const", const=True, help=param.help, **common)
        elif param.kind == "choice":
            target.add_argument(flag, choices=param.choices, help=help_text, **common)
        elif param.kind == "string":
            target.add_argument(flag, metavar="SPEC", help=param.help, **common)
        else:
            metavar = "N" if param.kind == "int" else "X"
            target.add_argument(
                flag, type=_argument_type(param), metavar=metavar, help=help_text, **common
            )
    parser.add_argument(
        "--mask",
        type=Path,
        metavar="FILE",
        help="gray image of the same size: white dreams, black keeps the original",
    )
    parser.add_argument(
        "--guide",
        type=Path,
        metavar="FILE",
        help="dream of what this image shows instead of what the layer likes",
    )
    parser.add_argument(
        "--weights", type=Path, metavar="FILE", help="local weights file for --model (no download)"
    )
    parser.add_argument("--list-models", action="store_true", help="list the models and exit")
    parser.add_argument("--list-layers", metavar="MODEL", help="list a model's layers and presets")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    parser.add_argument("-v", "--verbose", action="store_true", help="log what happens")
    parser.add_argument("--debug", action="store_true", help="show tracebacks of internal errors")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        if args.list_models:
            print_models()
            return 0
        if args.list_layers:
            print_layers(args.list_layers)
            return 0
        if args.input is None or args.output is None:
            parser.error("give an input image and -o OUTPUT")
        return dream_file(args)
    except DreamError as err:
        print(f"deepdream: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("deepdream: interrupted; nothing was written.", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as err:
        if args.debug:
            raise
        print(
            f"deepdream: internal error ({type(err).__name__}: {err}); nothing was written. "
            "Run again with --debug to see where, and report it.",
            file=sys.stderr,
        )
        return EXIT_FAILED


def dream_file(args: argparse.Namespace) -> int:
    given = {
        param.name: getattr(args, param.attr)
        for param in DREAM_PARAMETERS
        if hasattr(args, param.attr)
    }
    params = DreamParams.from_mapping(given)
    model_spec(params.model)
    image = read_image(args.input)
    check_writable(args.output, image)
    mask = read_mask(args.mask) if args.mask else None
    guide = read_image(args.guide) if args.guide else None
    weights = {params.model: args.weights} if args.weights else None
    with _Progress(enabled=not args.quiet) as progress:
        engine = Engine(params.device, weights_files=weights, on_download=progress.download)
        result = engine.dream(
            image, params, mask=mask, guide_image=guide, on_progress=progress.dream
        )
    write_image(args.output, result)
    print(f"Wrote {args.output}")
    return 0


class _Progress:
    """tqdm bars for a download and for the dream, with the time left."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self._download_bar = None
        self._dream_bar = None

    def __enter__(self) -> _Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        for bar in (self._download_bar, self._dream_bar):
            if bar is not None:
                bar.close()

    def download(self, done: int, total: int | None) -> None:
        if not self.enabled:
            return
        if self._download_bar is None:
            from tqdm import tqdm

            self._download_bar = tqdm(
                total=total, unit="B", unit_scale=True, unit_divisor=1024, desc="weights"
            )
        self._download_bar.update(done - self._download_bar.n)

    def dream(self, octave: int, step: int, fraction: float) -> None:
        if not self.enabled:
            return
        if self._dream_bar is None:
            from tqdm import tqdm

            self._dream_bar = tqdm(
                total=100,
                desc="dreaming",
                bar_format="{desc} {percentage:3.0f}%|{bar}| {elapsed}<{remaining}",
            )
        description = f"dreaming (octave {octave + 1})"
        if self._dream_bar.desc != description:
            self._dream_bar.set_description(description, refresh=False)
        self._dream_bar.update(round(fraction * 100, 2) - self._dream_bar.n)


def print_models() -> None:
    for spec in MODELS.values():
        if spec.weights is None:
            source = "built in"
        else:
            source = f"{spec.weights.size_mb:.0f} MB download: {spec.weights.url}"
        print(f"{spec.name:14} {spec.description}\n{'':14} ({source})")


def print_layers(model_name: str) -> None:
    spec = model_spec(model_name)
    print(f"Layers of {spec.name} (shallow to deep):")
    for layer in spec.layers:
        print(f"  {layer.name:14} {layer.description}")
    print("Presets:")
    for preset, weights in spec.presets.items():
        terms = ",".join(f"{name}:{weight:g}" for name, weight in weights.items())
        print(f"  {preset:14} {terms}")


if __name__ == "__main__":
    sys.exit(main())
