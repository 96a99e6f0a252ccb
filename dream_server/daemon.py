"""`dream-server`: keeps models warm and dreams for clients over ZeroMQ.

One ROUTER socket on the main thread talks to every client (docs/PROTOCOL.md); one worker
thread per device runs the jobs in FIFO order and hands its replies back through an inproc
socket, because a ZeroMQ socket belongs to one thread. Jobs are cancelled when asked, when
their client stops sending heartbeats (GIMP's Cancel kills the plug-in outright), or when the
daemon stops.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import fcntl
import ipaddress
import json
import logging
import logging.handlers
import os
import secrets
import signal
import sys
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import zmq
import zmq.auth
from zmq.utils.monitor import recv_monitor_message

from gimp_plugin.dream_client import PROTOCOL_VERSION, Connection, DreamClient, DreamServerError
from gimp_plugin.locations import ENDPOINT_FILE, log_path, state_dir

from . import __version__
from .engine import Engine
from .errors import DreamCancelled, DreamError, OutOfMemory
from .models import DEFAULT_MODEL, MODELS, PRESETS
from .params import VISUALIZE_PARAMETERS, parameter_schema
from .protocol import (
    BadMessage,
    Submission,
    VisualizeRequest,
    decode_header,
    encode,
    frame_meta,
    parse_submit,
    parse_visualize,
)

log = logging.getLogger("dream_server.daemon")

HEARTBEAT_TIMEOUT_S = 5.0
"""A client that sent nothing for this long while its job waits or runs has gone away (a closed
connection is noticed at once, through the socket monitor)."""
PROGRESS_INTERVAL_S = 0.1
DEFAULT_MAX_PIXELS = 100_000_000
MAX_QUEUED_JOBS = 32
INBOX = "inproc://dream-server-worker"
LOCK_FILE = "daemon.lock"


@dataclass
class Job:
    submission: Submission | VisualizeRequest
    client: bytes
    submitted: float = field(default_factory=time.monotonic)
    cancel: threading.Event = field(default_factory=threading.Event)
    running: bool = False

    @property
    def id(self) -> str:
        return self.submission.job


class Worker(threading.Thread):
    """Runs queued jobs one at a time on the engine; its replies go to the main thread."""

    def __init__(self, engine: Engine, context: zmq.Context) -> None:
        super().__init__(name="dream-worker", daemon=True)
        self.engine = engine
        self.context = context
        self.queue: collections.deque[Job] = collections.deque()
        self.ready = threading.Condition()
        self.current: Job | None = None
        self.stopping = False

    def submit(self, job: Job) -> int:
        with self.ready:
            self.queue.append(job)
            self.ready.notify()
            return len(self.queue) + (1 if self.current else 0)

    def remove(self, job_id: str) -> Job | None:
        with self.ready:
            for job in self.queue:
                if job.id == job_id:
                    self.queue.remove(job)
                    return job
        return None

    def stop(self) -> None:
        with self.ready:
            self.stopping = True
            if self.current:
                self.current.cancel.set()
            self.ready.notify()

    def run(self) -> None:
        outbox = self.context.socket(zmq.PAIR)
        outbox.connect(INBOX)
        try:
            self._warm_up()
            while True:
                with self.ready:
                    while not self.queue and not self.stopping:
                        self.ready.wait()
                    if self.stopping:
                        break
                    job = self.current = self.queue.popleft()
                    job.running = True
                try:
                    self._run(job, outbox)
                except zmq.ZMQError:
                    break  # the daemon is shutting down: nobody left to answer
                except Exception:  # the worker must outlive any one job
                    log.exception("job %s failed outside the engine", job.id)
                    outbox.send_multipart([job.client, encode("error", job=job.id,
                                           code="internal", message="The dream server failed "
                                           f"on this job. See {log_path()}.")])  # fmt: skip
                finally:
                    with self.ready:
                        self.current = None
        finally:
            outbox.close(linger=0)

    def _warm_up(self) -> None:
        """Load the default model while the first client says hello."""
        try:
            self.engine.model(DEFAULT_MODEL)
        except Exception:  # a failed warm-up is not fatal: the first job will say why
            log.exception("could not load %s at start-up", DEFAULT_MODEL)

    def _run(self, job: Job, outbox: zmq.Socket) -> None:
        def reply(header: bytes, *frames: Any) -> None:
            outbox.send_multipart([job.client, header, *frames], copy=False)

        started = time.monotonic()
        last_sent = 0.0
        reply(encode("progress", job=job.id, fraction=0.0, octave=0, step=0, seconds_left=None))

        def progress(octave: int, step: int, fraction: float) -> None:
            nonlocal last_sent
            now = time.monotonic()
            if now - last_sent < PROGRESS_INTERVAL_S and fraction < 1.0:
                return
            last_sent = now
            elapsed = now - started
            left = elapsed * (1 - fraction) / fraction if fraction > 0 else None
            reply(
                encode(
                    "progress",
                    job=job.id,
                    fraction=round(fraction, 4),
                    octave=octave,
                    step=step,
                    seconds_left=None if left is None else round(left, 1),
                )
            )

        try:
            results, fields = job.submission.run(self.engine, progress, job.cancel.is_set)
        except DreamCancelled:
            log.info("job %s cancelled after %.1f s", job.id, time.monotonic() - started)
            reply(encode("cancelled", job=job.id))
            return
        except (OutOfMemory, MemoryError) as err:
            _free_device_memory()
            message = str(err) if isinstance(err, OutOfMemory) else "Out of memory."
            reply(
                encode(
                    "error",
                    job=job.id,
                    code="out_of_memory",
                    message=message,
                    hint="Dream on a smaller selection, or lower tile-size.",
                )
            )
            return
        except DreamError as err:
            reply(encode("error", job=job.id, code=err.code, message=str(err)))
            return
        except Exception:
            log.exception("job %s failed", job.id)
            reply(
                encode(
                    "error",
                    job=job.id,
                    code="internal",
                    message="The dream server failed on this job.",
                    hint=f"See {log_path()} for details.",
                )
            )
            return
        frames = [np.ascontiguousarray(result) for result in results]
        log.info("job %s done in %.1f s", job.id, time.monotonic() - started)
        reply(
            encode("result", job=job.id, count=len(frames), **frame_meta(frames[0]), **fields),
            *(memoryview(frame).cast("B") for frame in frames),
        )


def _free_device_memory() -> None:
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


class DreamServer:
    """The daemon's main loop: one ROUTER socket, requests checked before any work is done."""

    def __init__(
        self,
        engine: Engine,
        bind: str,
        token: str,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        curve_secret: tuple[bytes, bytes] | None = None,
        idle_exit_s: float = 0.0,
    ) -> None:
        self.engine = engine
        self.token = token
        self.max_pixels = max_pixels
        self.idle_exit_s = idle_exit_s
        self.context = zmq.Context()
        self.router = self.context.socket(zmq.ROUTER)
        self.router.setsockopt(zmq.LINGER, 0)
        self.router.setsockopt(zmq.ROUTER_MANDATORY, 0)  # replies to vanished clients drop quietly
        self.router.setsockopt(zmq.MAXMSGSIZE, max_pixels * 16 + (1 << 20))
        if curve_secret is not None:
            self.router.curve_server = True
            self.router.curve_publickey, self.router.curve_secretkey = curve_secret
        if bind.endswith(":0"):
            port = self.router.bind_to_random_port(bind.rsplit(":", 1)[0])
            bind = f"{bind.rsplit(':', 1)[0]}:{port}"
        else:
            self.router.bind(bind)
        self.endpoint = bind
        self.inbox = self.context.socket(zmq.PAIR)
        self.inbox.bind(INBOX)
        self.worker = Worker(engine, self.context)
        self.jobs: dict[str, Job] = {}
        self.last_heard: dict[bytes, float] = {}
        self.client_fds: dict[bytes, int] = {}
        self.last_activity = time.monotonic()
        self.stopping = threading.Event()
        self.counters = collections.Counter()

    def serve(self) -> None:
        self.worker.start()
        # The monitor reports a closed connection at once (GIMP's Cancel kills the plug-in);
        # heartbeats catch the clients whose disconnection never shows (remote, half-open).
        monitor = self.router.get_monitor_socket(zmq.EVENT_DISCONNECTED)
        poller = zmq.Poller()
        poller.register(self.router, zmq.POLLIN)
        poller.register(self.inbox, zmq.POLLIN)
        poller.register(monitor, zmq.POLLIN)
        log.info("serving on %s with %s", self.endpoint, self.engine.device)
        try:
            while not self.stopping.is_set():
                events = dict(poller.poll(100))
                if self.inbox in events:
                    self._forward_worker_replies()
                if monitor in events:
                    self._cancel_jobs_of_closed_connections(monitor)
                if self.router in events:
                    self._handle_requests()
                self._cancel_abandoned_jobs()
                if not self.worker.is_alive():
                    log.error("the worker thread died: exiting so that a fresh daemon can start")
                    break
                if self._idle_too_long():
                    log.info("idle for %.0f s: exiting", self.idle_exit_s)
                    break
        finally:
            self.worker.stop()
            self.worker.join(timeout=10)
            self.router.disable_monitor()
            monitor.close(linger=0)
            self.router.close(linger=0)
            self.inbox.close(linger=0)
            if self.worker.is_alive():  # stuck in a long computation: do not wait for it
                self.context.destroy(linger=0)
            else:
                self.context.term()

    def _cancel_jobs_of_closed_connections(self, monitor: zmq.Socket) -> None:
        while monitor.poll(0):
            event = recv_monitor_message(monitor)
            closed = [c for c, fd in self.client_fds.items() if fd == event["value"]]
            for client in closed:
                del self.client_fds[client]
                for job in [j for j in self.jobs.values() if j.client == client]:
                    if not job.cancel.is_set():
                        self._stop_job(job, "its client's connection closed")

    def _idle_too_long(self) -> bool:
        if not self.idle_exit_s or self.jobs:
            return False
        return time.monotonic() - self.last_activity > self.idle_exit_s

    def _forward_worker_replies(self) -> None:
        while self.inbox.poll(0):
            frames = self.inbox.recv_multipart(copy=False)
            client, header = frames[0].bytes, frames[1].bytes
            message = json.loads(header)
            if message["type"] in ("result", "error", "cancelled"):
                self.jobs.pop(message["job"], None)
                self.last_activity = time.monotonic()
            self.router.send_multipart([client, *frames[1:]], copy=False)

    def _handle_requests(self) -> None:
        for _ in range(1000):  # a burst at a time, so worker replies are never starved
            if not self.router.poll(0):
                return
            frames = self.router.recv_multipart(copy=False)
            if len(frames) < 2:
                self.counters["dropped"] += 1
                continue
            client = frames[0].bytes
            with contextlib.suppress(zmq.ZMQError):
                self.client_fds[client] = frames[1].get(zmq.SRCFD)
            try:
                self._handle(client, frames[1].bytes, frames[2:])
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
        self.router.send_multipart([client, header, *frames], copy=False)

    def _handle(self, client: bytes, header_bytes: bytes, frames: list) -> None:
        header = decode_header(header_bytes, self.token)
        self.last_heard[client] = self.last_activity = time.monotonic()  # only clients count
        kind = header["type"]
        if kind not in ("submit", "visualize") and frames:
            raise BadMessage(
                "bad_frames", f"A {kind} message has no pixel frames.", header.get("job")
            )
        if kind == "hello":
            self._reply(client, encode("hello_ok", **self.describe()))
        elif kind == "ping":
            job = header.get("job")
            known = isinstance(job, str) and job in self.jobs and self.jobs[job].client == client
            self._reply(client, encode("pong", job=job, known=known))
        elif kind == "status":
            self._reply(client, encode("status_ok", **self.status()))
        elif kind == "cancel":
            self._cancel(client, header["job"])
        elif kind == "submit":
            self._queue(client, header, parse_submit(header, frames, self.max_pixels))
        elif kind == "visualize":
            self._queue(client, header, parse_visualize(header, frames, self.max_pixels))

    def _queue(self, client: bytes, header: dict, request: Submission | VisualizeRequest) -> None:
        job_id = header["job"]
        if job_id in self.jobs:
            raise BadMessage("bad_job", f"Job {job_id!r} is already queued or running.", job_id)
        if len(self.jobs) >= MAX_QUEUED_JOBS:
            raise BadMessage("busy", f"{len(self.jobs)} jobs are waiting already: try again "
                             "when some have finished.", job_id)  # fmt: skip
        job = Job(request, client)
        self.jobs[job_id] = job
        position = self.worker.submit(job)
        self.counters["jobs"] += 1
        self._reply(client, encode("accepted", job=job_id, position=position))

    def _cancel(self, client: bytes, job_id: str) -> None:
        job = self.jobs.get(job_id)
        if job is None or job.client != client:
            raise BadMessage(
                "unknown_job", f"No job {job_id!r} of yours is queued or running.", job_id
            )
        self._stop_job(job, "asked by its client")

    def _stop_job(self, job: Job, why: str) -> None:
        log.info("cancelling job %s: %s", job.id, why)
        if self.worker.remove(job.id) is not None:
            self.jobs.pop(job.id, None)
            self._reply(job.client, encode("cancelled", job=job.id))
        else:
            job.cancel.set()  # the worker answers once the engine stops between two steps

    def _cancel_abandoned_jobs(self) -> None:
        now = time.monotonic()
        for job in list(self.jobs.values()):
            heard = self.last_heard.get(job.client, job.submitted)
            if now - heard > HEARTBEAT_TIMEOUT_S and not job.cancel.is_set():
                self._stop_job(job, f"its client sent nothing for {now - heard:.1f} s")
        for client, heard in list(self.last_heard.items()):
            if now - heard > 60 and not any(job.client == client for job in self.jobs.values()):
                del self.last_heard[client]

    def describe(self) -> dict[str, Any]:
        return {
            "server": __version__,
            "device": str(self.engine.device),
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
            "max_pixels": self.max_pixels,
            "log": str(log_path()),
        }

    def status(self) -> dict[str, Any]:
        return {
            "endpoint": self.endpoint,
            "pid": os.getpid(),
            "device": str(self.engine.device),
            "loaded_models": self.engine.loaded_models,
            "queue": [{"job": job.id, "running": job.running} for job in self.jobs.values()],
            "log": str(log_path()),
            "counters": dict(self.counters),
        }


