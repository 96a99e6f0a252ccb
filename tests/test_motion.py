"""Dreams that move: the camera's moves, the endless zoom, and `deepdream zoom`'s files."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
import pytest
from conftest import ROOT, SAMPLES, deepdream, panned_frames, photo, unsteadiness
from PIL import Image

from dream_server.engine import Engine
from dream_server.motion import CameraMove, Carry, steady_sequence, zoom_sequence
from dream_server.params import DreamParams

QUICK = ["--octaves", "1", "--steps", "2", "--steps-per-frame", "1", "-q"]


def correlation(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a.astype(np.float64).ravel(), b.astype(np.float64).ravel())[0, 1])


def test_a_camera_that_does_not_move_returns_the_frame_exactly():
    frame = np.random.default_rng(0).integers(0, 256, (60, 80, 3), np.uint8)
    assert np.array_equal(CameraMove(zoom=1.0).apply(frame), frame)


def test_a_drift_moves_the_picture_by_whole_pixels_exactly():
    frame = np.random.default_rng(1).integers(0, 256, (60, 80, 3), np.uint8)
    moved = CameraMove(zoom=1.0, shift=(3.0, 2.0)).apply(frame)
    assert np.array_equal(moved[10:50, 10:70], frame[8:48, 7:67])  # right 3, down 2


def test_a_turn_is_clockwise_and_a_zoom_keeps_the_centre():
    frame = np.zeros((41, 41, 1), np.float32)
    frame[5:10, 18:23] = 1.0  # a spot above the centre
    turned = CameraMove(zoom=1.0, rotate=45.0).apply(CameraMove(zoom=1.0, rotate=45.0).apply(frame))
    row, column = np.unravel_index(np.argmax(turned[:, :, 0]), turned.shape[:2])
    assert abs(row - 20) <= 2 and column > 28  # a quarter turn clockwise: now right of centre
    centre = np.zeros((41, 41, 1), np.float32)
    centre[19:22, 19:22] = 1.0
    zoomed = CameraMove(zoom=1.5).apply(centre)
    assert zoomed[20, 20, 0] > 0.9 and zoomed[:10].max() < 0.05


@pytest.fixture(scope="module")
def engine() -> Engine:
    return Engine("auto")


def zoom_frames(engine: Engine, seed: int = 0) -> list[np.ndarray]:
    params = DreamParams.from_mapping({"octaves": 2, "steps": 4, "seed": seed})
    start = photo("chelsea.png", (160, 106))

    def dream(frame: np.ndarray, index: int) -> np.ndarray:
        return engine.dream(frame, params if index == 0 else replace(params, steps=2, seed=index))

    return list(zoom_sequence(start, CameraMove(zoom=1.1), 4, dream))


def test_each_zoom_frame_is_the_last_one_moved_closer_with_new_dream(engine):
    frames = zoom_frames(engine)
    assert len(frames) == 4 and {frame.shape for frame in frames} == {(106, 160, 3)}
    move = CameraMove(zoom=1.1)
    for before, after in zip(frames, frames[1:], strict=False):
        moved = move.apply(before)
        # The picture carries on where the camera moved (measured: 0.995), far more than where
        # it stood (0.74), and the dream still adds to it (measured: 2.7 levels on average).
        assert correlation(after, moved) > 0.95
        assert correlation(after, moved) > correlation(after, before) + 0.1
        assert np.abs(after.astype(np.int16) - moved).mean() > 1.0


def test_the_same_seed_gives_the_same_zoom(engine):
    first, again = zoom_frames(engine), zoom_frames(engine)
    assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))


def test_zoom_writes_an_animated_gif_that_loops_at_the_frame_rate(tmp_path):
    output = tmp_path / "zoom.gif"
    run = deepdream("zoom", SAMPLES / "coffee.png", "-o", output, "--frames", "3", "--fps", "10",
                    *QUICK)  # fmt: skip
    assert run.returncode == 0, run.stderr
    with Image.open(output) as gif:
        assert (gif.n_frames, gif.size) == (3, (600, 400))
        assert gif.info["duration"] == 100 and gif.info["loop"] == 0


def test_zoom_writes_an_mp4_with_every_frame_at_its_rate(tmp_path):
    output = tmp_path / "zoom.mp4"
    run = deepdream("zoom", SAMPLES / "coffee.png", "-o", output, "--frames", "4", "--fps", "8",
                    *QUICK)  # fmt: skip
    assert run.returncode == 0, run.stderr
    with av.open(str(output)) as video:
        stream = video.streams.video[0]
        frames = list(video.decode(stream))
        assert len(frames) == 4 and (stream.width, stream.height) == (600, 400)
        assert stream.average_rate == 8


@pytest.mark.parametrize("name", ["zoom.gif", "zoom.mp4"])
def test_a_link_planted_where_the_zoom_writes_first_is_never_written_through(tmp_path, name):
    # In a folder others may write to (a shared /tmp), someone links the name a file used to be
    # written under first to a file of the artist's: the zoom must write its own new file.
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o1777)
    victim = tmp_path / "thesis.txt"
    victim.write_text("years of work")
    output = shared / name
    for planted in (f".zoom.partial{output.suffix}", f"{name}.partial{output.suffix}"):
        (shared / planted).symlink_to(victim)
    run = deepdream("zoom", SAMPLES / "coffee.png", "-o", output, "--frames", "2", *QUICK)
    assert run.returncode == 0, run.stderr
    assert victim.read_text() == "years of work"
    assert output.is_file() and not output.is_symlink()
    assert oct(output.stat().st_mode & 0o777) == oct(0o666 & ~current_umask())
    leftovers = {path.name for path in shared.iterdir()} - {name}
    assert leftovers == {f".zoom.partial{output.suffix}", f"{name}.partial{output.suffix}"}


def current_umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


def test_a_killed_zoom_resumes_to_the_same_frames_as_an_uninterrupted_one(tmp_path):
    whole, resumed = tmp_path / "whole", tmp_path / "resumed"
    source = SAMPLES / "chelsea.png"
    assert deepdream("zoom", source, "-o", whole, "--frames", "5", *QUICK).returncode == 0
    interrupted = subprocess.Popen(
        [sys.executable, "-m", "dream_server.cli", "zoom", str(source), "-o", str(resumed),
         "--frames", "5", *QUICK],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + 120
    while not (resumed / "frame-00002.png").exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    interrupted.send_signal(signal.SIGKILL)
    interrupted.wait()
    written = sorted(path.name for path in resumed.glob("frame-*.png"))
    assert 2 <= len(written) < 5, written  # killed part of the way through
    run = deepdream("zoom", source, "-o", resumed, "--frames", "5", "--resume", *QUICK)
    assert run.returncode == 0, run.stderr
    for index in range(1, 6):
        name = f"frame-{index:05d}.png"
        assert np.array_equal(np.asarray(Image.open(whole / name)),
                              np.asarray(Image.open(resumed / name))), name  # fmt: skip
    assert not list(resumed.glob("*.partial"))


@pytest.mark.parametrize(
    ("arguments", "said"),
    [
        (["-o", "{folder}"], "is not empty: add --resume"),
        (["-o", "{tmp}/zoom.bmp"], "name a folder (frames as numbered PNGs), or a .gif, .webp"),
        (["-o", "{tmp}/zoom.gif", "--resume"], "--resume continues a folder of frames"),
        (["-o", "{tmp}/z.gif", "--zoom", "3"], "'zoom' must be a number from 0.5 to 2"),
        (["-o", "{tmp}/z.gif", "--frames", "0"], "'frames' must be a whole number from 1"),
    ],
)
def test_zoom_mistakes_get_one_line_and_write_nothing(tmp_path, arguments, said):
    folder = tmp_path / "frames"
    folder.mkdir()
    (folder / "holiday.jpg").write_bytes(b"not ours")
    before = sorted(tmp_path.rglob("*"))
    given = [a.format(folder=folder, tmp=tmp_path) for a in arguments]
    run = deepdream("zoom", SAMPLES / "coffee.png", *given, *QUICK)
    assert run.returncode == 2
    assert said in run.stderr and run.stderr.count("\n") == 1, run.stderr
    assert sorted(tmp_path.rglob("*")) == before


# -- video --------------------------------------------------------------------------------------

CLIP_FRAMES, CLIP_FPS = 12, 12


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    """The panned cat as an H.264 MP4 at 12 fps with one second of a 440 Hz tone (AAC)."""
    path = tmp_path_factory.mktemp("clip") / "pan.mp4"
    with av.open(str(path), "w") as container:
        video = container.add_stream("libx264", rate=CLIP_FPS)
        video.width, video.height, video.pix_fmt = 192, 128, "yuv420p"
        audio = container.add_stream("aac", rate=44100)
        audio.layout = "mono"
        for index, frame in enumerate(panned_frames()):
            picture = av.VideoFrame.from_ndarray(frame, format="rgb24")
            picture.pts = index
            for packet in video.encode(picture):
                container.mux(packet)
        for packet in video.encode():
            container.mux(packet)
        seconds = np.arange(44100 * CLIP_FRAMES // CLIP_FPS) / 44100
        tone = av.AudioFrame.from_ndarray(
            (0.3 * np.sin(2 * np.pi * 440 * seconds)).astype(np.float32)[None], format="flt",
            layout="mono",
        )  # fmt: skip
        tone.sample_rate, tone.pts = 44100, 0
        for packet in [*audio.encode(tone), *audio.encode()]:
            container.mux(packet)
    return path


def video_facts(path: Path) -> tuple[int, Fraction, tuple[int, int], float]:
    """Frames, frame rate, size and seconds of audio."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        frames = sum(1 for _ in container.decode(stream))
        audio = container.streams.audio[0]
        seconds = float(audio.duration * audio.time_base)
        return frames, stream.average_rate, (stream.width, stream.height), seconds


