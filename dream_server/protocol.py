"""The wire protocol's checks: every message is validated here before any work is done.

A message is `[JSON header, raw frames...]` (docs/PROTOCOL.md). Nothing is unpickled: headers
are JSON, pixels are raw bytes whose length must match the header. Every check failure is a
`BadMessage` that says what was wrong, so the daemon can answer it and carry on.
"""

from __future__ import annotations

import hmac
import json
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from dream_link.wire import (
    ITEM_SIZES,
    MAX_ANIMATION_FRAMES,
    PROTOCOL_VERSION,
    REQUESTS,
    FrameDescription,
    Progress,
)

from .cost import Work, dream_work, frames_work, visualize_work, zoom_work
from .engine import Engine
from .errors import DreamError
from .imagefile import rgb8
from .motion import CameraMove, Carry, frame_params, steady_sequence, zoom_sequence
from .params import ChannelsParams, DreamParams, VideoParams, VisualizeParams, ZoomParams
from .sheets import exemplar_cells, labelled_sheet
from .visualize import sample_labels, subject, where_changed

HEADER_LIMIT = 64 * 1024
JOB_ID_LIMIT = 64
MAX_ATLAS_CHANNELS = 64
"""Channels rendered in one request, at most (as `deepdream atlas --channels`)."""
DTYPES = {"u8": np.uint8, "f32": np.float32}
assert set(DTYPES) == set(ITEM_SIZES)


