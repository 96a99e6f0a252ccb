"""Writing frames as they are made: a folder of numbered PNGs, an animated GIF or WebP, or an MP4.

A folder and an MP4 take frames one at a time and hold none; GIF and WebP writers (Pillow) need
all frames at the end, so they keep them (a 512x512 frame is 0.75 MB). MP4s are written with
PyAV, whose wheels carry ffmpeg (H.264 through libx264): nothing else to install.
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import numpy as np
from PIL import Image

from .errors import InvalidImage

ANIMATED_SUFFIXES = (".gif", ".webp")
VIDEO_SUFFIXES = (".mp4",)
FRAME_NAME = "frame-{:05d}.png"


def is_folder_output(path: Path) -> bool:
    return path.suffix == "" or path.is_dir()


class FrameFolder:
    """Numbered PNGs, one per frame, each written whole before it gets its name: a run that
    stops leaves only complete frames."""

    def __init__(self, folder: Path, fps: float) -> None:
        self.folder = folder
        self.fps = fps
        folder.mkdir(parents=True, exist_ok=True)

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
        name = self.folder / FRAME_NAME.format(self.written() + 1)
        partial = name.with_suffix(".partial")
        Image.fromarray(frame).save(partial, format="PNG")
        partial.replace(name)

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


class Mp4:
    """H.264 in an MP4, frame by frame, at a constant frame rate."""

    def __init__(self, path: Path, fps: float) -> None:
        import av

        self.path = path
        self.fps = Fraction(fps).limit_denominator(1001)
        self._container = av.open(str(path), "w")
        self._stream = None

    def write(self, frame: np.ndarray) -> None:
        import av

        height, width = frame.shape[:2]
        if self._stream is None:
            self._stream = self._container.add_stream("libx264", rate=self.fps)
            self._stream.width, self._stream.height = width - width % 2, height - height % 2
            self._stream.pix_fmt = "yuv420p"  # what every player plays
            self._stream.options = {"crf": "18"}
        even = np.ascontiguousarray(frame[: self._stream.height, : self._stream.width, :3])
        for packet in self._stream.encode(av.VideoFrame.from_ndarray(even, format="rgb24")):
            self._container.mux(packet)

    def close(self) -> None:
        if self._stream is not None:
            for packet in self._stream.encode():
                self._container.mux(packet)
        self._container.close()


def frame_writer(path: Path, fps: float) -> FrameFolder | AnimatedImage | Mp4:
    """The writer for where the frames go, told by the name: a folder, .gif, .webp or .mp4."""
    if is_folder_output(path):
        return FrameFolder(path, fps)
    suffix = path.suffix.lower()
    if suffix in ANIMATED_SUFFIXES:
        return AnimatedImage(path, fps)
    if suffix in VIDEO_SUFFIXES:
        return Mp4(path, fps)
    raise InvalidImage(
        f"Cannot write frames to {path.name}: name a folder (frames as numbered PNGs), "
        "or a .gif, .webp or .mp4 file."
    )
