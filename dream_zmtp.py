"""ZeroMQ's wire protocol with the standard library only: a DEALER for the dream server's ROUTER.

GIMP on Windows, macOS and Flatpak runs plug-ins with a Python of its own that has no pyzmq.
This speaks ZMTP 3.1 (rfc.zeromq.org/spec/37: greeting, NULL security handshake, READY with
Socket-Type DEALER, multipart messages of short and long frames) over the server's socket
file, which only its user can open; encryption (CURVE, for TCP) needs pyzmq.

It trusts nothing it reads: a greeting that is not ZMTP 3, another security mechanism, a frame
longer than the server could send, a peer that closes or falls silent mid-message all end in a
`ZmtpError` that says what happened. Pixels are received straight into one buffer per frame
and sent without joining frames.
"""

from __future__ import annotations

import select
import socket
import time
from collections.abc import Sequence

GREETING_SIZE = 64
MORE, LONG, COMMAND = 0x01, 0x02, 0x04
MAX_COMMAND_BYTES = 4096
"""A READY or ERROR command is a few dozen bytes: more is not a server speaking this protocol."""


class ZmtpError(ConnectionError):
    """The peer is not a ZeroMQ server we can talk to, or it stopped mid-message."""


def _greeting() -> bytes:
    # signature, version 3.1, mechanism NULL, as-server 0, filler
    return b"\xff" + bytes(8) + b"\x7f" + bytes([3, 1]) + b"NULL".ljust(20, b"\0") + bytes(32)


def _property(name: bytes, value: bytes) -> bytes:
    return bytes([len(name)]) + name + len(value).to_bytes(4, "big") + value


def _ready() -> bytes:
    body = b"\x05READY" + _property(b"Socket-Type", b"DEALER")
    return bytes([COMMAND, len(body)]) + body


