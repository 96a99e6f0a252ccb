"""ZeroMQ's wire protocol with the standard library only: a DEALER for the dream server's ROUTER.

GIMP on Windows, macOS and Flatpak runs plug-ins with a Python of its own that has no pyzmq.
This speaks ZMTP 3.1 (rfc.zeromq.org/spec/37: greeting, security handshake, READY with
Socket-Type DEALER, multipart messages of short and long frames) with the mechanisms of a local
server (dream_link.wire.security): NULL over its socket file, which only its user can open, and
PLAIN (spec 24) over the loopback, where there is no socket file (Windows). Encryption (CURVE,
for servers on other machines) needs pyzmq.

It trusts nothing it reads: a greeting that is not ZMTP 3, another security mechanism, a
message longer than the server could send, a peer that closes mid-message, and a handshake or
a message that does not arrive in time all end in a `ZmtpError` that says what happened. A
deadline holds for the whole handshake and for each whole message, not for each byte: a peer
that trickles bytes in cannot hold the client forever. Pixels are received straight into one
buffer per frame and sent without joining frames.
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
MAX_FRAMES = 4096
"""Frames in one message, at most: the longest reply (a feature visualization's samples) has
a few dozen."""
MIN_BYTES_PER_S = 1 << 20
"""A message's deadline grows by a second for each MiB it carries (a slow tunnel may need it),
from the connection's timeout for the first bytes."""


class ZmtpError(ConnectionError):
    """The peer is not a ZeroMQ server we can talk to, or it stopped mid-message."""


def _greeting(mechanism: str) -> bytes:
    signature, version = b"\xff" + bytes(8) + b"\x7f", bytes([3, 1])
    as_server, filler = b"\0", bytes(31)
    return signature + version + mechanism.encode().ljust(20, b"\0") + as_server + filler


def _property(name: bytes, value: bytes) -> bytes:
    return bytes([len(name)]) + name + len(value).to_bytes(4, "big") + value


def _command(name: bytes, data: bytes) -> bytes:
    body = bytes([len(name)]) + name + data
    return bytes([COMMAND, len(body)]) + body


def _socket_type() -> bytes:
    return _property(b"Socket-Type", b"DEALER")


def _connected(endpoint: str, timeout_s: float) -> socket.socket:
    """A stream to `ipc://PATH` (a socket file) or `tcp://HOST:PORT`."""
    if endpoint.startswith("ipc://"):
        stream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        address: str | tuple[str, int] = endpoint.removeprefix("ipc://")
    elif endpoint.startswith("tcp://"):
        host, _, port = endpoint.removeprefix("tcp://").rpartition(":")
        stream = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
        address = (host.strip("[]"), int(port))
        stream.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    else:
        raise ZmtpError(f"cannot reach {endpoint}: only ipc:// and tcp:// endpoints")
    stream.settimeout(timeout_s)
    try:
        stream.connect(address)
    except OSError:
        stream.close()
        raise
    return stream


class Dealer:
    """One ZMTP connection to a ROUTER; not thread-safe."""

    def __init__(
        self,
        endpoint: str,
        timeout_s: float,
        max_frame_bytes: int = 1 << 20,
        plain: tuple[str, str] | None = None,
    ) -> None:
        """`endpoint`: `ipc://PATH` or `tcp://HOST:PORT`; `plain`: (username, password) for a
        server that asks for PLAIN, else NULL."""
        self.timeout_s = timeout_s
        self.max_frame_bytes = max_frame_bytes
        """Longer messages are refused before a byte of them is stored; raise it after hello.
        (The name is ZeroMQ's: its limit is per message too.)"""
        self._last_byte = time.monotonic()
        self._deadline = self._last_byte + timeout_s
        self._late = f"the server did not finish the handshake within {timeout_s:g} s"
        mechanism = "NULL" if plain is None else "PLAIN"
        try:
            self._socket = _connected(endpoint, timeout_s)
        except OSError as err:
            raise ZmtpError(f"could not connect to {endpoint}: {err}") from None
        try:
            self._socket.sendall(_greeting(mechanism))
            self._check_greeting(self._read_exactly(GREETING_SIZE), mechanism)
            if plain is None:
                self._socket.sendall(_command(b"READY", _socket_type()))
            else:  # HELLO with the credentials, WELCOME, INITIATE with our metadata
                username, password = (part.encode() for part in plain)
                self._socket.sendall(_command(b"HELLO", bytes([len(username)]) + username
                                              + bytes([len(password)]) + password))  # fmt: skip
                self._expect_command(b"WELCOME")
                self._socket.sendall(_command(b"INITIATE", _socket_type()))
            self._check_properties(self._expect_command(b"READY"))
        except OSError as err:
            self._socket.close()
            if isinstance(err, ZmtpError):
                raise
            raise ZmtpError(f"could not talk to {endpoint}: {err}") from None

    # -- handshake ----------------------------------------------------------------------------

    def _check_greeting(self, greeting: bytes, expected: str) -> None:
        if greeting[0] != 0xFF or greeting[9] != 0x7F:
            raise ZmtpError("the peer does not speak ZeroMQ's protocol (no ZMTP greeting)")
        if greeting[10] < 3:
            raise ZmtpError(f"the peer speaks ZMTP {greeting[10]}, not 3")
        mechanism = greeting[12:32].rstrip(b"\0").decode("ascii", "replace")
        if mechanism == "CURVE":
            raise ZmtpError(
                "the server asks for CURVE security, which needs pyzmq: install pyzmq for the "
                "Python that GIMP runs, or reach the server through its socket file or loopback"
            )
        if mechanism != expected:
            raise ZmtpError(f"the server asks for {mechanism} security, where {expected} was due")

    def _expect_command(self, expected: bytes) -> bytes:
        """The data of the next command, which must be `expected` (an ERROR says why not)."""
        flags, size = self._frame_head()
        if not flags & COMMAND or size > MAX_COMMAND_BYTES:
            raise ZmtpError(f"the peer did not answer the handshake with a {expected.decode()}")
        body = self._read_exactly(size)
        name, data = body[1 : 1 + body[0]], body[1 + body[0] :]
        if name == b"ERROR":
            reason = data[1 : 1 + data[0]].decode("utf-8", "replace") if data else ""
            raise ZmtpError(f"the server refused the connection: {reason}")
        if name != expected:
            raise ZmtpError(f"the peer answered the handshake with {name!r}, not {expected!r}")
        return data

    def _check_properties(self, body: bytes) -> None:
        properties, at = {}, 0
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
        if not hasattr(self._socket, "sendmsg"):  # Windows: no gathering send, one by one
            try:
                for view in views:
                    self._socket.sendall(view)
            except OSError as err:
                raise ZmtpError(f"the connection to the server broke: {err}") from None
            return
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
            self._last_byte = time.monotonic()
            self._deadline = self._last_byte + self.timeout_s
            self._late = "the server sent a message too slowly"
            frames, more, budget = [], True, self.max_frame_bytes
            while more:
                flags, size = self._frame_head(budget)
                if flags & COMMAND:  # a command between messages (a heartbeat): skip it
                    if size > MAX_COMMAND_BYTES:
                        raise ZmtpError("the server sent an oversized command")
                    self._read_exactly(size)
                    break
                more, budget = bool(flags & MORE), budget - size
                if len(frames) == MAX_FRAMES:
                    raise ZmtpError(f"the server sent a message of more than {MAX_FRAMES} frames")
                frames.append(self._read_frame(size))
            else:
                return frames

    def _frame_head(self, budget: int | None = None) -> tuple[int, int]:
        """A frame's flags and size, which must fit in the `budget` left to its message."""
        budget = self.max_frame_bytes if budget is None else budget
        flags = self._read_exactly(1)[0]
        if flags & ~(MORE | LONG | COMMAND):
            raise ZmtpError(f"the server sent a frame with unknown flags {flags:#x}")
        size_bytes = self._read_exactly(8 if flags & LONG else 1)
        size = int.from_bytes(size_bytes, "big")
        if size > budget:
            raise ZmtpError(
                f"the server announced a frame of {size} bytes, which makes its message more "
                f"than the {self.max_frame_bytes} bytes it may send"
            )
        self._deadline += size / MIN_BYTES_PER_S
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
        left = self._deadline - time.monotonic()
        if left <= 0:
            raise ZmtpError(self._late)
        try:
            self._socket.settimeout(min(left, self.timeout_s))
            count = self._socket.recv_into(view)
        except TimeoutError:
            if time.monotonic() - self._last_byte < self.timeout_s * 0.9:  # it trickles
                raise ZmtpError(self._late) from None
            raise ZmtpError(
                f"the server fell silent for {self.timeout_s:g} s in the middle of a message"
            ) from None
        except OSError as err:
            raise ZmtpError(f"the connection to the server broke: {err}") from None
        if count == 0:
            raise ZmtpError("the server closed the connection in the middle of a message")
        self._last_byte = time.monotonic()
        return count

    def close(self) -> None:
        self._socket.close()