class BadMessage(Exception):
    def __init__(self, code: str, message: str, job: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.job = job


@dataclass(frozen=True)
class Submission:
    """A dream on an image; its result is one frame."""

    job: str
    params: DreamParams
    image: np.ndarray
    mask: np.ndarray | None
    guide: np.ndarray | None

    def work(self) -> Work:
        return dream_work(self.image.shape[1], self.image.shape[0], self.params)

    def run(self, engine: Engine, on_progress, should_stop, on_frame):  # noqa: ANN001, ANN201
        """The result frames, and extra fields for the result header; `on_frame(index, count,
        image)` sends an image on its way before the job ends (an animation's frames)."""
        return [
            engine.dream(self.image, self.params, mask=self.mask, guide_image=self.guide,
                         on_progress=on_progress, should_stop=should_stop)
        ], {}  # fmt: skip


@dataclass(frozen=True)
class VisualizeRequest:
    """Feature visualization from noise (of the unit, or one image per channel of `channels`),
    or from a `photo` (accentuation). Its result is one frame per image, then the mask of where
    the photo changed when `change_mask` asks; or with `sheet` one frame with the images side by
    side, each labelled, and beside each channel its `exemplars`: the patches of those photos
    that excite it most."""

    job: str
    params: VisualizeParams
    sheet: bool = False
    channels: tuple[int, ...] | None = None
    photo: np.ndarray | None = None
    change_mask: bool = False
    exemplars: tuple[tuple[str, np.ndarray], ...] = ()

    def work(self) -> Work:
        pixels = None if self.photo is None else self.photo.shape[0] * self.photo.shape[1]
        samples = len(self.channels) if self.channels else None
        return visualize_work(self.params, pixels, samples)

    def run(self, engine: Engine, on_progress, should_stop, on_frame):  # noqa: ANN001, ANN201
        channels = list(self.channels) if self.channels else None
        images = engine.visualize(self.params, channels, on_progress=on_progress,
                                  should_stop=should_stop, photo=self.photo)  # fmt: skip
        labels = sample_labels(self.params, channels)
        if self.photo is not None:
            labels = [label.replace(" #", " accentuated #") for label in labels]
            if len(labels) == 1:
                labels = [f"{subject(self.params)} accentuated"]
        found = None
        if self.exemplars:
            found = engine.exemplars(self.params, channels or [self.params.channel],
                                     self.exemplars)  # fmt: skip
        if self.sheet:
            sheet, _ = labelled_sheet(images, labels, found)
            return [sheet], {"labels": [f"{subject(self.params, channels)} · {len(labels)} "
                                        f"{'channels' if channels else 'samples'}"]}  # fmt: skip
        frames, fields = list(images), {"labels": labels}
        if self.change_mask:
            photo = rgb8(self.photo)
            frames.append(where_changed(photo, images[0])[:, :, None])
            fields["change_mask"] = True
        if found is not None:  # after the renders, each channel's patches, labelled
            units = sample_labels(self.params, channels) if channels else [subject(self.params)]
            for unit, row in zip(units, found, strict=True):
                for patch, where in exemplar_cells(row):
                    frames.append(patch)
                    labels.append(f"{unit} {where}")
            fields["exemplars"] = [[{"photo": e.photo, "box": e.box} for e in row]
                                   for row in found]  # fmt: skip
        return frames, fields


@dataclass(frozen=True)
class ChannelsRequest:
    """Which channels of a layer the image excites most (where the mask is white): a result
    with no frames and `channels`, strongest first, each a `label` to type into Layers, its
    `channel` and its `share` of the layer's activation."""

    job: str
    params: ChannelsParams
    image: np.ndarray
    mask: np.ndarray | None

    def work(self) -> None:
        return None  # one forward pass

    def run(self, engine: Engine, on_progress, should_stop, on_frame):  # noqa: ANN001, ANN201
        strongest = engine.strongest_channels(self.image, self.params, self.mask)
        return [], {"channels": [{"label": c.label, "channel": c.channel, "share": c.share}
                                 for c in strongest]}  # fmt: skip


@dataclass(frozen=True)
class CheckRequest:
    """Whether the parameters of a job would be taken, down to the layers text, the unit or
    the layer checked against the model (which is loaded for it): a dialog asks before it
    closes. Its result has no frames."""

    job: str
    params: DreamParams | VisualizeParams | ChannelsParams
    photo_shape: tuple[int, int] | None = None
    """(height, width) of the photo an accentuation would start from."""

    def work(self) -> None:
        return None  # too little to time

    def run(self, engine: Engine, on_progress, should_stop, on_frame):  # noqa: ANN001, ANN201
        engine.check(self.params, self.photo_shape)
        return [], {}


@dataclass(frozen=True)
class AnimateRequest:
    """An endless zoom from one image: each frame goes back as soon as it is dreamed, in a
    `frame` message; the `result` that ends the job has no frames."""

    job: str
    params: DreamParams
    zoom: ZoomParams
    image: np.ndarray
    after: int = 0
    """Frames made before, of which the image is the last: the zoom goes on from it with
    `zoom.frames` more, numbered (and seeded) from `after` on, as one longer zoom would."""

    def work(self) -> Work:
        width, height = self.image.shape[1], self.image.shape[0]
        if self.after:  # every frame is a later one, dreamed with the steps per frame
            later = replace(self.params, steps=self.zoom.steps_per_frame)
            kind, model, units = dream_work(width, height, later)
            return kind, model, self.zoom.frames * units
        return zoom_work(width, height, self.params, self.zoom)

    def run(self, engine: Engine, on_progress, should_stop, on_frame):  # noqa: ANN001, ANN201
        count = self.after + self.zoom.frames

        def dream(image: np.ndarray, index: int) -> np.ndarray:
            params = frame_params(self.params, index, self.zoom.steps_per_frame, new_seed=True)

            def report(progress: Progress) -> None:
                on_progress(progress.of_frame(index, count))

            return engine.dream(image, params, on_progress=report, should_stop=should_stop)

        start, move = rgb8(self.image), CameraMove.of(self.zoom)
        previous = start if self.after else None
        frames = zoom_sequence(start, move, count, dream, self.after, previous)
        for index, frame in enumerate(frames, self.after):
            on_frame(index, count, frame)
        return [], {"frames": count}


@dataclass(frozen=True)
class SteadyRequest:
    """An animation's frames dreamed one after the other, steadily: each from its source with
    the last one's dream carried over (along the optical flow), as `deepdream video` dreams.
    Each dreamed frame goes back in a `frame` message; the `result` has no frames."""

    job: str
    params: DreamParams
    steady: VideoParams
    images: tuple[np.ndarray, ...]

    def work(self) -> Work:
        height, width = self.images[0].shape[:2]
        return frames_work(width, height, self.params, len(self.images),
                           self.steady.steps_per_frame)  # fmt: skip

    def run(self, engine: Engine, on_progress, should_stop, on_frame):  # noqa: ANN001, ANN201
        count = len(self.images)

        def dream(image: np.ndarray, index: int) -> np.ndarray:
            params = frame_params(self.params, index, self.steady.steps_per_frame, False)

            def report(progress: Progress) -> None:
                on_progress(progress.of_frame(index, count))

            return engine.dream(image, params, on_progress=report, should_stop=should_stop)

        carry = Carry(self.steady.blend, self.steady.flow)
        for index, frame in enumerate(steady_sequence(self.images, carry, dream)):
            on_frame(index, count, frame)
        return [], {"frames": count}


def _checked_params(header: dict[str, Any], kind: type) -> Any:
    """The header's `params`, validated by the engine's parameter definition."""
    params = header.get("params", {})
    if not isinstance(params, dict):
        raise BadMessage("bad_parameter", "'params' must be a JSON object.", header.get("job"))
    try:
        return kind.from_mapping(params)
    except DreamError as err:
        raise BadMessage("bad_parameter", str(err), header.get("job")) from None


def parse_visualize(header: dict[str, Any], frames: list, max_pixels: int) -> VisualizeRequest:
    job = header["job"]
    checked = _checked_params(header, VisualizeParams)
    sheet, change_mask = (_flag(header, name) for name in ("sheet", "change_mask"))
    channels = header.get("channels")
    if channels is not None and not (
        isinstance(channels, list) and 1 <= len(channels) <= MAX_ATLAS_CHANNELS
        and all(isinstance(c, int) and not isinstance(c, bool) for c in channels)
    ):  # fmt: skip
        raise BadMessage("bad_header", "'channels' must be a list of 1 to "
                         f"{MAX_ATLAS_CHANNELS} channel numbers.", job)  # fmt: skip
    parts = REQUESTS["visualize"].frames_of(header)
    arrays = [pixel_array(_description(header, part, index), frame, part, max_pixels, job)
              for index, (part, frame) in enumerate(zip(parts, frames, strict=True))]  # fmt: skip
    photo = arrays.pop(0) if "photo" in header else None
    images = len(channels) if channels else checked.samples
    pixels = checked.size**2 if photo is None else photo.shape[0] * photo.shape[1]
    if images * pixels > max_pixels:
        raise BadMessage("too_large", f"{images} images of {pixels} pixels are over this "
                         f"server's limit of {max_pixels} pixels.", job)  # fmt: skip
    if photo is not None and channels:
        raise BadMessage("bad_header", "Accentuate a photo with one unit (the 'channel' "
                         "parameter), not a list of 'channels'.", job)  # fmt: skip
    if change_mask and photo is None:
        raise BadMessage("bad_header", "'change_mask' shows where a photo changed: send the "
                         "'photo'.", job)  # fmt: skip
    exemplars = ()
    if arrays:
        names = header.get("exemplar_names", [f"photo {i + 1}" for i in range(len(arrays))])
        if not (isinstance(names, list) and len(names) == len(arrays)
                and all(isinstance(n, str) and len(n) <= 255 for n in names)):  # fmt: skip
            raise BadMessage("bad_header", "'exemplar_names' must name each exemplar photo "
                             "(up to 255 characters each).", job)  # fmt: skip
        if photo is not None:
            raise BadMessage("bad_header", "Exemplars go beside renders from noise, not an "
                             "accentuated photo.", job)  # fmt: skip
        if not channels and checked.channel < 0:
            raise BadMessage("bad_parameter", "Exemplars show what excites one channel: set "
                             "'channel', or send 'channels'.", job)  # fmt: skip
        exemplars = tuple(zip(names, arrays, strict=True))
    return VisualizeRequest(job, checked, sheet, tuple(channels) if channels else None, photo,
                            change_mask, exemplars)  # fmt: skip


def _flag(header: dict[str, Any], name: str) -> bool:
    value = header.get(name, False)
    if not isinstance(value, bool):
        raise BadMessage("bad_header", f"'{name}' must be true or false; got {value!r}.",
                         header.get("job"))  # fmt: skip
    return value


def _description(header: dict[str, Any], part: str, index: int) -> Any:
    """The header's description of the `index`th frame, named `part` (an item of a list for
    listed frames)."""
    if part in REQUESTS[header["type"]].listed_frames:
        return header[part][index - REQUESTS[header["type"]].frames_of(header).index(part)]
    return header.get(part)


def parse_channels(header: dict[str, Any], frames: list, max_pixels: int) -> ChannelsRequest:
    job = header["job"]
    checked = _checked_params(header, ChannelsParams)
    parts = REQUESTS["channels"].frames_of(header)
    arrays = {part: pixel_array(header.get(part), frame, part, max_pixels, job)
              for part, frame in zip(parts, frames, strict=True)}  # fmt: skip
    image = arrays["image"]
    return ChannelsRequest(job, checked, image, _mask_of(arrays, image, job))


CHECKED = {"submit": DreamParams, "visualize": VisualizeParams, "channels": ChannelsParams}
"""What a `check` request's `of` names: the request whose parameters it checks."""


def parse_check(header: dict[str, Any], frames: list, max_pixels: int) -> CheckRequest:
    of = header.get("of", "submit")
    if of not in CHECKED:
        raise BadMessage("bad_header", f"'of' must be one of {', '.join(CHECKED)}; got {of!r}.",
                         header["job"])  # fmt: skip
    photo_shape = None
    if "photo" in header:  # the size of the photo to accentuate
        try:
            photo = FrameDescription.of_header(header["photo"], "photo", max_pixels)
        except (ValueError, OverflowError) as err:
            raise BadMessage("bad_header", str(err), header["job"]) from None
        photo_shape = (photo.height, photo.width)
    return CheckRequest(header["job"], _checked_params(header, CHECKED[of]), photo_shape)


def parse_animate(header: dict[str, Any], frames: list, max_pixels: int) -> AnimateRequest:
    job = header["job"]
    dream_params = _checked_params(header, DreamParams)
    image = pixel_array(header.get("image"), frames[0], "image", max_pixels, job)
    after = header.get("after", 0)
    if not (isinstance(after, int) and not isinstance(after, bool) and 0 <= after <= 100_000):
        raise BadMessage("bad_header", "'after' must be a whole number from 0 to 100000: the "
                         "frames made before, of which the image is the last.", job)  # fmt: skip
    return AnimateRequest(job, dream_params, _zoom_params(header), image, after)


def parse_steady(header: dict[str, Any], frames: list, max_pixels: int) -> SteadyRequest:
    job = header["job"]
    dream_params = _checked_params(header, DreamParams)
    steady = header.get("steady", {})
    if not isinstance(steady, dict):
        raise BadMessage("bad_parameter", "'steady' must be a JSON object.", job)
    try:
        steady_params = VideoParams.from_mapping(steady)
    except DreamError as err:
        raise BadMessage("bad_parameter", str(err), job) from None
    meta = header.get("image")
    try:
        description = FrameDescription.of_header(meta, "image", max_pixels)
    except (ValueError, OverflowError) as err:
        raise BadMessage("bad_frames", str(err), job) from None
    if description.width * description.height * len(frames) > max_pixels:
        raise BadMessage("too_large", f"{len(frames)} frames of {description.width}x"
                         f"{description.height} are over this server's limit of {max_pixels} "
                         "pixels: dream fewer frames, or smaller ones.", job)  # fmt: skip
    if (description.channels, description.dtype) != (3, "u8"):
        raise BadMessage("bad_frames", "An animation's frames are RGB, 8 bits (channels 3, "
                         "dtype u8).", job)  # fmt: skip
    images = tuple(pixel_array(meta, frame, "image", max_pixels, job) for frame in frames)
    return SteadyRequest(job, dream_params, steady_params, images)


def _zoom_params(header: dict[str, Any]) -> ZoomParams:
    zoom = header.get("zoom", {})
    if not isinstance(zoom, dict):
        raise BadMessage("bad_parameter", "'zoom' must be a JSON object.", header.get("job"))
    try:
        return ZoomParams.from_mapping(zoom)
    except DreamError as err:
        raise BadMessage("bad_parameter", str(err), header.get("job")) from None


ESTIMATED = ("submit", "animate", "visualize")


def parse_estimate(header: dict[str, Any], max_pixels: int) -> Work:
    """The work of the job an `estimate` describes: `of` (its type), its `params` (and `zoom`),
    and for an image its `width` and `height`."""
    of = header.get("of")
    if of not in ESTIMATED:
        raise BadMessage("bad_header", f"'of' must be one of {', '.join(ESTIMATED)}; got {of!r}.")
    width, height = header.get("width"), header.get("height")
    if of == "visualize" and width is None and height is None:
        count = header.get("count")  # an atlas's channels
        if count is not None and not (isinstance(count, int) and not isinstance(count, bool)
                                      and 1 <= count <= MAX_ATLAS_CHANNELS):  # fmt: skip
            raise BadMessage("bad_header", f"'count' must be 1 to {MAX_ATLAS_CHANNELS}.")
        return visualize_work(_checked_params(header, VisualizeParams), None, count)
    if not all(isinstance(side, int) and not isinstance(side, bool) and side > 0
               for side in (width, height)) or width * height > max_pixels:  # fmt: skip
        raise BadMessage("bad_header", f"'width' and 'height' must be whole numbers over 0 "
                         f"with at most {max_pixels} pixels together.")  # fmt: skip
    if of == "visualize":  # accentuating a photo of that size
        return visualize_work(_checked_params(header, VisualizeParams), width * height)
    params = _checked_params(header, DreamParams)
    if of == "animate":
        return zoom_work(width, height, params, _zoom_params(header))
    return dream_work(width, height, params)


def decode_header(frame: bytes, token: str) -> dict[str, Any]:
    """The header as a dict, with version, type and token checked."""
    if len(frame) > HEADER_LIMIT:
        raise BadMessage(
            "bad_header", f"The header is {len(frame)} bytes; the limit is {HEADER_LIMIT}."
        )
    try:
        header = json.loads(frame)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise BadMessage("bad_header", "The header is not JSON (or nests too deeply).") from None
    if not isinstance(header, dict):
        raise BadMessage("bad_header", "The header must be a JSON object.")
    job = header.get("job")
    job = job if isinstance(job, str) and 0 < len(job) <= JOB_ID_LIMIT else None
    presented = header.get("token")
    asked_before_the_token = header.get("type") == "prove"  # see dream_link.wire.security
    if not asked_before_the_token and not (
        isinstance(presented, str)
        and presented.isascii()
        and hmac.compare_digest(presented.encode(), token.encode())
    ):
        raise BadMessage(
            "bad_token", "Missing or wrong token: read it from the endpoint file.", job
        )
    if type(header.get("v")) is not int or header["v"] != PROTOCOL_VERSION:  # not True, not 1.0
        raise BadMessage(
            "bad_version", f"Protocol version {header.get('v')!r} is not {PROTOCOL_VERSION}.", job
        )
    if not isinstance(header.get("type"), str) or header["type"] not in REQUESTS:
        raise BadMessage(
            "bad_type",
            f"Unknown message type {str(header.get('type'))[:40]!r}; "
            f"known: {', '.join(sorted(REQUESTS))}.",
            job,
        )
    if REQUESTS[header["type"]].job and job is None:
        raise BadMessage(
            "bad_job", f"'job' must be a non-empty string of at most {JOB_ID_LIMIT} characters."
        )
    return header


def proof_nonce(header: dict[str, Any]) -> str:
    """The client's nonce in a `prove` request: 16 to 128 hexadecimal digits."""
    nonce = header.get("nonce")
    if not (isinstance(nonce, str) and 16 <= len(nonce) <= 128 and nonce.isascii()
            and all(c in "0123456789abcdef" for c in nonce)):  # fmt: skip
        raise BadMessage("bad_header", "'nonce' must be 16 to 128 lowercase hexadecimal digits.")
    return nonce


def check_frame_count(header: dict[str, Any], frames: list) -> None:
    """The request carries the pixel frames its kind and header call for, no more, no fewer."""
    request = REQUESTS[header["type"]]
    if request.per_frame and not request.frames_of(header):
        raise BadMessage("bad_header", f"'frames' must be a whole number from 1 to "
                         f"{MAX_ANIMATION_FRAMES}: how many frames follow.",
                         header.get("job"))  # fmt: skip
    parts = request.frames_of(header)
    if len(frames) != len(parts):
        carries = f"{len(parts)} pixel frame(s): {', '.join(parts)}" if parts else "no frames"
        raise BadMessage(
            "bad_frames",
            f"A {header['type']} request carries {carries}; got {len(frames)}.",
            header.get("job"),
        )


def parse_submit(header: dict[str, Any], frames: list, max_pixels: int) -> Submission:
    """Check a submit message completely and turn its frames into arrays (without copying)."""
    job = header["job"]
    dream_params = _checked_params(header, DreamParams)
    parts = REQUESTS["submit"].frames_of(header)
    arrays = {
        part: pixel_array(header.get(part), frame, part, max_pixels, job)
        for part, frame in zip(parts, frames, strict=True)
    }
    image = arrays["image"]
    mask = _mask_of(arrays, image, job)
    return Submission(job, dream_params, image, mask, arrays.get("guide"))


def _mask_of(arrays: dict[str, np.ndarray], image: np.ndarray, job: str) -> np.ndarray | None:
    """The request's mask frame as (H, W), checked to be one channel of the image's size."""
    mask = arrays.get("mask")
    if mask is None:
        return None
    if mask.shape[:2] != image.shape[:2] or mask.shape[2] != 1:
        raise BadMessage(
            "bad_frames",
            f"The mask must be one channel of {image.shape[1]}x{image.shape[0]}; got "
            f"{mask.shape[2]} channel(s) of {mask.shape[1]}x{mask.shape[0]}.",
            job,
        )
    return mask[:, :, 0]


def pixel_array(meta: Any, frame, what: str, max_pixels: int, job: str) -> np.ndarray:  # noqa: ANN001
    """The frame's pixels as an array of the shape its description `meta` gives, checked."""
    buffer = memoryview(frame.buffer if hasattr(frame, "buffer") else frame)
    try:
        description = FrameDescription.of_header(meta, what, max_pixels)
        description.check_size(buffer.nbytes, what)
    except OverflowError as err:
        raise BadMessage("too_large", str(err), job) from None
    except ValueError as err:
        raise BadMessage("bad_frames", str(err), job) from None
    width, height, channels, dtype = (description.width, description.height,
                                      description.channels, description.dtype)  # fmt: skip
    array = np.frombuffer(buffer, dtype=DTYPES[dtype]).reshape(height, width, channels)
    if dtype == "f32" and not np.isfinite(array).all():
        raise BadMessage("bad_frames", f"The {what} holds NaN or infinite values.", job)
    return array


def encode(message_type: str, **fields: Any) -> bytes:
    return json.dumps({"v": PROTOCOL_VERSION, "type": message_type, **fields}).encode()


def frame_meta(array: np.ndarray) -> dict[str, Any]:
    height, width, channels = array.shape
    dtype = next(name for name, kind in DTYPES.items() if array.dtype == kind)
    return FrameDescription(width, height, channels, dtype).as_header()


JOB_PARSERS = {
    "submit": parse_submit,
    "visualize": parse_visualize,
    "channels": parse_channels,
    "check": parse_check,
    "animate": parse_animate,
    "steady": parse_steady,
}
"""The requests that become jobs, each with the parser that checks it completely."""