def decoded(path: Path) -> list[np.ndarray]:
    with av.open(str(path)) as container:
        return [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]


VIDEO_QUICK = ["--octaves", "1", "--steps", "2", "-q"]


def test_a_dreamed_video_keeps_its_frames_rate_size_and_sound(clip, tmp_path):
    output = tmp_path / "dream.mp4"
    run = deepdream("video", clip, "-o", output, *VIDEO_QUICK)
    assert run.returncode == 0, run.stderr
    frames, rate, size, seconds = video_facts(output)
    assert (frames, rate, size) == (CLIP_FRAMES, CLIP_FPS, (192, 128))
    assert seconds == pytest.approx(video_facts(clip)[3], abs=0.05)
    assert not list(tmp_path.glob("*.frames")) and not list(tmp_path.glob("*.partial*"))


def test_start_and_duration_dream_part_of_the_clip_with_its_part_of_the_sound(clip, tmp_path):
    output = tmp_path / "part.mp4"
    run = deepdream("video", clip, "-o", output, "--start", "0.25", "--duration", "0.5",
                    *VIDEO_QUICK)  # fmt: skip
    assert run.returncode == 0, run.stderr
    frames, _, _, seconds = video_facts(output)
    assert frames == 6 and seconds == pytest.approx(0.5, abs=0.05)