def is_loopback(bind: str) -> bool:
    if bind.startswith(("ipc://", "inproc://")):
        return True
    host = urllib.parse.urlsplit(bind).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def write_endpoint_file(path: Path, record: dict[str, Any]) -> None:
    """Atomically, readable by this user only: it holds the token."""
    temporary = path.with_suffix(".tmp")
    with contextlib.suppress(FileNotFoundError):
        temporary.unlink()
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        json.dump(record, out)
    os.replace(temporary, path)


def take_lock(folder: Path):  # noqa: ANN201 - an open file holding the lock
    """One daemon per user: an exclusive lock on a file in the state folder, or None."""
    handle = open(folder / LOCK_FILE, "a+")  # noqa: SIM115 - held for the daemon's lifetime
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.close()
        return None
    return handle


def setup_logging(path: Path, verbose: bool) -> None:
    handler = logging.handlers.RotatingFileHandler(path, maxBytes=2_000_000, backupCount=2)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
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
    except DreamServerError as err:
        print(f"dream-server is not answering at {connection.endpoint}: {err}")
        return 1
    print(f"endpoint      {status['endpoint']} (pid {status['pid']})")
    print(f"device        {status['device']}")
    print(f"models loaded {', '.join(status['loaded_models']) or 'none yet'}")
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


