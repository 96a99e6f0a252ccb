"""The `deepdream` command: dream on image files from a terminal or a script."""

from __future__ import annotations

import argparse
import errno
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from dream_link.wire import Progress

from . import SAMPLES, __version__
from .catalogue import MODELS, model_spec
from .errors import DreamError, InvalidImage, InvalidParameter
from .params import (
    ACCENTUATE_PARAMETERS,
    CHANNELS_PARAMETERS,
    DREAM_PARAMETERS,
    SHEET_LOOK_PARAMETERS,
    VIDEO_PARAMETERS,
    VISUALIZE_PARAMETERS,
    ZOOM_PARAMETERS,
    ChannelsParams,
    DreamParams,
    Param,
    VideoParams,
    VisualizeParams,
    ZoomParams,
)

# The engine, torch and the image libraries are imported where a dream or a visualization
# starts: --help, --version, --list-models and mistakes in the arguments answer at once.


EXIT_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130
USER_FIXABLE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS}
"""Failures to write that are the user's to fix (a full disk, a quota, a read-only disk)."""


class OneLineParser(argparse.ArgumentParser):
    """Usage mistakes get one line that says what to do, not a wall of usage text."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: {message} (see {self.prog} --help)\n")


def _argument_type(param: Param):  # noqa: ANN202 - an argparse type callable
    noun = "a whole number" if param.kind == "int" else "a number"

    def convert(text: str) -> Any:
        try:
            value = float(text)  # 1e3 is a whole number too
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {noun}, got {text!r}") from None
        try:
            return param.validate(value)
        except DreamError as err:
            raise argparse.ArgumentTypeError(str(err)) from None

    convert.__name__ = param.kind
    return convert


def add_parameter_flags(
    parser: argparse.ArgumentParser, parameters: tuple[Param, ...], exclusive: tuple[str, ...] = ()
) -> None:
    """A flag per parameter, named like it (`--octave-scale`), with its range in the help."""
    # An empty group breaks --help (argparse: "empty group"): the atlas hides both of its own.
    exclusive = tuple(name for name in exclusive if any(p.name == name for p in parameters))
    group = parser.add_mutually_exclusive_group() if exclusive else parser
    for param in parameters:
        target = group if param.name in exclusive else parser
        flags = [f"--{param.name}", *param.aliases]
        common: dict[str, Any] = {"dest": param.attr, "default": argparse.SUPPRESS}
        own_help = param.help.replace("%", "%%")  # argparse formats help with %: "5% a frame"
        help_text = f"{own_help} (default: {param.default})"
        if param.kind == "bool":
            action = argparse.BooleanOptionalAction if param.default else "store_true"
            target.add_argument(*flags, action=action, help=own_help, **common)
        elif param.kind == "choice":
            target.add_argument(*flags, choices=param.choices, help=help_text, **common)
        elif param.kind == "string":
            target.add_argument(*flags, metavar="TEXT", help=own_help, **common)
        else:
            metavar = "N" if param.kind == "int" else "X"
            kind = _argument_type(param)
            target.add_argument(*flags, type=kind, metavar=metavar, help=help_text, **common)


def given_values(args: argparse.Namespace, parameters: tuple[Param, ...]) -> dict[str, Any]:
    return {p.name: getattr(args, p.attr) for p in parameters if hasattr(args, p.attr)}


def add_run_flags(parser: argparse.ArgumentParser) -> None:
    """How a run talks: every command has these."""
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    parser.add_argument("-v", "--verbose", action="store_true", help="log what happens")
    parser.add_argument("--debug", action="store_true", help="show tracebacks of internal errors")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="deepdream",
        description="Dream on an image with a pretrained network (DeepDream). "
        "`deepdream visualize` and `deepdream atlas` show what a network's units look for, "
        "`deepdream channels` which of them a photo excites, `deepdream accentuate` a photo "
        "with one turned up; "
        "`deepdream zoom` dreams an endless zoom, `deepdream video` a video with steady frames.",
        epilog="Example: deepdream photo.jpg -o dream.png --preset animals",
    )
    parser.add_argument(
        "input", nargs="?", type=Path, help="image to dream on (PNG, JPEG, WebP, TIFF)"
    )
    parser.add_argument("-o", "--output", type=Path, help="where to write the dream")
    add_parameter_flags(parser, DREAM_PARAMETERS, exclusive=("preset", "layers"))
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
    add_run_flags(parser)
    parser.add_argument("--version", action="version", version=f"deepdream {__version__}")
    return parser


def build_visualize_parser(command: str) -> argparse.ArgumentParser:
    atlas = command == "atlas"
    if atlas:
        description = "Render a labelled grid of a layer's channels, one image each."
        example = "deepdream atlas --layer block7 --channels 0-15 -o atlas.png"
    else:
        description = "Render images from noise that excite a layer, channel, neuron or class."
        example = "deepdream visualize --layer block7 --channel 5 -n 4 -o sheet.png"
    parser = OneLineParser(
        prog=f"deepdream {command}", description=description, epilog=f"Example: {example}"
    )
    parser.add_argument("-o", "--output", type=Path, required=True, help="the contact sheet (PNG)")
    hidden = ("channel", "neuron", "class", "samples") if atlas else ()
    shown = tuple(p for p in VISUALIZE_PARAMETERS if p.name not in hidden)
    add_parameter_flags(parser, shown, exclusive=("channel", "neuron"))
    if atlas:
        parser.add_argument(
            "--channels",
            metavar="LIST",
            help="e.g. 0-15 or 3,7,42 (default: the channels that respond most to real photos)",
        )
        parser.add_argument("--count", type=int, default=16, help="how many, without --channels")
    else:
        parser.add_argument("--each", type=Path, metavar="DIR", help="also write each image here")
    add_exemplars_flag(parser)
    add_run_flags(parser)
    return parser


def add_exemplars_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--exemplars", type=Path, metavar="FOLDER",
        help="put beside each channel the patches of the photos in this folder that excite it "
        "most (--exemplars-each of them)",
    )  # fmt: skip


def build_channels_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="deepdream channels",
        description="Name the channels of a layer that a photo excites most, with their share "
        "of the layer's activation; each name (block7/42) is what to type into Layers to dream "
        "it. With -o, a sheet of what those channels look for.",
        epilog="Example: deepdream channels photo.jpg --layer block7 --top 8 -o sheet.png",
    )
    parser.add_argument("input", type=Path, help="the photo (PNG, JPEG, WebP, TIFF)")
    add_parameter_flags(parser, CHANNELS_PARAMETERS)
    parser.add_argument(
        "--mask",
        type=Path,
        metavar="FILE",
        help="gray image of the same size: look only where it is white",
    )
    parser.add_argument("-o", "--output", type=Path,
                        help="also render the channels into this sheet (PNG)")  # fmt: skip
    add_parameter_flags(parser, SHEET_LOOK_PARAMETERS)
    add_exemplars_flag(parser)
    add_run_flags(parser)
    return parser


def build_accentuate_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="deepdream accentuate",
        description="Turn up one feature of a photo (a channel, a neuron or an ImageNet class) "
        "while the result stays recognisably the photo: feature accentuation.",
        epilog="Example: deepdream accentuate cat.jpg --layer block7 --channel 34 -o more.png",
    )
    parser.add_argument("input", type=Path, help="the photo (PNG, JPEG, WebP, TIFF)")
    parser.add_argument("-o", "--output", type=Path, required=True, help="the accentuated photo")
    add_parameter_flags(parser, ACCENTUATE_PARAMETERS, exclusive=("channel", "neuron"))
    parser.add_argument("--change-mask", type=Path, metavar="FILE",
                        help="also write where the photo changed, as a gray mask")  # fmt: skip
    add_run_flags(parser)
    return parser


def build_motion_parser(
    command: str, description: str, example: str, input_help: str, output_help: str,
    parameters: tuple[Param, ...], resume_help: str,
) -> argparse.ArgumentParser:  # fmt: skip
    """`deepdream zoom` and `deepdream video`: an input, an output, the motion's settings and the
    dream's, and --resume."""
    parser = OneLineParser(prog=f"deepdream {command}", description=description,
                           epilog=f"Example: {example}")  # fmt: skip
    parser.add_argument("input", type=Path, help=input_help)
    # kept as typed: a trailing slash says "a folder" even of `frames.d/`, and Path drops it
    parser.add_argument("-o", "--output", required=True, help=output_help)
    add_parameter_flags(parser, parameters)
    add_parameter_flags(parser, DREAM_PARAMETERS, exclusive=("preset", "layers"))
    parser.add_argument("--resume", action="store_true", help=resume_help)
    add_run_flags(parser)
    return parser


