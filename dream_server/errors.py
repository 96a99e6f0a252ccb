"""Exceptions whose message is written for the person who has to act on it.

Every error the engine raises on purpose is a `DreamError`: its text says what happened and
what to do next, so the edges (the CLI, the daemon's replies, the GIMP dialog) show it as is.
"""

from dream_link.wire import DreamCancelled, DreamError

__all__ = [
    "DreamCancelled",
    "DreamError",
    "InvalidImage",
    "InvalidParameter",
    "OutOfMemory",
    "UnknownLayer",
    "UnknownModel",
    "WeightsUnavailable",
]


class InvalidParameter(DreamError):
    code = "bad_parameter"


class InvalidImage(DreamError):
    code = "bad_image"


class UnknownModel(DreamError):
    code = "unknown_model"


class UnknownLayer(DreamError):
    code = "unknown_layer"


class WeightsUnavailable(DreamError):
    """The weights of a model could not be downloaded, or the file found is not the right one."""

    code = "weights_unavailable"


class OutOfMemory(DreamError):
    code = "out_of_memory"
