"""The server's decisions, replayed: thousands of random histories of clients that ask, cancel,
stop reading, vanish and send garbage, and of workers that report, end and fail at any point,
with a clock that jumps. After each step the promises the daemon makes to its clients hold.

Requests are real protocol messages, checked by the real parsers; only the sockets, the
workers' engines and the clock are played by the test.
"""

from __future__ import annotations

import collections
import json

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from dream_link.wire import PROTOCOL_VERSION
from dream_server import scheduler as scheduling
from dream_server.scheduler import (
    BLOCKED,
    CLIENT_HELD_BYTES,
    CLOSED,
    FORGET_CLIENT_S,
    HEARTBEAT_TIMEOUT_S,
    MAX_QUEUED_JOBS,
    SENT,
    Cancel,
    Exit,
    Resume,
    Scheduler,
    Send,
    Start,
    Unload,
)

TOKEN = "0123456789abcdef0123456789abcdef"
CLIENTS = [b"artist-a", b"artist-b", b"artist-c", b"script-d"]
BIG_REPLY = memoryview(bytearray(24 << 20))
"""A 2500x2500 RGBA float frame: three of them overfill the share of a client that does not read."""
ENDINGS = ("result", "error", "cancelled")


def request(kind: str, **fields) -> bytes:
    return json.dumps({"v": PROTOCOL_VERSION, "type": kind, "token": TOKEN, **fields}).encode()


def job_request(kind: str, job: str) -> tuple[bytes, list]:
    """A real request of `kind` for a tiny job: check (no pixels) or a 4-frame animate."""
    if kind == "check":
        return request("check", job=job, params={"steps": 1}), []
    image = {"width": 4, "height": 4, "channels": 3, "dtype": "u8"}
    header = request("animate", job=job, params={"steps": 1}, zoom={"frames": 4}, image=image)
    return header, [bytes(48)]


def describe_machine() -> dict:
    return {"workers": [{"device": "cpu"}, {"device": "cpu"}]}


class Server:
    """A scheduler driven as the daemon drives it, with a clock the test moves and clients that
    read, except those in `unread`, whose connections have no room."""

    def __init__(self, workers: int = 1, **options) -> None:
        self.now = 0.0
        self.scheduler = Scheduler(workers, TOKEN, 1_000_000, {}, describe_machine, 0.0, **options)
        self.replies: dict[bytes, list[dict]] = collections.defaultdict(list)
        self.started: list[str] = []
        self.actions: list = []
        self.unread: set[bytes] = set()

    def do(self, event, *args) -> None:  # noqa: ANN001
        pending = collections.deque(event(*args, self.now))
        while pending:
            action = pending.popleft()
            self.actions.append(action)
            if isinstance(action, Send):
                outcome = BLOCKED if action.client in self.unread else SENT
                if outcome == SENT:
                    self.replies[action.client].append(json.loads(bytes(action.frames[0])))
                pending.extend(self.scheduler.sent(action.client, outcome, self.now))
            elif isinstance(action, Start):
                self.started.append(action.job.id)

    def ask(self, client: bytes, header: bytes, frames: list | None = None) -> dict:
        self.do(self.scheduler.heard, client, header, frames or [])
        return self.replies[client][-1] if self.replies[client] else {}

    def submit(self, client: bytes, job: str, kind: str = "check") -> None:
        self.do(self.scheduler.heard, client, *job_request(kind, job))

    def report(self, job: str, *pixels) -> None:  # noqa: ANN002
        worker = self.scheduler.jobs[job].worker
        header = json.dumps({"type": "progress", "job": job}).encode()
        self.do(self.scheduler.progress, worker, job, (header, *pixels))

    def end(self, job: str, ending: str = "result") -> None:
        worker = self.scheduler.jobs[job].worker
        header = json.dumps({"type": ending, "job": job}).encode()
        self.do(self.scheduler.ended, worker, job, (ending.encode(), header))

    def later(self, seconds: float) -> None:
        self.now += seconds
        self.do(self.scheduler.tick)

    def keep_alive(self, seconds: float, **jobs: bytes) -> None:
        """Let `seconds` pass while the clients of `jobs` ping for them every second."""
        for _ in range(int(seconds)):
            self.later(1.0)
            for job, client in jobs.items():
                self.ask(client, request("ping", job=job))

    def of_kind(self, kind: type) -> list:
        return [action for action in self.actions if isinstance(action, kind)]


