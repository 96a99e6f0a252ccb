"""`dream-server`: keeps models warm and dreams for clients over ZeroMQ.

One ROUTER socket on the main thread talks to every client (docs/PROTOCOL.md); one worker
thread per device, with its own engine, runs one job at a time. The main thread gives each
free worker the next job, taking the clients in turn, and talks to the workers only through
messages on inproc sockets: a ZeroMQ socket belongs to one thread, and a job's state belongs to
the worker that runs it. Jobs are cancelled when asked, when their client's connection closes
or it stops sending heartbeats (GIMP's Cancel kills the plug-in outright), when it leaves its
replies unread, or when the daemon stops.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import ctypes
import gc
import hmac
import json
import logging
import logging.handlers
import os
import secrets
import shlex
import signal
import sys
import threading
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator
from zmq.utils.monitor import recv_monitor_message

from dream_link.client import Connection, DreamClient
from dream_link.wire import (
    ENDPOINT_FILE,
    PLAIN_USERNAME,
    EndpointRecord,
    Progress,
    check_endpoint,
    client_secret_key,
    ensure_state_dir,
    is_loopback,
    log_path,
    plain_password,
    private_file,
    schema_hash,
    security,
    server_proof,
    state_dir,
)

from . import __version__
from .cost import Paces, Work
from .devices import devices
from .engine import Engine
from .errors import DreamCancelled, DreamError, OutOfMemory
from .models import DEFAULT_MODEL, MODELS, PRESETS
from .params import VISUALIZE_PARAMETERS, parameter_schema, plugin_schemas
from .protocol import (
    JOB_PARSERS,
    BadMessage,
    check_frame_count,
    decode_header,
    encode,
    frame_meta,
    parse_estimate,
    proof_nonce,
)

log = logging.getLogger("dream_server.daemon")

HEARTBEAT_TIMEOUT_S = 5.0
"""A client that sent nothing for this long while its job waits or runs has gone away (a closed
connection is noticed sooner: see DreamServer._send)."""
PROGRESS_INTERVAL_S = 0.1
STEADY_PACE_AFTER = 0.05
"""Time left is said once this share of the work has shown the pace, not before."""
CLIENT_BACKLOG = 16
"""Replies ZeroMQ queues for one client beyond what its connection's buffers hold; then they
wait in the server, counted in bytes."""
CLIENT_HELD_BYTES = 64 << 20
"""Replies waiting in the server for one client, at most: a client that leaves more unread
does not read, and loses its jobs, so that unread results cannot pile up."""
PROBE_AFTER_DISCONNECT_S = 1.5
"""How long after a connection closes the clients with jobs are asked whether they are there:
libzmq may take a moment to retire the closed connection's routing id."""
DEFAULT_MAX_PIXELS = 100_000_000
MAX_QUEUED_JOBS = 32
LOCK_FILE = "daemon.lock"
SOCKET_FILE = "dream-server.sock"
MAX_SOCKET_PATH = 104
"""Bytes in a Unix socket's path, with its terminating NUL (macOS allows 104, Linux 108)."""


@dataclass
class Job:
    """What the socket loop knows of a job; the worker that runs it owns the rest."""

    id: str
    client: bytes
    message: list | None
    """The request's frames until a worker takes them (forwarded without a copy)."""
    submitted: float = field(default_factory=time.monotonic)
    worker: Worker | None = None
    cancelling: bool = False
    work: Work | None = None
    """What it computes, which its time is noted against (see cost.py)."""
    started: float | None = None


