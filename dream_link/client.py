"""Client for the DeepDream dream server (docs/PROTOCOL.md).

Standard library, and pyzmq where it imports (else zmtp.py beside it speaks ZeroMQ's protocol
over the server's socket file): it runs inside GIMP's own Python, next to the plug-in, and under
pytest. It finds the server through `DEEPDREAM_ENDPOINT` (+ `DEEPDREAM_TOKEN`, and
`DEEPDREAM_SERVER_KEY` for an encrypted remote server) or through the endpoint file the server
writes, and starts a server from the environment `install.py` recorded when none answers.
"""

from __future__ import annotations

import hmac
import json
import os
import secrets
import subprocess
import time
import urllib.parse
import uuid
from collections.abc import Callable
from pathlib import Path

try:  # GIMP's own Python on Windows, macOS and Flatpak has no pyzmq: then dream_link/zmtp.py speaks
    import zmq
except ImportError:
    zmq = None

from .wire import (
    ENDPOINT_FILE,
    INSTALL_RECORD,
    ITEM_SIZES,
    PLAIN_USERNAME,
    PROTOCOL_VERSION,
    DreamCancelled,
    DreamError,
    EndpointRecord,
    FrameDescription,
    Progress,
    ProgressCallback,
    check_endpoint,
    client_secret_key,
    ensure_state_dir,
    in_flatpak,
    is_loopback,
    log_path,
    plain_password,
    private_file,
    same_server,
    security,
    server_proof,
    state_dir,
)
from .zmtp import Dealer, ZmtpError

HELLO_TIMEOUT_S = 2.0
PING_INTERVAL_S = 0.5
SEND_TIMEOUT_MS = 1000
"""A message that no connection takes in this long has nowhere to go: the server is gone."""
SERVER_SILENCE_S = 3.0
"""No reply at all (not even to pings) for this long: the server has gone."""
STOP_CHECK_S = 0.05
"""How often a job that can be stopped (a preview) asks whether it should stop."""
START_TIMEOUT_S = 90.0
IDLE_EXIT_MINUTES = 120
"""A server the plug-in started gives its memory back after two hours without work."""
ALREADY_RUNNING = 1
"""dream-server's exit code when another one holds the lock."""


TRANSPORT_VARIABLE = "DEEPDREAM_TRANSPORT"
"""`stdlib` or `pyzmq` forces how the client talks; by default pyzmq where it imports."""
UNREACHABLE = "unreachable"
"""The code of an error that says no server answered: nothing is running where it looked."""
LOST = "lost"
"""The code of an error that says the connection to the server is gone."""
MAYBE_ENCRYPTED = (
    "; if the server there encrypts (it was started with --curve-dir), set "
    "DEEPDREAM_SERVER_KEY to the `server_key` of its endpoint.json"
)
"""Said when a loopback server does not answer a PLAIN client: it may be one that needs CURVE."""


def transport() -> str:
    chosen = os.environ.get(TRANSPORT_VARIABLE, "").strip().lower()
    if chosen not in ("", "stdlib", "pyzmq"):
        raise DreamError(f"{TRANSPORT_VARIABLE} must be stdlib or pyzmq; it is {chosen!r}.")
    if chosen == "pyzmq" and zmq is None:
        raise DreamError(f"{TRANSPORT_VARIABLE}=pyzmq, but this Python has no pyzmq.")
    return chosen or ("pyzmq" if zmq is not None else "stdlib")


class _PyzmqDealer:
    """A pyzmq DEALER with the few calls the client makes, as dream_link.zmtp.Dealer has them."""

    def __init__(self, socket) -> None:  # noqa: ANN001
        self.socket = socket

    def send(self, frames: list) -> None:
        try:
            self.socket.send_multipart(frames, copy=False)
        except zmq.Again:  # after SNDTIMEO: no connection takes it (none is made again)
            raise ZmtpError("its connection is gone") from None

    def receive(self, timeout_s: float) -> list[memoryview] | None:
        if not self.socket.poll(int(timeout_s * 1000)):
            return None
        return [frame.buffer for frame in self.socket.recv_multipart(copy=False)]

    def close(self) -> None:
        self.socket.close(linger=200)  # long enough for a last cancel to leave


