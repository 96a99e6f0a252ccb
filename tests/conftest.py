"""Shared fixtures: real photos, the embedded model loaded once, a quiet CPU."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import torch
from PIL import Image

from dream_server.models import FeatureModel, frozen_convs, load_model

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "dream_server" / "samples"
PHOTOS = Path(__file__).resolve().parent / "photos"


def photo(name: str, size: tuple[int, int] | None = None, mode: str = "RGB") -> np.ndarray:
    """A real photo as (H, W, C) uint8, optionally resized to (width, height)."""
    folder = SAMPLES if (SAMPLES / name).exists() else PHOTOS
    image = Image.open(folder / name).convert(mode)
    if size is not None:
        image = image.resize(size, Image.BICUBIC)
    pixels = np.array(image)
    return pixels if pixels.ndim == 3 else pixels[:, :, None]


@pytest.fixture(scope="session", autouse=True)
def _two_threads() -> None:
    # Tests run where CI runs: two cores. Pinning keeps timings and results comparable.
    torch.set_num_threads(2)


@pytest.fixture(scope="session")
def effnet() -> FeatureModel:
    return load_model("effnet-lite0")


PATHS = ["fused", "autograd"]
"""The ways the engine computes a network: the fused convolution chains of the CPU, and the
plain autograd that CUDA and Apple's MPS run (forced on the CPU by `computed_through`)."""


@contextlib.contextmanager
def computed_through(path: str) -> Iterator[None]:
    if path == "fused":
        yield
        return
    with mock.patch.object(frozen_convs, "_onednn_usable", lambda: False):
        yield


@pytest.fixture(params=PATHS)
def network(request, effnet) -> Iterator[FeatureModel]:
    """The embedded model, through each path in turn."""
    with computed_through(request.param):
        yield effnet


@pytest.fixture(scope="session")
def cat() -> np.ndarray:
    return photo("chelsea.png")


@pytest.fixture(scope="session")
def small_cat() -> np.ndarray:
    return photo("chelsea.png", (192, 128))


def deepdream(
    *args: str | Path, timeout: float = 300, cwd: Path = ROOT
) -> subprocess.CompletedProcess:
    run = subprocess.run(
        [sys.executable, "-m", "dream_server.cli", *map(str, args)],
        capture_output=True,
        timeout=timeout,
        cwd=cwd,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    # Decoded by hand: text mode would turn the progress bar's carriage returns into newlines.
    return subprocess.CompletedProcess(
        run.args, run.returncode, run.stdout.decode(), run.stderr.decode()
    )


def on_a_terminal(text: str) -> str:
    """What a terminal shows of `text`: a carriage return lets the next text overwrite the line,
    which is how progress bars redraw and clear themselves."""
    lines = [line.rsplit("\r", 1)[-1].rstrip() for line in text.split("\n")]
    return "\n".join(line for line in lines if line)


class RunningServer:
    """A real `dream-server` process with its own state folder."""

    def __init__(self, home: Path, process: subprocess.Popen, endpoint_record: dict) -> None:
        self.home = home
        self.process = process
        self.record = endpoint_record

    @property
    def connection(self):  # noqa: ANN201
        from dream_link.client import Connection

        return Connection(
            self.record["endpoint"], self.record["token"], self.record.get("server_key")
        )

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_server(home: Path, *args: str, timeout: float = 60) -> RunningServer:
    home.mkdir(parents=True, exist_ok=True)
    environment = {**os.environ, "DEEPDREAM_HOME": str(home)}
    process = subprocess.Popen(
        [sys.executable, "-m", "dream_server.daemon", *args],
        env=environment,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    endpoint_file = home / "endpoint.json"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"dream-server exited: {process.stdout.read().decode()}")
        if endpoint_file.exists():
            return RunningServer(home, process, json.loads(endpoint_file.read_text()))
        time.sleep(0.05)
    process.kill()
    raise RuntimeError("dream-server did not write its endpoint file")


@pytest.fixture(params=["pyzmq", "stdlib"])
def transport(request, monkeypatch) -> str:
    """Each of the client's two ways to the server in turn (the child processes' too): pyzmq,
    and ZMTP in the standard library, which the GIMPs without pyzmq use."""
    monkeypatch.setenv("DEEPDREAM_TRANSPORT", request.param)
    return request.param


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    running = start_server(tmp_path_factory.mktemp("dream-home"))
    yield running
    running.stop()


PAN_PX = 3


def panned_frames(count: int = 12) -> list[np.ndarray]:
    """A camera panning right across the cat (CC0) by PAN_PX a frame: the picture moves left."""
    cat = photo("chelsea.png")
    return [
        np.ascontiguousarray(cat[60:188, 40 + PAN_PX * k : 232 + PAN_PX * k]) for k in range(count)
    ]


def unsteadiness(frames: list[np.ndarray]) -> float:
    """How much each frame differs from the one before moved by the camera's pan."""
    differences = [
        np.abs(after[8:-8, 8 : -8 - PAN_PX].astype(np.float32) - before[8:-8, 8 + PAN_PX : -8])
        for before, after in zip(frames, frames[1:], strict=False)
    ]
    return float(np.mean([difference.mean() for difference in differences]))
