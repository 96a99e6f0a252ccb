"""Video in and out with PyAV (ffmpeg inside its wheels): frames decoded one at a time, and an MP4
made from dreamed frames with the source's frame rate and its audio track carried over as it is.

PyAV rather than imageio-ffmpeg: it reads and writes in this process, frame by frame, and copies
the audio packets without decoding them, where imageio-ffmpeg pipes raw frames to an ffmpeg
program and has no way to carry an audio track through.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np

from .errors import InvalidImage

VIDEO_OUTPUT_SUFFIXES = (".mp4",)
MAX_FRAME_PIXELS = 35_000_000
"""A video frame's pixels, at most (8K UHD is 33.2 million): each frame is dreamed whole, and a
few kilobytes of video can describe frames of billions of pixels."""


@dataclass(frozen=True)
class VideoInfo:
    width: int
    height: int
    fps: Fraction
    frames: int
    """How many frames the chosen part has (from the stream's duration: an estimate)."""
    has_audio: bool
    first_time: float | None
    """When the chosen part's first frame shows, in seconds (where its sound starts); None
    when no frame shows from the start asked for on."""


def _open(path: Path):  # noqa: ANN202 - an av container
    import av

    if not path.exists():
        raise InvalidImage(f"{path} does not exist: check the path.")
    try:
        container = av.open(str(path))
    except (av.error.FFmpegError, UnicodeDecodeError) as err:
        raise InvalidImage(f"{path} cannot be read as a video ({err}): give an MP4, MOV, "
                           "MKV or WebM file.") from None  # fmt: skip
    if not container.streams.video:
        container.close()
        raise InvalidImage(f"{path} has no video track.")
    context = container.streams.video[0].codec_context
    try:
        _check_frame_size(path, context.width, context.height)  # before a frame is decoded
    except InvalidImage:
        container.close()
        raise
    return container


def _check_frame_size(path: Path, width: int, height: int) -> None:
    if width * height > MAX_FRAME_PIXELS:
        raise InvalidImage(
            f"{path}'s frames are {width}x{height}, over the {MAX_FRAME_PIXELS // 1_000_000} "
            "megapixels a video frame may have here: scale the video down first (e.g. "
            "`ffmpeg -i IN -vf scale=3840:-2 OUT.mp4`)."
        )


def _damaged(path: Path, err: Exception) -> InvalidImage:
    """ffmpeg's complaint, in one line."""
    said = " ".join(str(err).split())
    return InvalidImage(f"{path} is damaged ({said}): re-export it, or try another copy.")


def video_info(path: Path, start: float = 0.0, duration: float | None = None) -> VideoInfo:
    import av

    with _open(path) as container:
        stream = container.streams.video[0]
        fps = stream.average_rate or stream.guessed_rate or Fraction(25)
        length = float(container.duration / 1_000_000) if container.duration else None
        if stream.duration and stream.time_base:
            length = float(stream.duration * stream.time_base)
        span = max(0.0, (length or 0.0) - start)
        if duration is not None:
            span = min(span, duration) if length else duration
        try:
            first_time = next((frame.time for frame in container.decode(stream)
                               if (frame.time or 0.0) >= start - 1e-6), None)  # fmt: skip
        except av.error.FFmpegError as err:
            raise _damaged(path, err) from None
        return VideoInfo(stream.codec_context.width, stream.codec_context.height, Fraction(fps),
                         round(span * fps), bool(container.streams.audio), first_time)  # fmt: skip


def read_frames(
    path: Path, start: float = 0.0, duration: float | None = None
) -> Iterator[np.ndarray]:
    """The RGB frames from `start` seconds on, for `duration` seconds (all when None)."""
    import av

    with _open(path) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        end = None if duration is None else start + duration
        try:
            for frame in container.decode(stream):
                time = frame.time if frame.time is not None else 0.0
                if time < start - 1e-6:
                    continue
                if end is not None and time >= end - 1e-6:
                    break
                _check_frame_size(path, frame.width, frame.height)  # it may change mid-stream
                yield frame.to_ndarray(format="rgb24")
        except av.error.FFmpegError as err:
            raise _damaged(path, err) from None


class Mp4:
    """H.264 in an MP4, written frame by frame at a constant frame rate; with `audio_from`, that
    file's audio between `start` and `start + duration` s is copied in as it is on close."""

    def __init__(
        self, path: Path, fps: float | Fraction, audio_from: Path | None = None,
        start: float = 0.0, duration: float | None = None,
    ) -> None:  # fmt: skip
        import av

        self.fps = Fraction(fps).limit_denominator(1001)
        self.frames = 0
        self._container = av.open(str(path), "w")
        self._stream = None
        self._audio = None  # (source, its audio stream, ours, start, duration)
        if audio_from is not None:
            source = av.open(str(audio_from))
            if source.streams.audio:  # added now: streams cannot be added once frames are in
                audio_in = source.streams.audio[0]
                try:
                    audio_out, copied = self._container.add_stream_from_template(audio_in), True
                except ValueError:  # a codec an MP4 cannot hold (e.g. AVI's 8-bit PCM)
                    audio_out, copied = self._container.add_stream("aac", rate=audio_in.rate), False
                    # the standard layout for its channel count ("1 channels" is not one)
                    channels = audio_in.codec_context.channels
                    audio_out.layout = {1: "mono", 2: "stereo"}.get(channels, f"{channels}c")
                    audio_out.format = "fltp"
                self._audio = (source, audio_in, audio_out, copied, start, duration)
            else:
                source.close()

    def write(self, frame: np.ndarray) -> None:
        import av

        if self._stream is None:
            self._stream = self._container.add_stream("libx264", rate=self.fps)
            height, width = frame.shape[:2]
            self._stream.width, self._stream.height = width + width % 2, height + height % 2
            self._stream.pix_fmt = "yuv420p"  # what every player plays
            self._stream.options = {"crf": "17"}
        # H.264 in 4:2:0 needs even sides: an odd one gets a copy of its last row or column
        height, width = frame.shape[:2]
        pad = ((0, self._stream.height - height), (0, self._stream.width - width), (0, 0))
        even = np.ascontiguousarray(np.pad(frame[:, :, :3], pad, mode="edge"))
        picture = av.VideoFrame.from_ndarray(even, format="rgb24")
        picture.pts = self.frames
        picture.time_base = 1 / self.fps
        for packet in self._stream.encode(picture):
            self._container.mux(packet)
        self.frames += 1

    def close(self) -> None:
        try:
            if self._stream is not None:
                for packet in self._stream.encode():
                    self._container.mux(packet)
            if self._audio is not None and self.frames:
                self._copy_audio()
        finally:
            if self._audio is not None:
                self._audio[0].close()
            self._container.close()

    def _copy_audio(self) -> None:
        """The audio from `start` for as long as the frames last, moved to start at 0: its
        packets as they are, or decoded and encoded again as AAC where the MP4 cannot hold
        the source's codec."""
        source, audio_in, audio_out, copied, start, duration = self._audio
        length = float(self.frames / self.fps)
        length = min(duration, length) if duration else length
        if not copied:
            for frame in source.decode(audio_in):
                if frame.time is None or frame.time < start - 1e-6:
                    continue
                if frame.time >= start + length - 1e-6:
                    break
                frame.pts = None  # the encoder counts from 0
                for packet in audio_out.encode(frame):
                    self._container.mux(packet)
            for packet in audio_out.encode():
                self._container.mux(packet)
            return
        offset = round(start / audio_in.time_base)
        for packet in source.demux(audio_in):
            if packet.pts is None or packet.size == 0:
                continue
            time = float(packet.pts * audio_in.time_base)
            if time < start - 1e-6:
                continue
            if time >= start + length - 1e-6:
                break
            packet.pts -= offset
            packet.dts = packet.pts if packet.dts is None else packet.dts - offset
            packet.stream = audio_out
            self._container.mux(packet)