def client_keypair(token: str) -> tuple[bytes, bytes]:
    """The CURVE key pair of every client that knows `token` (see client_secret_key)."""
    secret = client_secret_key(token)
    return zmq.curve_public(secret), secret


class Connection:
    """Where the server is: an endpoint, its token, and for remote servers its CURVE key."""

    def __init__(self, endpoint: str, token: str, server_key: str | None = None) -> None:
        self.endpoint = endpoint
        self.token = token
        self.server_key = server_key

    @classmethod
    def from_environment(cls) -> Connection | None:
        endpoint = os.environ.get("DEEPDREAM_ENDPOINT")
        if not endpoint:
            return None
        return cls(
            endpoint, os.environ.get("DEEPDREAM_TOKEN", ""), os.environ.get("DEEPDREAM_SERVER_KEY")
        )

    @classmethod
    def from_endpoint_file(cls, folder: Path | None = None) -> Connection | None:
        """The server that the endpoint file in `folder` (the state folder by default) names."""
        record = EndpointRecord.read(folder)
        return None if record is None else cls.of(record)

    @classmethod
    def of(cls, record: EndpointRecord) -> Connection:
        return cls(record.endpoint, record.token, record.server_key)


class DreamClient:
    """One connection to a dream server; `dream` sends a job and waits for its result."""

    def __init__(
        self,
        connection: Connection | None = None,
        start_server: bool = True,
        inactivity_timeout_s: float = 600.0,
        schema: str | None = None,
    ) -> None:
        """`schema`: the schema_hash of the parameters this side was installed with; a server
        whose parameters differ is refused with the one thing to do."""
        self.inactivity_timeout_s = inactivity_timeout_s
        self.schema = schema
        self._socket: _PyzmqDealer | Dealer | None = None
        self.server_info: dict = {}
        self._last_result: dict = {}
        if connection is not None:
            self._connect_and_greet(connection)
            return
        from_environment = Connection.from_environment()
        if from_environment is not None:
            self._greet_from_environment(from_environment)
            return
        found = Connection.from_endpoint_file()
        if found is not None and self._try_greet(found):
            return
        if not start_server:
            raise DreamError(
                "The dream server is not running. Start it with `dream-server` in a terminal."
            )
        self._connect_and_greet(start_local_server())

    # -- connecting -------------------------------------------------------------------------

    def _greet_from_environment(self, given: Connection) -> None:
        """The server the environment names; when it refuses the environment's token (GIMP
        keeps the environment it started with, and a restarted server has a new token), the
        server of the endpoint file, with its token and key, where the file says it is. (Where
        the environment names the same server, it is the same place.)"""
        try:
            check_endpoint(given.endpoint)
        except DreamError as err:
            raise DreamError(f"DEEPDREAM_ENDPOINT: {err}") from None
        try:
            self._connect_and_greet(given)
            return
        except DreamError as err:
            refused = err
        record = Connection.from_endpoint_file()
        if record is not None:
            if same_server(given.endpoint, record.endpoint, state_dir()):
                record = Connection(given.endpoint, record.token, record.server_key)
            if self._try_greet(record):
                return
        if refused.code == UNREACHABLE:
            raise DreamError(
                f"No dream server is running at {given.endpoint}, where DEEPDREAM_ENDPOINT "
                "points: start `dream-server` there, or unset DEEPDREAM_ENDPOINT so that "
                "DeepDream starts its own.",
                UNREACHABLE,
            )
        raise DreamError(
            f"{refused} The dream server did not take DEEPDREAM_TOKEN: set it to the token in "
            f"{state_dir() / ENDPOINT_FILE}, or unset it.",
            refused.code,
        )

    def _try_greet(self, connection: Connection) -> bool:
        try:
            self._connect_and_greet(connection)
            return True
        except DreamError:
            self.close()
            return False

    def _connect_and_greet(self, connection: Connection) -> None:
        check_endpoint(connection.endpoint)
        mechanism = security(connection.endpoint, connection.server_key)
        if transport() == "stdlib":
            socket = self._stdlib_dealer(connection, mechanism)
        else:
            socket = _PyzmqDealer(self._pyzmq_dealer(connection, mechanism))
        self._socket, self.connection = socket, connection
        try:
            if mechanism == "PLAIN":
                self._check_proof(connection)
            self._send({"type": "hello"})
        except DreamError as err:
            if err.code != LOST:
                raise
            self.close()  # no connection took the first words: nothing answered there
            # (or a server that encrypts refused the PLAIN handshake before a word went out)
            hint = MAYBE_ENCRYPTED if mechanism == "PLAIN" else ""
            raise DreamError(
                f"No dream server answered at {connection.endpoint}. Start one with "
                f"`dream-server` (its log: {log_path()}){hint}.",
                UNREACHABLE,
            ) from None
        header = self._handshake_reply(connection)
        if header.get("type") == "error":
            self.close()
            raise _server_error(header)
        if header.get("type") != "hello_ok":
            self.close()
            raise DreamError(
                f"The program at {connection.endpoint} did not answer as a dream server does "
                f"(it sent {str(header.get('type'))[:40]!r} to hello): restart `dream-server`, "
                "or check DEEPDREAM_ENDPOINT."
            )
        if header.get("v") != PROTOCOL_VERSION:
            self.close()
            raise DreamError(
                f"The dream server at {connection.endpoint} speaks another protocol version "
                f"({header.get('v')}, this plug-in speaks {PROTOCOL_VERSION}): run install.py "
                "again so that both are the same release."
            )
        if self.schema is not None and header.get("schema") != self.schema:
            self.close()
            raise DreamError(
                f"The DeepDream plug-in and the dream server at {connection.endpoint} come from "
                "different releases (their dream parameters differ): run `python3 install.py` "
                "again from the DeepDream folder, then restart GIMP."
            )
        self.server_info = header
        if isinstance(socket, Dealer):  # frames as long as the server may send, no longer
            socket.max_frame_bytes = int(header.get("max_pixels") or 0) * 16 + (1 << 20)

    def _handshake_reply(self, connection: Connection, hint: str = "") -> dict:
        """The header of the server's answer while connecting; none in time ends the try."""
        reply = self._receive(HELLO_TIMEOUT_S)
        if reply is None:
            self.close()
            raise DreamError(
                f"No dream server answered at {connection.endpoint} within {HELLO_TIMEOUT_S:g} s. "
                f"Start one with `dream-server` (its log: {log_path()}){hint}.",
                UNREACHABLE,
            )
        return reply[0]

    def _check_proof(self, connection: Connection) -> None:
        """On the loopback, before the token or a pixel goes out: the server proves it knows
        the token. A program on a dead server's port cannot, and hears nothing more."""
        nonce = secrets.token_hex(16)
        self._send({"type": "prove", "nonce": nonce}, with_token=False)
        proof = self._handshake_reply(connection, MAYBE_ENCRYPTED).get("proof")
        expected = server_proof(connection.token, nonce)
        if not (isinstance(proof, str) and hmac.compare_digest(proof, expected)):
            self.close()
            raise DreamError(
                f"The program at {connection.endpoint} is not the dream server that wrote "
                f"{state_dir() / ENDPOINT_FILE} (it could not prove it knows the token), so "
                "nothing was sent to it. Start `dream-server`, or check DEEPDREAM_ENDPOINT."
            )

    def _pyzmq_dealer(self, connection: Connection, mechanism: str):  # noqa: ANN202
        socket = zmq.Context.instance().socket(zmq.DEALER)
        socket.setsockopt(zmq.LINGER, 0)
        # One connection, proven once: libzmq would reconnect by itself, and after a server
        # dies that may be to whatever took its port, which has proven nothing. A lost server
        # is noticed by its silence instead, and a new client proves the new one.
        socket.setsockopt(zmq.RECONNECT_IVL, -1)
        socket.setsockopt(zmq.SNDTIMEO, SEND_TIMEOUT_MS)
        if mechanism == "CURVE":
            if not connection.server_key:
                socket.close(linger=0)
                raise DreamError(
                    f"The dream server at {connection.endpoint} needs its public key: set "
                    "DEEPDREAM_SERVER_KEY to the `server_key` of its endpoint.json."
                )
            # CURVE both ways: only the server holding the key's secret half completes the
            # handshake, so an impostor on the endpoint hears nothing, not even the token; and
            # only a client that knows the token has a key the server lets in.
            socket.curve_publickey, socket.curve_secretkey = client_keypair(connection.token)
            socket.curve_serverkey = connection.server_key.encode()
        elif mechanism == "PLAIN":
            socket.plain_username = PLAIN_USERNAME.encode()
            socket.plain_password = plain_password(connection.token).encode()
        socket.connect(connection.endpoint)
        return socket

    def _stdlib_dealer(self, connection: Connection, mechanism: str) -> Dealer:
        if mechanism == "CURVE":
            raise DreamError(
                f"The dream server at {connection.endpoint} encrypts (CURVE), which needs "
                "pyzmq, and this Python has none. Install pyzmq for it, or reach the server "
                "through an SSH tunnel to its loopback, which needs nothing installed: start it "
                "there with `dream-server --bind tcp://127.0.0.1:5757`, run "
                "`ssh -L 5757:127.0.0.1:5757 gpu-box` here, and set "
                "DEEPDREAM_ENDPOINT=tcp://127.0.0.1:5757 and DEEPDREAM_TOKEN to the token in its "
                "endpoint.json."
            )
        credentials = None
        if mechanism == "PLAIN":
            credentials = (PLAIN_USERNAME, plain_password(connection.token))
        try:
            return Dealer(connection.endpoint, SERVER_SILENCE_S, plain=credentials)
        except ZmtpError as err:
            raise DreamError(
                f"No dream server answered at {connection.endpoint} ({err}). Start one with "
                f"`dream-server` (its log: {log_path()}).",
                UNREACHABLE,
            ) from None

    @property
    def server_log(self) -> str:
        """Where the server's log is, said so that the reader finds it: on another machine, the
        path there."""
        endpoint = self.connection.endpoint
        where = self.server_info.get("log")
        if is_loopback(endpoint):
            return where or str(log_path())
        host = urllib.parse.urlsplit(endpoint).hostname
        return f"the dream server's log on {host} ({where or 'in its state folder'} there)"

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None

    def __enter__(self) -> DreamClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- messages -----------------------------------------------------------------------------

    def _send(self, header: dict, frames: list = (), with_token: bool = True) -> None:
        message = {"v": PROTOCOL_VERSION, **header}
        if with_token:
            message["token"] = self.connection.token
        try:
            self._socket.send([json.dumps(message).encode(), *frames])
        except ZmtpError as err:
            raise DreamError(f"Lost the dream server ({err}): try again.", LOST) from None

    def _receive(self, timeout_s: float) -> tuple[dict, list[memoryview]] | None:
        try:
            frames = self._socket.receive(timeout_s)
        except ZmtpError as err:
            raise DreamError(
                f"Lost the dream server ({err}). See {self.server_log}, then try again."
            ) from None
        if frames is None:
            return None
        try:
            header = json.loads(bytes(frames[0]))
        except ValueError:
            raise DreamError("The dream server sent a message that is not JSON.") from None
        return header, frames[1:]

    def ping(self) -> bool:
        self._send({"type": "ping"})
        deadline = time.monotonic() + HELLO_TIMEOUT_S
        while time.monotonic() < deadline:
            reply = self._receive(max(0.0, deadline - time.monotonic()))
            if reply and reply[0].get("type") == "pong":
                return True
        return False

    def status(self) -> dict:
        return self._ask({"type": "status"}, "status_ok", "a status request")

    def estimate(self, of: str, params: dict, width: int = 0, height: int = 0,
                 zoom: dict | None = None, count: int = 0) -> float | None:  # fmt: skip
        """About how many seconds a job (`of`: submit, animate or visualize) would take on
        this server, from its last jobs of that kind; None before it has done one. A
        visualization has a `width` and `height` when it accentuates a photo, a `count` when it
        renders that many channels."""
        header = {"type": "estimate", "of": of, "params": params}
        if of != "visualize" or width:
            header.update(width=width, height=height)
        if count:
            header["count"] = count
        if zoom is not None:
            header["zoom"] = zoom
        return self._ask(header, "estimate_ok", "an estimate").get("seconds")

    def _ask(self, header: dict, answer: str, what: str) -> dict:
        """Send a request that is not a job and wait for its answer."""
        self._send(header)
        deadline = time.monotonic() + HELLO_TIMEOUT_S
        while time.monotonic() < deadline:
            reply = self._receive(max(0.0, deadline - time.monotonic()))
            if reply and reply[0].get("type") == answer:  # not a late reply to a job
                return reply[0]
            if reply and reply[0].get("type") == "error" and reply[0].get("job") is None:
                raise _server_error(reply[0])
        raise DreamError(f"The dream server did not answer {what}.")

    # -- dreaming -----------------------------------------------------------------------------

    def dream(
        self,
        pixels: bytes | memoryview,
        width: int,
        height: int,
        channels: int,
        params: dict,
        mask: bytes | memoryview | None = None,
        guide: tuple[bytes | memoryview, int, int, int] | None = None,
        on_progress: ProgressCallback | None = None,
        should_stop: Callable[[], bool] | None = None,
    ) -> memoryview:
        """Dream on tightly packed pixels (8-bit, or 32-bit float in 0..1) and return the result
        in the same layout (a read-only buffer). `mask` is one channel of the same size; `guide` is
        (pixels, width, height, channels). When `should_stop` says so (it is asked every
        STOP_CHECK_S), the job is cancelled on the server and DreamCancelled raised."""
        header = self._image_job("submit", pixels, width, height, channels, params)
        frames = _with_mask(header, [pixels], mask, width, height)
        if guide is not None:
            guide_pixels, guide_width, guide_height, guide_channels = guide
            header["guide"] = _frame_meta(
                guide_pixels, guide_width, guide_height, guide_channels, "guide"
            )
            frames.append(guide_pixels)
        self._send(header, frames)
        return self._await_result(header["job"], on_progress, should_stop)[0]

    def animate(
        self,
        pixels: bytes | memoryview,
        width: int,
        height: int,
        channels: int,
        params: dict,
        zoom: dict,
        on_frame: Callable[[int, int, memoryview], None],
        on_progress: ProgressCallback | None = None,
        should_stop: Callable[[], bool] | None = None,
        after: int = 0,
    ) -> tuple[int, int]:
        """An endless zoom from the pixels: `on_frame(index, count, rgb_u8)` gets each frame as
        soon as it is dreamed. Returns the frames' (width, height). `should_stop` as in
        `dream`. With `after`, the pixels are the last of that many frames of a zoom, which
        goes on with `zoom["frames"]` more (indices from `after` on)."""
        header = self._image_job("animate", pixels, width, height, channels, params)
        self._send({**header, "zoom": zoom, "after": after}, [pixels])
        size = []

        def frame_arrived(header: dict, frame: memoryview) -> None:
            size[:] = [header["width"], header["height"]]
            on_frame(header["index"], header["count"], frame)

        self._await_result(header["job"], on_progress, should_stop, frame_arrived)
        return tuple(size) if size else (width, height)

    def steady(
        self,
        frames: list[bytes | memoryview],
        width: int,
        height: int,
        params: dict,
        steady: dict,
        on_frame: Callable[[int, int, memoryview], None],
        on_progress: ProgressCallback | None = None,
        should_stop: Callable[[], bool] | None = None,
    ) -> None:
        """An animation's RGB u8 frames (all `width` x `height`) dreamed one after the other,
        each from its source with the last one's dream carried over: `on_frame(index, count,
        rgb_u8)` gets each as soon as it is dreamed. `should_stop` as in `dream`."""
        limit = self.server_info.get("max_pixels")
        if limit and width * height * len(frames) > limit:
            raise DreamError(
                f"{len(frames)} frames of {width}x{height} pixels are more than the dream server "
                f"accepts ({limit} pixels in all): dream fewer frames, or scale them down."
            )
        header = self._image_job("steady", frames[0], width, height, 3, params)
        self._send({**header, "steady": steady, "frames": len(frames)}, list(frames))

        def frame_arrived(header: dict, frame: memoryview) -> None:
            on_frame(header["index"], header["count"], frame)

        self._await_result(header["job"], on_progress, should_stop, frame_arrived)

    def _image_job(self, kind: str, pixels, width: int, height: int, channels: int,
                   params: dict) -> dict:  # noqa: ANN001 - bytes or a buffer  # fmt: skip
        """The header of a job on an image, refused here when the server would refuse its size."""
        limit = self.server_info.get("max_pixels")
        if limit and width * height > limit:
            raise DreamError(
                f"{width}x{height} pixels are more than the dream server accepts ({limit}): "
                "select a smaller part of the image, or scale it down."
            )
        image = _frame_meta(pixels, width, height, channels, "image")
        return {"type": kind, "job": uuid.uuid4().hex, "params": params, "image": image}

    def check(self, params: dict, on_progress: ProgressCallback | None = None,
              of: str = "submit", photo: tuple[int, int] | None = None) -> None:  # fmt: skip
        """Raise the server's DreamError if it would refuse these parameters of a request `of`
        (submit, visualize or channels): the layers text, the unit or the layer is checked
        against the model, which the server loads for it. `photo` is the (width, height) of a
        photo to accentuate, whose grid a neuron is on."""
        job = uuid.uuid4().hex
        header = {"type": "check", "job": job, "params": params, "of": of}
        if photo is not None:
            header["photo"] = FrameDescription(*photo, 3, "u8").as_header()
        self._send(header)
        self._await_result(job, on_progress)

    def visualize(
        self,
        params: dict,
        on_progress: ProgressCallback | None = None,
        sheet: bool = False,
        channels: list[int] | None = None,
        exemplars: list[tuple[str, bytes | memoryview, int, int, int]] = (),
        should_stop: Callable[[], bool] | None = None,
    ) -> tuple[int, int, list[tuple[str, memoryview]]]:
        """Feature visualizations from noise: (width, height, [(label, RGB u8 frame)]), a frame
        per sample (or per channel of `channels`), or with `sheet` one frame with them side by
        side, labelled, and beside each channel the patches of the `exemplars` photos (name,
        pixels, width, height, channels) that excite it most."""
        job = uuid.uuid4().hex
        header = {"type": "visualize", "job": job, "params": params, "sheet": sheet}
        if channels:
            header["channels"] = list(channels)
        if exemplars:
            header["exemplars"] = [_frame_meta(pixels, w, h, c, f"photo {name}")
                                   for name, pixels, w, h, c in exemplars]  # fmt: skip
            header["exemplar_names"] = [name for name, *_ in exemplars]
        self._send(header, [pixels for _, pixels, *_ in exemplars])
        frames = self._await_result(job, on_progress, should_stop)
        labels = self._last_result.get("labels") or [f"#{i + 1}" for i in range(len(frames))]
        width, height = self._last_result["width"], self._last_result["height"]
        return width, height, list(zip(labels, frames, strict=True))

    def accentuate(
        self,
        pixels: bytes | memoryview,
        width: int,
        height: int,
        channels: int,
        params: dict,
        change_mask: bool = False,
        on_progress: ProgressCallback | None = None,
        should_stop: Callable[[], bool] | None = None,
    ) -> tuple[str, memoryview, memoryview | None]:
        """The photo with the unit of `params` turned up, held close to it (feature
        accentuation): what it shows (`block7/34 accentuated`), its RGB u8 pixels, and with
        `change_mask` one u8 channel that is white where the photo changed most.
        `should_stop` as in `dream`."""
        header = self._image_job("visualize", pixels, width, height, channels, params)
        header = {**header, "photo": header.pop("image"), "change_mask": change_mask}
        header["params"] = {**params, "samples": 1}
        self._send(header, [pixels])
        frames = self._await_result(header["job"], on_progress, should_stop)
        label = self._last_result["labels"][0]
        return label, frames[0], frames[1] if change_mask else None

    def strongest_channels(
        self,
        pixels: bytes | memoryview,
        width: int,
        height: int,
        channels: int,
        params: dict,
        mask: bytes | memoryview | None = None,
        on_progress: ProgressCallback | None = None,
    ) -> list[dict]:
        """The channels of `params["layer"]` the pixels excite most (where the one-channel
        `mask` is white), strongest first: each a dict with `label` (`block7/42`, what Layers
        takes), `channel` and `share` (of the layer's activation, 0..1)."""
        header = self._image_job("channels", pixels, width, height, channels, params)
        self._send(header, _with_mask(header, [pixels], mask, width, height))
        self._await_result(header["job"], on_progress)
        return self._last_result["channels"]

    def _stopped_answering(self) -> DreamError:
        return DreamError(
            "The dream server stopped answering in the middle of the dream: it may have crashed "
            f"or been stopped. See {self.server_log}, then try again."
        )

    def _await_result(
        self,
        job: str,
        on_progress: ProgressCallback | None,
        should_stop: Callable[[], bool] | None = None,
        on_frame: Callable[[dict, memoryview], None] | None = None,
    ) -> list[memoryview]:
        last_heard = last_progress = last_ping = time.monotonic()
        wait_s = PING_INTERVAL_S if should_stop is None else STOP_CHECK_S
        while True:
            if should_stop is not None and should_stop():
                self.cancel(job)
                raise DreamCancelled()
            now = time.monotonic()
            if now - last_ping >= PING_INTERVAL_S:  # tells the server this client still waits
                try:
                    self._send({"type": "ping", "job": job})
                except DreamError:  # its connection is gone
                    raise self._stopped_answering() from None
                last_ping = now
            reply = self._receive(wait_s)
            now = time.monotonic()
            if reply is None:
                if now - last_heard > SERVER_SILENCE_S:
                    raise self._stopped_answering()
                if now - last_progress > self.inactivity_timeout_s:
                    self.cancel(job)
                    raise DreamError(
                        f"The dream made no progress for {self.inactivity_timeout_s:g} s and was "
                        f"cancelled. See {self.server_log}."
                    )
                continue
            last_heard = now
            header, frames = reply
            if header.get("job") not in (job, None):
                continue  # a late reply for an earlier job: not ours to act on
            kind = header.get("type")
            if kind == "pong" and header.get("known") is False:
                raise DreamError(
                    f"The dream server no longer has this job (it may have been restarted or the "
                    f"connection was cut): try again. See {self.server_log}."
                )
            if kind == "progress":
                last_progress = now
                if on_progress:
                    on_progress(Progress.from_message(header))
            elif kind == "accepted":
                last_progress = now
            elif kind == "frame" and on_frame is not None and len(frames) == 1:
                last_progress = now
                on_frame(header, frames[0])
            elif kind == "result" and len(frames) == header.get("count"):
                self._last_result = header
                return frames  # the received bytes, not copies
            elif kind == "cancelled":
                raise DreamCancelled()
            elif kind == "error":
                raise _server_error(header)

    def cancel(self, job: str) -> None:
        self._send({"type": "cancel", "job": job})