def generate_keys(folder: Path) -> int:
    folder.mkdir(parents=True, exist_ok=True)
    public_file, secret_file = zmq.auth.create_certificates(folder, "server")
    os.chmod(secret_file, 0o600)
    public, _ = zmq.auth.load_certificate(public_file)
    print(f"Wrote {public_file} and {secret_file}.")
    print(
        f"Start the server with --curve-dir {folder}; "
        f"clients set DEEPDREAM_SERVER_KEY={public.decode()}"
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="dream-server", description=__doc__.split("\n")[0])
    parser.add_argument(
        "--bind",
        default="tcp://127.0.0.1:0",
        help="ZeroMQ endpoint to listen on (default: loopback, a free port)",
    )
    parser.add_argument("--device", default="auto", help="auto, cuda, mps or cpu")
    parser.add_argument("--max-models", type=int, default=2, help="models kept loaded")
    parser.add_argument(
        "--max-pixels",
        type=int,
        default=DEFAULT_MAX_PIXELS,
        help="largest image accepted, in pixels",
    )
    parser.add_argument(
        "--idle-exit",
        type=float,
        default=0,
        metavar="MINUTES",
        help="exit after this many minutes without work (0: never)",
    )
    parser.add_argument(
        "--curve-dir", type=Path, help="folder with server.key_secret (see --gen-keys)"
    )
    parser.add_argument("--gen-keys", type=Path, metavar="DIR", help="create CURVE keys and exit")
    parser.add_argument(
        "--status", action="store_true", help="describe the running server and exit"
    )
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    if args.status:
        return print_status()
    if args.gen_keys:
        return generate_keys(args.gen_keys)

    folder = state_dir()
    folder.mkdir(parents=True, exist_ok=True)
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
    if not is_loopback(args.bind) and curve is None:
        print(
            f"dream-server: refusing to listen on {args.bind} without encryption: create keys "
            "with `dream-server --gen-keys DIR` and pass --curve-dir DIR.",
            file=sys.stderr,
        )
        return 2
    setup_logging(log_path(), args.verbose)
    try:
        engine = Engine(args.device, max_models=args.max_models)
        server = DreamServer(
            engine, args.bind, secrets.token_hex(16), args.max_pixels, curve, args.idle_exit * 60
        )
    except (DreamError, zmq.ZMQError) as err:
        log.error("could not start: %s", err)
        print(f"dream-server: {err}", file=sys.stderr)
        return 2
    endpoint_file = folder / ENDPOINT_FILE
    record = {
        "endpoint": server.endpoint,
        "token": server.token,
        "pid": os.getpid(),
        "log": str(log_path()),
        "protocol": PROTOCOL_VERSION,
    }
    if curve is not None:
        record["server_key"] = curve[0].decode()
    write_endpoint_file(endpoint_file, record)
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: server.stopping.set())
    print(
        f"dream-server listening on {server.endpoint} ({engine.device}); log: {log_path()}",
        flush=True,
    )
    try:
        server.serve()
    finally:
        with contextlib.suppress(OSError, ValueError):
            if json.loads(endpoint_file.read_text()).get("pid") == os.getpid():
                endpoint_file.unlink()
        lock.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
