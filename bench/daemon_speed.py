"""The dream server's own costs, side by side with what they compare to, in one run.

1. Round trip of a 4000x3000 RGBA u8 frame through the server with a no-op job (strength 0),
   against a plain copy of the same buffer (target: at most 3x the copy), with pyzmq and with
   the standard library's ZMTP (dream_link/zmtp.py, what GIMPs without pyzmq use): through the
   default socket file, through TCP on the loopback (PLAIN: where there are no socket files),
   and through TCP encrypted with CURVE (pyzmq only: a server with keys, as a remote one has).
2. Cold start: process start to `hello_ok`, with the default model (target: under 5 s).
3. On a warm server: `submit` to the first `progress` (target: under 0.5 s).

Run: .venv/bin/python bench/daemon_speed.py [--repeats 7]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dream_link.client import Connection, DreamClient  # noqa: E402


def start_server(home: Path, *options: str) -> tuple[subprocess.Popen, float, Connection]:
    """Start a server and time it until it answers hello."""
    environment = {**os.environ, "DEEPDREAM_HOME": str(home)}
    started = time.perf_counter()
    process = subprocess.Popen(
        [sys.executable, "-m", "dream_server.daemon", *options],
        env=environment,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    while True:
        connection = Connection.from_endpoint_file(home)
        if connection is not None:
            try:
                DreamClient(connection, start_server=False).close()
                return process, time.perf_counter() - started, connection
            except Exception:  # noqa: BLE001 - not up yet
                pass
        if process.poll() is not None:
            raise SystemExit("the server did not start")
        time.sleep(0.01)


def round_trips(connection: Connection, transport: str, buffer: bytes, repeats: int) -> list:
    """Seconds of each round trip of `buffer` (4000x3000 RGBA) through a no-op job."""
    os.environ["DEEPDREAM_TRANSPORT"] = transport
    trips = []
    try:
        with DreamClient(connection) as client:
            for _ in range(repeats):
                t0 = time.perf_counter()
                result = client.dream(buffer, 4000, 3000, 4, {"strength": 0.0})
                trips.append(time.perf_counter() - t0)
                assert bytes(result) == buffer
    finally:
        del os.environ["DEEPDREAM_TRANSPORT"]
    return trips


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    pixels = np.random.default_rng(0).integers(0, 256, (3000, 4000, 4), np.uint8)
    buffer = pixels.tobytes()
    copies = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        copy = bytearray(buffer)
        copies.append(time.perf_counter() - t0)
        assert len(copy) == len(buffer)
    keys = Path(tempfile.mkdtemp(prefix="dream-bench-keys-")) / "keys"
    subprocess.run([sys.executable, "-m", "dream_server.daemon", "--gen-keys", str(keys)],
                   check=True, capture_output=True)  # fmt: skip
    servers = [  # where, server options, the transports that reach it
        ("socket file (NULL)", (), ("pyzmq", "stdlib")),
        ("loopback TCP (PLAIN)", ("--bind", "tcp://127.0.0.1:0"), ("pyzmq", "stdlib")),
        ("loopback TCP (CURVE)", ("--bind", "tcp://127.0.0.1:0", "--curve-dir", str(keys)),
         ("pyzmq",)),
    ]  # fmt: skip
    trips, first_progress, cold_start = {}, [], 0.0
    for where, options, transports in servers:
        home = Path(tempfile.mkdtemp(prefix="dream-bench-"))
        process, started_in, connection = start_server(home, *options)
        try:
            for transport in transports:
                trips[where, transport] = round_trips(connection, transport, buffer, args.repeats)
            if not options:
                cold_start = started_in
                small = pixels[:768, :1024].copy()
                with DreamClient(connection) as client:
                    for _ in range(args.repeats):
                        seen: list[float] = []
                        t0 = time.perf_counter()
                        client.dream(small.tobytes(), 1024, 768, 4, {"octaves": 1, "steps": 1},
                                     on_progress=lambda *_, seen=seen: seen.append(
                                         time.perf_counter()))  # fmt: skip
                        first_progress.append(seen[0] - t0)
        finally:
            process.terminate()
            process.wait()
    copy_s = statistics.median(copies)
    print(f"median of {args.repeats}")
    print(
        f"4000x3000 RGBA u8 ({len(buffer) / 1e6:.0f} MB): a plain copy takes "
        f"{copy_s * 1000:.1f} ms; the round trip through the server (target at most 3x):"
    )
    for (where, transport), seconds in trips.items():
        trip_s = statistics.median(seconds)
        print(f"  {where:<22} {transport:<7} {trip_s * 1000:7.1f} ms = {trip_s / copy_s:4.1f}x")
    print(f"cold start to hello_ok: {cold_start:.2f} s (target under 5 s)")
    latency = statistics.median(first_progress)
    print(f"warm submit to first progress: {latency * 1000:.0f} ms (target under 500 ms)")


if __name__ == "__main__":
    main()