def build_zoom_parser() -> argparse.ArgumentParser:
    return build_motion_parser(
        "zoom",
        "Dream an endless zoom: each frame is dreamed on the last one, moved a little closer "
        "(and turned or drifted, if asked).",
        "deepdream zoom photo.jpg -o zoom.mp4 --frames 60 --preset animals",
        "the image the zoom starts from",
        "a .gif, .webp or .mp4 file, or a folder for numbered PNGs",
        ZOOM_PARAMETERS,
        "continue the frames already in the output folder",
    )


def build_video_parser() -> argparse.ArgumentParser:
    return build_motion_parser(
        "video",
        "Dream on a video with steady frames: each frame's dream moves on to the next one with "
        "the picture (optical flow) instead of flickering.",
        "deepdream video clip.mp4 -o dream.mp4 --start 5 --duration 4",
        "the video (MP4, MOV, MKV, WebM)",
        "the dreamed video (.mp4, with the input's audio), or a folder for the frames as "
        "numbered PNGs",
        VIDEO_PARAMETERS,
        "continue from the frames an interrupted run left",
    )


SUBCOMMANDS = {
    "visualize": lambda: build_visualize_parser("visualize"),
    "atlas": lambda: build_visualize_parser("atlas"),
    "zoom": build_zoom_parser,
    "video": build_video_parser,
    "channels": build_channels_parser,
    "accentuate": build_accentuate_parser,
}


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = argv[0] if argv and argv[0] in SUBCOMMANDS else None
    parser = SUBCOMMANDS[command]() if command else build_parser()
    args = parser.parse_args(argv[1:] if command else argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        if command == "zoom":
            return zoom_file(args)
        if command == "video":
            return video_file(args)
        if command == "channels":
            return channels_file(args)
        if command == "accentuate":
            return accentuate_file(args)
        if command:
            return visualize_file(args, atlas=command == "atlas")
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
        if isinstance(err, OSError) and err.errno in USER_FIXABLE_ERRNOS:
            print(
                f"deepdream: {err.strerror} ({err.filename or args.output}): free some space or "
                "write elsewhere; nothing was written.",
                file=sys.stderr,
            )
            return EXIT_BAD_INPUT
        if args.debug:
            raise
        print(
            f"deepdream: internal error ({type(err).__name__}: {err}); nothing was written. "
            "Run again with --debug to see where, and report it.",
            file=sys.stderr,
        )
        return EXIT_FAILED


def dream_file(args: argparse.Namespace) -> int:
    from .imagefile import check_writable, load_image, read_image, read_mask, write_image

    params = DreamParams.from_mapping(given_values(args, DREAM_PARAMETERS))
    model_spec(params.model)
    for what, source in (("input", args.input), ("mask", args.mask), ("guide", args.guide)):
        if source is not None and same_file(source, args.output):
            raise InvalidParameter(
                f"-o {args.output} is the {what} image itself: the dream would replace it. "
                "Write the dream to another file."
            )
    source = load_image(args.input)
    image = source.pixels
    if source.frames > 1:
        print(
            f"deepdream: {args.input} is animated ({source.frames} frames): only its first "
            "frame is dreamed.",
            file=sys.stderr,
        )
    check_writable(args.output, image)
    mask = read_mask(args.mask) if args.mask else None
    guide = read_image(args.guide) if args.guide else None
    weights = {params.model: args.weights} if args.weights else None
    with _Progress(enabled=not args.quiet) as progress:
        progress.starting(f"loading {params.model}")
        from .engine import Engine

        engine = Engine(params.device, weights_files=weights, on_download=progress.download)
        result = engine.dream(
            image, params, mask=mask, guide_image=guide, on_progress=progress.dream
        )
    write_image(args.output, result, metadata=source.metadata)
    print(f"Wrote {args.output}")
    return 0


def check_output_place(output: Path) -> None:
    """Refuse, before any work, an output whose folder is not there or cannot be written."""
    place = output.parent
    if not place.is_dir():
        raise InvalidParameter(f"{place} does not exist: make that folder, or write elsewhere.")
    if not os.access(place, os.W_OK):
        raise InvalidParameter(f"{place} cannot be written (permission denied): write elsewhere.")


def zoom_file(args: argparse.Namespace) -> int:
    import numpy as np

    from .animation import FrameFolder, check_frames_file, frame_writer, is_folder_output
    from .imagefile import load_image, new_partial, rgb8, take_name
    from .motion import CameraMove, frame_params, zoom_sequence

    params = DreamParams.from_mapping(given_values(args, DREAM_PARAMETERS))
    zoom = ZoomParams.from_mapping(given_values(args, ZOOM_PARAMETERS))
    model_spec(params.model)
    to_folder, args.output = is_folder_output(args.output), Path(args.output)
    if same_file(args.input, args.output):
        raise InvalidParameter(f"-o {args.output} is the input image itself: write elsewhere.")
    check_output_place(args.output)
    first = rgb8(load_image(args.input).pixels)  # also the first frame of a GIF, WebP, MP4
    if not to_folder and args.resume:
        raise InvalidParameter("--resume continues a folder of frames: name a folder as -o.")
    # A file is written under another name and takes its own once it is closed: a failed run
    # leaves no broken file where a good one may have been.
    if to_folder:
        target, writer = args.output, FrameFolder(args.output, zoom.fps)
    else:
        check_frames_file(args.output)  # before a file is made
        target = new_partial(args.output)
        writer = frame_writer(target, zoom.fps)
    start, previous = 0, None
    if isinstance(writer, FrameFolder):
        start = writer.written()
        if any(writer.folder.iterdir()) and not args.resume:
            raise InvalidParameter(
                f"{args.output} is not empty: add --resume to continue the frames in it, or "
                "name an empty folder."
            )
        previous = writer.frame(start - 1) if start else None
    if start >= zoom.frames:
        print(f"{args.output} has all {zoom.frames} frames already.")
        return 0

    def finish() -> None:
        writer.close()
        if not to_folder:
            take_name(target, args.output)

    done = start
    try:
        with _Progress(enabled=not args.quiet) as progress:
            progress.starting(f"loading {params.model}")
            from .engine import Engine

            engine = Engine(params.device, on_download=progress.download)

            def dream(image: np.ndarray, index: int) -> np.ndarray:
                return engine.dream(image, frame_params(params, index, zoom.steps_per_frame, True),
                                    on_progress=progress.frame(index, zoom.frames))  # fmt: skip

            moves = CameraMove.of(zoom)
            for frame in zoom_sequence(first, moves, zoom.frames, dream, start, previous):
                writer.write(frame)
                done += 1
    except KeyboardInterrupt:
        finish()  # what is finished is kept
        print(f"deepdream: interrupted; {done} finished frames are in {args.output}"
              + (" (--resume continues them)." if to_folder else "."), file=sys.stderr)  # fmt: skip
        return EXIT_INTERRUPTED
    except BaseException:
        if not to_folder:
            writer.close()
            target.unlink(missing_ok=True)
        raise
    finish()
    print(f"Wrote {zoom.frames} frames to {args.output}")
    return 0


def video_file(args: argparse.Namespace) -> int:
    import collections
    import itertools
    import shutil

    import numpy as np

    from .animation import FrameFolder, is_folder_output
    from .imagefile import written_whole
    from .motion import Carry, frame_params, steady_sequence
    from .video import VIDEO_OUTPUT_SUFFIXES, Mp4, read_frames, video_info

    params = DreamParams.from_mapping(given_values(args, DREAM_PARAMETERS))
    video = VideoParams.from_mapping(given_values(args, VIDEO_PARAMETERS))
    model_spec(params.model)
    to_folder, args.output = is_folder_output(args.output), Path(args.output)
    if not to_folder and args.output.suffix.lower() not in VIDEO_OUTPUT_SUFFIXES:
        raise InvalidImage(
            f"Cannot write a video to {args.output.name}: name it .mp4, or name a folder for "
            "the frames as PNGs."
        )
    if same_file(args.input, args.output):
        raise InvalidParameter(f"-o {args.output} is the input video itself: write elsewhere.")
    check_output_place(args.output)
    duration = video.duration or None
    info = video_info(args.input, video.start, duration)
    if info.first_time is None:
        raise InvalidImage(f"{args.input} has no frames from {video.start:g} s on: choose an "
                           "earlier --start.")  # fmt: skip
    # The frames go into a folder first, the output itself or one beside the MP4: an
    # interrupted run leaves every finished frame there, and --resume carries on from them.
    parts = args.output if to_folder else args.output.with_name(args.output.name + ".frames")
    if parts.exists() and any(parts.iterdir()) and not args.resume:
        unfinished = "is not empty" if to_folder else "holds the frames of an unfinished run"
        raise InvalidParameter(
            f"{parts} {unfinished}: add --resume to continue it, or "
            f"{'name an empty folder' if to_folder else 'delete that folder to start again'}."
        )
    made_here = not parts.exists()
    folder = FrameFolder(parts, float(info.fps))
    done = folder.written()
    sources = read_frames(args.input, video.start, duration)
    previous = None
    if done:
        # the source frames already dreamed, of which only the last is kept
        last = collections.deque(enumerate(itertools.islice(sources, done), 1), maxlen=1)
        if not last or last[0][0] < done:
            raise InvalidParameter(f"{parts} holds more frames than the chosen part has: "
                                   "delete it and start again.")  # fmt: skip
        previous = (last[0][1], folder.frame(done - 1))
    carry = Carry(video.blend, video.flow)
    total = max(info.frames, done + 1)

    with _Progress(enabled=not args.quiet) as progress:
        progress.starting(f"loading {params.model}")
        from .engine import Engine

        engine = Engine(params.device, on_download=progress.download)

        def dream(image: np.ndarray, index: int) -> np.ndarray:
            return engine.dream(image, frame_params(params, index, video.steps_per_frame, False),
                                on_progress=progress.frame(index, total))  # fmt: skip

        try:
            for dreamed in steady_sequence(sources, carry, dream, done, previous):
                folder.write(dreamed)
                done += 1
        except KeyboardInterrupt:
            print(f"deepdream: interrupted; {done} finished frames are in {parts} "
                  "(--resume continues them).", file=sys.stderr)  # fmt: skip
            return EXIT_INTERRUPTED
    if done == 0:
        if made_here:
            shutil.rmtree(parts, ignore_errors=True)
        raise InvalidImage(f"{args.input} has no frames from {video.start:g} s on: choose an "
                           "earlier --start.")  # fmt: skip
    if to_folder:
        print(f"Wrote {done} frames ({float(info.fps):g} fps) to {args.output}")
        return 0
    with written_whole(args.output) as partial:  # whole, or not there
        encoder = Mp4(partial, info.fps, args.input, info.first_time, duration)
        for index in range(done):
            encoder.write(folder.frame(index))
        encoder.close()
    shutil.rmtree(parts)
    print(f"Wrote {done} frames at {float(info.fps):g} fps to {args.output}")
    return 0


def same_file(a: Path, b: Path) -> bool:
    """Whether two paths name one file, through links and other spellings."""
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist (yet): not the same file
        return False


def visualize_file(args: argparse.Namespace, atlas: bool) -> int:
    from .imagefile import read_image

    params = VisualizeParams.from_mapping(given_values(args, VISUALIZE_PARAMETERS))
    check_sheet_output(args.output)
    if args.exemplars and not atlas and params.channel < 0:
        raise InvalidParameter("--exemplars shows what excites one channel: name it with "
                               "--channel (or make an atlas).")  # fmt: skip
    with _Progress(enabled=not args.quiet) as progress:
        progress.starting(f"loading {params.model}")
        from .engine import Engine
        from .explore import channels_photos_excite
        from .visualize import sample_labels

        engine = Engine(params.device, on_download=progress.download)
        if atlas:
            channels = parse_channels(args.channels) if args.channels else None
            if channels is None:
                model = engine.model(params.model)
                photos = [read_image(SAMPLES / name) for name in ("coffee.png", "chelsea.png")]
                channels = channels_photos_excite(model, params.layer, photos, args.count)
            labels = sample_labels(params, channels)
            images = engine.visualize(params, channels, on_progress=progress.dream)
        else:
            channels = [params.channel]
            images = engine.visualize(params, on_progress=progress.dream)
            labels = sample_labels(params)
        found = exemplars_from(args.exemplars, engine, params, channels, progress)
    write_sheet(args.output, images, labels, found)
    if not atlas and args.each:
        from .imagefile import write_image

        args.each.mkdir(parents=True, exist_ok=True)
        for image, label in zip(images, labels, strict=True):
            name = "".join(c if c.isalnum() or c in "-_" else "-" for c in label)
            write_image(args.each / f"{name}.png", image)
        print(f"Wrote {len(images)} images into {args.each}")
    return 0


def check_sheet_output(output: Path) -> None:
    import numpy as np

    from .imagefile import check_writable

    if output.suffix.lower() != ".png":
        raise InvalidImage("Contact sheets are PNG files: name the output .png.")
    check_writable(output, np.zeros((1, 1, 3), np.uint8))


def exemplars_from(folder: Path | None, engine, params: VisualizeParams,  # noqa: ANN001 - Engine
                   channels: list[int], progress: _Progress) -> list[list] | None:  # fmt: skip
    """The patches of the folder's photos that excite each channel most (None without one)."""
    if folder is None:
        return None
    from .imagefile import photos_in

    skipped: list[str] = []
    progress.starting("finding exemplars")
    found = engine.exemplars(params, channels, photos_in(folder, skipped))
    for reason in skipped:
        print(f"deepdream: skipped {reason}", file=sys.stderr)
    return found


def write_sheet(output: Path, images, labels: list[str],  # noqa: ANN001 - (N, H, W, 3) u8
                found: list[list] | None) -> None:  # fmt: skip
    from .imagefile import write_image
    from .sheets import labelled_sheet

    write_image(output, *labelled_sheet(images, labels, found))
    print(f"Wrote {output}")


def channels_file(args: argparse.Namespace) -> int:
    from .imagefile import read_image, read_mask

    look = given_values(args, SHEET_LOOK_PARAMETERS)
    params = ChannelsParams.from_mapping(given_values(args, CHANNELS_PARAMETERS))
    if args.output is not None:
        check_sheet_output(args.output)
    elif args.exemplars or look:
        raise InvalidParameter("--exemplars and the look of the renders are for the sheet: "
                               "name it with -o sheet.png.")  # fmt: skip
    image = read_image(args.input)
    mask = read_mask(args.mask) if args.mask else None
    with _Progress(enabled=not args.quiet) as progress:
        progress.starting(f"loading {params.model}")
        from .engine import Engine
        from .models import imagenet_classes

        engine = Engine(params.device, on_download=progress.download)
        strongest = engine.strongest_channels(image, params, mask)
    where = "where the mask is white" if mask is not None else ""
    print(f"The channels of {params.layer} that {args.input.name} excites most {where}"
          "(share of the layer's activation):".replace("  ", " "))  # fmt: skip
    logits = params.layer == "logits" and model_spec(params.model).imagenet_classes
    classes = imagenet_classes() if logits else None
    for channel in strongest:
        named = f"  {classes[channel.channel]}" if classes else ""  # a logit is a class
        print(f"  {channel.label:<14} {channel.share:6.1%}{named}")
    print("Type one into Layers (or --layers) to dream it.")
    if args.output is None:
        return 0
    channels = [c.channel for c in strongest]
    sheet_params = VisualizeParams.from_mapping(
        {"model": params.model, "layer": params.layer, "device": params.device, **look}
    )
    with _Progress(enabled=not args.quiet) as progress:
        from .visualize import sample_labels

        images = engine.visualize(sheet_params, channels, on_progress=progress.dream)
        found = exemplars_from(args.exemplars, engine, sheet_params, channels, progress)
    write_sheet(args.output, images, sample_labels(sheet_params, channels), found)
    return 0


def accentuate_file(args: argparse.Namespace) -> int:
    from .imagefile import check_writable, load_image, write_image

    given = given_values(args, ACCENTUATE_PARAMETERS)
    params = VisualizeParams.from_mapping({**given, "samples": 1})
    loaded = load_image(args.input)
    check_writable(args.output, loaded.pixels)
    if args.change_mask is not None:
        check_writable(args.change_mask, loaded.pixels[:, :, :1])
    with _Progress(enabled=not args.quiet) as progress:
        progress.starting(f"loading {params.model}")
        from .engine import Engine

        engine = Engine(params.device, on_download=progress.download)
        accentuated = engine.visualize(params, on_progress=progress.dream, photo=loaded.pixels)[0]
    from .engine import ACCENTUATE_SIDE
    from .imaging import Pixels, at_most, luminance_ssim, to_unit_float
    from .visualize import subject, where_changed

    source = Pixels.from_array(loaded.pixels)
    result = source.compose(accentuated.astype("float32") / 255)
    write_image(args.output, result, metadata=loaded.metadata)
    photo = (source.rgb * 255).round().astype("uint8")
    # measured as the network looked at them while accentuating
    before, after = (engine.unit_activation(params, at_most(to_unit_float(x), ACCENTUATE_SIDE))
                     for x in (photo, accentuated))  # fmt: skip
    rise = f", {after / before:.1f}x" if before > 0 else ""
    print(
        f"Wrote {args.output}: {subject(params)} from {before:.3g} to {after:.3g}{rise}; "
        f"similarity to the photo (SSIM of luminance) {luminance_ssim(accentuated, photo):.2f}"
    )
    if args.change_mask is not None:
        write_image(args.change_mask, where_changed(photo, accentuated)[:, :, None])
        print(f"Wrote {args.change_mask}: white where the photo changed most")
    return 0


def parse_channels(text: str) -> list[int]:
    """`0-15`, `3,7,42` or a mix of both."""
    channels: list[int] = []
    try:
        for part in text.split(","):
            first, _, last = part.strip().partition("-")
            channels.extend(range(int(first), int(last or first) + 1))
    except ValueError:
        raise InvalidParameter(
            f"--channels takes numbers and ranges like 0-15 or 3,7,42; got {text!r}."
        ) from None
    if not 1 <= len(channels) <= 64:
        raise InvalidParameter("--channels must name between 1 and 64 channels.")
    return channels


class _Progress:
    """tqdm bars for a download and for the dream, with the time left."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self._download_bar = None
        self._dream_bar = None

    def __enter__(self) -> _Progress:
        return self

    def __exit__(self, error_type: type | None, *exc: object) -> None:
        for bar in (self._download_bar, self._dream_bar):
            if bar is not None:
                if error_type is not None:
                    bar.leave = False  # cleared: the error's line is what the user reads
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

    def starting(self, what: str) -> None:
        """Show the bar at once, saying what happens before the first step."""
        if not self.enabled:
            return
        if self._dream_bar is None:
            from tqdm import tqdm

            self._dream_bar = tqdm(
                total=100,
                desc=what,
                bar_format="{desc} {percentage:3.0f}%|{bar}| {elapsed}<{remaining}",
            )

    def frame(self, index: int, frames: int):  # noqa: ANN201 - a ProgressCallback
        """The progress of frame `index` as part of all the frames."""

        def report(progress: Progress) -> None:
            if not self.enabled:
                return
            self.starting("dreaming")
            description = f"frame {index + 1}/{frames}"
            if self._dream_bar.desc != description:
                self._dream_bar.set_description(description, refresh=False)
            overall = progress.of_frame(index, frames).fraction
            self._dream_bar.update(round(overall * 100, 2) - self._dream_bar.n)

        return report

    def dream(self, progress: Progress) -> None:
        if not self.enabled:
            return
        self.starting("dreaming")
        description = "dreaming"
        if progress.octaves > 1:
            description += f" (octave {progress.octave + 1}/{progress.octaves})"
        if self._dream_bar.desc != description:
            self._dream_bar.set_description(description, refresh=False)
        self._dream_bar.update(round(progress.fraction * 100, 2) - self._dream_bar.n)


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
