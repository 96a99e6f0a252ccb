"""What the dream server, the `deepdream` command, install.py and the GIMP plug-in's client share.

The protocol's version and pixel types, the progress report every long job gives, the
errors a person reads, and where the small files live, so that all of them look in one place.
Standard library only: install.py copies this file next to the GIMP plug-in, whose Python may
have nothing else, and the engine imports it as it is.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import ipaddress
import json
import os
import stat
import sys
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

PROTOCOL_VERSION = 5
"""5: the `channels` request; `visualize` from a photo (accentuation), of a list of channels,
with exemplars. 4: the `steady` request. 3: the `estimate` request. 2: the `check` and
`animate` requests, `frame` messages, and progress with `loading` and `frame`/`frames`."""
CUSTOM_PRESET = "custom"
"""The preset that dreams the layers typed in `layers`: the dialog ties the two together."""
ITEM_SIZES = {"u8": 1, "f32": 4}
"""Bytes per channel of each pixel type on the wire."""


# -- the messages -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Request:
    """One kind of request: the pixel frames after its header, and the replies it gets."""

    frames: tuple[str, ...] = ()
    """Named by the header field that describes each; all are required..."""
    optional_frames: tuple[str, ...] = ()
    """...but these, each sent (in this order, after the required ones) when its field is in
    the header."""
    replies: tuple[str, ...] = ()
    job: bool = False
    """Whether it names a `job`: it becomes one, or (cancel) acts on one."""
    per_frame: bool = False
    """Whether its frames come once for each frame of an animation: as many times as the
    header's `frames` says (1 to MAX_ANIMATION_FRAMES)."""
    listed_frames: tuple[str, ...] = ()
    """Named by a header field that holds a list of descriptions (up to MAX_LISTED_FRAMES),
    a frame each, sent last: photos of different sizes."""

    def frames_of(self, header: Mapping[str, Any]) -> tuple[str, ...]:
        """The frames a request with this header carries, in order (none for a count that is
        not a whole number of frames)."""
        if self.per_frame:
            count = header.get("frames")
            valid = isinstance(count, int) and not isinstance(count, bool)
            return self.frames * count if valid and 1 <= count <= MAX_ANIMATION_FRAMES else ()
        listed = []
        for name in self.listed_frames:
            descriptions = header.get(name, [])
            if not isinstance(descriptions, list) or len(descriptions) > MAX_LISTED_FRAMES:
                return ()
            listed += [name] * len(descriptions)
        optional = tuple(name for name in self.optional_frames if name in header)
        return self.frames + optional + tuple(listed)


MAX_ANIMATION_FRAMES = 1000
"""Frames in one `steady` request, at most."""
MAX_LISTED_FRAMES = 500
"""Frames in one list of a request (the photos exemplars are found in), at most."""


JOB_REPLIES = ("accepted", "progress", "result", "error", "cancelled")
REQUESTS = {
    "prove": Request(replies=("proof",)),
    "hello": Request(replies=("hello_ok",)),
    "submit": Request(("image",), ("mask", "guide"), JOB_REPLIES, job=True),
    "visualize": Request((), ("photo",), JOB_REPLIES, job=True, listed_frames=("exemplars",)),
    "channels": Request(("image",), ("mask",), JOB_REPLIES, job=True),
    "check": Request(replies=JOB_REPLIES, job=True),
    "animate": Request(("image",), replies=(*JOB_REPLIES, "frame"), job=True),
    "steady": Request(("image",), replies=(*JOB_REPLIES, "frame"), job=True, per_frame=True),
    "cancel": Request(replies=("cancelled", "error"), job=True),
    "ping": Request(replies=("pong",)),
    "status": Request(replies=("status_ok",)),
    "estimate": Request(replies=("estimate_ok",)),
}
"""Every request the server takes (docs/PROTOCOL.md is the same table for people)."""
JOB_ENDINGS = frozenset({"result", "error", "cancelled"})
"""The replies after which a job says nothing more."""


