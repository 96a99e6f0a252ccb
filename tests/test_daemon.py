"""The dream server: real processes, real sockets; nothing a client sends can crash it."""

from __future__ import annotations

import json
import os
import shlex
import signal
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import zmq
import zmq.auth
from conftest import ROOT, panned_frames, photo, start_server, unsteadiness

from dream_link.client import Connection, DreamClient
from dream_link.wire import JOB_ENDINGS, PROTOCOL_VERSION, DreamError
from dream_server.cost import dream_work
from dream_server.devices import devices
from dream_server.engine import Engine
from dream_server.models import MODELS
from dream_server.motion import CameraMove, Carry, frame_params, steady_sequence, zoom_sequence
from dream_server.params import ChannelsParams, DreamParams, VisualizeParams, ZoomParams
from dream_server.sheets import contact_sheet, labelled_sheet
from dream_server.visualize import where_changed

QUICK = {"octaves": 1, "steps": 2, "preset": "textures"}
LONG = {"octaves": 4, "steps": 200}


@pytest.fixture(scope="module")
def local_engine() -> Engine:
    """The engine on the device the server picks by itself, to compare its results with."""
    return Engine("auto")


def cat_pixels(channels: int, dtype: str, size=(96, 64)) -> np.ndarray:
    mode = {1: "L", 2: "LA", 3: "RGB", 4: "RGBA"}[channels]
    pixels = photo("chelsea.png", size, mode)
    if channels in (2, 4):
        pixels[:, :, -1] = np.arange(pixels.shape[1], dtype=np.uint8)[None, :] * 2
    return pixels.astype(np.float32) / 255 if dtype == "f32" else pixels


class Raw:
    """A bare DEALER socket speaking the protocol by hand, for what DreamClient never sends."""

    def __init__(self, server, token: str | None = None) -> None:
        self.socket = zmq.Context.instance().socket(zmq.DEALER)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.connect(server.record["endpoint"])
        self.token = server.record["token"] if token is None else token

    def send(self, header: dict, *frames: bytes) -> None:
        self.socket.send_multipart(
            [json.dumps({"v": PROTOCOL_VERSION, "token": self.token, **header}).encode(), *frames]
        )

    def receive(self, timeout_s: float = 5.0) -> dict | None:
        if not self.socket.poll(int(timeout_s * 1000)):
            return None
        return json.loads(self.socket.recv_multipart()[0])

    def wait_for(self, kind: str, timeout_s: float = 10.0) -> dict:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            message = self.receive(deadline - time.monotonic())
            if message and message["type"] == kind:
                return message
        raise AssertionError(f"no {kind} within {timeout_s} s")

    def submit(self, job: str, pixels: np.ndarray, params: dict) -> None:
        height, width, channels = pixels.shape
        meta = {"width": width, "height": height, "channels": channels, "dtype": "u8"}
        self.send({"type": "submit", "job": job, "params": params, "image": meta}, pixels.tobytes())

    def keep_alive(self) -> None:
        """Ping at most every half second, as a waiting client does (silent ones lose jobs)."""
        now = time.monotonic()
        if now - getattr(self, "_last_ping", 0.0) >= 0.5:
            self.send({"type": "ping"})
            self._last_ping = now

    def close(self) -> None:
        self.socket.close(linger=0)


def queue_of(server) -> list:
    with DreamClient(server.connection) as client:
        return client.status()["queue"]


@pytest.mark.parametrize("channels", [1, 2, 3, 4])
@pytest.mark.parametrize("dtype", ["u8", "f32"])
@pytest.mark.parametrize("masked", [False, True])
def test_a_round_trip_gives_what_the_engine_gives(server, local_engine, channels, dtype, masked):
    pixels = cat_pixels(channels, dtype)
    height, width, _ = pixels.shape
    mask = None
    if masked:
        mask = np.zeros((height, width), np.uint8 if dtype == "u8" else np.float32)
        mask[10:50, 20:80] = 255 if dtype == "u8" else 1.0
    with DreamClient(server.connection) as client:
        result = client.dream(
            pixels.tobytes(),
            width,
            height,
            channels,
            QUICK,
            mask=None if mask is None else mask.tobytes(),
        )
    expected = local_engine.dream(pixels, DreamParams.from_mapping(QUICK), mask=mask)
    got = np.frombuffer(result, pixels.dtype).reshape(pixels.shape)
    assert np.array_equal(got, expected)
    assert not np.array_equal(got, pixels)


def test_hello_describes_models_presets_and_the_parameters(server):
    with DreamClient(server.connection) as client:
        info = client.server_info
    assert info["device"] == ",".join(devices("auto")) and info["v"] == PROTOCOL_VERSION
    assert "effnet-lite0" in [model["name"] for model in info["models"]]
    assert info["presets"] == ["strokes", "textures", "patterns", "parts", "animals", "objects"]
    assert "octave-scale" in [param["name"] for param in info["params"]]


def test_progress_says_octave_and_step_and_the_time_left_once_the_pace_shows(server):
    reports = []
    pixels = cat_pixels(3, "u8", (192, 128))
    with DreamClient(server.connection) as client:
        client.dream(
            pixels.tobytes(), 192, 128, 3, {"octaves": 2, "steps": 5}, on_progress=reports.append
        )
    fractions = [report.fraction for report in reports]
    assert fractions[0] == 0 and fractions[-1] == 1.0 and fractions == sorted(fractions)
    assert reports[-1].describe() == "octave 2/2, step 5/5"
    assert {(report.octaves, report.steps) for report in reports[1:]} == {(2, 5)}
    assert reports[0].seconds_left is None and reports[1].seconds_left is None  # not yet known
    assert any(report.seconds_left is not None and report.seconds_left >= 0 for report in reports)


def test_a_check_takes_good_parameters_and_refuses_wrong_layers_in_one_line(server):
    with DreamClient(server.connection) as client:
        client.check({"preset": "custom", "layers": "block5/3, block10:0.5"})
        client.check({"preset": "animals"})
        with pytest.raises(DreamError, match="block99") as info:
            client.check({"preset": "custom", "layers": "block99"})
        assert info.value.code == "unknown_layer" and "\n" not in str(info.value)
        with pytest.raises(DreamError, match="steps"):
            client.check({"steps": 0})
        assert client.status()["queue"] == []  # a check leaves no job behind


def test_the_first_job_on_a_model_says_the_model_is_loading(tmp_path, monkeypatch):
    torch_home = tmp_path / "torch-home"  # weights in place, as after a download
    monkeypatch.setenv("TORCH_HOME", str(torch_home))
    spec = MODELS["inception-v1"]
    (torch_home / "hub" / "checkpoints").mkdir(parents=True)
    torch.save(
        spec.build().state_dict(), torch_home / "hub" / "checkpoints" / spec.weights.filename
    )
    fresh = start_server(tmp_path / "home")
    try:
        with DreamClient(fresh.connection) as client:
            reports = []
            client.check({"model": "inception-v1", "preset": "custom", "layers": "mixed4c"},
                         on_progress=reports.append)  # fmt: skip
            assert reports[0].loading == "inception-v1"
            assert reports[0].describe() == "loading model inception-v1..."
            again = []
            client.dream(cat_pixels(3, "u8").tobytes(), 96, 64, 3,
                         {**QUICK, "model": "inception-v1"}, on_progress=again.append)  # fmt: skip
            assert [report.loading for report in again] == [None] * len(again)
    finally:
        fresh.stop()


