"""Writing frames as they are made: a folder of numbered PNGs, an animated GIF or WebP, or an MP4.

A folder and an MP4 take frames one at a time and hold none; GIF and WebP writers (Pillow) need
all frames at the end, so they keep them (a 512x512 frame is 0.75 MB). MP4s are written with
PyAV, whose wheels carry ffmpeg (H.264 through libx264): nothing else to install.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image

from .errors import InvalidImage
from .imagefile import written_whole
from .video import VIDEO_OUTPUT_SUFFIXES, Mp4

ANIMATED_SUFFIXES = (".gif", ".webp")
FRAME_NAME = "frame-{:05d}.png"


def is_folder_output(output: str) -> bool:
    """Whether `-o` (as typed) names a folder of frames: one that is there, a name without a
    suffix, or any name with a slash at the end."""
    path = Path(output)
    return output.endswith(("/", os.sep)) or path.suffix == "" or path.is_dir()


class FrameFolder:
    """Numbered PNGs, one per frame, each written whole before it gets its name: a run that
    stops leaves only complete frames."""

    def __init__(self, folder: Path, fps: float) -> None:
        self.folder = folder
        self.fps = fps
        folder.mkdir(parents=True, exist_ok=True)
        self._next = self.written()

    def written(self) -> int:
        """How many frames are there already, counted from the first without a gap."""
        count = 0
        while (self.folder / FRAME_NAME.format(count + 1)).exists():
            count += 1
        return count

    def frame(self, index: int) -> np.ndarray:
        with Image.open(self.folder / FRAME_NAME.format(index + 1)) as image:
            return np.asarray(image.convert("RGB"))

    def write(self, frame: np.ndarray) -> None:
        self._next += 1
        with written_whole(self.folder / FRAME_NAME.format(self._next)) as partial:
            Image.fromarray(frame).save(partial, format="PNG")

    def close(self) -> None:
        pass


class AnimatedImage:
    """An animated GIF or WebP that loops, written when the last frame is in."""

    def __init__(self, path: Path, fps: float) -> None:
        self.path = path
        self.duration_ms = round(1000 / fps)
        self.frames: list[Image.Image] = []

    def write(self, frame: np.ndarray) -> None:
        self.frames.append(Image.fromarray(frame))

    def close(self) -> None:
        if not self.frames:
            return
        first, *rest = self.frames
        options = {"lossless": True} if self.path.suffix.lower() == ".webp" else {}
        first.save(self.path, save_all=True, append_images=rest, duration=self.duration_ms,
                   loop=0, **options)  # fmt: skip


def frame_writer(path: Path, fps: float) -> AnimatedImage | Mp4:
    """The writer of a file of frames, told by its name: .gif, .webp or .mp4."""
    check_frames_file(path)
    if path.suffix.lower() in ANIMATED_SUFFIXES:
        return AnimatedImage(path, fps)
    return Mp4(path, fps)


def check_frames_file(path: Path) -> None:
    """InvalidImage unless a file of that name can hold frames."""
    if path.suffix.lower() not in (*ANIMATED_SUFFIXES, *VIDEO_OUTPUT_SUFFIXES):
        raise InvalidImage(
            f"Cannot write frames to {path.name}: name a folder (frames as numbered PNGs), "
            "or a .gif, .webp or .mp4 file."
        )