@dataclass(frozen=True)
class FrameDescription:
    """What a header says of one pixel frame: rows of `width` pixels of `channels` values of
    `dtype`, packed, top row first."""

    width: int
    height: int
    channels: int
    dtype: str

    @property
    def nbytes(self) -> int:
        return self.width * self.height * self.channels * ITEM_SIZES[self.dtype]

    @classmethod
    def of_header(cls, field: Any, what: str, max_pixels: int) -> FrameDescription:
        """The description in a header's field `what`, checked; ValueError says what is wrong,
        OverflowError that it is larger than `max_pixels`."""
        if not isinstance(field, dict):
            raise ValueError(f"'{what}' must describe the frame: width, height, channels, dtype.")
        values = {name: field.get(name) for name in ("width", "height", "channels", "dtype")}
        for name in ("width", "height", "channels"):
            value = values[name]
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"The {what}'s {name} must be a positive integer.")
        if values["channels"] > 4:
            raise ValueError(f"The {what} has {values['channels']} channels; at most 4.")
        if values["dtype"] not in ITEM_SIZES:
            raise ValueError(
                f"The {what}'s dtype must be u8 or f32; got {str(values['dtype'])[:20]!r}."
            )
        description = cls(**values)
        if description.width * description.height > max_pixels:
            raise OverflowError(
                f"The {what} is {description.width}x{description.height}, over this server's "
                f"limit of {max_pixels} pixels: dream on a smaller selection or scale the image "
                "down."
            )
        return description

    def check_size(self, nbytes: int, what: str) -> None:
        """ValueError unless a frame of `nbytes` holds exactly these pixels."""
        if nbytes != self.nbytes:
            raise ValueError(
                f"The {what} frame has {nbytes} bytes; {self.width}x{self.height}x"
                f"{self.channels} {self.dtype} needs {self.nbytes}."
            )

    def as_header(self) -> dict[str, Any]:
        return asdict(self)