def test_a_server_estimates_a_job_from_how_long_its_last_jobs_took(tmp_path):
    fresh = start_server(tmp_path / "home")
    try:
        with DreamClient(fresh.connection) as client:
            assert client.estimate("submit", QUICK, 96, 64) is None  # nothing done yet here
            started = time.monotonic()
            client.dream(cat_pixels(3, "u8").tobytes(), 96, 64, 3, QUICK)
            took = time.monotonic() - started
            same = client.estimate("submit", QUICK, 96, 64)
            assert 0 < same <= took  # the server's part of what the client waited
            # in proportion to the work: each octave's pixels times its steps
            bigger = client.estimate("submit", {**QUICK, "steps": 2 * QUICK["steps"]}, 192, 128)
            ratio = dream_work(192, 128, DreamParams.from_mapping(QUICK))[2] / dream_work(
                96, 64, DreamParams.from_mapping(QUICK))[2]  # fmt: skip
            assert bigger == pytest.approx(same * 2 * ratio, rel=1e-9)
            zoom = {"frames": 10, "steps-per-frame": 1}
            frames = client.estimate("animate", QUICK, 96, 64, zoom)
            later = 9 * dream_work(96, 64, DreamParams.from_mapping({**QUICK, "steps": 1}))[2]
            first = dream_work(96, 64, DreamParams.from_mapping(QUICK))[2]
            assert frames == pytest.approx(same * (first + later) / first, rel=1e-9)
            # feature visualization, or another model, has a pace of its own
            assert client.estimate("visualize", {"samples": 1, "size": 64, "steps": 8}) is None
            assert client.estimate("submit", {**QUICK, "model": "googlenet"}, 96, 64) is None
            with pytest.raises(DreamError, match="'width' and 'height' must be whole numbers"):
                client.estimate("submit", QUICK, 0, 64)
            with pytest.raises(DreamError, match="'frames' must be"):
                client.estimate("animate", QUICK, 96, 64, {"frames": 0})
    finally:
        fresh.stop()


def test_an_animate_job_sends_each_zoom_frame_as_soon_as_it_is_dreamed(server, local_engine):
    pixels = cat_pixels(3, "u8")
    zoom = {"frames": 3, "zoom": 1.1, "steps-per-frame": 1}
    arrivals = []
    with DreamClient(server.connection) as client:
        width, height = client.animate(
            pixels.tobytes(), 96, 64, 3, QUICK, zoom,
            on_frame=lambda index, count, frame: arrivals.append(
                (index, count, bytes(frame), time.monotonic())),
        )  # fmt: skip
        done = time.monotonic()
    assert (width, height) == (96, 64)
    assert [(index, count) for index, count, *_ in arrivals] == [(0, 3), (1, 3), (2, 3)]
    assert arrivals[0][3] < arrivals[1][3] < arrivals[2][3] <= done  # one by one
    params, steps = DreamParams.from_mapping(QUICK), ZoomParams.from_mapping(zoom)

    def dream(image, index):  # noqa: ANN001, ANN202 - as the server dreams each frame
        if index == 0:
            return local_engine.dream(image, params)
        return local_engine.dream(image, replace(params, steps=1, seed=index))

    expected = zoom_sequence(pixels, CameraMove.of(steps), 3, dream)
    for (_, _, frame, _), image in zip(arrivals, expected, strict=True):
        assert np.array_equal(np.frombuffer(frame, np.uint8).reshape(64, 96, 3), image)


def test_cancelling_an_animation_stops_its_frames(server):
    arrivals = []
    with DreamClient(server.connection) as client:
        with pytest.raises(DreamError, match="cancelled"):
            client.animate(
                cat_pixels(3, "u8").tobytes(), 96, 64, 3, {"octaves": 1, "steps": 20},
                {"frames": 200, "steps-per-frame": 20},
                on_frame=lambda index, count, frame: arrivals.append(time.monotonic()),
                should_stop=lambda: len(arrivals) >= 1,
            )  # fmt: skip
        stopped = time.monotonic()
        assert len(arrivals) == 1 and stopped - arrivals[0] < 1.0
        time.sleep(1.0)  # a cancel lands within a second: the 199 frames left are not dreamed
        assert client.status()["queue"] == []


def test_an_animation_lets_another_clients_small_job_start_within_one_frames_time(server):
    zooming, other = Raw(server), Raw(server)
    image = cat_pixels(3, "u8", size=(288, 192))
    meta = {"width": 288, "height": 192, "channels": 3, "dtype": "u8"}
    try:
        zooming.send({"type": "animate", "job": "endless", "params": {"octaves": 1, "steps": 8},
                      "zoom": {"frames": 500, "steps-per-frame": 40}, "image": meta},
                     image.tobytes())  # fmt: skip
        frames, started, finished = [], None, False
        deadline = time.monotonic() + 180
        while not finished and time.monotonic() < deadline:
            zooming.keep_alive()  # both wait as clients do: pinging (the silent lose jobs)
            other.keep_alive()
            for raw in (zooming, other):
                while (message := raw.receive(0)) is not None:
                    if message["type"] == "frame":
                        frames.append(time.monotonic())
                        if len(frames) == 3:  # the pace is known: another artist asks
                            other.submit("small", cat_pixels(3, "u8"), QUICK)
                            submitted = time.monotonic()
                    elif message.get("job") == "small" and message["type"] == "progress":
                        started = started or time.monotonic()
                    elif message.get("job") == "small" and message["type"] in JOB_ENDINGS:
                        finished = message["type"] == "result" or message
            time.sleep(0.01)
        assert started is not None, "the small job never started beside the endless zoom"
        frame_time = max(frames[2] - frames[1], frames[1] - frames[0])
        assert started - submitted <= frame_time + 0.5, (started - submitted, frame_time)
        assert finished is True, finished  # and it ended with its result
    finally:
        zooming.send({"type": "cancel", "job": "endless"})
        zooming.close()
        other.close()


def test_an_animations_frames_dream_steadily_as_a_video_does(server, local_engine):
    frames = panned_frames(5)
    params, steady = {"octaves": 2, "steps": 6}, {"steps-per-frame": 2}
    arrived = {}

    def keep(index: int, count: int, frame: memoryview) -> None:
        arrived[index] = np.frombuffer(frame, np.uint8).reshape(128, 192, 3).copy()

    with DreamClient(server.connection) as client:
        client.steady([frame.tobytes() for frame in frames], 192, 128, params, steady, keep)
    assert sorted(arrived) == list(range(5))
    dreamed = [arrived[index] for index in range(5)]
    dream_params = DreamParams.from_mapping(params)

    def dream(image, index):  # noqa: ANN001, ANN202 - as the server dreams each frame
        return local_engine.dream(image, frame_params(dream_params, index, 2, False))

    expected = list(steady_sequence(frames, Carry(0.9, flow=True), dream))
    for got, want in zip(dreamed, expected, strict=True):
        assert np.array_equal(got, want)  # bit for bit what `deepdream video` dreams
    alone = [local_engine.dream(frame, dream_params) for frame in frames]
    assert unsteadiness(dreamed) <= 0.5 * unsteadiness(alone)