class Worker(threading.Thread):
    """Runs one job at a time on an engine of its own, on its own device.

    It owns each job from start to end and talks to the socket loop only through messages on
    its PAIR socket (frames in brackets):
      loop to worker: [job, job id, client, header, *pixel frames]  [cancel, job id]  [stop]
      worker to loop: [update, job id, client, header, *frames]  (progress; an animation's
                      frame with its pixels)  [done, job id, client, header, *frames]
    A `done` message ends the job whatever happened to it: result, error or cancelled.
    Between jobs, [unload] lets go of its models.
    """

    def __init__(
        self,
        index: int,
        engine: Engine,
        context: zmq.Context,
        max_pixels: int,
        threads: int,
        lazy: bool = False,
    ) -> None:
        super().__init__(name=f"dream-worker-{index}", daemon=True)
        self.index = index
        self.lazy = lazy
        """Load no model before the first job (a server that starts with the session)."""
        self.engine = engine
        self.context = context
        self.max_pixels = max_pixels
        self.threads = threads
        self.address = f"inproc://dream-worker-{index}"
        self._stopping = False

    def run(self) -> None:
        if self.threads:
            torch.set_num_threads(self.threads)  # this thread's share of the CPU cores
        socket = self.context.socket(zmq.PAIR)
        socket.connect(self.address)
        try:
            if not self.lazy:
                self._warm_up()
            while not self._stopping:
                message = socket.recv_multipart(copy=False)
                kind = message[0].bytes
                if kind == b"stop":
                    break
                if kind == b"unload":
                    self.engine.unload_models()
                    _give_memory_back()
                if kind == b"job":
                    job_id, client = message[1].bytes.decode(), message[2].bytes
                    self._run(socket, job_id, client, message[3].bytes, message[4:])
                # a cancel for a job that has already ended needs nothing
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

    def _run(
        self, socket: zmq.Socket, job_id: str, client: bytes, header_bytes: bytes, frames: list
    ) -> None:
        cancelled = False

        def should_stop() -> bool:
            nonlocal cancelled
            while not cancelled and socket.poll(0):
                message = socket.recv_multipart()
                if message[0] == b"stop":
                    self._stopping = cancelled = True
                elif message[0] == b"cancel" and message[1].decode() == job_id:
                    cancelled = True
            return cancelled

        def send(kind: bytes, header: bytes, *results: Any) -> None:
            socket.send_multipart([kind, job_id.encode(), client, header, *results], copy=False)

        started = time.monotonic()
        try:
            header = json.loads(header_bytes)
            request = JOB_PARSERS[header["type"]](header, frames, self.max_pixels)
            model = request.params.model
            loading = None if model in self.engine.loaded_models else model
            progress = _progress_reports(job_id, send, loading)

            def send_frame(index: int, count: int, image: np.ndarray) -> None:
                image = np.ascontiguousarray(image)
                header = encode("frame", job=job_id, index=index, count=count, **frame_meta(image))
                send(b"update", header, memoryview(image).cast("B"))

            results, fields = request.run(self.engine, progress, should_stop, send_frame)
        except DreamCancelled:
            log.info("job %s cancelled after %.1f s", job_id, time.monotonic() - started)
            ending = encode("cancelled", job=job_id)
        except (OutOfMemory, MemoryError) as err:
            _free_device_memory()
            message = str(err) if isinstance(err, OutOfMemory) else "Out of memory."
            hint = "Dream on a smaller selection, or lower tile-size."
            ending = encode("error", job=job_id, code="out_of_memory", message=message, hint=hint)
        except DreamError as err:
            ending = encode("error", job=job_id, code=err.code, message=str(err))
        except Exception:  # the worker must outlive any one job
            log.exception("job %s failed", job_id)
            ending = encode("error", job=job_id, code="internal",
                            message="The dream server failed on this job.",
                            hint=f"See {log_path()} for details.")  # fmt: skip
        else:
            log.info("job %s done in %.1f s on %s", job_id, time.monotonic() - started,
                     self.engine.device)  # fmt: skip
            frames_out = [np.ascontiguousarray(result) for result in results]
            meta = frame_meta(frames_out[0]) if frames_out else {}
            ending = encode("result", job=job_id, count=len(frames_out), **meta, **fields)
            send(b"done", ending, *(memoryview(frame).cast("B") for frame in frames_out))
            return
        send(b"done", ending)


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
    """The daemon's main loop: one ROUTER socket, requests checked before any work is done,
    jobs handed to the next free worker, taking the clients in turn."""

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
        self.idle_exit_s = idle_exit_s
        self.idle_unload_s = idle_unload_s
        self.unloaded = lazy
        """Whether the workers hold no model since the last job (or since the start)."""
        self.context = zmq.Context()
        self.router = self.context.socket(zmq.ROUTER)
        self.router.setsockopt(zmq.LINGER, 0)
        # A reply to a client whose connection has closed fails instead of vanishing: that is
        # how the loop learns which client went, by its routing id (see _send).
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
        self.sockets: dict[Worker, zmq.Socket] = {}
        """The loop's end of each worker's PAIR socket."""
        for index, engine in enumerate(engines):
            threads = cpu_threads if engine.device.type == "cpu" else 0
            worker = Worker(index, engine, self.context, max_pixels, threads, lazy)
            socket = self.context.socket(zmq.PAIR)
            socket.bind(worker.address)
            self.sockets[worker] = socket
        self.idle: list[Worker] = list(self.workers)
        self.jobs: dict[str, Job] = {}
        self.paces = Paces()
        """How long the jobs of each kind took here, for estimates."""
        self.waiting: dict[bytes, collections.deque[str]] = {}
        """Each client's jobs not yet running, in order."""
        self.last_served: dict[bytes, float] = {}
        self.last_heard: dict[bytes, float] = {}
        self.gone: set[bytes] = set()
        """Clients whose connection has closed, or who do not read: nothing more is sent."""
        self.held: dict[bytes, collections.deque[tuple]] = {}
        self.held_bytes: dict[bytes, int] = {}
        self.probe_until = 0.0
        self.last_activity = time.monotonic()
        """When a client last said anything, or a job ended."""
        self.last_work = self.last_activity
        """When a job last ended: what a client asks of the server otherwise is no work."""
        self.stopping = threading.Event()
        self.counters = collections.Counter()

    @property
    def workers(self) -> list[Worker]:
        return list(self.sockets)

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
        for socket in self.sockets.values():
            poller.register(socket, zmq.POLLIN)
        poller.register(monitor, zmq.POLLIN)
        log.info("serving on %s with %s", self.endpoint, ", ".join(self.devices))
        try:
            while not self.stopping.is_set():
                events = dict(poller.poll(100))
                for worker, socket in self.sockets.items():
                    if socket in events:
                        self._forward_worker_replies(socket, worker)
                if monitor in events:
                    self._note_closed_connections(monitor)
                if self.router in events:
                    self._handle_requests()
                self._send_held()
                self._probe_clients_with_jobs()
                self._cancel_abandoned_jobs()
                self._dispatch()
                if not all(worker.is_alive() for worker in self.workers):
                    log.error("a worker thread died: exiting so that a fresh daemon can start")
                    break
                if self._idle_for(self.idle_exit_s, self.last_activity):
                    log.info("idle for %.0f s: exiting", self.idle_exit_s)
                    break
                if self._idle_for(self.idle_unload_s, self.last_work) and not self.unloaded:
                    log.info("idle for %.0f s: unloading the models", self.idle_unload_s)
                    for socket in self.sockets.values():
                        socket.send(b"unload")
                    self.unloaded = True
        finally:
            for socket in self.sockets.values():
                with contextlib.suppress(zmq.ZMQError):
                    socket.send(b"stop", zmq.NOBLOCK)
            for worker in self.workers:
                worker.join(timeout=10)
            self.router.disable_monitor()
            monitor.close(linger=0)
            self.router.close(linger=0)
            for socket in self.sockets.values():
                socket.close(linger=0)
            if self.authenticator is not None:
                self.authenticator.stop()
            if any(worker.is_alive() for worker in self.workers):
                self.context.destroy(linger=0)  # stuck in a long computation: do not wait
            else:
                self.context.term()

    def _note_closed_connections(self, monitor: zmq.Socket) -> None:
        """Some connection closed. Which one the event cannot say: its file descriptor number
        may already belong to a new connection. So the clients with jobs are asked, by routing
        id, for the next while: a reply to a closed connection fails (see _send)."""
        while monitor.poll(0):
            recv_monitor_message(monitor)
            self.probe_until = time.monotonic() + PROBE_AFTER_DISCONNECT_S

    def _probe_clients_with_jobs(self) -> None:
        if time.monotonic() > self.probe_until:
            return
        for client, job_id in {job.client: job.id for job in self.jobs.values()}.items():
            # a `pong` for its own job: every client takes it as a sign of life, nothing more
            self._send(client, encode("pong", job=job_id, known=True))

    def _idle_for(self, seconds: float, since: float) -> bool:
        """Whether no job is waiting or running, and `seconds` have passed since `since`
        (never, when `seconds` is 0)."""
        if not seconds or self.jobs:
            return False
        return time.monotonic() - since > seconds

    def _forward_worker_replies(self, socket: zmq.Socket, worker: Worker) -> None:
        while socket.poll(0):
            kind, job_id, client, *reply = socket.recv_multipart(copy=False)
            if kind.bytes == b"done":
                job = self.jobs.pop(job_id.bytes.decode(), None)
                if self._succeeded(job, reply[0]):
                    self.paces.note(job.work, time.monotonic() - job.started)
                self.idle.append(worker)
                self.last_activity = self.last_work = time.monotonic()
            self._send(client.bytes, *reply)

    @staticmethod
    def _succeeded(job: Job | None, ending: zmq.Frame) -> bool:
        """Whether a job whose work is timed ended with its result (not cancelled, not failed)."""
        if job is None or job.work is None or job.started is None:
            return False
        return json.loads(ending.bytes).get("type") == "result"

    def _dispatch(self) -> None:
        """Start waiting jobs on idle workers, one client's job at a time, clients in turn."""
        while self.idle and self.waiting:
            # the client served longest ago, or never: one artist's ten jobs do not keep a
            # second artist waiting behind all ten
            client = min(self.waiting, key=lambda c: self.last_served.get(c, 0.0))
            queue = self.waiting[client]
            job = self.jobs[queue.popleft()]
            if not queue:
                del self.waiting[client]
            self.last_served[client] = time.monotonic()
            worker = self.idle.pop(0)
            job.worker, job.started = worker, time.monotonic()
            message, job.message = job.message, None
            self.sockets[worker].send_multipart(
                [b"job", job.id.encode(), job.client, *message], copy=False
            )

    def _handle_requests(self) -> None:
        for _ in range(1000):  # a burst at a time, so worker replies are never starved
            if not self.router.poll(0):
                return
            frames = self.router.recv_multipart(copy=False)
            if len(frames) < 2:
                self.counters["dropped"] += 1
                continue
            client = frames[0].bytes
            try:
                self._handle(client, frames[1], frames[2:])
            except BadMessage as err:
                self.counters["refused"] += 1
                log.debug("refused a message: %s", err)
                self._reply(client, encode("error", job=err.job, code=err.code, message=str(err)))
            except Exception:  # nothing a client sends may stop the daemon
                self.counters["failed"] += 1
                log.exception("a message could not be handled")
                self._reply(client, encode("error", job=None, code="internal",
                                           message=f"The server could not handle that message; "
                                           f"see {log_path()}."))  # fmt: skip

    def _reply(self, client: bytes, header: bytes, *frames: Any) -> None:
        self._send(client, header, *frames)

    def _send(self, client: bytes, *frames: Any) -> None:
        """Send to one client, in order; a client whose connection has closed loses its jobs.

        Replies that its connection has no room for wait here, up to CLIENT_HELD_BYTES: a
        client that lets more pile up does not read, and loses its jobs and its replies.
        """
        if client in self.gone:
            return
        # behind the replies that wait already, if any: a client's replies keep their order
        if client in self.held or not self._deliver(client, frames):
            held = self.held.setdefault(client, collections.deque())
            held.append(frames)
            self.held_bytes[client] = self.held_bytes.get(client, 0) + _size(frames)
            if self.held_bytes[client] > CLIENT_HELD_BYTES:
                self._client_gone(client, "its client does not read its replies")

    def _deliver(self, client: bytes, frames: tuple) -> bool:
        """Hand one reply to ZeroMQ; False where the client's connection has no room for it."""
        try:
            self.router.send_multipart([client, *frames], flags=zmq.NOBLOCK, copy=False)
        except zmq.Again:
            return False
        except zmq.ZMQError as err:
            if err.errno != zmq.EHOSTUNREACH:
                raise
            self._client_gone(client, "its client's connection closed")
        return True

    def _send_held(self) -> None:
        for client in list(self.held):
            held = self.held[client]
            # a delivery may find the connection closed, which drops all that the client held
            while held and self._deliver(client, held[0]) and client not in self.gone:
                self.held_bytes[client] -= _size(held.popleft())
            if not held:
                self.held.pop(client, None)
                self.held_bytes.pop(client, None)

    def _client_gone(self, client: bytes, why: str) -> None:
        """Nothing more is sent to `client` and its jobs end; what waited for it is dropped."""
        self.gone.add(client)
        self.held.pop(client, None)
        self.held_bytes.pop(client, None)
        self._stop_jobs_of(client, why)

    def _stop_jobs_of(self, client: bytes, why: str) -> None:
        for job in [j for j in self.jobs.values() if j.client == client]:
            if not job.cancelling:
                self._stop_job(job, why)

    def _handle(self, client: bytes, header_frame: zmq.Frame, frames: list) -> None:
        header = decode_header(header_frame.bytes, self.token)
        self.last_heard[client] = self.last_activity = time.monotonic()  # only clients count
        kind = header["type"]
        check_frame_count(header, frames)
        if kind == "prove":
            proof = server_proof(self.token, proof_nonce(header))
            self._reply(client, encode("proof", proof=proof))
        elif kind == "hello":
            self._reply(client, encode("hello_ok", **self.describe()))
        elif kind == "ping":
            job = header.get("job")
            known = isinstance(job, str) and job in self.jobs and self.jobs[job].client == client
            self._reply(client, encode("pong", job=job, known=known))
        elif kind == "status":
            self._reply(client, encode("status_ok", **self.status()))
        elif kind == "cancel":
            self._cancel(client, header["job"])
        elif kind == "estimate":
            seconds, jobs = self.paces.estimate(parse_estimate(header, self.max_pixels))
            self._reply(client, encode("estimate_ok", seconds=seconds, jobs=jobs))
        elif kind in JOB_PARSERS:
            # refused here, before any work
            work = JOB_PARSERS[kind](header, frames, self.max_pixels).work()
            self._queue(client, header["job"], [header_frame, *frames], work)

    def _queue(self, client: bytes, job_id: str, message: list, work: Work | None) -> None:
        if job_id in self.jobs:
            raise BadMessage("bad_job", f"Job {job_id!r} is already queued or running.", job_id)
        if len(self.jobs) >= MAX_QUEUED_JOBS:
            raise BadMessage("busy", f"{len(self.jobs)} jobs are waiting already: try again "
                             "when some have finished.", job_id)  # fmt: skip
        self.jobs[job_id] = Job(job_id, client, message, work=work)
        self.unloaded = False
        self.waiting.setdefault(client, collections.deque()).append(job_id)
        self.counters["jobs"] += 1
        self._reply(client, encode("accepted", job=job_id, position=len(self.jobs)))
        self._dispatch()

    def _cancel(self, client: bytes, job_id: str) -> None:
        job = self.jobs.get(job_id)
        if job is None or job.client != client:
            raise BadMessage(
                "unknown_job", f"No job {job_id!r} of yours is queued or running.", job_id
            )
        self._stop_job(job, "asked by its client")

    def _stop_job(self, job: Job, why: str) -> None:
        log.info("cancelling job %s: %s", job.id, why)
        if job.worker is None:
            queue = self.waiting.get(job.client)
            if queue is not None:
                queue.remove(job.id)
                if not queue:
                    del self.waiting[job.client]
            del self.jobs[job.id]
            self._reply(job.client, encode("cancelled", job=job.id))
        elif not job.cancelling:
            job.cancelling = True  # the worker answers once the engine stops between two steps
            self.sockets[job.worker].send_multipart([b"cancel", job.id.encode()])

    def _cancel_abandoned_jobs(self) -> None:
        now = time.monotonic()
        for job in list(self.jobs.values()):
            heard = self.last_heard.get(job.client, job.submitted)
            if now - heard > HEARTBEAT_TIMEOUT_S and not job.cancelling:
                self._stop_job(job, f"its client sent nothing for {now - heard:.1f} s")
        for client, heard in list(self.last_heard.items()):
            if now - heard > 60 and not any(job.client == client for job in self.jobs.values()):
                del self.last_heard[client]
                self.last_served.pop(client, None)
                self.gone.discard(client)

    def describe(self) -> dict[str, Any]:
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

    def status(self) -> dict[str, Any]:
        return {
            "endpoint": self.endpoint,
            "pid": os.getpid(),
            "device": ",".join(self.devices),
            "workers": [
                {
                    "device": str(worker.engine.device),
                    "job": next((j.id for j in self.jobs.values() if j.worker is worker), None),
                    "loaded_models": worker.engine.loaded_models,
                }
                for worker in self.workers
            ],
            "loaded_models": sorted({m for e in self.engines for m in e.loaded_models}),
            "queue": [
                {"job": job.id, "running": job.worker is not None} for job in self.jobs.values()
            ],
            "log": str(log_path()),
            "counters": dict(self.counters),
        }


