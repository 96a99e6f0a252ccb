"""The dream server's decisions, apart from its sockets, threads and clock.

The server's loop (server.py) turns what happens into calls here: a request heard, how a reply's
delivery went, a connection closed, a worker's message, the clock's tick. Each call returns
the actions to carry out, in order: send a reply (and say how it went, with `sent`), start or
cancel a job on a worker, let an animation go on, unload the models, exit. Nothing here waits,
reads a clock or touches a socket, so every decision can be replayed and checked
(tests/test_scheduler.py drives thousands of random histories through it).

What it owns: the queue and its limit; fair turns between clients, also between an animation's
frames; heartbeats; the replies that wait for a client that does not read, and their limit;
asking the clients whether they are there after some connection closed; idle unload and exit.
"""

from __future__ import annotations

import collections
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from dream_link.wire import server_proof

from .cost import Paces, Work
from .protocol import (
    JOB_PARSERS,
    BadMessage,
    check_frame_count,
    decode_header,
    encode,
    parse_estimate,
    proof_nonce,
)

log = logging.getLogger("dream_server.scheduler")

HEARTBEAT_TIMEOUT_S = 5.0
"""A client that sent nothing for this long while its job waits or runs has gone away (a closed
connection is noticed sooner: see `sent`)."""
CLIENT_HELD_BYTES = 64 << 20
"""Replies waiting in the server for one client behind the one its connection is taking, at
most: a client that leaves more unread does not read, and loses its jobs, so that unread
results cannot pile up. (One result of any size may wait: a reader takes it in its time.)"""
PROBE_AFTER_DISCONNECT_S = 1.5
"""How long after a connection closes the clients with jobs are asked whether they are there:
libzmq may take a moment to retire the closed connection's routing id."""
FORGET_CLIENT_S = 60.0
"""A client without jobs that said nothing for this long is forgotten (its turn, its silence)."""
MAX_QUEUED_JOBS = 32

# -- how a reply's delivery went ----------------------------------------------------------------
SENT = "sent"
BLOCKED = "blocked"
"""Its connection has no room now: the reply waits here, and is offered again at each tick."""
CLOSED = "closed"
"""Its connection has closed: the client is gone."""


# -- actions ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Send:
    """Hand one reply to its client's connection; `sent` is told how it went."""

    client: bytes
    frames: tuple


@dataclass(frozen=True)
class Start:
    """Run `job` on `worker`; when the worker is between two frames of an animation (`turn`),
    run it first and then go on with the animation."""

    worker: int
    job: Job


@dataclass(frozen=True)
class Cancel:
    """Stop `job` on `worker` between two steps; its `ended` follows."""

    worker: int
    job: Job


@dataclass(frozen=True)
class Resume:
    """The worker's animation goes on with its next frame: nobody else waits."""

    worker: int


@dataclass(frozen=True)
class Unload:
    """Every worker lets go of its models."""


@dataclass(frozen=True)
class Exit:
    why: str


Action = Send | Start | Cancel | Resume | Unload | Exit


@dataclass(eq=False)  # one job is one object: a worker keeps the cancelled ones in a WeakSet
class Job:
    id: str
    client: bytes
    request: Any
    """What the client asked, parsed once and checked completely (see protocol.JOB_PARSERS)."""
    submitted: float
    work: Work | None = None
    """What it computes, which its time is noted against (see cost.py)."""
    worker: int | None = None
    started: float | None = None
    cancelling: bool = False


@dataclass
class _Outbox:
    """A client's replies not yet handed to its connection, in order."""

    replies: collections.deque = field(default_factory=collections.deque)
    bytes: int = 0
    blocked: bool = False
    """The first reply found no room: it is offered again at the next tick."""

    @property
    def behind_the_first(self) -> int:
        return self.bytes - reply_size(self.replies[0]) if self.replies else 0


def reply_size(frames: tuple) -> int:
    return sum(memoryview(frame).nbytes for frame in frames)


