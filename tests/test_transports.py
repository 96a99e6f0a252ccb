"""The client's two ways to the server: pyzmq, and ZMTP in the standard library
(dream_link/zmtp.py) for the GIMPs whose Python has no pyzmq. Both against the real daemon; the
standard library's also against peers that are broken or hostile."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT, start_server

from dream_link.client import Connection, DreamClient
from dream_link.wire import PROTOCOL_VERSION, DreamCancelled, DreamError
from dream_link.zmtp import Dealer, ZmtpError

QUICK = {"octaves": 1, "steps": 2, "preset": "textures"}


def dreamed_through(transport: str, server, monkeypatch, *args, **kwargs) -> bytes:  # noqa: ANN001
    monkeypatch.setenv("DEEPDREAM_TRANSPORT", transport)
    with DreamClient(server.connection) as client:
        return bytes(client.dream(*args, **kwargs))


@pytest.mark.parametrize("dtype", ["u8", "f32"])
@pytest.mark.parametrize("channels", [1, 2, 3, 4])
def test_both_ways_bring_back_the_same_dream(server, monkeypatch, channels, dtype):
    rng = np.random.default_rng(channels)
    pixels = rng.integers(0, 256, (64, 96, channels), np.uint8)
    if dtype == "f32":
        pixels = pixels.astype(np.float32) / 255
    mask = np.linspace(0, 255, 96 * 64).astype(np.uint8)
    guide = (rng.integers(0, 256, (40, 60, 3), np.uint8).tobytes(), 60, 40, 3)
    args = (pixels.tobytes(), 96, 64, channels, QUICK)
    kwargs = {"mask": mask.tobytes(), "guide": guide} if channels == 3 else {}
    through_pyzmq = dreamed_through("pyzmq", server, monkeypatch, *args, **kwargs)
    assert dreamed_through("stdlib", server, monkeypatch, *args, **kwargs) == through_pyzmq


def test_without_pyzmq_the_client_loads_and_dreams_through_the_standard_library(server):
    script = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, *args):\n"
        "        if name.split('.')[0] in ('zmq', 'numpy', 'torch', 'PIL', 'dream_server'):\n"
        "            raise ImportError(f'{name} is not in this Python')\n"
        "sys.meta_path.insert(0, Block())\n"
        "import hashlib, dream_link.client\n"
        "with dream_link.client.DreamClient() as client:\n"
        "    result = client.dream(bytes(range(256)) * 72, 96, 64, 3,\n"
        "                          {'octaves': 1, 'steps': 2, 'preset': 'textures'})\n"
        "    print(type(client._socket).__name__, hashlib.sha256(result).hexdigest())\n"
    )
    environment = {**os.environ, "DEEPDREAM_ENDPOINT": server.record["endpoint"],
                   "DEEPDREAM_TOKEN": server.record["token"]}  # fmt: skip
    environment.pop("DEEPDREAM_TRANSPORT", None)
    run = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=environment,
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    assert run.returncode == 0, run.stderr
    with DreamClient(server.connection) as client:
        expected = client.dream(bytes(range(256)) * 72, 96, 64, 3, QUICK)
    assert run.stdout.split() == ["Dealer", hashlib.sha256(expected).hexdigest()]


def test_through_the_standard_library_a_cancel_lands_and_a_killed_server_is_noticed(
    tmp_path, monkeypatch
):
    monkeypatch.setenv("DEEPDREAM_TRANSPORT", "stdlib")
    doomed = start_server(tmp_path / "home")
    try:
        with DreamClient(doomed.connection) as client:
            started = time.monotonic()
            with pytest.raises(DreamCancelled):
                client.dream(bytes(96 * 64 * 3), 96, 64, 3, {"octaves": 4, "steps": 200},
                             should_stop=lambda: time.monotonic() - started > 1)  # fmt: skip
            time.sleep(1.0)
            assert client.status()["queue"] == []  # the server stopped dreaming within 1 s
            threading.Timer(1.0, os.kill, (doomed.process.pid, signal.SIGKILL)).start()
            began = time.monotonic()
            with pytest.raises(DreamError, match="stopped answering|Lost the dream server"):
                client.dream(bytes(96 * 64 * 3), 96, 64, 3, {"octaves": 4, "steps": 200})
            assert time.monotonic() - began < 1.0 + 3.5
    finally:
        doomed.stop()


# -- broken and hostile peers ------------------------------------------------------------------

GOOD_GREETING = b"\xff" + bytes(8) + b"\x7f" + bytes([3, 1]) + b"NULL".ljust(20, b"\0") + bytes(32)
CURVE_GREETING = GOOD_GREETING[:12] + b"CURVE".ljust(20, b"\0") + bytes(32)
ROUTER_READY = b"\x04\x1c\x05READY\x0bSocket-Type\x00\x00\x00\x06ROUTER"


def read_exactly(connection: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size and (chunk := connection.recv(size - len(data))):
        data += chunk
    return data


def read_command(connection: socket.socket) -> bytes:
    """The client's next command (its READY), read whole so that closing after it cannot
    break the client's send."""
    flags, size = read_exactly(connection, 2)
    assert flags == 0x04, f"expected a short command, got flags {flags:#x}"
    return read_exactly(connection, size)