def default_bind(folder: Path) -> str:
    """A socket file in the private state folder where the system has them: only this user can
    connect, and nobody else can take its place after a crash. Elsewhere the loopback."""
    path = folder / SOCKET_FILE
    if os.name == "posix" and len(str(path).encode()) < MAX_SOCKET_PATH:
        return f"ipc://{path}"
    return "tcp://127.0.0.1:0"


def write_endpoint_file(path: Path, record: EndpointRecord) -> None:
    """Atomically, readable by this user only: it holds the token."""
    write_new_file(path, record.to_json(), 0o600)


def take_lock(folder: Path):  # noqa: ANN201 - an open file holding the lock
    """One daemon per user: an exclusive lock on a file in the state folder, or None when
    another process holds it. The system lets go of it when the process ends, however it ends,
    so a crash leaves no stale lock."""
    handle = os.fdopen(private_file(folder / LOCK_FILE), "a+b")  # held while it serves
    try:
        if os.name == "nt":
            import msvcrt  # Windows has no flock: a lock on the file's first byte instead

            handle.seek(0)
            msvcrt.locking(handle.fileno(), msvcrt.LK_NBLCK, 1)
        else:
            import fcntl

            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.close()
        return None
    return handle


class PrivateLogFile(logging.handlers.RotatingFileHandler):
    """A rotating log readable by this user only: it names jobs, files and models."""

    def _open(self):  # noqa: ANN202
        fd = private_file(Path(self.baseFilename))
        return os.fdopen(fd, "a", encoding=self.encoding, errors=self.errors)