def test_a_steady_request_is_checked_like_any_other(server):
    raw = Raw(server)
    image = {"width": 4, "height": 4, "channels": 3, "dtype": "u8"}
    try:
        for frames, count, said in (
            ([bytes(48)] * 2, 3, "carries 3 pixel frame(s)"),
            ([bytes(48)], 0, "'frames' must be a whole number from 1 to 1000"),
            ([bytes(48)], True, "'frames' must be a whole number"),
            ([bytes(64)], 1, "The image frame has 64 bytes"),
        ):
            raw.send({"type": "steady", "job": "s", "params": {}, "image": image,
                      "frames": count}, *frames)  # fmt: skip
            error = raw.wait_for("error")
            assert said in error["message"], error
        raw.send({"type": "steady", "job": "s", "params": {}, "steady": {"blend": 2},
                  "image": image, "frames": 1}, bytes(48))  # fmt: skip
        assert "'blend' must be a number from 0 to 1" in raw.wait_for("error")["message"]
    finally:
        raw.close()


def test_an_animate_request_is_checked_like_any_other(server):
    raw = Raw(server)
    meta = {"width": 8, "height": 8, "channels": 3, "dtype": "u8"}
    raw.send({"type": "animate", "job": "a1", "image": meta, "zoom": {"zoom": 9}}, bytes(192))
    assert "'zoom' must be a number from 0.5 to 2" in raw.wait_for("error")["message"]
    raw.send({"type": "animate", "job": "a2", "image": meta, "zoom": []}, bytes(192))
    assert raw.wait_for("error")["code"] == "bad_parameter"
    raw.send({"type": "animate", "job": "a3", "image": meta})
    assert raw.wait_for("error")["code"] == "bad_frames"
    raw.close()


def make_malformed(rng: np.random.Generator, token: str, index: int) -> list[bytes]:
    """One malformed message of one of many kinds."""
    good_meta = {"width": 8, "height": 8, "channels": 3, "dtype": "u8"}
    header = {"v": PROTOCOL_VERSION, "token": token, "type": "submit", "job": f"fuzz-{index}",
              "image": good_meta}  # fmt: skip
    pixels = bytes(8 * 8 * 3)
    kind = index % 23
    if kind == 0:
        return [rng.bytes(int(rng.integers(1, 300)))]
    if kind == 1:
        return [json.dumps(rng.choice(["[1, 2]", "3", "null", '"text"'])).encode()]
    if kind == 2:
        over_the_limit = {"v": PROTOCOL_VERSION, "token": "x" * 70_000}  # 64 KiB is the limit
        return [json.dumps(over_the_limit).encode()]
    if kind == 3:
        return [json.dumps({**header, "token": "wrong"}).encode(), pixels]
    if kind == 4:
        return [json.dumps({k: v for k, v in header.items() if k != "token"}).encode(), pixels]
    if kind == 5:
        other_version = PROTOCOL_VERSION + int(rng.integers(1, 98))
        return [json.dumps({**header, "v": other_version}).encode(), pixels]
    if kind == 6:
        return [json.dumps({**header, "type": rng.bytes(8).hex()}).encode(), pixels]
    if kind == 7:
        return [json.dumps(header).encode()]  # no pixel frame
    if kind == 8:
        return [json.dumps(header).encode(), pixels, pixels, pixels]  # too many frames
    if kind == 9:
        side = int(rng.choice([-5, 0, 10**9, 2**40]))
        return [json.dumps({**header, "image": {**good_meta, "width": side}}).encode(), pixels]
    if kind == 10:
        return [json.dumps(header).encode(), pixels[: int(rng.integers(0, len(pixels)))]]
    if kind == 11:
        bad = rng.choice(['"ten"', "-1", "1e9", "null", "[3]", "true"])
        return [json.dumps({**header, "params": {"steps": json.loads(bad)}}).encode(), pixels]
    if kind == 12:
        return [json.dumps({**header, "params": {"no-such-parameter": 1}}).encode(), pixels]
    if kind == 13:
        return [json.dumps({**header, "params": [1, 2]}).encode(), pixels]
    if kind == 14:
        return [json.dumps({**header, "image": {**good_meta, "dtype": "f64"}}).encode(), pixels]
    if kind == 15:
        return [json.dumps({**header, "image": {**good_meta, "channels": 9}}).encode(), pixels]
    if kind == 16:
        return [json.dumps({**header, "job": "j" * 500}).encode(), pixels]
    if kind == 17:
        return [
            json.dumps(
                {"v": PROTOCOL_VERSION, "token": token, "type": "cancel", "job": "never-submitted"}
            ).encode()
        ]
    if kind == 18:
        mask_meta = {"width": 4, "height": 4, "channels": 1, "dtype": "u8"}
        return [json.dumps({**header, "mask": mask_meta}).encode(), pixels, bytes(16)]
    if kind == 20:
        return [b"[" * 60_000 + b"]" * 60_000]  # nests deeper than the JSON parser goes
    if kind == 21:
        return [json.dumps({**header, "token": "\ud800"}).encode(), pixels]  # a lone surrogate
    if kind == 22:
        return [json.dumps({**header, "type": ["submit"]}).encode(), pixels]
    nan = np.full((8, 8, 3), np.nan, np.float32).tobytes()
    return [json.dumps({**header, "image": {**good_meta, "dtype": "f32"}}).encode(), nan]


def test_ten_thousand_malformed_messages_leave_the_server_serving(server, local_engine):
    rng = np.random.default_rng(1234)
    fuzzer = Raw(server)
    sent = replies = 0
    kinds_answered = set()
    for index in range(10_000):
        fuzzer.socket.send_multipart(make_malformed(rng, server.record["token"], index))
        sent += 1
        while fuzzer.socket.poll(0):
            reply = json.loads(fuzzer.socket.recv_multipart()[0])
            assert reply["type"] == "error", reply
            replies += 1
    while (reply := fuzzer.receive(3.0)) is not None:
        assert reply["type"] == "error", reply
        kinds_answered.add(reply["code"])
        replies += 1
    fuzzer.close()
    print(
        f"fuzz: {sent} malformed messages sent, {replies} answered with an error, "
        f"{sent - replies} dropped"
    )
    assert replies == sent  # each of these can be answered, so each must be
    assert {
        "bad_header",
        "bad_token",
        "bad_version",
        "bad_type",
        "bad_frames",
        "bad_parameter",
        "bad_job",
        "too_large",
        "unknown_job",
    } <= kinds_answered
    assert server.process.poll() is None
    assert queue_of(server) == []
    pixels = cat_pixels(3, "u8")
    with DreamClient(server.connection) as client:
        result = client.dream(pixels.tobytes(), 96, 64, 3, QUICK)
    expected = local_engine.dream(pixels, DreamParams.from_mapping(QUICK))
    assert np.array_equal(np.frombuffer(result, np.uint8).reshape(pixels.shape), expected)


def test_oversized_frames_are_dropped_and_the_server_carries_on(tmp_path):
    small = start_server(tmp_path / "home", "--max-pixels", "10000")
    try:
        raw = Raw(small)
        raw.send({"type": "ping"}, bytes(2_000_000))  # over the transport limit: connection cut
        time.sleep(0.5)
        raw.close()
        with DreamClient(small.connection) as client:
            assert client.ping()
            big = bytes(200 * 200 * 3)
            with pytest.raises(DreamError, match="more than the dream server accepts"):
                client.dream(big, 200, 200, 3, QUICK)  # refused before anything is sent
        raw = Raw(small)
        raw.submit("too-big", np.zeros((200, 200, 3), np.uint8), QUICK)
        assert "limit of 10000 pixels" in raw.wait_for("error")["message"]
        raw.close()
        assert small.process.poll() is None
    finally:
        small.stop()