A, B = b"artist-a", b"artist-b"


def test_a_second_client_is_served_before_the_first_clients_other_jobs():
    server = Server()
    for index in range(4):
        server.submit(A, f"a-{index}")
    server.submit(B, "b-0")
    server.end("a-0")
    server.end("b-0")
    server.end("a-1")
    assert server.started == ["a-0", "b-0", "a-1", "a-2"]


def test_a_client_silent_for_the_heartbeat_timeout_loses_its_jobs_and_one_that_pings_keeps_them():
    server = Server(workers=2)
    server.submit(A, "silent")
    server.submit(B, "pinging")
    server.keep_alive(HEARTBEAT_TIMEOUT_S - 1, pinging=B)
    server.later(0.9)
    assert not server.of_kind(Cancel)
    server.later(0.2)
    assert [cancel.job.id for cancel in server.of_kind(Cancel)] == ["silent"]
    server.keep_alive(60.0, pinging=B)
    server.end("silent", "cancelled")
    assert server.replies[A][-1] == {"type": "cancelled", "job": "silent"}
    assert [job for job in server.scheduler.jobs] == ["pinging"]


def test_a_client_that_leaves_replies_unread_loses_its_jobs_and_nobody_else_does():
    server = Server(workers=2)
    server.submit(A, "hoarder")
    server.submit(B, "reader")
    server.unread.add(A)
    for _ in range(3):  # one waits at the connection, two behind it: 48 MB
        server.report("hoarder", BIG_REPLY)
        server.report("reader", BIG_REPLY)
    assert not server.of_kind(Cancel)
    server.report("hoarder", BIG_REPLY)  # 72 MB behind the first
    server.report("reader", BIG_REPLY)
    assert [cancel.job.id for cancel in server.of_kind(Cancel)] == ["hoarder"]
    assert A not in server.scheduler.outboxes
    server.unread.clear()
    server.end("hoarder", "cancelled")
    server.later(0.1)
    assert not [reply for reply in server.replies[A] if reply["type"] == "cancelled"]
    assert len([reply for reply in server.replies[B] if reply["type"] == "progress"]) == 4


def test_an_animation_lets_another_clients_job_run_between_its_frames():
    server = Server()
    server.submit(A, "zoom", "animate")
    server.submit(A, "mine-later")
    server.submit(B, "small")
    server.do(server.scheduler.turn, 0, "zoom", ())
    assert server.started == ["zoom", "small"]  # not A's own next job: it waits its turn
    server.end("small")
    assert server.scheduler.running[0] == ["zoom"] and not server.of_kind(Resume)
    server.do(server.scheduler.turn, 0, "zoom", ())
    assert server.of_kind(Resume) == [Resume(0)]
    server.end("zoom")
    assert server.started == ["zoom", "small", "mine-later"]


def test_an_animation_is_timed_without_the_jobs_that_ran_between_its_frames():
    server = Server()
    server.submit(A, "zoom", "animate")
    server.submit(B, "small", "animate")
    server.keep_alive(10.0, zoom=A, small=B)
    server.do(server.scheduler.turn, 0, "zoom", ())
    server.keep_alive(30.0, zoom=A, small=B)
    server.end("small")
    server.keep_alive(2.0, zoom=A)
    server.end("zoom")
    estimate = request("estimate", of="animate", width=4, height=4, params={"steps": 1},
                       zoom={"frames": 4})  # fmt: skip
    assert server.ask(B, estimate)["seconds"] == pytest.approx(21.0)  # of 30 s and 12 s