def fake_server(tmp_path: Path | None, behave, linger_s: float = 5.0) -> str:  # noqa: ANN001
    """A socket file in `tmp_path` (or, with None, a port on the loopback) whose one peer reads
    the client's greeting, then runs `behave(connection)` in a thread, then keeps silent for
    `linger_s`. Returns its endpoint."""
    if tmp_path is None:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.bind(("127.0.0.1", 0))
        endpoint = f"tcp://127.0.0.1:{listener.getsockname()[1]}"
    else:
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(str(tmp_path / "fake.sock"))
        endpoint = f"ipc://{tmp_path / 'fake.sock'}"
    listener.listen(1)

    def serve() -> None:
        connection, _ = listener.accept()
        with connection:
            read_exactly(connection, 64)
            behave(connection)
            time.sleep(linger_s)  # then silence until the test is done
        listener.close()

    threading.Thread(target=serve, daemon=True).start()
    return endpoint


@pytest.mark.parametrize(
    ("behave", "said"),
    [
        (lambda c: c.sendall(b"HTTP/1.1 400 Bad Request\r\n" + bytes(38)), "no ZMTP greeting"),
        (lambda c: c.sendall(CURVE_GREETING), "CURVE security, which needs pyzmq"),
        (lambda c: c.sendall(GOOD_GREETING + b"\x04\x07\x05ERROR\x00"), "refused the connection"),
        (lambda c: c.sendall(GOOD_GREETING), "fell silent"),
        (lambda c: c.sendall(GOOD_GREETING[:30]), "fell silent"),
        (lambda c: (c.sendall(GOOD_GREETING[:30]), c.close()), "closed the connection"),
    ],
)
def test_a_broken_peer_in_the_handshake_gives_a_clear_error_and_no_hang(tmp_path, behave, said):
    path = fake_server(tmp_path, behave)
    began = time.monotonic()
    with pytest.raises(ZmtpError, match=said):
        Dealer(path, timeout_s=1.0)
    assert time.monotonic() - began < 3.0


@pytest.mark.parametrize(
    ("after_ready", "said"),
    [
        (b"\x02" + (1 << 40).to_bytes(8, "big"), "frame of 1099511627776 bytes"),  # 1 TB, LONG
        (b"\x00\x20" + b"half a frame", "closed the connection in the middle"),
        (b"\x00\x20" + b"half a frame and then silence", "fell silent"),
        (b"\x40\x01x", "unknown flags 0x40"),
    ],
)
def test_a_broken_peer_after_the_handshake_gives_a_clear_error(tmp_path, after_ready, said):
    closes = "closed" in said

    def behave(connection: socket.socket) -> None:
        connection.sendall(GOOD_GREETING + ROUTER_READY)
        assert read_command(connection).startswith(b"\x05READY")
        connection.sendall(after_ready)
        if closes:
            connection.shutdown(socket.SHUT_RDWR)

    dealer = Dealer(fake_server(tmp_path, behave), timeout_s=1.0, max_frame_bytes=1 << 20)
    began = time.monotonic()
    with pytest.raises(ZmtpError, match=said):
        dealer.receive(timeout_s=2.0)
    assert time.monotonic() - began < 3.0
    dealer.close()


def trickle(connection: socket.socket, data: bytes, every_s: float) -> None:
    """Send `data` a byte at a time, each just before a patient reader would give up."""
    with contextlib.suppress(OSError):
        for byte in data:
            connection.sendall(bytes([byte]))
            time.sleep(every_s)


def test_a_greeting_that_trickles_in_ends_the_handshake_at_its_deadline(tmp_path):
    path = fake_server(tmp_path, lambda c: trickle(c, GOOD_GREETING + ROUTER_READY, 0.5))
    began = time.monotonic()
    with pytest.raises(ZmtpError, match="did not finish the handshake within 1 s"):
        Dealer(path, timeout_s=1.0)
    assert time.monotonic() - began < 2.0


def test_a_reply_that_trickles_in_ends_at_its_deadline(tmp_path):
    def behave(connection: socket.socket) -> None:
        connection.sendall(GOOD_GREETING + ROUTER_READY)
        read_command(connection)
        trickle(connection, b"\x00\x20" + bytes(32), 0.5)

    dealer = Dealer(fake_server(tmp_path, behave), timeout_s=1.0)
    began = time.monotonic()
    with pytest.raises(ZmtpError, match="sent a message too slowly"):
        dealer.receive(timeout_s=2.0)
    assert time.monotonic() - began < 2.5
    dealer.close()