def test_cancel_lands_within_a_second(server):
    raw = Raw(server)
    raw.submit("long-one", cat_pixels(3, "u8", (640, 480)), LONG)
    raw.wait_for("accepted")
    raw.wait_for("progress")
    started = time.monotonic()
    raw.send({"type": "cancel", "job": "long-one"})
    while True:
        raw.send({"type": "ping", "job": "long-one"})
        message = raw.receive(0.2)
        if message and message["type"] == "cancelled":
            break
        assert time.monotonic() - started < 1.0
    raw.close()
    assert queue_of(server) == []


def test_a_queued_job_is_removed_by_cancel(server):
    raw = Raw(server)
    raw.submit("first", cat_pixels(3, "u8", (640, 480)), LONG)
    raw.submit("second", cat_pixels(3, "u8"), QUICK)
    positions = [raw.wait_for("accepted")["position"] for _ in range(2)]
    assert positions == [1, 2]
    raw.send({"type": "cancel", "job": "second"})
    assert raw.wait_for("cancelled")["job"] == "second"
    raw.send({"type": "cancel", "job": "first"})
    assert raw.wait_for("cancelled")["job"] == "first"
    raw.close()


CLIENT_THAT_WILL_BE_KILLED = """
import sys, numpy as np
from dream_link.client import DreamClient, Connection
connection = Connection(sys.argv[1], sys.argv[2])
pixels = np.zeros((480, 640, 3), np.uint8)
with DreamClient(connection) as client:
    client.dream(pixels.tobytes(), 640, 480, 3, {"octaves": 4, "steps": 200},
                 on_progress=lambda *a: print("running", flush=True))
"""