def test_after_a_connection_closes_the_clients_with_jobs_are_asked_whether_they_are_there():
    server = Server()
    server.submit(A, "mine")
    server.do(server.scheduler.connection_closed)
    server.later(0.1)
    assert server.replies[A][-1] == {"v": PROTOCOL_VERSION, "type": "pong", "job": "mine",
                                      "known": True}  # fmt: skip
    count = len(server.replies[A])
    server.later(2.0)
    assert len(server.replies[A]) == count
    server.do(server.scheduler.connection_closed)
    server.unread.add(A)
    server.do(server.scheduler.tick)
    server.do(server.scheduler.sent, A, CLOSED)
    assert server.of_kind(Cancel)[0].job.id == "mine"


def test_an_idle_server_unloads_its_models_and_then_exits_but_never_with_a_job():
    server = Server(idle_unload_s=60.0, idle_exit_s=600.0)
    server.submit(A, "long")
    server.later(1000.0)  # a long job: nothing is idle (the client pings)
    assert not server.of_kind(Unload) and not server.of_kind(Exit)
    server.ask(A, request("ping", job="long"))
    server.end("long")
    server.later(59.0)
    server.later(2.0)
    assert len(server.of_kind(Unload)) == 1 and not server.of_kind(Exit)
    server.ask(A, request("status"))  # a word that is not work: unloaded stays unloaded
    server.later(599.0)
    server.later(2.0)
    assert len(server.of_kind(Unload)) == 1 and len(server.of_kind(Exit)) == 1


def test_a_job_id_in_use_and_a_full_queue_are_refused_and_nothing_is_lost():
    server = Server()
    server.submit(A, "same")
    assert server.ask(A, job_request("check", "same")[0])["code"] == "bad_job"
    for index in range(MAX_QUEUED_JOBS - 1):
        server.submit(B, f"b-{index}")
    assert server.ask(A, job_request("check", "one-more")[0])["code"] == "busy"
    assert len(server.scheduler.jobs) == MAX_QUEUED_JOBS
    assert server.scheduler.jobs["same"].client == A


def test_a_bug_met_while_serving_one_client_drops_that_client_only(a_bug_in_estimates):
    server = Server(workers=2)
    server.submit(A, "doomed")
    server.submit(B, "fine")
    failed = server.ask(A, request("estimate", of="submit", width=13, height=13, params={}))
    assert failed["code"] == "internal"
    assert [cancel.job.id for cancel in server.of_kind(Cancel)] == ["doomed"]
    server.report("fine")
    server.end("doomed", "cancelled")
    server.end("fine")
    assert server.replies[B][-1] == {"type": "result", "job": "fine"}
    assert server.scheduler.counters["failed"] == 1


class Connection:
    """A client's end as the server's socket sees it."""

    def __init__(self) -> None:
        self.closed = False
        self.reading = True
        self.received: list[dict] = []