def schema_hash(schemas: Mapping[str, Any]) -> str:
    """A short fingerprint of the parameter definitions: the server sends it in `hello_ok`, the
    plug-in compares it with the files install.py wrote, so that different releases say so."""
    text = json.dumps(schemas, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def client_secret_key(token: str) -> bytes:
    """The CURVE secret key of every client that knows `token` (Z85 text): the server lets in
    its public key and no other, so that a peer without the token is refused before it can send
    a byte."""
    return z85_encode(hashlib.sha256(b"deepdream client key\0" + token.encode()).digest())


Z85_ALPHABET = (
    b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ.-:+=^!/*?&<>()[]{}@%$#"
)


def z85_encode(data: bytes) -> bytes:
    """ZeroMQ's Z85 text for `data` (rfc.zeromq.org spec 32), whose length is a multiple of 4."""
    if len(data) % 4:
        raise ValueError("Z85 encodes 4 bytes at a time")
    out = bytearray()
    for offset in range(0, len(data), 4):
        value = int.from_bytes(data[offset : offset + 4], "big")
        out += bytes(Z85_ALPHABET[value // 85**power % 85] for power in range(4, -1, -1))
    return bytes(out)


class DreamError(Exception):
    """Something the user can fix: the message says what went wrong and what to do.

    The engine raises subclasses of it; the server sends their `code` and message; the client
    raises it again with both, so that every edge shows the same words.
    """

    code = "dream_failed"

    def __init__(self, message: str, code: str | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code


class DreamCancelled(DreamError):
    code = "cancelled"

    def __init__(self, message: str = "The dream was cancelled.") -> None:
        super().__init__(message)


@dataclass(frozen=True)
class Progress:
    """How far a job is: after each step of the engine, in each `progress` message."""

    fraction: float
    """Of all the work, 0 to 1."""
    octave: int
    """Counted from 0, like `step`."""
    octaves: int
    step: int
    steps: int
    """0 in a job's first report, before the engine has said how many."""
    seconds_left: float | None = None
    """Known once a few steps have shown the pace; None before."""
    loading: str | None = None
    """The model being loaded before the first step (seconds on a first job), or None."""
    frame: int = 0
    """Of an animation's frames, counted from 0; `frames` is 1 for a still dream."""
    frames: int = 1

    @classmethod
    def from_message(cls, header: Mapping[str, Any]) -> Progress:
        """The report a `progress` message carries (the server sends its fields by name)."""
        return cls(**{field.name: header[field.name] for field in fields(cls)})

    def of_frame(self, frame: int, frames: int) -> Progress:
        """This report of one frame's dream, as part of an animation of `frames` frames."""
        return replace(self, fraction=(frame + self.fraction) / frames, frame=frame, frames=frames)

    def describe(self) -> str:
        """`octave 2/4, step 7/10`, `step 120/256` where there is one octave, and `frame 3/30, `
        before them in an animation."""
        if self.loading:
            return f"loading model {self.loading}..."
        if self.steps == 0:
            return "starting..."
        step = f"step {self.step + 1}/{self.steps}"
        where = step if self.octaves == 1 else f"octave {self.octave + 1}/{self.octaves}, {step}"
        return where if self.frames == 1 else f"frame {self.frame + 1}/{self.frames}, {where}"


ProgressCallback = Callable[[Progress], None]


def security(endpoint: str, server_key: str | None = None) -> str:
    """How a connection to `endpoint` is let in (ZeroMQ's security mechanism):

    - `NULL` on a socket file, which only its user can open;
    - `CURVE` (encrypted, both sides proven by keys) beyond this machine, and wherever the
      server has keys of its own (`server_key`);
    - `PLAIN` on the loopback: the client's password is derived from the token, and before it
      says anything else the server proves that it knows the token too (`prove`), so that a
      program squatting on a dead server's port learns neither the token nor any pixels. Unlike
      CURVE, the standard library speaks it at full speed: Windows' GIMP, whose Python has no
      pyzmq and no socket files, needs it.
    """
    if endpoint.startswith(("ipc://", "inproc://")):
        return "NULL"
    if server_key or not is_loopback(endpoint):
        return "CURVE"
    return "PLAIN"


PLAIN_USERNAME = "deepdream"


def plain_password(token: str) -> str:
    """The PLAIN password of every client that knows `token` (not the token itself: a squatter
    that hears it learns nothing of use, the token being new at every start)."""
    return hmac.new(token.encode(), b"deepdream plain password", hashlib.sha256).hexdigest()


def server_proof(token: str, nonce: str) -> str:
    """What the server answers to `prove`: only one that knows `token` can compute it."""
    return hmac.new(token.encode(), b"deepdream server proof\0" + nonce.encode(),
                    hashlib.sha256).hexdigest()  # fmt: skip


def check_endpoint(endpoint: str, binding: bool = False) -> None:
    """A DreamError that says what is wrong with `endpoint` (`ipc://PATH` or `tcp://HOST:PORT`,
    the port from 1 to 65535; 0 too where a server binds, for any free port)."""
    if endpoint.startswith("ipc://") and len(endpoint) > len("ipc://"):
        return
    host, colon, port = endpoint.removeprefix("tcp://").rpartition(":")
    lowest = 0 if binding else 1
    if not endpoint.startswith("tcp://") or not colon or not host:
        raise DreamError(f"{endpoint!r} is not an endpoint: write ipc://PATH or tcp://HOST:PORT.")
    if not port.isdigit() or not lowest <= int(port) <= 65535:
        raise DreamError(f"{endpoint!r} has no port from {lowest} to 65535: write "
                         "tcp://HOST:PORT, e.g. tcp://127.0.0.1:5757.")  # fmt: skip


def is_loopback(endpoint: str) -> bool:
    """Whether `endpoint` stays on this machine."""
    if endpoint.startswith(("ipc://", "inproc://")):
        return True
    host = urllib.parse.urlsplit(endpoint).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def same_server(endpoint: str, written: str, state: Path) -> bool:
    """Whether `endpoint` reaches the server whose endpoint file, in the folder `state`, names
    `written`: the same address, or the same socket file (seen from inside a sandbox, where its
    path differs, it is the socket of that name in the folder of the file). Only there may the
    file's token go: a program elsewhere would learn it."""
    if endpoint == written:
        return True
    if not (endpoint.startswith("ipc://") and written.startswith("ipc://")):
        return False
    mine, theirs = Path(endpoint.removeprefix("ipc://")), Path(written.removeprefix("ipc://"))
    with contextlib.suppress(OSError):
        return os.path.samefile(mine, theirs)
    with contextlib.suppress(OSError):
        return mine.name == theirs.name and os.path.samefile(mine.parent, state)
    return False


# -- where the small files live ----------------------------------------------------------

ENDPOINT_FILE = "endpoint.json"
"""Written by the running server (mode 0600): an EndpointRecord."""
INSTALL_RECORD = "daemon.json"
"""Written by install.py: the Python of the environment to start the server from."""
LOG_FILE = "dream-server.log"


def state_dir() -> Path:
    """The folder of the server's endpoint file, socket file and log: the same for the server
    and for every GIMP of this user, the Flatpak one included."""
    override = os.environ.get("DEEPDREAM_HOME")
    if override:
        return Path(override)
    if sys.platform == "win32":
        return Path(os.environ.get("APPDATA", Path.home())) / "deepdream"
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Application Support" / "deepdream"
    if in_flatpak():
        # Flatpak points XDG_CONFIG_HOME into the app's own folder; the server runs on the host
        # and keeps its files in the host's, which GIMP's Flatpak sees at the same path (it
        # has --filesystem=host).
        config = os.environ.get("HOST_XDG_CONFIG_HOME") or Path.home() / ".config"
        return Path(config) / "deepdream"
    return Path(os.environ.get("XDG_CONFIG_HOME", Path.home() / ".config")) / "deepdream"


def in_flatpak() -> bool:
    """Whether this process runs in a Flatpak sandbox (as plug-ins of Flathub's GIMP do)."""
    return bool(os.environ.get("FLATPAK_ID")) or os.path.exists("/.flatpak-info")


def ensure_state_dir() -> Path:
    """The state folder, created private to this user (it holds the server's token)."""
    folder = state_dir()
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    if os.name == "posix":
        info = folder.stat()
        shared = info.st_mode & stat.S_ISVTX or info.st_uid != os.getuid()  # like /tmp
        if info.st_mode & 0o077 and not shared:
            folder.chmod(0o700)  # made by an older release, or by hand
    return folder


def private_file(path: Path, truncate: bool = False) -> int:
    """A descriptor of `path` for reading and appending, the file readable and writable by
    this user only whatever the umask (its log names files and jobs; a service's unit holds
    the command it runs), also when it existed with a wider mode."""
    flags = os.O_RDWR | os.O_CREAT | os.O_APPEND | getattr(os, "O_BINARY", 0)  # Windows' too
    fd = os.open(path, flags, 0o600)
    if hasattr(os, "fchmod"):
        os.fchmod(fd, 0o600)
    if truncate:
        os.ftruncate(fd, 0)
    return fd


def write_private_text(path: Path, text: str) -> None:
    with os.fdopen(private_file(path, truncate=True), "w") as file:
        file.write(text)


def log_path() -> Path:
    return state_dir() / LOG_FILE


@dataclass(frozen=True)
class EndpointRecord:
    """Where the running server listens and how to be let in: what it writes to the endpoint
    file (readable by its user only) and every client reads."""

    endpoint: str
    token: str
    pid: int | None = None
    log: str | None = None
    protocol: int = PROTOCOL_VERSION
    server_key: str | None = None
    """The server's CURVE public key (Z85), when it encrypts."""

    @classmethod
    def read(cls, folder: Path | None = None) -> EndpointRecord | None:
        """The record in `folder` (the state folder by default), or None when there is none or
        it is not one."""
        try:
            data = json.loads(((folder or state_dir()) / ENDPOINT_FILE).read_text())
            record = cls(**{f.name: data[f.name] for f in fields(cls) if f.name in data})
        except (OSError, ValueError, TypeError, AttributeError):
            return None
        if not (isinstance(record.endpoint, str) and isinstance(record.token, str)):
            return None
        return record

    def to_json(self) -> str:
        return json.dumps({k: v for k, v in asdict(self).items() if v is not None})