class Dealer:
    """One ZMTP connection to a ROUTER on a socket file; not thread-safe."""

    def __init__(self, path: str, timeout_s: float, max_frame_bytes: int = 1 << 20) -> None:
        self.timeout_s = timeout_s
        self.max_frame_bytes = max_frame_bytes
        """Longer frames are refused before a byte of them is stored; raise it after hello."""
        self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self._socket.settimeout(timeout_s)
            self._socket.connect(path)
            self._socket.sendall(_greeting())
            self._check_greeting(self._read_exactly(GREETING_SIZE))
            self._socket.sendall(_ready())
            self._check_ready()
        except OSError as err:
            self._socket.close()
            if isinstance(err, ZmtpError):
                raise
            raise ZmtpError(f"could not talk to {path}: {err}") from None

    # -- handshake ----------------------------------------------------------------------------

    def _check_greeting(self, greeting: bytes) -> None:
        if greeting[0] != 0xFF or greeting[9] != 0x7F:
            raise ZmtpError("the peer does not speak ZeroMQ's protocol (no ZMTP greeting)")
        if greeting[10] < 3:
            raise ZmtpError(f"the peer speaks ZMTP {greeting[10]}, not 3")
        mechanism = greeting[12:32].rstrip(b"\0").decode("ascii", "replace")
        if mechanism != "NULL":
            raise ZmtpError(
                f"the server asks for {mechanism} security, which needs pyzmq: install pyzmq "
                "for the Python that GIMP runs, or reach the server through its socket file"
            )

    def _check_ready(self) -> None:
        flags, size = self._frame_head()
        if not flags & COMMAND or size > MAX_COMMAND_BYTES:
            raise ZmtpError("the peer did not answer the handshake with a READY command")
        body = self._read_exactly(size)
        name = body[1 : 1 + body[0]]
        if name == b"ERROR":
            reason = body[2 + body[0] :].decode("utf-8", "replace")
            raise ZmtpError(f"the server refused the connection: {reason}")
        if name != b"READY":
            raise ZmtpError(f"the peer answered the handshake with {name!r}, not READY")
        properties, at = {}, 1 + body[0]
        while at < len(body):
            length = body[at]
            key = body[at + 1 : at + 1 + length]
            value_length = int.from_bytes(body[at + 1 + length : at + 5 + length], "big")
            properties[key.lower()] = body[at + 5 + length : at + 5 + length + value_length]
            at += 5 + length + value_length
        if properties.get(b"socket-type") != b"ROUTER":
            raise ZmtpError(f"the peer is a {properties.get(b'socket-type')!r} socket, not ROUTER")

    # -- messages -----------------------------------------------------------------------------

    def send(self, frames: Sequence[bytes | memoryview]) -> None:
        """One multipart message; each frame goes out as it is, after its few header bytes."""
        buffers = []
        for index, frame in enumerate(frames):
            view = memoryview(frame).cast("B")
            more = MORE if index < len(frames) - 1 else 0
            if view.nbytes < 256:
                buffers.append(bytes([more, view.nbytes]))
            else:
                buffers.append(bytes([more | LONG]) + view.nbytes.to_bytes(8, "big"))
            buffers.append(view)
        self._send_all(buffers)

    def _send_all(self, buffers: list) -> None:
        views = [memoryview(buffer) for buffer in buffers]
        while views:
            try:
                sent = self._socket.sendmsg(views[:512])
            except OSError as err:
                raise ZmtpError(f"the connection to the server broke: {err}") from None
            while sent and views:  # drop what went out, keep the rest of a part-sent buffer
                if sent >= views[0].nbytes:
                    sent -= views[0].nbytes
                    views.pop(0)
                else:
                    views[0], sent = views[0][sent:], 0

    def poll(self, timeout_s: float) -> bool:
        """Whether a message has begun to arrive within `timeout_s`."""
        readable, _, _ = select.select([self._socket], [], [], max(0.0, timeout_s))
        return bool(readable)

    def receive(self, timeout_s: float) -> list[memoryview] | None:
        """The next message's frames, or None when none begins within `timeout_s`. Once one
        begins, the rest must follow within the connection's timeout."""
        deadline = time.monotonic() + timeout_s
        while True:
            if not self.poll(deadline - time.monotonic()):
                return None
            frames, more = [], True
            while more:
                flags, size = self._frame_head()
                if flags & COMMAND:  # a command between messages (a heartbeat): skip it
                    if size > MAX_COMMAND_BYTES:
                        raise ZmtpError("the server sent an oversized command")
                    self._read_exactly(size)
                    break
                more = bool(flags & MORE)
                frames.append(self._read_frame(size))
            else:
                return frames

    def _frame_head(self) -> tuple[int, int]:
        flags = self._read_exactly(1)[0]
        if flags & ~(MORE | LONG | COMMAND):
            raise ZmtpError(f"the server sent a frame with unknown flags {flags:#x}")
        size_bytes = self._read_exactly(8 if flags & LONG else 1)
        size = int.from_bytes(size_bytes, "big")
        if size > self.max_frame_bytes:
            raise ZmtpError(
                f"the server announced a frame of {size} bytes, more than the "
                f"{self.max_frame_bytes} it may send"
            )
        return flags, size

    def _read_frame(self, size: int) -> memoryview:
        buffer = bytearray(size)
        view = memoryview(buffer)
        got = 0
        while got < size:
            got += self._read_into(view[got:])
        return view.toreadonly()

    def _read_exactly(self, size: int) -> bytes:
        return bytes(self._read_frame(size))

    def _read_into(self, view: memoryview) -> int:
        try:
            count = self._socket.recv_into(view)
        except TimeoutError:
            raise ZmtpError(
                f"the server fell silent for {self.timeout_s:g} s in the middle of a message"
            ) from None
        except OSError as err:
            raise ZmtpError(f"the connection to the server broke: {err}") from None
        if count == 0:
            raise ZmtpError("the server closed the connection in the middle of a message")
        return count

    def close(self) -> None:
        self._socket.close()
