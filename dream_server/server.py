"""The dream server's loop: one ROUTER socket on the main thread for every client
(docs/PROTOCOL.md), one worker thread per device, each with its own engine, running one job at
a time, and the scheduler (scheduler.py), which decides everything the loop does.

The workers talk to the loop only through messages on inproc sockets (a ZeroMQ socket belongs
to one thread) and the loop to them through their methods; a job's state belongs to the worker
that runs it. Jobs are cancelled when asked, when their client's connection closes or it stops
sending heartbeats (GIMP's Cancel kills the plug-in outright), when it leaves its replies
unread, or when the server stops.
"""

from __future__ import annotations

import collections
import contextlib
import ctypes
import gc
import hmac
import logging
import os
import queue
import sys
import threading
import time
import weakref
from dataclasses import asdict, replace
from typing import Any

import numpy as np
import torch
import zmq
from zmq.auth.thread import ThreadAuthenticator
from zmq.utils.monitor import recv_monitor_message

from dream_link.wire import (
    PLAIN_USERNAME,
    Progress,
    client_secret_key,
    log_path,
    plain_password,
    schema_hash,
    security,
)

from . import __version__
from .daemon import DEFAULT_MAX_PIXELS
from .engine import Engine
from .errors import DreamCancelled, DreamError, OutOfMemory
from .models import DEFAULT_MODEL, MODELS, PRESETS
from .params import VISUALIZE_PARAMETERS, parameter_schema, plugin_schemas
from .protocol import encode, frame_meta
from .scheduler import (
    BLOCKED,
    CLOSED,
    SENT,
    Action,
    Cancel,
    Exit,
    Job,
    Resume,
    Scheduler,
    Send,
    Start,
    Unload,
)

log = logging.getLogger("dream_server.server")

PROGRESS_INTERVAL_S = 0.1
STEADY_PACE_AFTER = 0.05
"""Time left is said once this share of the work has shown the pace, not before."""
CLIENT_BACKLOG = 16
"""Replies ZeroMQ queues for one client beyond what its connection's buffers hold; then they
wait in the scheduler, counted in bytes."""

WORKER_MESSAGES = {
    b"update": Scheduler.progress,
    b"turn": Scheduler.turn,
    b"ended": Scheduler.ended,
}
"""What a worker says to the loop on its PAIR socket, [kind, job id, *frames], and the
scheduler's event for each:
  update  [header, *pixels]  a running job's progress, or an animation's frame, for its client;
  turn    []                 an animation is between two frames: the worker waits for resume,
                             or for a job to run first;
  ended   [ending, header, *pixels]  the job ended (result, error or cancelled), its last reply.
An `ended` comes once for every job a worker was given, whatever happened to it. The loop
speaks to a worker through its methods: start_job, resume, cancel, unload, stop."""