class ServerHistory(RuleBasedStateMachine):
    """The scheduler, driven as server.DreamServer drives it, and a model of what it promised."""

    @initialize(workers=st.sampled_from([1, 2]), idle_exit=st.sampled_from([0.0, 30.0]))
    def start(self, workers: int, idle_exit: float) -> None:
        self.now = 1000.0
        self.scheduler = Scheduler(
            workers, TOKEN, 1_000_000, {"server": "test"}, describe_machine, self.now,
            idle_exit_s=idle_exit, idle_unload_s=10.0,
        )  # fmt: skip
        self.connections = {client: Connection() for client in CLIENTS}
        self.stacks: dict[int, list] = {worker: [] for worker in range(workers)}
        """What each played worker runs: the job on top, an animation waiting under it."""
        self.awaiting_turn: set[int] = set()
        self.cancel_asked: set[str] = set()
        self.accepted: dict[str, bytes] = {}
        """Every job the server accepted, with its client."""
        self.endings: collections.Counter = collections.Counter()
        """The ending replies each job's client received."""
        self.ended_on_worker: collections.Counter = collections.Counter()
        self.last_started: dict[bytes, float] = {}
        self.said: dict[bytes, float] = {}
        self.dropped: set[bytes] = set()
        """The clients the server stopped serving: closed, not reading, or failed on."""
        self.serial = 0
        self.exited = False

    # -- how the daemon carries out the scheduler's actions ---------------------------------------

    def carry_out(self, actions: list) -> None:
        pending = collections.deque(actions)
        while pending:
            action = pending.popleft()
            if isinstance(action, Send):
                pending.extend(self.deliver(action))
            elif isinstance(action, Start):
                self.check_fair_turn(action)
                self.awaiting_turn.discard(action.worker)
                self.stacks[action.worker].append(action.job)
                self.last_started[action.job.client] = self.now
            elif isinstance(action, Resume):
                assert action.worker in self.awaiting_turn, "resumed a worker that did not ask"
                self.awaiting_turn.discard(action.worker)
            elif isinstance(action, Cancel):
                assert action.job in self.stacks[action.worker]
                self.cancel_asked.add(action.job.id)
            elif isinstance(action, Exit):
                assert not self.scheduler.jobs, "exited with jobs waiting or running"
                self.exited = True
            else:
                assert isinstance(action, Unload)
                assert not self.scheduler.jobs

    def deliver(self, send: Send) -> list:
        connection = self.connections[send.client]
        if connection.closed:
            outcome = CLOSED
        elif not connection.reading:
            outcome = BLOCKED
        else:
            outcome = SENT
            header = json.loads(bytes(send.frames[0]))
            connection.received.append(header)
            if header["type"] == "accepted":
                self.accepted[header["job"]] = send.client
            if self.ends_a_job(header) and self.accepted.get(header["job"]) == send.client:
                self.endings[header["job"]] += 1
        return self.scheduler.sent(send.client, outcome, self.now)

    @staticmethod
    def ends_a_job(header: dict) -> bool:
        """Whether a reply ends its job: not the refusal of a request naming it (a second job
        with its id, a cancel of someone else's)."""
        refusal = header.get("code") in ("bad_job", "unknown_job")
        return header["type"] in ENDINGS and "job" in header and not refusal

    def check_fair_turn(self, start: Start) -> None:
        """The job started belongs to the waiting client served longest ago (or never)."""
        candidates = [c for c in self.scheduler.waiting if c != start.job.client]
        if self.stacks[start.worker]:  # between an animation's frames: not its own client
            candidates = [c for c in candidates if c != self.stacks[start.worker][0].client]
        mine = self.last_started.get(start.job.client, float("-inf"))
        for other in candidates:
            assert mine <= self.last_started.get(other, float("-inf")), "an unfair turn"

    def event(self, method, *args) -> None:  # noqa: ANN001
        self.carry_out(method(*args, self.now))
        self.dropped |= self.scheduler.gone  # (forgotten a minute after their last word)

    def say(self, client: bytes, header: bytes, frames: list) -> None:
        """A well-formed request: a sign of life, unless the server has dropped the client."""
        if client not in self.scheduler.gone:
            self.said[client] = self.now
        self.event(self.scheduler.heard, client, header, frames)

    # -- what clients do ------------------------------------------------------------------------

    @rule(client=st.sampled_from(CLIENTS), kind=st.sampled_from(["check", "animate"]))
    def submit(self, client: bytes, kind: str) -> None:
        self.serial += 1
        self.say(client, *job_request(kind, f"job-{self.serial}"))

    @rule(client=st.sampled_from(CLIENTS))
    def submit_a_job_id_in_use(self, client: bytes) -> None:
        live = [job for job in self.scheduler.jobs.values() if job.client == client]
        if live:
            self.say(client, *job_request("check", live[0].id))
            assert self.scheduler.jobs.get(live[0].id) in (live[0], None), "a job replaced"

    @rule(client=st.sampled_from(CLIENTS), data=st.data())
    def cancel(self, client: bytes, data) -> None:  # noqa: ANN001
        ids = sorted(self.accepted) or ["never-was"]
        job = data.draw(st.sampled_from(ids))
        self.say(client, request("cancel", job=job), [])

    @rule(client=st.sampled_from(CLIENTS), data=st.data())
    def ping(self, client: bytes, data) -> None:  # noqa: ANN001
        job = data.draw(st.sampled_from(sorted(self.accepted) or ["never-was"]))
        self.say(client, request("ping", job=job), [])

    @rule(client=st.sampled_from(CLIENTS), kind=st.sampled_from(["hello", "status", "prove"]))
    def ask(self, client: bytes, kind: str) -> None:
        self.say(client, request(kind, nonce="ab" * 16), [])

    @rule(client=st.sampled_from(CLIENTS), header=st.binary(max_size=40), frames=st.integers(0, 3))
    def send_garbage(self, client: bytes, header: bytes, frames: int) -> None:
        self.event(self.scheduler.heard, client, header, [b"x"] * frames)

    @rule(client=st.sampled_from(CLIENTS))
    def send_a_request_the_server_fails_on(self, client: bytes) -> None:
        """A bug met while serving one client (see a_bug_in_estimates): that client is
        dropped, with its jobs; everyone else's jobs go on."""
        header = request("estimate", of="submit", width=13, height=13, params={})
        others = {job.id: job.cancelling for job in self.scheduler.jobs.values()
                  if job.client != client}  # fmt: skip
        self.event(self.scheduler.heard, client, header, [])
        assert client in self.scheduler.gone
        assert others == {job: self.scheduler.jobs[job].cancelling for job in others}

    @rule(client=st.sampled_from(CLIENTS))
    def close(self, client: bytes) -> None:
        self.connections[client].closed = True
        self.event(self.scheduler.connection_closed)

    @rule(client=st.sampled_from(CLIENTS), reading=st.booleans())
    def read_or_stop_reading(self, client: bytes, reading: bool) -> None:
        self.connections[client].reading = reading

    @rule(seconds=st.sampled_from([0.05, 0.5, 2.0, HEARTBEAT_TIMEOUT_S + 0.1, 61.0]))
    def time_passes(self, seconds: float) -> None:
        self.now += seconds
        self.event(self.scheduler.tick)
        with_jobs = {job.client for job in self.scheduler.jobs.values()}
        for client in list(self.last_started):  # forgotten: its next job comes as a newcomer's
            if self.now - self.said[client] > FORGET_CLIENT_S and client not in with_jobs:
                del self.last_started[client]
        for job in self.scheduler.jobs.values():
            if self.now - self.said[job.client] > HEARTBEAT_TIMEOUT_S:
                assert job.cancelling, f"{job.id} runs on for a client silent since {job.submitted}"

    # -- what workers do ------------------------------------------------------------------------

    def busy_workers(self) -> list[int]:
        return [w for w, stack in self.stacks.items() if stack and w not in self.awaiting_turn]

    @precondition(lambda self: self.busy_workers())
    @rule(data=st.data(), big=st.booleans())
    def worker_reports(self, data, big: bool) -> None:  # noqa: ANN001
        worker = data.draw(st.sampled_from(self.busy_workers()))
        job = self.stacks[worker][-1]
        reply = (json.dumps({"type": "progress", "job": job.id}).encode(),)
        self.event(self.scheduler.progress, worker, job.id, reply + ((BIG_REPLY,) if big else ()))

    @precondition(lambda self: self.busy_workers())
    @rule(data=st.data())
    def animation_between_frames(self, data) -> None:  # noqa: ANN001
        worker = data.draw(st.sampled_from(self.busy_workers()))
        job = self.stacks[worker][-1]
        if job.request.__class__.__name__ != "AnimateRequest" or job.id in self.cancel_asked:
            return
        self.awaiting_turn.add(worker)
        self.event(self.scheduler.turn, worker, job.id, ())
        assert worker not in self.awaiting_turn or self.stacks[worker][-1] is not job, (
            "a worker between frames got no answer"
        )
        self.awaiting_turn.discard(worker)

    @precondition(lambda self: self.busy_workers())
    @rule(data=st.data(), ending=st.sampled_from(ENDINGS), big=st.booleans())
    def worker_ends_its_job(self, data, ending: str, big: bool) -> None:  # noqa: ANN001
        worker = data.draw(st.sampled_from(self.busy_workers()))
        job = self.stacks[worker].pop()
        if job.id in self.cancel_asked:
            ending = data.draw(st.sampled_from(["cancelled", ending]))
        self.ended_on_worker[job.id] += 1
        header = json.dumps({"type": ending, "job": job.id}).encode()
        frames = (ending.encode(), header) + ((BIG_REPLY,) if big and ending == "result" else ())
        self.event(self.scheduler.ended, worker, job.id, frames)

    # -- promises -------------------------------------------------------------------------------

    @invariant()
    def no_client_holds_more_than_its_share(self) -> None:
        for client, outbox in self.scheduler.outboxes.items():
            assert client not in self.scheduler.gone
            assert outbox.behind_the_first <= CLIENT_HELD_BYTES

    @invariant()
    def nothing_runs_for_a_client_that_is_gone(self) -> None:
        for job in self.scheduler.jobs.values():
            if job.client in self.scheduler.gone:
                assert job.worker is not None and job.cancelling, f"{job.id} outlived its client"

    @invariant()
    def each_worker_runs_one_job_or_one_beside_a_paused_animation(self) -> None:
        for worker, stack in self.stacks.items():
            assert [job.id for job in stack] == self.scheduler.running[worker]
            assert len(stack) <= 2

    @invariant()
    def the_queue_has_its_limit(self) -> None:
        assert len(self.scheduler.jobs) <= MAX_QUEUED_JOBS

    @invariant()
    def a_job_ends_at_most_once(self) -> None:
        assert all(count == 1 for count in self.endings.values())
        assert all(count == 1 for count in self.ended_on_worker.values())

    def teardown(self) -> None:
        """Everyone reads, every worker finishes: every job ends, once, for whoever is there."""
        if not hasattr(self, "scheduler"):
            return
        for connection in self.connections.values():
            connection.reading = True
        while self.busy_workers():
            worker = self.busy_workers()[0]
            job = self.stacks[worker].pop()
            ending = "cancelled" if job.id in self.cancel_asked else "result"
            self.ended_on_worker[job.id] += 1
            header = json.dumps({"type": ending, "job": job.id}).encode()
            self.event(self.scheduler.ended, worker, job.id, (ending.encode(), header))
        self.event(self.scheduler.tick)
        assert not self.scheduler.jobs and not self.scheduler.waiting
        for job, client in self.accepted.items():
            if client not in self.dropped and not self.connections[client].closed:
                assert self.endings[job] == 1, f"{job} of a client still there never ended"
        assert not self.scheduler.outboxes, "replies left undelivered to readers"


@pytest.fixture
def a_bug_in_estimates(monkeypatch):
    """Estimates of 13x13 images raise what no parser would: a bug, not a bad request."""
    real = scheduling.parse_estimate

    def buggy(header, max_pixels):  # noqa: ANN001, ANN202
        if header.get("width") == 13:
            raise RuntimeError("a bug")
        return real(header, max_pixels)

    monkeypatch.setattr(scheduling, "parse_estimate", buggy)
    monkeypatch.setattr(scheduling.log, "disabled", True)  # thousands of tracebacks otherwise


def test_every_history_keeps_the_servers_promises(a_bug_in_estimates):
    ServerHistory.TestCase.settings = settings(
        max_examples=2000,
        stateful_step_count=60,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow],
    )
    ServerHistory.TestCase("runTest").runTest()