class OneLinePerRecord(logging.Formatter):
    """Escapes control characters in messages: a job id with a newline forges no log line."""

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 - logging's name
        record.message = "".join(
            c if c.isprintable() else c.encode("unicode_escape").decode() for c in record.message
        )
        return super().formatMessage(record)


def setup_logging(path: Path, verbose: bool) -> None:
    handler = PrivateLogFile(path, maxBytes=2_000_000, backupCount=2)
    handler.setFormatter(OneLinePerRecord("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    if sys.stderr is not None and sys.stderr.isatty():
        root.addHandler(logging.StreamHandler())


def print_status() -> int:
    connection = Connection.from_environment() or Connection.from_endpoint_file()
    if connection is None:
        print(f"dream-server is not running (no {state_dir() / ENDPOINT_FILE}).")
        return 1
    try:
        with DreamClient(connection, start_server=False) as client:
            status = client.status()
    except DreamError as err:
        print(f"dream-server is not answering at {connection.endpoint}: {err}")
        return 1
    print(f"endpoint      {status['endpoint']} (pid {status['pid']})")
    for index, worker in enumerate(status["workers"]):
        doing = f"running {worker['job']}" if worker["job"] else "idle"
        models = ", ".join(worker["loaded_models"]) or "no model loaded yet"
        print(f"worker {index:<6} {worker['device']}: {doing}; {models}")
    queue = status["queue"]
    print(
        f"queue         {len(queue)} job(s)"
        + "".join(
            f"\n              {job['job']} {'running' if job['running'] else 'queued'}"
            for job in queue
        )
    )
    print(f"log           {status['log']}")
    return 0


def certificate(public: bytes, secret: bytes | None = None) -> str:
    """A CURVE certificate in the text format zmq.auth reads."""
    kind = "Secret" if secret else "Public"
    lines = [f"#   ZeroMQ CURVE {kind} Certificate, made by dream-server --gen-keys"]
    if secret:
        lines.append("#   Keep this file private: whoever has it can pose as the server.")
    lines += ["", "metadata", "curve", f'    public-key = "{public.decode()}"']
    if secret:
        lines.append(f'    secret-key = "{secret.decode()}"')
    return "\n".join(lines) + "\n"


def generate_keys(folder: Path, force: bool) -> int:
    """A CURVE key pair for a server bound beyond this machine, in the format zmq.auth reads.

    Existing keys are kept unless `force`: every client holds the old public key. The secret
    key is private from its first byte: created exclusively with mode 0600, never widened.
    """
    public_file, secret_file = folder / "server.key", folder / "server.key_secret"
    existing = [path for path in (public_file, secret_file) if path.exists()]
    if existing and not force:
        print(
            f"dream-server: {existing[0]} exists: clients hold its public key. Keep it, or "
            "replace both keys with --gen-keys DIR --force.",
            file=sys.stderr,
        )
        return 2
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    public, secret = zmq.curve_keypair()
    write_new_file(secret_file, certificate(public, secret), 0o600)
    write_new_file(public_file, certificate(public), 0o644)
    print(f"Wrote {public_file} and {secret_file}.")
    print(f"Start the server with --curve-dir {shlex.quote(str(folder))}; clients set")
    print(f"  export DEEPDREAM_SERVER_KEY={shlex.quote(public.decode())}")
    return 0


def write_new_file(path: Path, text: str, mode: int) -> None:
    """Write a file that nobody can read before its mode applies: created exclusively under a
    temporary name with `mode`, then renamed over `path`."""
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "w") as out:
            out.write(text)
        os.replace(temporary, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)


def at_least(minimum: float, kind: type):  # noqa: ANN201 - an argparse type callable
    noun = "a whole number" if kind is int else "a number"

    def convert(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {noun}, got {text!r}") from None
        if not value >= minimum:  # NaN too
            raise argparse.ArgumentTypeError(f"must be {minimum:g} or more, got {text}")
        return value

    return convert


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="dream-server", description=__doc__.split("\n")[0])
    parser.add_argument(
        "--bind",
        help="ZeroMQ endpoint to listen on (default: a socket file in the state folder, which "
        "only this user can reach; on Windows the loopback, a free port, with CURVE)",
    )
    parser.add_argument(
        "--devices",
        "--device",
        default="auto",
        metavar="LIST",
        help="where to dream, one worker each: e.g. cuda:0,cuda:1 or cpu,cpu "
        "(default auto: every CUDA GPU, else Apple's MPS, else the CPU)",
    )
    parser.add_argument(
        "--max-models", type=at_least(1, int), default=2, help="models kept loaded per worker"
    )
    parser.add_argument(
        "--max-pixels",
        type=at_least(1, int),
        default=DEFAULT_MAX_PIXELS,
        help="largest image accepted, in pixels",
    )
    parser.add_argument(
        "--idle-exit",
        type=at_least(0, float),
        default=0,
        metavar="MINUTES",
        help="exit after this many minutes without work (0: never)",
    )
    parser.add_argument(
        "--idle-unload",
        type=at_least(0, float),
        default=0,
        metavar="MINUTES",
        help="let go of the loaded models after this many minutes without work, giving their "
        "memory back (0: keep them)",
    )
    parser.add_argument(
        "--lazy",
        action="store_true",
        help="load no model before the first job (for a server that starts with the session)",
    )
    parser.add_argument(
        "--curve-dir", type=Path, help="folder with server.key_secret (see --gen-keys)"
    )
    parser.add_argument("--gen-keys", type=Path, metavar="DIR", help="create CURVE keys and exit")
    parser.add_argument("--force", action="store_true", help="with --gen-keys: replace keys")
    parser.add_argument(
        "--status", action="store_true", help="describe the running server and exit"
    )
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    if args.status:
        return print_status()
    if args.gen_keys:
        return generate_keys(args.gen_keys, args.force)

    folder = ensure_state_dir()
    lock = take_lock(folder)
    if lock is None:
        running = Connection.from_endpoint_file()
        where = running.endpoint if running else "an unknown endpoint"
        print(
            f"dream-server is already running at {where} (see `dream-server --status`).",
            file=sys.stderr,
        )
        return 1
    curve = None
    if args.curve_dir:
        try:
            curve = zmq.auth.load_certificate(args.curve_dir / "server.key_secret")
        except (OSError, ValueError) as err:
            print(
                f"dream-server: cannot read CURVE keys in {args.curve_dir} ({err}); create them "
                "with --gen-keys DIR.",
                file=sys.stderr,
            )
            return 2
    args.bind = args.bind or default_bind(folder)
    try:
        check_endpoint(args.bind, binding=True)
    except DreamError as err:
        print(f"dream-server: --bind: {err}", file=sys.stderr)
        return 2
    if not is_loopback(args.bind) and curve is None:
        print(
            f"dream-server: refusing to listen on {args.bind} without encryption: create keys "
            "with `dream-server --gen-keys DIR` and pass --curve-dir DIR.",
            file=sys.stderr,
        )
        return 2
    setup_logging(log_path(), args.verbose)
    try:
        engines = [Engine(device, max_models=args.max_models) for device in devices(args.devices)]
        server = DreamServer(
            engines, args.bind, secrets.token_hex(16), args.max_pixels, curve,
            idle_exit_s=args.idle_exit * 60, idle_unload_s=args.idle_unload * 60, lazy=args.lazy,
        )  # fmt: skip
    except (DreamError, zmq.ZMQError) as err:
        log.error("could not start: %s", err)
        print(f"dream-server: {err}", file=sys.stderr)
        return 2
    endpoint_file = folder / ENDPOINT_FILE
    server_key = server.server_key.decode() if server.server_key is not None else None
    record = EndpointRecord(server.endpoint, server.token, os.getpid(), str(log_path()),
                            server_key=server_key)  # fmt: skip
    write_endpoint_file(endpoint_file, record)
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: server.stopping.set())
    print(
        f"dream-server listening on {server.endpoint} ({', '.join(server.devices)}); "
        f"log: {log_path()}",
        flush=True,
    )
    try:
        server.serve()
    finally:
        written = EndpointRecord.read(folder)
        if written is not None and written.pid == os.getpid():
            with contextlib.suppress(OSError):
                endpoint_file.unlink()
        lock.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
