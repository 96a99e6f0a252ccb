"""Dreams that move: the camera's moves, the endless zoom, and `deepdream zoom`'s files."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from dataclasses import replace

import av
import numpy as np
import pytest
from conftest import ROOT, SAMPLES, deepdream, photo
from PIL import Image

from dream_server.engine import Engine
from dream_server.motion import CameraMove, zoom_sequence
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