def test_dreams_that_follow_the_motion_flicker_half_as_much_and_dream_as_strongly(engine):
    clip = panned_frames(6)
    params = DreamParams.from_mapping({"octaves": 2, "steps": 6})
    after_first = replace(params, steps=2)  # the video's default share: a fifth of the steps

    def dreamed(carry: Carry | None) -> list[np.ndarray]:
        def dream(frame: np.ndarray, index: int) -> np.ndarray:
            alone = carry is None or index == 0
            return engine.dream(frame, params if alone else after_first)

        return list(steady_sequence(clip, carry, dream))

    def gain(frames: list[np.ndarray]) -> float:
        return float(np.mean([engine.activation(f, params) / engine.activation(c, params)
                              for f, c in zip(frames, clip, strict=True)]))  # fmt: skip

    alone, followed = dreamed(None), dreamed(Carry(0.9, flow=True))
    # Measured: 6.1 levels per frame dreamed alone, 2.6 following the flow, at a gain of 2.1
    # against 1.9; blending without flow flickers more than dreaming alone (7.6).
    assert unsteadiness(followed) <= 0.5 * unsteadiness(alone)
    assert gain(followed) >= 0.9 * gain(alone)


def killed_after(command: list, frame: Path) -> None:
    """Start the deepdream command and kill it (SIGKILL) once `frame` is on disk."""
    process = subprocess.Popen(
        [sys.executable, "-m", "dream_server.cli", *map(str, command)],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + 120
    while not frame.exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait()


def test_a_killed_video_dream_resumes_to_the_frames_of_an_uninterrupted_one(clip, tmp_path):
    whole, resumed = tmp_path / "whole", tmp_path / "resumed"
    assert deepdream("video", clip, "-o", whole, *VIDEO_QUICK).returncode == 0
    killed_after(["video", clip, "-o", resumed, *VIDEO_QUICK], resumed / "frame-00004.png")
    assert 4 <= len(list(resumed.glob("frame-*.png"))) < CLIP_FRAMES
    run = deepdream("video", clip, "-o", resumed, "--resume", *VIDEO_QUICK)
    assert run.returncode == 0, run.stderr
    names = sorted(path.name for path in whole.glob("frame-*.png"))
    assert names == sorted(path.name for path in resumed.glob("frame-*.png"))
    assert len(names) == CLIP_FRAMES
    for name in names:  # the flow carried from the frames on disk: bit for bit the same
        assert np.array_equal(np.asarray(Image.open(whole / name)),
                              np.asarray(Image.open(resumed / name))), name  # fmt: skip


def test_a_killed_mp4_run_keeps_its_frames_and_resumes_to_the_whole_video(clip, tmp_path):
    output = tmp_path / "dream.mp4"
    parts = tmp_path / "dream.mp4.frames"
    killed_after(["video", clip, "-o", output, *VIDEO_QUICK], parts / "frame-00003.png")
    assert not output.exists() and len(list(parts.glob("frame-*.png"))) >= 3
    again = deepdream("video", clip, "-o", output, *VIDEO_QUICK)
    assert again.returncode == 2 and "--resume to continue it" in again.stderr
    run = deepdream("video", clip, "-o", output, "--resume", *VIDEO_QUICK)
    assert run.returncode == 0, run.stderr
    assert video_facts(output)[:3] == (CLIP_FRAMES, CLIP_FPS, (192, 128)) and not parts.exists()


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> Path:
    """A small file of one 8000x8000 frame, and a video whose JPEG frame has a broken header."""
    videos = tmp_path_factory.mktemp("videos")
    mjpeg(videos / "huge.mkv", np.zeros((8000, 8000, 3), np.uint8))
    assert (videos / "huge.mkv").stat().st_size < 2_000_000
    mjpeg(videos / "damaged.mkv", np.full((64, 96, 3), 90, np.uint8))
    data = bytearray((videos / "damaged.mkv").read_bytes())
    start = data.index(b"\xff\xd8\xff")  # the frame's JPEG: a start-of-frame of 0x0 pixels
    data[start : start + 12] = b"\xff\xd8\xff\xc0\x00\x11\x08\x00\x00\x00\x00\x03"
    (videos / "damaged.mkv").write_bytes(data)
    return videos


@pytest.mark.parametrize(
    ("given", "said"),
    [
        (["{text}", "-o", "{tmp}/out.mp4"], "cannot be read as a video"),
        (["{clip}", "-o", "{tmp}/out.mp4", "--start", "60"], "has no frames from 60 s on"),
        (["{clip}", "-o", "{tmp}/out.avi"], "Cannot write a video to out.avi: name it .mp4"),
        (["{clip}", "-o", "{tmp}/full"], "full is not empty: add --resume"),
        (["{tmp}/missing.mp4", "-o", "{tmp}/out.mp4"], "missing.mp4 does not exist"),
        (["{huge}", "-o", "{tmp}/out.mp4"], "frames are 8000x8000, over the 35 megapixels"),
        (["{damaged}", "-o", "{tmp}/out.mp4"], "damaged.mkv is damaged"),
    ],
)
def test_video_mistakes_get_one_line_and_write_nothing(clip, videos, tmp_path, given, said):
    (tmp_path / "notes.mp4").write_text("not a video")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "holiday.jpg").write_bytes(b"not ours")
    before = sorted(tmp_path.rglob("*"))
    names = {"text": tmp_path / "notes.mp4", "clip": clip, "tmp": tmp_path,
             "huge": videos / "huge.mkv", "damaged": videos / "damaged.mkv"}  # fmt: skip
    run = deepdream("video", *[a.format(**names) for a in given], *VIDEO_QUICK)
    assert run.returncode == 2
    assert said in run.stderr and run.stderr.count("\n") == 1, run.stderr
    assert sorted(tmp_path.rglob("*")) == before