def test_a_message_that_never_ends_is_refused_at_the_size_the_server_may_send(tmp_path):
    sent = []

    def behave(connection: socket.socket) -> None:
        connection.sendall(GOOD_GREETING + ROUTER_READY)
        read_command(connection)
        frame = b"\x03" + (60_000).to_bytes(8, "big") + bytes(60_000)  # MORE, LONG
        with contextlib.suppress(OSError):
            while True:
                connection.sendall(frame)
                sent.append(len(frame))

    dealer = Dealer(fake_server(tmp_path, behave), timeout_s=5.0, max_frame_bytes=1 << 20)
    with pytest.raises(ZmtpError, match="more than the 1048576 bytes it may send"):
        dealer.receive(timeout_s=2.0)
    dealer.close()
    assert sum(sent) < 8 << 20  # what the socket buffers held besides: nothing like gigabytes


def test_a_peer_that_answers_hello_with_something_else_is_not_taken_for_a_server(
    tmp_path, monkeypatch
):
    monkeypatch.setenv("DEEPDREAM_TRANSPORT", "stdlib")  # the fake peer speaks ZMTP by hand
    progress = json.dumps({"type": "progress", "v": PROTOCOL_VERSION}).encode()

    def behave(connection: socket.socket) -> None:
        connection.sendall(GOOD_GREETING + ROUTER_READY)
        read_command(connection)
        with contextlib.suppress(OSError):  # until the client hangs up
            for _ in range(100):
                connection.sendall(b"\x00" + bytes([len(progress)]) + progress)

    endpoint = fake_server(tmp_path, behave)
    with pytest.raises(DreamError, match=r"did not answer as a dream server does \(it sent "
                       r"'progress' to hello\): restart `dream-server`"):  # fmt: skip
        DreamClient(Connection(endpoint, "a token"))


def test_a_peer_that_says_nothing_is_a_message_that_never_came(tmp_path):
    dealer = Dealer(fake_server(tmp_path, lambda c: c.sendall(GOOD_GREETING + ROUTER_READY)), 1.0)
    assert dealer.receive(timeout_s=0.3) is None
    dealer.close()


def test_on_the_loopback_both_ways_dream_alike_and_a_stale_token_is_refused(tmp_path, monkeypatch):
    # Where there are no socket files (Windows), a local server listens on the loopback
    loopback = start_server(tmp_path / "home", "--bind", "tcp://127.0.0.1:0")
    try:
        assert "server_key" not in loopback.record  # PLAIN, which the standard library speaks
        pixels = np.random.default_rng(7).integers(0, 256, (48, 64, 4), np.uint8).tobytes()
        through_pyzmq = dreamed_through("pyzmq", loopback, monkeypatch, pixels, 64, 48, 4, QUICK)
        through_stdlib = dreamed_through("stdlib", loopback, monkeypatch, pixels, 64, 48, 4, QUICK)
        assert through_stdlib == through_pyzmq
        stale = Connection(loopback.record["endpoint"], "the token of the server before")
        with pytest.raises(DreamError, match="No dream server answered"):  # refused at once
            DreamClient(stale, start_server=False)
    finally:
        loopback.stop()


def test_a_loopback_server_that_cannot_prove_the_token_hears_nothing_more(tmp_path, monkeypatch):
    monkeypatch.setenv("DEEPDREAM_TRANSPORT", "stdlib")
    told = []

    def impostor(connection: socket.socket) -> None:  # PLAIN, any password, a made-up proof
        connection.sendall(GOOD_GREETING[:12] + b"PLAIN".ljust(20, b"\0") + bytes(32))
        read_command(connection)  # HELLO with the password
        connection.sendall(b"\x04\x08\x07WELCOME")
        assert read_command(connection).startswith(b"\x08INITIATE")
        connection.sendall(ROUTER_READY)
        flags, size = read_exactly(connection, 2)
        told.append(read_exactly(connection, size))
        proof = b'{"v": 2, "type": "proof", "proof": "' + b"0" * 64 + b'"}'
        connection.sendall(bytes([0, len(proof)]) + proof)
        connection.settimeout(1.0)
        with contextlib.suppress(TimeoutError):
            told.append(connection.recv(1 << 16))  # b"": the client hung up

    endpoint = fake_server(None, impostor, linger_s=0)
    with pytest.raises(DreamError, match="could not prove it knows the token"):
        DreamClient(Connection(endpoint, "the real token"), start_server=False)
    deadline = time.monotonic() + 5
    while len(told) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    prove, after = told
    assert json.loads(prove)["type"] == "prove" and after == b""  # and then nothing more
    assert b"the real token" not in prove