def test_a_killed_client_frees_the_worker_within_two_seconds(server, transport):
    client = subprocess.Popen(
        [
            sys.executable,
            "-c",
            CLIENT_THAT_WILL_BE_KILLED,
            server.record["endpoint"],
            server.record["token"],
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
    )
    assert client.stdout.readline().strip() == b"running"
    assert any(job["running"] for job in queue_of(server))
    client.kill()  # what GIMP's Cancel button does to a plug-in
    killed = time.monotonic()
    client.wait()
    while queue_of(server):
        assert time.monotonic() - killed < 2.0
        time.sleep(0.05)


def test_four_clients_with_three_jobs_each_get_their_own_results(server, transport, local_engine):
    images = {
        (c, j): cat_pixels(3, "u8", (64 + 8 * c, 48 + 4 * j)) for c in range(4) for j in range(3)
    }
    results, errors = {}, []

    def client_thread(c: int) -> None:
        try:
            with DreamClient(server.connection) as client:
                for j in range(3):
                    pixels = images[c, j]
                    height, width, _ = pixels.shape
                    params = {**QUICK, "seed": 10 * c + j}
                    results[c, j] = np.frombuffer(
                        client.dream(pixels.tobytes(), width, height, 3, params), np.uint8
                    ).reshape(pixels.shape)
        except Exception as err:  # noqa: BLE001 - reported below
            errors.append(err)

    threads = [threading.Thread(target=client_thread, args=(c,)) for c in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors
    for (c, j), pixels in images.items():
        params = DreamParams.from_mapping({**QUICK, "seed": 10 * c + j})
        assert np.array_equal(results[c, j], local_engine.dream(pixels, params))


def test_a_killed_server_makes_the_client_fail_promptly_and_clearly(tmp_path):
    doomed = start_server(tmp_path / "home")
    pixels = cat_pixels(3, "u8", (640, 480))
    killed_at = []

    def kill_on_first_progress(*_: object) -> None:
        if not killed_at:
            os.kill(doomed.process.pid, signal.SIGKILL)
            killed_at.append(time.monotonic())

    with (
        DreamClient(doomed.connection) as client,
        pytest.raises(DreamError, match="stopped answering") as info,
    ):
        client.dream(pixels.tobytes(), 640, 480, 3, LONG, on_progress=kill_on_first_progress)
    assert time.monotonic() - killed_at[0] < 5.0
    assert "dream-server.log" in str(info.value)


def test_a_wrong_or_missing_token_is_refused(server):
    for token in ("not-the-token", ""):
        raw = Raw(server, token=token)
        raw.submit("sneaky", cat_pixels(3, "u8"), QUICK)
        reply = raw.wait_for("error")
        assert reply["code"] == "bad_token"
        raw.close()
    assert queue_of(server) == []


def test_the_default_endpoint_is_a_socket_that_only_this_user_can_reach(server):
    socket_file = server.home / "dream-server.sock"
    assert server.record["endpoint"] == f"ipc://{socket_file}"
    assert stat.S_ISSOCK(socket_file.stat().st_mode)
    assert stat.S_IMODE(server.home.stat().st_mode) == 0o700  # nobody else may enter
    assert stat.S_IMODE((server.home / "endpoint.json").stat().st_mode) == 0o600
    assert "server_key" not in server.record


@pytest.fixture(scope="module")
def tcp_server(tmp_path_factory):
    running = start_server(tmp_path_factory.mktemp("tcp-home"), "--bind", "tcp://127.0.0.1:0")
    yield running
    running.stop()


def resident_mb(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    return (
        int(next(line for line in status.splitlines() if line.startswith("VmRSS")).split()[1])
        / 1024
    )


def test_over_tcp_nobody_without_the_token_makes_the_server_hold_memory(tcp_server):
    server = tcp_server
    assert server.record["endpoint"].startswith("tcp://127.0.0.1:")
    assert dream_alone(server, cat_pixels(3, "u8"), QUICK)  # warm: its model is loaded
    before = resident_mb(server.process.pid)
    big = bytes(100 << 20)
    header = json.dumps({"v": PROTOCOL_VERSION, "token": "guess", "type": "hello"}).encode()
    senders = []
    for mechanism in ("null", "plain with a guessed password", "curve with keys of its own"):
        socket = zmq.Context.instance().socket(zmq.DEALER)
        socket.setsockopt(zmq.LINGER, 0)
        if mechanism.startswith("plain"):  # the username is no secret
            socket.plain_username, socket.plain_password = b"deepdream", b"guess"
        elif mechanism.startswith("curve"):
            socket.curve_publickey, socket.curve_secretkey = zmq.curve_keypair()
            socket.curve_serverkey = zmq.curve_keypair()[0]
        socket.connect(server.record["endpoint"])
        for _ in range(4):
            socket.send_multipart([header, big, big], copy=False)
        senders.append(socket)
    time.sleep(3)
    grown = resident_mb(server.process.pid) - before
    for socket in senders:
        assert not socket.poll(0), "an unauthenticated peer got an answer"
        socket.close(linger=0)
    print(
        f"800 MB sent by each of three peers without the token: the server grew by {grown:.0f} MB"
    )
    assert grown < 50
    assert dream_alone(server, cat_pixels(3, "u8"), QUICK)  # and it serves those who know


def squat(endpoint: str, mechanism: str, heard: list) -> Callable[[], None]:
    """A program on a dead server's port, speaking `mechanism` and letting in whoever comes; a
    PLAIN one answers `prove` with a made-up proof. Returns what stops it."""
    squatter = zmq.Context.instance().socket(zmq.ROUTER)
    squatter.setsockopt(zmq.LINGER, 0)
    if mechanism == "CURVE":
        squatter.curve_server = True
        squatter.curve_publickey, squatter.curve_secretkey = zmq.curve_keypair()
    elif mechanism == "PLAIN":
        squatter.plain_server = True  # without an authentication handler: any password
    squatter.bind(endpoint)
    stop = threading.Event()

    def listen() -> None:
        while not stop.is_set():
            if squatter.poll(50):
                identity, *frames = squatter.recv_multipart()
                heard.append(frames)
                made_up = json.dumps({"v": PROTOCOL_VERSION, "type": "proof", "proof": "0" * 64})
                squatter.send_multipart([identity, made_up.encode()])
        squatter.close(linger=0)

    listener = threading.Thread(target=listen)
    listener.start()
    return lambda: (stop.set(), listener.join())


def test_a_squatter_on_a_dead_servers_endpoint_gets_neither_token_nor_pixels(tmp_path, transport):
    server = start_server(tmp_path / "home", "--bind", "tcp://127.0.0.1:0")
    record = server.record
    server.process.kill()
    server.process.wait()
    heard: list = []
    for mechanism in ("NULL", "CURVE", "PLAIN"):  # whatever the squatter speaks
        stop = squat(record["endpoint"], mechanism, heard)
        try:
            with pytest.raises(DreamError, match="No dream server answered|could not prove"):
                DreamClient(server.connection, start_server=False)
        finally:
            stop()
            time.sleep(0.2)  # the port is free again
    assert all(json.loads(frames[0])["type"] == "prove" and len(frames) == 1 for frames in heard)
    assert not any(record["token"].encode() in frame for frames in heard for frame in frames)


def test_a_client_kept_open_never_talks_to_what_took_its_dead_servers_port(tmp_path, transport):
    # as the dialog's preview keeps its client open
    server = start_server(tmp_path / "home", "--bind", "tcp://127.0.0.1:0")
    record, heard = server.record, []
    with DreamClient(server.connection, start_server=False) as client:
        assert client.dream(bytes(64 * 48 * 3), 64, 48, 3, QUICK)
        server.process.kill()
        server.process.wait()
        stop = squat(record["endpoint"], "PLAIN", heard)  # lets in any password
        try:
            time.sleep(1.0)  # ten of libzmq's reconnect intervals
            with pytest.raises(DreamError, match="Lost the dream server"):
                client.dream(bytes(64 * 48 * 3), 64, 48, 3, QUICK)
        finally:
            stop()
    assert heard == []
    server.stop()


def run_dream_server(
    home: Path, *args: str, python_path: Path | None = None
) -> subprocess.CompletedProcess:
    """`dream-server ARGS` with its state in `home`, to its end; `python_path` goes first on
    its module path."""
    environment = {**os.environ, "DEEPDREAM_HOME": str(home)}
    if python_path is not None:
        environment["PYTHONPATH"] = os.pathsep.join([str(python_path), str(ROOT)])
    return subprocess.run(
        [sys.executable, "-m", "dream_server.daemon", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=environment,
        timeout=60,
    )


def test_a_second_server_says_where_the_first_one_is(server):
    run = run_dream_server(server.home)
    assert run.returncode == 1
    assert f"already running at {server.record['endpoint']}" in run.stderr


def test_of_two_servers_started_at_once_in_one_state_folder_exactly_one_serves(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    environment = {**os.environ, "DEEPDREAM_HOME": str(home)}
    both = [
        subprocess.Popen(
            [sys.executable, "-m", "dream_server.daemon"],
            cwd=ROOT,
            env=environment,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        for _ in range(2)
    ]
    try:
        deadline = time.monotonic() + 60
        while not (ended := [p for p in both if p.poll() is not None]):
            assert time.monotonic() < deadline, "both servers are still starting after 60 s"
            time.sleep(0.05)
        [loser] = ended
        assert loser.returncode == 1
        assert "already running" in loser.stderr.read()
        winner = next(p for p in both if p is not loser)
        deadline = time.monotonic() + 60
        while not (home / "endpoint.json").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        record = json.loads((home / "endpoint.json").read_text())
        assert record["pid"] == winner.pid
        with DreamClient(Connection(record["endpoint"], record["token"])) as client:
            assert client.ping()
    finally:
        for process in both:
            if process.poll() is None:
                process.terminate()
                process.wait(timeout=20)


def test_status_prints_endpoint_device_models_and_queue_without_loading_torch(server, tmp_path):
    # `dream-server --status` asks the running server: it needs no torch of its own, whose
    # import alone takes seconds (bench/daemon_speed.py measures it).
    (tmp_path / "torch").mkdir()
    (tmp_path / "torch" / "__init__.py").write_text("raise ImportError('torch was imported')")
    run = run_dream_server(server.home, "--status", python_path=tmp_path)
    assert run.returncode == 0, run.stderr
    device = devices("auto")[0]
    for expected in (
        server.record["endpoint"],
        device,
        "effnet-lite0",
        "queue",
        "dream-server.log",
    ):
        assert expected in run.stdout


def test_a_public_bind_without_keys_refuses_to_start(tmp_path):
    run = run_dream_server(tmp_path, "--bind", "tcp://0.0.0.0:0")
    assert run.returncode == 2
    assert "refusing to listen on tcp://0.0.0.0:0 without encryption" in run.stderr
    assert not (tmp_path / "endpoint.json").exists()


def test_a_public_bind_with_curve_keys_serves_clients_that_know_the_server_key(tmp_path):
    keys = tmp_path / "keys"
    subprocess.run(
        [sys.executable, "-m", "dream_server.daemon", "--gen-keys", keys],
        cwd=ROOT,
        check=True,
        capture_output=True,
        timeout=60,
    )
    remote = start_server(tmp_path / "home", "--bind", "tcp://0.0.0.0:0", "--curve-dir", str(keys))
    try:
        port = remote.record["endpoint"].rsplit(":", 1)[1]
        connection = remote.connection
        connection.endpoint = f"tcp://127.0.0.1:{port}"
        assert connection.server_key
        with DreamClient(connection) as client:
            pixels = cat_pixels(3, "u8")
            assert len(client.dream(pixels.tobytes(), 96, 64, 3, QUICK)) == pixels.size
        connection.server_key = None  # no key: the client says which is missing
        with pytest.raises(DreamError, match="set DEEPDREAM_SERVER_KEY"):
            DreamClient(connection)
        connection.server_key, connection.token = remote.record["server_key"], "stale"
        with pytest.raises(DreamError, match="No dream server answered"):
            DreamClient(connection)  # a wrong token: refused at the handshake
    finally:
        remote.stop()


def test_idle_exit_stops_the_server_and_removes_its_endpoint_file(tmp_path):
    idle = start_server(tmp_path / "home", "--idle-exit", "0.02")
    assert idle.process.wait(timeout=30) == 0
    assert not (tmp_path / "home" / "endpoint.json").exists()


def test_out_of_memory_is_reported_with_advice_and_the_server_stays_healthy(tmp_path):
    starved = start_server(tmp_path / "home")
    try:
        with open(f"/proc/{starved.process.pid}/status") as status:
            vm = next(int(line.split()[1]) for line in status if line.startswith("VmSize"))
        limit = (vm + 1_500_000) * 1024  # 1.5 GB more address space than it has now
        import resource

        resource.prlimit(starved.process.pid, resource.RLIMIT_AS, (limit, limit))
        big = np.zeros((3000, 4000, 3), np.uint8)
        with DreamClient(starved.connection) as client:
            with pytest.raises(DreamError, match="out of memory.*tile") as info:
                client.dream(
                    big.tobytes(), 4000, 3000, 3, {"octaves": 1, "steps": 1, "tile-size": 4096}
                )
            assert info.value.code == "out_of_memory"
            pixels = cat_pixels(3, "u8")
            assert len(client.dream(pixels.tobytes(), 96, 64, 3, QUICK)) == pixels.size
    finally:
        starved.stop()


def test_a_visualize_job_returns_the_engines_images_with_their_labels(
    server, transport, local_engine
):
    values = {"layer": "block5", "channel": 2, "samples": 2, "size": 64, "steps": 6}
    with DreamClient(server.connection) as client:
        width, height, samples = client.visualize(values)
    expected = local_engine.visualize(VisualizeParams.from_mapping(values))
    assert width == height == 64
    assert [label for label, _ in samples] == ["block5/2 #1", "block5/2 #2"]
    for (_, frame), image in zip(samples, expected, strict=True):
        assert np.array_equal(np.frombuffer(frame, np.uint8).reshape(64, 64, 3), image)


def test_a_visualize_job_lays_its_samples_side_by_side_when_asked(server, local_engine):
    values = {"layer": "block5", "channel": 2, "samples": 2, "size": 64, "steps": 6}
    with DreamClient(server.connection) as client:
        width, height, [(label, frame)] = client.visualize(values, sheet=True)
    images = local_engine.visualize(VisualizeParams.from_mapping(values))
    expected, _ = contact_sheet(images, ["block5/2 #1", "block5/2 #2"])
    assert (height, width) == expected.shape[:2] and width > 2 * 64 > height
    assert np.array_equal(np.frombuffer(frame, np.uint8).reshape(expected.shape), expected)
    assert label == "block5/2 · 2 samples"


def test_a_visualize_request_is_checked_like_any_other(server):
    raw = Raw(server)
    raw.send({"type": "visualize", "job": "v1", "params": {"samples": 99}})
    assert "'samples' must be a whole number from 1 to 16" in raw.wait_for("error")["message"]
    raw.send({"type": "visualize", "job": "v2", "params": {}}, b"unexpected pixels")
    assert raw.wait_for("error")["code"] == "bad_frames"
    raw.send({"type": "visualize", "job": "v3", "params": {}, "sheet": "yes"})
    assert "'sheet' must be true or false" in raw.wait_for("error")["message"]
    raw.close()


def test_requests_that_would_fail_inside_the_engine_are_refused_at_the_door(server):
    raw = Raw(server)
    for job, params in [
        ("nan", {"layers": "block10:nan"}),
        ("inf", {"layers": "block3:1,block10:inf"}),
    ]:
        raw.submit(job, cat_pixels(3, "u8"), {**QUICK, "preset": "custom", **params})
        reply = raw.wait_for("error")
        assert (reply["job"], reply["code"]) == (job, "bad_parameter"), reply
    raw.send({"type": "visualize", "job": "grid", "params": {"layer": "block9",
              "neuron": "0,99999,-5", "steps": 2, "size": 64, "samples": 1}})  # fmt: skip
    reply = raw.wait_for("error")
    assert reply["code"] == "bad_parameter" and "grid of 4x4" in reply["message"]
    raw.send({"v": True, "type": "hello"})
    assert raw.wait_for("error")["code"] == "bad_version"
    raw.close()


def test_a_visualize_job_shows_a_class_as_a_channel_of_logits(server):
    with DreamClient(server.connection) as client:
        params = {"layer": "logits", "channel": 999, "steps": 2, "size": 64, "samples": 1}
        width, height, [(label, image)] = client.visualize(params)
    assert width == height == 64 and len(image) == 64 * 64 * 3
    assert label.startswith("logits/999")


def test_a_channels_job_names_the_channels_the_selection_excites_most(server, transport,
                                                                      local_engine):  # fmt: skip
    cat = photo("chelsea.png", (160, 112))
    mask = np.zeros((112, 160, 1), np.uint8)
    mask[:, :80] = 255
    with DreamClient(server.connection) as client:
        strongest = client.strongest_channels(cat.tobytes(), 160, 112, 3, {"top": 3},
                                              mask=mask.tobytes())  # fmt: skip
    expected = local_engine.strongest_channels(cat, ChannelsParams.from_mapping({"top": 3}),
                                               mask[:, :, 0])  # fmt: skip
    assert [c["label"] for c in strongest] == [c.label for c in expected]
    assert [c["share"] for c in strongest] == pytest.approx([c.share for c in expected])


def test_an_accentuation_comes_back_with_where_the_photo_changed(server, transport, local_engine):
    cat = photo("chelsea.png", (96, 64))
    values = {"layer": "block7", "channel": 34, "steps": 6}
    with DreamClient(server.connection) as client:
        label, accentuated, mask = client.accentuate(cat.tobytes(), 96, 64, 3, values,
                                                     change_mask=True)  # fmt: skip
    assert label == "block7/34 accentuated"
    params = VisualizeParams.from_mapping({**values, "samples": 1})
    expected = local_engine.visualize(params, photo=cat)[0]
    assert np.array_equal(np.frombuffer(accentuated, np.uint8).reshape(64, 96, 3), expected)
    assert np.array_equal(np.frombuffer(mask, np.uint8).reshape(64, 96),
                          where_changed(cat, expected))  # fmt: skip


def test_a_sheet_of_channels_shows_each_beside_the_patches_that_excite_it(server, local_engine):
    values = {"layer": "block7", "size": 64, "steps": 4}
    photos = [("cat", photo("chelsea.png", (200, 133))), ("coffee", photo("coffee.png"))]
    with DreamClient(server.connection) as client:
        width, height, [(label, frame)] = client.visualize(
            values, sheet=True, channels=[34, 50],
            exemplars=[(name, p.tobytes(), p.shape[1], p.shape[0], 3) for name, p in photos],
        )  # fmt: skip
    params = VisualizeParams.from_mapping(values)
    renders = local_engine.visualize(params, [34, 50])
    expected, _ = labelled_sheet(renders, ["block7/34", "block7/50"],
                                 local_engine.exemplars(params, [34, 50], photos))  # fmt: skip
    assert label == "block7 channels · 2 channels"
    assert np.array_equal(np.frombuffer(frame, np.uint8).reshape(expected.shape), expected)


def test_without_a_sheet_the_exemplars_follow_the_renders_as_frames(server, local_engine):
    values = {"layer": "block7", "channel": 34, "samples": 1, "size": 64, "steps": 2}
    cat = photo("chelsea.png", (200, 133))
    with DreamClient(server.connection) as client:
        _, _, frames = client.visualize(values, exemplars=[("cat", cat.tobytes(), 200, 133, 3)])
    params = VisualizeParams.from_mapping(values)
    [found] = local_engine.exemplars(params, [34], [("cat", cat)])
    assert [label for label, _ in frames] == ["block7/34 #1"] + ["block7/34 in cat"] * len(found)
    for (_, frame), exemplar in zip(frames[1:], found, strict=True):
        assert np.array_equal(np.frombuffer(frame, np.uint8).reshape(64, 64, 3), exemplar.patch)


def test_a_check_asks_about_a_visualization_an_accentuation_or_a_look_at_the_channels(server):
    with DreamClient(server.connection) as client:
        client.check({"layer": "block7", "channel": 5}, of="visualize")
        client.check({"layer": "block7", "top": 3}, of="channels")
        client.check({"neuron": "3,25,15"}, of="visualize", photo=(451, 300))  # on its grid
        for params, of, photo, says in [
            ({"class": "tabbby"}, "visualize", None, "'tabbby' is not an ImageNet class"),
            ({"layer": "block99"}, "channels", None, "block99"),
            ({"neuron": "3,25,15"}, "visualize", None, "grid of 16x16 positions"),
            ({"neuron": "3,40,2"}, "visualize", (451, 300), "for images of 451x300 px"),
            ({"neuron": "3,70,2"}, "visualize", (4000, 3000), "for images of 1024x768 px"),
        ]:
            with pytest.raises(DreamError, match=says):
                client.check(params, of=of, photo=photo)
    raw = Raw(server)
    raw.send({"type": "check", "job": "c", "params": {}, "of": "zoom"})
    assert "'of' must be one of submit, visualize, channels" in raw.wait_for("error")["message"]
    raw.close()


def test_the_new_visualize_fields_are_checked_like_any_other(server):
    raw = Raw(server)
    meta = {"width": 8, "height": 8, "channels": 3, "dtype": "u8"}
    for header, frames, says in [
        ({"channels": [1, "two"]}, [], "'channels' must be a list"),
        ({"channels": list(range(65))}, [], "'channels' must be a list"),
        ({"change_mask": True}, [], "send the 'photo'"),
        ({"exemplars": [meta]}, [bytes(192)], "set 'channel'"),
        ({"exemplars": [meta], "exemplar_names": [], "channels": [1]}, [bytes(192)], "name each"),
        ({"exemplars": meta}, [bytes(192)], "carries no frames"),
        ({"photo": meta, "channels": [1]}, [bytes(192)], "not a list of 'channels'"),
        ({"photo": meta, "exemplars": [meta]}, [bytes(192)] * 2, "not an accentuated photo"),
    ]:
        raw.send({"type": "visualize", "job": "v", "params": {"steps": 1}, **header}, *frames)
        assert says in raw.wait_for("error")["message"], header
    raw.send({"type": "channels", "job": "c", "params": {"top": 0}, "image": meta}, bytes(192))
    assert "'top' must be a whole number from 1 to 64" in raw.wait_for("error")["message"]
    raw.close()


def test_bad_server_options_are_refused_at_start(tmp_path):
    for option in (["--max-models", "-1"], ["--max-pixels", "-5"], ["--idle-exit", "-1"],
                   ["--max-models", "two"], ["--devices", "gpu"]):  # fmt: skip
        run = run_dream_server(tmp_path, *option)
        assert run.returncode == 2, option
        assert option[0] in run.stderr or "Unknown device 'gpu'" in run.stderr, run.stderr
    assert not (tmp_path / "endpoint.json").exists()


def test_keys_are_never_replaced_silently_and_the_secret_is_private_from_the_start(tmp_path):
    keys = tmp_path / "keys"
    run = run_dream_server(tmp_path, "--gen-keys", str(keys))
    assert run.returncode == 0, run.stderr
    secret = keys / "server.key_secret"
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    public, secret_key = zmq.auth.load_certificate(secret)
    assert secret_key is not None
    assert f"export DEEPDREAM_SERVER_KEY={shlex.quote(public.decode())}" in run.stdout
    before = secret.read_bytes()
    again = run_dream_server(tmp_path, "--gen-keys", str(keys))
    assert again.returncode == 2 and "--force" in again.stderr
    assert secret.read_bytes() == before
    forced = run_dream_server(tmp_path, "--gen-keys", str(keys), "--force")
    assert forced.returncode == 0 and secret.read_bytes() != before
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600


def test_the_state_folder_and_the_log_are_private_and_job_ids_forge_no_log_lines(tmp_path):
    home = tmp_path / "home"
    home.mkdir(mode=0o755)  # as an earlier release left it
    running = start_server(home)
    try:
        raw = Raw(running)
        raw.submit("evil\n2099-01-01 INFO forged: all is well\x00", cat_pixels(3, "u8"), QUICK)
        raw.wait_for("result", timeout_s=60)
        raw.close()
    finally:
        running.stop()
    assert stat.S_IMODE(home.stat().st_mode) == 0o700
    log = home / "dream-server.log"
    assert stat.S_IMODE(log.stat().st_mode) == 0o600
    lines = log.read_text().splitlines()
    assert not any(line.startswith("2099") for line in lines)
    assert any("evil\\n2099-01-01 INFO forged: all is well\\x00" in line for line in lines)


@pytest.fixture(scope="module")
def two_cpu_workers(tmp_path_factory):
    running = start_server(tmp_path_factory.mktemp("two-workers"), "--devices", "cpu,cpu")
    yield running
    running.stop()


def dream_alone(server, pixels: np.ndarray, params: dict) -> bytes:
    height, width, channels = pixels.shape
    with DreamClient(server.connection) as client:
        return client.dream(pixels.tobytes(), width, height, channels, params)


def test_two_workers_dream_at_once_and_each_gives_what_it_gives_alone(two_cpu_workers):
    server = two_cpu_workers
    with DreamClient(server.connection) as client:
        workers = client.status()["workers"]
    assert [worker["device"] for worker in workers] == ["cpu", "cpu"]
    jobs = {"cat": cat_pixels(3, "u8"), "coffee": photo("coffee.png", (96, 64))}
    params = {"octaves": 2, "steps": 8, "preset": "textures"}
    alone = {name: dream_alone(server, pixels, params) for name, pixels in jobs.items()}
    raw = Raw(server)
    try:
        for name, pixels in jobs.items():
            raw.submit(name, pixels, params)
        deadline, running_together = time.monotonic() + 60, False
        while not running_together and time.monotonic() < deadline:
            raw.keep_alive()
            running_together = sum(job["running"] for job in queue_of(server)) == 2
            time.sleep(0.05)
        assert running_together, "the two jobs never ran at the same time"
        results = {}
        while len(results) < 2 and time.monotonic() < deadline + 120:
            raw.keep_alive()
            if not raw.socket.poll(100):
                continue
            frames = raw.socket.recv_multipart()
            header = json.loads(frames[0])
            if header["type"] == "result":
                results[header["job"]] = frames[1]
        assert results == alone
    finally:
        raw.close()


def test_a_killed_client_frees_its_worker_while_the_other_keeps_dreaming(two_cpu_workers):
    server = two_cpu_workers
    survivor = Raw(server)
    victim = subprocess.Popen(
        [sys.executable, "-c", KEEP_DREAMING, server.record["endpoint"], server.record["token"]],
        stdout=subprocess.PIPE,
    )
    try:
        assert victim.stdout.readline().strip() == b"accepted"
        survivor.submit("survivor", cat_pixels(3, "u8"), LONG)
        survivor.wait_for("accepted")
        deadline = time.monotonic() + 60
        while sum(job["running"] for job in queue_of(server)) < 2:
            assert time.monotonic() < deadline, "the two jobs never ran at the same time"
            survivor.keep_alive()
            time.sleep(0.05)
        victim.kill()
        victim.wait()
        killed = time.monotonic()
        while any(job["job"] == "victim" for job in queue_of(server)):
            assert time.monotonic() - killed < 2.0, "the victim's job kept its worker"
            time.sleep(0.05)
        assert [job["job"] for job in queue_of(server)] == ["survivor"]
        progress = survivor.wait_for("progress")
        assert progress["job"] == "survivor"
        survivor.send({"type": "cancel", "job": "survivor"})
        survivor.wait_for("cancelled")
    finally:
        survivor.close()
        if victim.poll() is None:
            victim.kill()
            victim.wait()


KEEP_DREAMING = """
import json, sys, zmq
from dream_link.wire import PROTOCOL_VERSION
socket = zmq.Context().socket(zmq.DEALER)
socket.connect(sys.argv[1])
pixels = bytes(96 * 64 * 3)
header = {"v": PROTOCOL_VERSION, "token": sys.argv[2], "type": "submit", "job": "victim",
          "params": {"octaves": 4, "steps": 200},
          "image": {"width": 96, "height": 64, "channels": 3, "dtype": "u8"}}
socket.send_multipart([json.dumps(header).encode(), pixels])
while json.loads(socket.recv_multipart()[0])["type"] != "accepted":
    pass
print("accepted", flush=True)
while True:
    socket.send_multipart([json.dumps({"v": PROTOCOL_VERSION, "token": sys.argv[2], "type": "ping",
                                       "job": "victim"}).encode()])
    socket.poll(500)
    while socket.poll(0):
        socket.recv_multipart()
"""


def test_connections_closing_while_others_arrive_cancel_no_one_elses_job(server):
    # The operating system hands a new connection the number of one that just closed: a
    # disconnection must end only the jobs of its own connection.
    tiny = cat_pixels(3, "u8", size=(64, 64))
    lost = []
    busy = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(2)]
    try:  # a loaded machine widens the window between a close and its notice
        for attempt in range(300):
            with DreamClient(server.connection) as poller:  # what `dream-server --status` does
                poller.status()
            try:
                dream_alone(server, tiny, {"octaves": 1, "steps": 1, "preset": "textures"})
            except DreamError as err:
                lost.append((attempt, str(err)))
    finally:
        for process in busy:
            process.kill()
            process.wait()
    assert lost == []


def test_a_port_out_of_range_is_refused_before_the_server_starts(tmp_path):
    home = tmp_path / "home"
    run = subprocess.run(
        [sys.executable, "-m", "dream_server.daemon", "--bind", "tcp://127.0.0.1:99999"],
        env={**os.environ, "DEEPDREAM_HOME": str(home)}, capture_output=True, text=True,
        timeout=120,
    )  # fmt: skip
    assert run.returncode == 2
    assert "--bind: 'tcp://127.0.0.1:99999' has no port from 0 to 65535" in run.stderr
    assert not (home / "endpoint.json").exists()


def test_a_client_that_asks_much_reads_nothing_and_leaves_does_not_end_the_server(tmp_path):
    server = start_server(tmp_path / "home")
    try:
        for _ in range(3):
            flooder = Raw(server)
            for _ in range(20000):  # replies pile up: the server holds what cannot go out
                flooder.send({"type": "status"})
            flooder.socket.close(linger=0)
            time.sleep(1.0)
            assert server.process.poll() is None, server.process.stdout.read().decode()[-3000:]
        assert dream_alone(server, cat_pixels(3, "u8"), QUICK)
    finally:
        server.stop()


def test_a_client_that_never_reads_cannot_pile_up_results_in_the_server(tmp_path):
    server = start_server(tmp_path / "home")
    try:
        assert dream_alone(server, cat_pixels(3, "u8"), QUICK)  # warm: its model is loaded
        before = resident_mb(server.process.pid)
        hoarder = Raw(server)
        pixels = np.random.default_rng(0).random((1536, 1536, 4), np.float32)
        meta = {"width": 1536, "height": 1536, "channels": 4, "dtype": "f32"}
        for index in range(24):  # 24 results of 36 MB each, none of them ever read
            hoarder.send(
                {"type": "submit", "job": f"hoard-{index}", "params": {"strength": 0.0},
                 "image": meta},
                pixels.tobytes(),
            )  # fmt: skip
        deadline = time.monotonic() + 180  # a generous bound: a busy machine is slow, not wrong
        while queue_of(server) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert queue_of(server) == [], "the jobs of a client that does not read went on"
        grown = resident_mb(server.process.pid) - before
        print(f"24 unread 36 MB results: the server grew by {grown:.0f} MB")
        assert grown < 200
        assert dream_alone(server, cat_pixels(3, "u8"), QUICK)  # others are still served
        hoarder.close()
    finally:
        server.stop()


def test_an_idle_server_lets_go_of_its_models_and_loads_them_again_for_the_next_job(tmp_path):
    server = start_server(tmp_path / "home", "--idle-unload", "0.05")  # 3 s
    try:
        with DreamClient(server.connection) as client:
            client.dream(bytes(64 * 48 * 3), 64, 48, 3, QUICK)
            loaded = resident_mb(server.process.pid)
            assert client.status()["loaded_models"] == ["effnet-lite0"]
            deadline = time.monotonic() + 30
            while client.status()["loaded_models"] and time.monotonic() < deadline:
                time.sleep(0.5)  # status requests are not work: the server stays idle
            assert client.status()["loaded_models"] == []
            print(f"resident: {loaded:.0f} MB with the model, "
                  f"{resident_mb(server.process.pid):.0f} MB after letting go of it")  # fmt: skip
            assert client.dream(bytes(64 * 48 * 3), 64, 48, 3, QUICK)
            assert client.status()["loaded_models"] == ["effnet-lite0"]
    finally:
        server.stop()


def test_a_failure_while_serving_one_client_ends_that_clients_job_and_the_server_serves_on(
    tmp_path, monkeypatch
):
    """A bug in the loop itself (here: while forwarding the first job's progress) costs that
    job's client its connection, with a clear error, and nobody else anything."""
    from dream_server import server as serving
    from dream_server.scheduler import Scheduler

    doomed_jobs = []

    def forward_with_a_bug(self, worker, job_id, reply, now):  # noqa: ANN001, ANN202
        doomed_jobs[:] = doomed_jobs or [job_id]
        if job_id in doomed_jobs:
            raise RuntimeError("a bug met while forwarding progress")
        return Scheduler.progress(self, worker, job_id, reply, now)

    monkeypatch.setitem(serving.WORKER_MESSAGES, b"update", forward_with_a_bug)
    monkeypatch.setenv("DEEPDREAM_HOME", str(tmp_path))
    token = "0123456789abcdef0123456789abcdef"
    server = serving.DreamServer(
        [Engine(devices("cpu")[0])], f"ipc://{tmp_path}/s.sock", token, lazy=True
    )
    loop = threading.Thread(target=server.serve)
    loop.start()
    try:
        connection = Connection(server.endpoint, token)
        pixels = cat_pixels(3, "u8")
        with DreamClient(connection, start_server=False) as other:
            doomed = DreamClient(connection, start_server=False)
            with doomed, pytest.raises(DreamError, match="failed while serving this connection"):
                doomed.dream(pixels.tobytes(), 96, 64, 3, QUICK)
            assert len(other.dream(pixels.tobytes(), 96, 64, 3, QUICK)) == pixels.size
        assert loop.is_alive() and server.scheduler.counters["failed"] == 1
        assert not server.scheduler.jobs
    finally:
        server.stopping.set()
        loop.join(timeout=30)
