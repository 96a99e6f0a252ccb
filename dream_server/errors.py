"""Exceptions whose message is written for the person who has to act on it.

Every error the engine raises on purpose is a `DreamError`: its text says what happened and
what to do next, so the edges (the CLI, the daemon's replies, the GIMP dialog) show it as is.
"""


class DreamError(Exception):
    """Something the user can fix: the message says what went wrong and what to do."""

    code = "dream_failed"


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


class DreamCancelled(DreamError):
    code = "cancelled"

    def __init__(self, message: str = "The dream was cancelled.") -> None:
        super().__init__(message)


class OutOfMemory(DreamError):
    code = "out_of_memory"