class Worker(threading.Thread):
    """Runs one job at a time on an engine of its own, on its own device; a job it owns from
    start to end. Between an animation's frames it asks the loop for its `turn`, and may run
    another client's job first."""

    def __init__(
        self, index: int, engine: Engine, context: zmq.Context, threads: int, lazy: bool = False
    ) -> None:
        super().__init__(name=f"dream-worker-{index}", daemon=True)
        self.index = index
        self.lazy = lazy
        """Load no model before the first job (a server that starts with the session)."""
        self.engine = engine
        self.context = context
        self.threads = threads
        self.address = f"inproc://dream-worker-{index}"
        self._inbox: queue.SimpleQueue = queue.SimpleQueue()
        self._cancelled: weakref.WeakSet[Job] = weakref.WeakSet()
        self._stopping = False

    # -- what the loop says (from its thread) ---------------------------------------------------

    def start_job(self, job: Job) -> None:
        self._inbox.put(("job", job))

    def resume(self) -> None:
        self._inbox.put(("resume",))

    def cancel(self, job: Job) -> None:
        self._cancelled.add(job)  # seen between two steps of the job

    def unload(self) -> None:
        self._inbox.put(("unload",))

    def stop(self) -> None:
        self._stopping = True
        self._inbox.put(("stop",))

    # -- the worker's thread --------------------------------------------------------------------

    def run(self) -> None:
        if self.threads:
            torch.set_num_threads(self.threads)  # this thread's share of the CPU cores
        socket = self.context.socket(zmq.PAIR)
        socket.connect(self.address)
        try:
            if not self.lazy:
                self._warm_up()
            while not self._stopping:
                command, *args = self._inbox.get()
                if command == "unload":
                    self.engine.unload_models()
                    _give_memory_back()
                elif command == "job":
                    self._run(socket, args[0])
        except zmq.ZMQError:
            pass  # the daemon is shutting down: nobody left to answer
        finally:
            socket.close(linger=0)

    def _warm_up(self) -> None:
        """Load the default model while the first client says hello."""
        try:
            self.engine.model(DEFAULT_MODEL)
        except Exception:  # a failed warm-up is not fatal: the first job will say why
            log.exception("could not load %s at start-up on %s", DEFAULT_MODEL, self.engine.device)

    def _take_turn(self, socket: zmq.Socket, job: Job) -> None:
        """Between two frames of an animation: run the job the loop gives, if any, first."""
        socket.send_multipart([b"turn", job.id.encode()])  # see WORKER_MESSAGES
        command, *args = self._inbox.get()
        if command == "job":
            self._run(socket, args[0])
        elif command == "stop":
            self._stopping = True

    def _run(self, socket: zmq.Socket, job: Job) -> None:
        def should_stop() -> bool:
            return self._stopping or job in self._cancelled

        def send(kind: bytes, *frames: Any) -> None:
            socket.send_multipart([kind, job.id.encode(), *frames], copy=False)

        started = time.monotonic()
        request = job.request
        try:
            model = request.params.model
            loading = None if model in self.engine.loaded_models else model
            progress = _progress_reports(job.id, send, loading)

            def send_frame(index: int, count: int, image: np.ndarray) -> None:
                image = np.ascontiguousarray(image)
                header = encode("frame", job=job.id, index=index, count=count, **frame_meta(image))
                send(b"update", header, memoryview(image).cast("B"))
                if index + 1 < count and not should_stop():
                    self._take_turn(socket, job)

            results, fields = request.run(self.engine, progress, should_stop, send_frame)
        except DreamCancelled:
            log.info("job %s cancelled after %.1f s", job.id, time.monotonic() - started)
            ending = encode("cancelled", job=job.id)
            kind = "cancelled"
        except (OutOfMemory, MemoryError) as err:
            _free_device_memory()
            message = str(err) if isinstance(err, OutOfMemory) else "Out of memory."
            hint = "Dream on a smaller selection, or lower tile-size."
            ending = encode("error", job=job.id, code="out_of_memory", message=message, hint=hint)
            kind = "error"
        except DreamError as err:
            ending, kind = encode("error", job=job.id, code=err.code, message=str(err)), "error"
        except Exception:  # the worker must outlive any one job
            log.exception("job %s failed", job.id)
            ending = encode("error", job=job.id, code="internal",
                            message="The dream server failed on this job.",
                            hint=f"See {log_path()} for details.")  # fmt: skip
            kind = "error"
        else:
            log.info("job %s done in %.1f s on %s", job.id, time.monotonic() - started,
                     self.engine.device)  # fmt: skip
            frames_out = [np.ascontiguousarray(result) for result in results]
            meta = frame_meta(frames_out[0]) if frames_out else {}
            ending = encode("result", job=job.id, count=len(frames_out), **meta, **fields)
            send(b"ended", b"result", ending,
                 *(memoryview(frame).cast("B") for frame in frames_out))  # fmt: skip
            return
        send(b"ended", kind.encode(), ending)


def _progress_reports(job_id: str, send, loading: str | None):  # noqa: ANN001, ANN202
    """The engine's progress as `progress` messages (a ProgressCallback), at most every
    PROGRESS_INTERVAL_S, with the time left once the pace shows; the first one goes out at once
    and names the model `loading` when the job starts by loading one."""
    last_sent = 0.0
    pace_from: tuple[float, float] | None = None
    first = Progress(0.0, 0, 1, 0, 0, loading=loading)
    send(b"update", encode("progress", **asdict(first), job=job_id))

    def report(progress: Progress) -> None:
        nonlocal last_sent, pace_from
        now = time.monotonic()
        # The pace is taken from the first step on: loading and warming up come before it.
        pace_from = pace_from or (now, progress.fraction)
        if now - last_sent < PROGRESS_INTERVAL_S and progress.fraction < 1.0:
            return
        last_sent = now
        (since, done_then), left = pace_from, None
        if progress.fraction - done_then >= STEADY_PACE_AFTER:
            rate = (progress.fraction - done_then) / (now - since)
            left = round((1 - progress.fraction) / rate, 1)
        progress = replace(progress, fraction=round(progress.fraction, 4), seconds_left=left)
        send(b"update", encode("progress", **asdict(progress), job=job_id))

    return report


def _size(frames: tuple) -> int:
    return sum(memoryview(frame).nbytes for frame in frames)


def _free_device_memory() -> None:
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _give_memory_back() -> None:
    """Return what unloaded models held to the system: the GPU's cache, and on Linux the free
    pages of the C heap, which glibc keeps for the process unless asked."""
    gc.collect()
    _free_device_memory()
    if sys.platform == "linux":
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL("libc.so.6").malloc_trim(0)


