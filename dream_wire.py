"""What the dream server, the `deepdream` command and the GIMP plug-in's client share.

The protocol's version and pixel types, the progress report every long job gives, and the
errors a person reads. Standard library only: install.py copies this file next to the GIMP
plug-in, whose Python may have nothing else, and the engine imports it as it is.
"""

from __future__ import annotations

import ipaddress
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields, replace
from typing import Any

PROTOCOL_VERSION = 2
"""2: the `check` and `animate` requests, `frame` messages, and progress with `loading` and
`frame`/`frames`."""
ITEM_SIZES = {"u8": 1, "f32": 4}
"""Bytes per channel of each pixel type on the wire."""


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


def speaks_curve(endpoint: str) -> bool:
    """Whether the server at `endpoint` encrypts and authenticates with CURVE: everywhere but on
    a socket file, which only its user can reach."""
    return not endpoint.startswith(("ipc://", "inproc://"))


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