def _with_mask(header: dict, frames: list, mask, width: int, height: int) -> list:  # noqa: ANN001
    """The frames with the one-channel `mask` after them, described in the header, if there is
    one."""
    if mask is None:
        return frames
    header["mask"] = _frame_meta(mask, width, height, 1, "mask")
    return [*frames, mask]


def _frame_meta(pixels: bytes | memoryview, width: int, height: int, channels: int, what: str):
    size = memoryview(pixels).nbytes
    count = width * height * channels
    for dtype, item_size in ITEM_SIZES.items():
        if count and size == count * item_size:
            return FrameDescription(width, height, channels, dtype).as_header()
    raise DreamError(
        f"The {what} has {size} bytes, which is neither 8-bit nor 32-bit float pixels for "
        f"{width}x{height}x{channels}."
    )


def _server_error(header: dict) -> DreamError:
    message = header.get("message", "The dream server reported an error.")
    hint = header.get("hint")
    return DreamError(f"{message} {hint}" if hint else message, header.get("code"))


def start_local_server() -> Connection:
    """Start a dream server from the environment install.py recorded, and wait until it answers."""
    if in_flatpak():
        raise DreamError(
            "The dream server is not running, and GIMP's Flatpak sandbox cannot start programs "
            "outside it. Start it in a terminal with `dream-server` (from the DeepDream "
            "environment), or once for good with `python3 install.py --service`."
        )
    record_path = state_dir() / INSTALL_RECORD
    try:
        record = json.loads(record_path.read_text())
        python = record["python"]
    except (OSError, ValueError, KeyError, TypeError):
        raise DreamError(
            "The dream server is not running and this computer has no DeepDream environment "
            f"to start it from ({record_path} is missing). Run `python3 install.py` from the "
            "DeepDream folder."
        ) from None
    environment = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    # Its own session (or on Windows its own process group, without a console window): it
    # outlives the plug-in and GIMP, and no terminal's Ctrl+C reaches it.
    if os.name == "nt":
        detached = {"creationflags": subprocess.DETACHED_PROCESS
                    | subprocess.CREATE_NEW_PROCESS_GROUP}  # fmt: skip
    else:
        detached = {"start_new_session": True}
    ensure_state_dir()
    try:
        # errors before the server's own logging starts
        with os.fdopen(private_file(log_path()), "a") as log:
            process = subprocess.Popen(
                [python, "-m", "dream_server.daemon", "--idle-exit", str(IDLE_EXIT_MINUTES)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                env=environment,
                close_fds=True,
                **detached,
            )
    except OSError as err:
        raise DreamError(
            f"Could not start the dream server with {python} ({err}). Run `python3 install.py` "
            "again."
        ) from None
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        exit_code = process.poll()
        if exit_code == ALREADY_RUNNING:  # the other server has a few seconds to show up
            deadline = min(deadline, time.monotonic() + 10.0)
        elif exit_code is not None:
            raise DreamError(
                f"The dream server could not start (exit code {exit_code}): see "
                f"{log_path()} for why, or run `dream-server` in a terminal."
            )
        record = EndpointRecord.read()
        # Ours, or one that another plug-in started at the same moment (then ours exits 1).
        if record and (record.pid == process.pid or exit_code == ALREADY_RUNNING):
            return Connection.of(record)
        time.sleep(0.1)
    raise DreamError(
        f"The dream server did not come up within {START_TIMEOUT_S:g} s: see {log_path()}, or "
        "run `dream-server` in a terminal."
    )