class _OnlyKnownClients:
    """ZeroMQ's authentication asks this about each CURVE client key at the handshake."""

    def __init__(self, allowed: bytes) -> None:
        self.allowed = allowed

    def callback(self, domain: str, key: bytes) -> bool:
        return hmac.compare_digest(key, self.allowed)


class DreamServer:
    """The daemon's loop: one ROUTER socket for every client, a PAIR socket from each worker,
    and the scheduler, which decides everything; this class carries its decisions out."""

    def __init__(
        self,
        engines: list[Engine],
        bind: str,
        token: str,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        curve_secret: tuple[bytes, bytes] | None = None,
        idle_exit_s: float = 0.0,
        idle_unload_s: float = 0.0,
        lazy: bool = False,
    ) -> None:
        self.engines = engines
        self.token = token
        self.max_pixels = max_pixels
        self.context = zmq.Context()
        self.router = self.context.socket(zmq.ROUTER)
        self.router.setsockopt(zmq.LINGER, 0)
        # A reply to a client whose connection has closed fails instead of vanishing: that is
        # how the loop learns which client went, by its routing id (see _deliver).
        self.router.setsockopt(zmq.ROUTER_MANDATORY, 1)
        self.router.setsockopt(zmq.SNDHWM, CLIENT_BACKLOG)
        self.router.setsockopt(zmq.MAXMSGSIZE, max_pixels * 16 + (1 << 20))
        self.authenticator = None
        self.server_key: bytes | None = None
        """The CURVE public key clients check, when the server encrypts."""
        mechanism = security(bind, "given" if curve_secret else None)
        if mechanism != "NULL":  # nobody may send a byte without proving the token
            self.authenticator = ThreadAuthenticator(self.context)
            self.authenticator.start()
        if mechanism == "CURVE":
            # A server key (its own, or one made for this run) and, checked by ZeroMQ's
            # authentication handler, the one client key that the token gives.
            self.server_key, secret_key = curve_secret or zmq.curve_keypair()
            self.router.curve_server = True
            self.router.curve_publickey, self.router.curve_secretkey = self.server_key, secret_key
            self.authenticator.configure_curve_callback(
                "*", _OnlyKnownClients(zmq.curve_public(client_secret_key(token)))
            )
        elif mechanism == "PLAIN":
            # The loopback: the password the token gives, checked by the same handler; the
            # server proves itself in turn by answering `prove`.
            self.router.plain_server = True
            self.authenticator.configure_plain("*", {PLAIN_USERNAME: plain_password(token)})
        if bind.endswith(":0"):
            port = self.router.bind_to_random_port(bind.rsplit(":", 1)[0])
            bind = f"{bind.rsplit(':', 1)[0]}:{port}"
        else:
            self.router.bind(bind)
        self.endpoint = bind
        cpu_workers = sum(engine.device.type == "cpu" for engine in engines)
        cpu_threads = max(1, (os.cpu_count() or 1) // cpu_workers) if cpu_workers > 1 else 0
        self.workers: list[Worker] = []
        self.sockets: list[zmq.Socket] = []
        """The loop's end of each worker's PAIR socket, by the worker's index."""
        for index, engine in enumerate(engines):
            threads = cpu_threads if engine.device.type == "cpu" else 0
            self.workers.append(Worker(index, engine, self.context, threads, lazy))
            self.sockets.append(self.context.socket(zmq.PAIR))
            self.sockets[-1].bind(self.workers[-1].address)
        self.scheduler = Scheduler(
            len(engines), token, max_pixels, self.describe(), self.machine, time.monotonic(),
            idle_exit_s=idle_exit_s, idle_unload_s=idle_unload_s, unloaded=lazy,
        )  # fmt: skip
        self.stopping = threading.Event()

    @property
    def devices(self) -> list[str]:
        return [str(engine.device) for engine in self.engines]

    def serve(self) -> None:
        for worker in self.workers:
            worker.start()
        # The monitor reports a closed connection at once (GIMP's Cancel kills the plug-in);
        # heartbeats catch the clients whose disconnection never shows (remote, half-open).
        monitor = self.router.get_monitor_socket(zmq.EVENT_DISCONNECTED)
        poller = zmq.Poller()
        poller.register(self.router, zmq.POLLIN)
        for socket in self.sockets:
            poller.register(socket, zmq.POLLIN)
        poller.register(monitor, zmq.POLLIN)
        log.info("serving on %s with %s", self.endpoint, ", ".join(self.devices))
        try:
            while not self.stopping.is_set():
                events = dict(poller.poll(100))
                for index, socket in enumerate(self.sockets):
                    if socket in events:
                        self._hear_worker(index, socket)
                if monitor in events:
                    while monitor.poll(0):
                        recv_monitor_message(monitor)
                    self._event(None, self.scheduler.connection_closed)
                if self.router in events:
                    self._hear_clients()
                self._event(None, self.scheduler.tick)
                if not all(worker.is_alive() for worker in self.workers):
                    log.error("a worker thread died: exiting so that a fresh daemon can start")
                    break
        finally:
            for worker in self.workers:
                worker.stop()
            for worker in self.workers:
                worker.join(timeout=10)
            self.router.disable_monitor()
            monitor.close(linger=0)
            self.router.close(linger=0)
            for socket in self.sockets:
                socket.close(linger=0)
            if self.authenticator is not None:
                self.authenticator.stop()
            if any(worker.is_alive() for worker in self.workers):
                self.context.destroy(linger=0)  # stuck in a long computation: do not wait
            else:
                self.context.term()

    def _hear_clients(self) -> None:
        for _ in range(1000):  # a burst at a time, so workers' messages are never starved
            if not self.router.poll(0):
                return
            client, *frames = self.router.recv_multipart(copy=False)
            if not frames:
                continue  # not even a header: nothing to answer
            client = client.bytes
            self._event(client, self.scheduler.heard, client, frames[0].bytes, frames[1:])

    def _hear_worker(self, index: int, socket: zmq.Socket) -> None:
        while socket.poll(0):
            kind, job_id, *rest = socket.recv_multipart(copy=False)
            job_id = job_id.bytes.decode()
            job = self.scheduler.jobs.get(job_id)
            client = job.client if job is not None else None
            event = WORKER_MESSAGES[kind.bytes].__get__(self.scheduler)
            self._event(client, event, index, job_id, tuple(rest))

    def _event(self, client: bytes | None, event, *args: Any) -> None:  # noqa: ANN001
        """Hand one event to the scheduler and carry out what it decides. A failure while
        serving one client ends that client's jobs, never the server."""
        try:
            pending = collections.deque(self._timed(event, *args))
            while pending:
                pending.extend(self._carry_out(pending.popleft()))
        except Exception:
            log.exception("serving %s failed", client.hex() if client else "the server")
            if client is not None:  # (and if telling it fails too, the server carries on)
                self._event(None, self.scheduler.failed, client)

    @staticmethod
    def _timed(event, *args: Any) -> list:  # noqa: ANN001
        return event(*args, time.monotonic())

    def _carry_out(self, action: Action) -> list[Action]:
        """Do what the scheduler decided; a delivery's outcome goes back to it at once."""
        if isinstance(action, Send):
            outcome = self._deliver(action.client, action.frames)
            return self.scheduler.sent(action.client, outcome, time.monotonic())
        if isinstance(action, Start):
            self.workers[action.worker].start_job(action.job)
        elif isinstance(action, Resume):
            self.workers[action.worker].resume()
        elif isinstance(action, Cancel):
            self.workers[action.worker].cancel(action.job)
        elif isinstance(action, Unload):
            for worker in self.workers:
                worker.unload()
        elif isinstance(action, Exit):
            self.stopping.set()
        return []

    def _deliver(self, client: bytes, frames: tuple) -> str:
        """Hand one reply to ZeroMQ: SENT, BLOCKED where the client's connection has no room
        for it now, CLOSED where the connection is gone."""
        try:
            self.router.send_multipart([client, *frames], flags=zmq.NOBLOCK, copy=False)
        except zmq.Again:
            return BLOCKED
        except zmq.ZMQError as err:
            if err.errno != zmq.EHOSTUNREACH:
                raise
            return CLOSED
        return SENT

    def describe(self) -> dict[str, Any]:
        """What `hello_ok` says: the models, their layers and presets, the parameters."""
        return {
            "server": __version__,
            "device": ",".join(self.devices),
            "models": [
                {
                    "name": spec.name,
                    "description": spec.description,
                    "builtin": spec.weights is None,
                    "layers": [
                        {"name": layer.name, "description": layer.description}
                        for layer in spec.layers
                    ],
                    "presets": {name: dict(weights) for name, weights in spec.presets.items()},
                }
                for spec in MODELS.values()
            ],
            "presets": list(PRESETS),
            "params": parameter_schema(),
            "visualize_params": parameter_schema(VISUALIZE_PARAMETERS),
            "schema": schema_hash(plugin_schemas()),
            "max_pixels": self.max_pixels,
            "log": str(log_path()),
        }

    def machine(self) -> dict[str, Any]:
        """What `status_ok` says of this server and its workers (the scheduler adds the rest)."""
        return {
            "endpoint": self.endpoint,
            "pid": os.getpid(),
            "device": ",".join(self.devices),
            "workers": [
                {"device": str(engine.device), "loaded_models": engine.loaded_models}
                for engine in self.engines
            ],
            "loaded_models": sorted({m for e in self.engines for m in e.loaded_models}),
            "log": str(log_path()),
        }
