"""`dream-server`: keeps models warm and dreams for clients over ZeroMQ (the loop is in
server.py). This module is the command: its options, the one-per-user lock, the endpoint file,
the private log, CURVE keys, and `--status`, which asks the running server and so needs
neither torch nor a model.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import logging.handlers
import os
import secrets
import shlex
import signal
import sys
from pathlib import Path

import zmq
import zmq.auth

from dream_link.client import Connection, DreamClient
from dream_link.wire import (
    ENDPOINT_FILE,
    DreamError,
    EndpointRecord,
    check_endpoint,
    ensure_state_dir,
    is_loopback,
    log_path,
    private_file,
    state_dir,
)

log = logging.getLogger("dream_server.daemon")

DEFAULT_MAX_PIXELS = 100_000_000
LOCK_FILE = "daemon.lock"
SOCKET_FILE = "dream-server.sock"
MAX_SOCKET_PATH = 104
"""Bytes in a Unix socket's path, with its terminating NUL (macOS allows 104, Linux 108)."""


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
    from .devices import devices  # torch and the engine: only for a server that will serve
    from .engine import Engine
    from .server import DreamServer

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