class Scheduler:
    """The server's state and decisions. Every event method takes the time `now` (seconds of
    a monotonic clock) and returns the actions it calls for."""

    def __init__(
        self,
        workers: int,
        token: str,
        max_pixels: int,
        greeting: dict[str, Any],
        describe_machine: Callable[[], dict[str, Any]],
        now: float,
        idle_exit_s: float = 0.0,
        idle_unload_s: float = 0.0,
        unloaded: bool = False,
    ) -> None:
        self.token = token
        self.max_pixels = max_pixels
        self.greeting = greeting
        """What `hello_ok` says besides the protocol version."""
        self.describe_machine = describe_machine
        """What `status_ok` says of the server and of each of its `workers`."""
        self.idle_exit_s = idle_exit_s
        self.idle_unload_s = idle_unload_s
        self.unloaded = unloaded
        """Whether the workers hold no model since the last job (or since the start)."""
        self.running: dict[int, list[str]] = {worker: [] for worker in range(workers)}
        """Each worker's jobs: the one it runs last, below it an animation waiting for it."""
        self.jobs: dict[str, Job] = {}
        self.waiting: dict[bytes, collections.deque[str]] = {}
        """Each client's jobs not yet started, in order."""
        self.last_served: dict[bytes, float] = {}
        self.last_heard: dict[bytes, float] = {}
        self.gone: set[bytes] = set()
        """Clients whose connection has closed, or who do not read: nothing more is sent."""
        self.outboxes: dict[bytes, _Outbox] = {}
        self.probe_until = float("-inf")
        self.last_activity = now
        """When a client last said anything, or a job ended."""
        self.last_work = now
        """When a job last ended: what a client asks of the server otherwise is no work."""
        self.paces = Paces()
        """How long the jobs of each kind took here, for estimates."""
        self.counters: collections.Counter = collections.Counter()
        self._actions: list[Action] = []

    # -- events ---------------------------------------------------------------------------------

    def heard(self, client: bytes, header: bytes, frames: list, now: float) -> list[Action]:
        """A request from `client`: its header frame and pixel frames."""
        try:
            self._handle(client, header, frames, now)
        except BadMessage as err:
            self.counters["refused"] += 1
            log.debug("refused a message: %s", err)
            self._reply(client, encode("error", job=err.job, code=err.code, message=str(err)))
        except Exception:  # a bug met in one client's request ends that client, not the server
            self.counters["failed"] += 1
            log.exception("a request could not be handled: its client is dropped")
            self._fail(client, "the server failed on its request")
        return self._taken()

    def sent(self, client: bytes, outcome: str, now: float) -> list[Action]:
        """How the delivery of `client`'s first waiting reply went."""
        outbox = self.outboxes.get(client)
        if outbox is None or client in self.gone:
            return self._taken()  # dropped meanwhile: nothing waits any more
        if outcome == CLOSED:
            self._drop(client, "its client's connection closed")
        elif outcome == BLOCKED:
            outbox.blocked = True
        else:
            outbox.bytes -= reply_size(outbox.replies.popleft())
            outbox.blocked = False
            self._offer(client)
        return self._taken()

    def connection_closed(self, now: float) -> list[Action]:
        """Some connection closed. Which one the event cannot say (its file descriptor number
        may already belong to a new connection), so the clients with jobs are asked, by routing
        id, for the next while: a reply to a closed connection fails (see `sent`)."""
        self.probe_until = now + PROBE_AFTER_DISCONNECT_S
        return self._taken()

    # A worker's messages (see server.WORKER_MESSAGES): its index, the job, the frames after it.

    def progress(self, worker: int, job_id: str, reply: tuple, now: float) -> list[Action]:
        """A running job's progress, or an animation's frame: a reply for its client."""
        self._reply(self.jobs[job_id].client, *reply)
        return self._taken()

    def ended(self, worker: int, job_id: str, frames: tuple, now: float) -> list[Action]:
        """A job ended: `frames` are its ending (result, error or cancelled) and its reply."""
        ending, *reply = frames
        job = self.jobs.pop(job_id)
        stack = self.running[worker]
        stack.remove(job_id)
        if bytes(ending) == b"result" and job.work is not None:
            self.paces.note(job.work, now - job.started)
        if stack:  # it ran between an animation's frames: that time is not the animation's
            self.jobs[stack[-1]].started += now - job.started
        self.last_activity = self.last_work = now
        self._reply(job.client, *reply)
        self._dispatch(now)
        return self._taken()

    def turn(self, worker: int, job_id: str, frames: tuple, now: float) -> list[Action]:
        """An animation is between two frames: another client's waiting job runs first, so
        that one endless zoom cannot keep everyone else waiting."""
        client = self.jobs[job_id].client
        others = [c for c in self.waiting if c != client]
        if others and len(self.running[worker]) == 1:
            self.last_served[client] = now
            self._start(self._next_of(others), worker, now)
        else:
            self._actions.append(Resume(worker))
        return self._taken()

    def tick(self, now: float) -> list[Action]:
        """The clock: blocked replies are offered again, silent clients lose their jobs, and an
        idle server unloads or exits."""
        for client, outbox in list(self.outboxes.items()):
            if outbox.blocked:
                outbox.blocked = False
                self._offer(client)
        if now <= self.probe_until:
            for client, job_id in {job.client: job.id for job in self.jobs.values()}.items():
                # a `pong` for its own job: every client takes it as a sign of life
                self._reply(client, encode("pong", job=job_id, known=True))
        for job in list(self.jobs.values()):
            heard = self.last_heard.get(job.client, job.submitted)
            if now - heard > HEARTBEAT_TIMEOUT_S and not job.cancelling:
                self._stop(job, f"its client sent nothing for {now - heard:.1f} s")
        with_jobs = {job.client for job in self.jobs.values()}
        for client, heard in list(self.last_heard.items()):
            if now - heard > FORGET_CLIENT_S and client not in with_jobs:
                self._forget(client)
        if self._idle_for(self.idle_unload_s, self.last_work, now) and not self.unloaded:
            log.info("idle for %.0f s: unloading the models", self.idle_unload_s)
            self.unloaded = True
            self._actions.append(Unload())
        if self._idle_for(self.idle_exit_s, self.last_activity, now):
            log.info("idle for %.0f s: exiting", self.idle_exit_s)
            self._actions.append(Exit(f"idle for {self.idle_exit_s:.0f} s"))
        return self._taken()

    def failed(self, client: bytes, now: float) -> list[Action]:
        """Serving `client` failed outside the scheduler (a bug in the loop): it is told so and
        dropped, with its jobs; nobody else is."""
        self.counters["failed"] += 1
        self._fail(client, "the server failed while serving it")
        return self._taken()

    # -- what a client asks ---------------------------------------------------------------------

    def _handle(self, client: bytes, header_frame: bytes, frames: list, now: float) -> None:
        if client in self.gone:  # a connection that closed or does not read is not served
            self.counters["dropped"] += 1
            return
        header = decode_header(header_frame, self.token)
        self.last_heard[client] = self.last_activity = now  # only what clients say counts
        kind = header["type"]
        check_frame_count(header, frames)
        if kind == "prove":
            self._reply(
                client, encode("proof", proof=server_proof(self.token, proof_nonce(header)))
            )
        elif kind == "hello":
            self._reply(client, encode("hello_ok", **self.greeting))
        elif kind == "ping":
            job = self.jobs.get(header.get("job"))
            known = job is not None and job.client == client
            self._reply(client, encode("pong", job=header.get("job"), known=known))
        elif kind == "status":
            self._reply(client, encode("status_ok", **self.status()))
        elif kind == "cancel":
            job = self.jobs.get(header["job"])
            if job is None or job.client != client:
                raise BadMessage("unknown_job", f"No job {header['job']!r} of yours is queued "
                                 "or running.", header["job"])  # fmt: skip
            self._stop(job, "asked by its client")
        elif kind == "estimate":
            seconds, jobs = self.paces.estimate(parse_estimate(header, self.max_pixels))
            self._reply(client, encode("estimate_ok", seconds=seconds, jobs=jobs))
        else:  # a job: checked completely here, before any work, and never again
            request = JOB_PARSERS[kind](header, frames, self.max_pixels)
            self._queue(Job(header["job"], client, request, now, request.work()), now)

    def _queue(self, job: Job, now: float) -> None:
        if job.id in self.jobs:
            raise BadMessage("bad_job", f"Job {job.id!r} is already queued or running.", job.id)
        if len(self.jobs) >= MAX_QUEUED_JOBS:
            raise BadMessage("busy", f"{len(self.jobs)} jobs are waiting already: try again "
                             "when some have finished.", job.id)  # fmt: skip
        self.jobs[job.id] = job
        self.unloaded = False
        self.waiting.setdefault(job.client, collections.deque()).append(job.id)
        self.counters["jobs"] += 1
        self._reply(job.client, encode("accepted", job=job.id, position=len(self.jobs)))
        self._dispatch(now)

    def status(self) -> dict[str, Any]:
        """The machine as the daemon describes it, with the queue and each worker's job."""
        status = self.describe_machine()
        for index, worker in enumerate(status["workers"]):
            worker["job"] = self.running[index][-1] if self.running[index] else None
        status["queue"] = [{"job": job.id, "running": job.worker is not None}
                           for job in self.jobs.values()]  # fmt: skip
        status["counters"] = dict(self.counters)
        return status

    # -- turns ----------------------------------------------------------------------------------

    def _dispatch(self, now: float) -> None:
        """Start waiting jobs on idle workers, one client's job at a time, clients in turn."""
        for worker, stack in self.running.items():
            if not self.waiting:
                return
            if not stack:
                self._start(self._next_of(list(self.waiting)), worker, now)

    def _next_of(self, clients: list[bytes]) -> Job:
        """The next job of the client served longest ago, or never (or forgotten), and of
        those the one waiting longest: one artist's ten jobs do not keep a second artist
        waiting behind all ten."""

        def turn(client: bytes) -> tuple[float, float]:
            first_waiting = self.jobs[self.waiting[client][0]]
            return self.last_served.get(client, float("-inf")), first_waiting.submitted

        client = min(clients, key=turn)
        queue = self.waiting[client]
        job = self.jobs[queue.popleft()]
        if not queue:
            del self.waiting[client]
        return job

    def _start(self, job: Job, worker: int, now: float) -> None:
        self.last_served[job.client] = now
        job.worker, job.started = worker, now
        self.running[worker].append(job.id)
        self._actions.append(Start(worker, job))

    def _stop(self, job: Job, why: str) -> None:
        """End a job early: one still waiting at once, a running one by its worker."""
        log.info("cancelling job %s: %s", job.id, why)
        if job.worker is None:
            queue = self.waiting[job.client]
            queue.remove(job.id)
            if not queue:
                del self.waiting[job.client]
            del self.jobs[job.id]
            self._reply(job.client, encode("cancelled", job=job.id))
        elif not job.cancelling:
            job.cancelling = True  # the worker ends it between two steps
            self._actions.append(Cancel(job.worker, job))

    # -- replies --------------------------------------------------------------------------------

    def _reply(self, client: bytes, *frames: Any) -> None:
        """Send to one client, behind what waits for it already: a client's replies keep their
        order. Nothing goes to a client that is gone."""
        if client in self.gone:
            return
        outbox = self.outboxes.setdefault(client, _Outbox())
        outbox.replies.append(frames)
        outbox.bytes += reply_size(frames)
        if len(outbox.replies) == 1 and not outbox.blocked:
            self._actions.append(Send(client, frames))
        elif outbox.behind_the_first > CLIENT_HELD_BYTES:
            self._drop(client, "its client does not read its replies")

    def _offer(self, client: bytes) -> None:
        outbox = self.outboxes[client]
        if outbox.replies:
            self._actions.append(Send(client, outbox.replies[0]))
        else:
            del self.outboxes[client]

    def _fail(self, client: bytes, why: str) -> None:
        self._reply(client, encode("error", job=None, code="internal",
                                   message="The dream server failed while serving this "
                                   "connection and ended its jobs: try again, and if it "
                                   "happens again, report it with the server's log."))  # fmt: skip
        self._drop(client, why)

    def _drop(self, client: bytes, why: str) -> None:
        """Nothing more is sent to `client`, what waited for it is dropped, its jobs end."""
        self.gone.add(client)
        self.outboxes.pop(client, None)
        for job in [job for job in self.jobs.values() if job.client == client]:
            self._stop(job, why)

    def _forget(self, client: bytes) -> None:
        del self.last_heard[client]
        self.last_served.pop(client, None)
        self.gone.discard(client)

    def _idle_for(self, seconds: float, since: float, now: float) -> bool:
        """Whether no job is waiting or running, and `seconds` have passed since `since`
        (never, when `seconds` is 0)."""
        return bool(seconds) and not self.jobs and now - since > seconds

    def _taken(self) -> list[Action]:
        actions, self._actions = self._actions, []
        return actions