def mjpeg(path: Path, *frames: np.ndarray) -> None:
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mjpeg", rate=10)
        stream.height, stream.width = frames[0].shape[:2]
        stream.pix_fmt = "yuvj420p"
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())


def test_a_clip_whose_sound_an_mp4_cannot_hold_gets_it_as_aac_and_odd_sides_are_padded(tmp_path):
    clip = tmp_path / "old.avi"  # MPEG-4 video 65x49 with 8-bit PCM sound, as old cameras made
    with av.open(str(clip), "w") as container:
        video = container.add_stream("mpeg4", rate=10)
        video.width, video.height, video.pix_fmt = 65, 49, "yuv420p"
        audio = container.add_stream("pcm_u8", rate=22050)
        audio.layout = "mono"
        for index in range(10):
            picture = av.VideoFrame.from_ndarray(photo("chelsea.png", (65, 49)), format="rgb24")
            picture.pts = index
            for packet in video.encode(picture):
                container.mux(packet)
        for packet in video.encode():
            container.mux(packet)
        wave = 128 + 100 * np.sin(2 * np.pi * 440 * np.arange(22050) / 22050)
        sound = av.AudioFrame.from_ndarray(wave.astype(np.uint8)[None], format="u8", layout="mono")
        sound.sample_rate, sound.pts = 22050, 0
        for packet in [*audio.encode(sound), *audio.encode()]:
            container.mux(packet)
    output = tmp_path / "dream.mp4"
    run = deepdream("video", clip, "-o", output, *VIDEO_QUICK)
    assert run.returncode == 0, run.stderr
    frames, rate, size, seconds = video_facts(output)
    assert (frames, rate, size) == (10, 10, (66, 50))  # H.264 needs even sides
    assert seconds == pytest.approx(1.0, abs=0.1)
    with av.open(str(output)) as container:
        assert container.streams.audio[0].codec_context.name == "aac"


def test_a_zoom_starts_from_a_16_bit_colour_photo_as_from_its_8_bit_twin(tmp_path):
    eight = photo("chelsea.png", (96, 64))
    Image.fromarray(eight).save(tmp_path / "eight.png")
    cv2.imwrite(str(tmp_path / "sixteen.png"), eight[:, :, ::-1].astype(np.uint16) * 257)
    frames = {}
    for name in ("eight", "sixteen"):  # frames made of 8 bits: nothing of the 16 is lost
        run = deepdream("zoom", tmp_path / f"{name}.png", "-o", tmp_path / name, "--frames", "2",
                        *QUICK)  # fmt: skip
        assert run.returncode == 0, run.stderr
        frames[name] = [np.asarray(Image.open(f)) for f in sorted((tmp_path / name).iterdir())]
    assert len(frames["sixteen"]) == 2
    assert all(np.array_equal(a, b) for a, b in zip(*frames.values(), strict=True))


def test_a_name_with_a_slash_at_the_end_is_a_folder_of_frames_whatever_its_suffix(tmp_path):
    run = deepdream("zoom", SAMPLES / "coffee.png", "-o", f"{tmp_path / 'frames.d'}/",
                    "--frames", "2", *QUICK)  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert sorted(p.name for p in (tmp_path / "frames.d").iterdir()) == [
        "frame-00001.png", "frame-00002.png"
    ]  # fmt: skip
