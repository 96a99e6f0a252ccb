"""The dream server's own costs, side by side with what they compare to, in one run.

1. Round trip of a 4000x3000 RGBA u8 frame through the server with a no-op job (strength 0),
   against a plain copy of the same buffer (target: at most 3x the copy): through the default
   socket file with pyzmq and with the standard library's ZMTP (dream_zmtp.py, what GIMPs
   without pyzmq use), and through TCP on the loopback, which is encrypted (CURVE).
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

from dream_client import Connection, DreamClient  # noqa: E402


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    width, height = 4000, 3000
    pixels = np.random.default_rng(0).integers(0, 256, (height, width, 4), np.uint8)
    buffer = pixels.tobytes()
    home = Path(tempfile.mkdtemp(prefix="dream-bench-"))
    process, cold_start, connection = start_server(home)
    try:
        copies, trips, first_progress = [], [], []
        with DreamClient(connection) as client:
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                copy = bytearray(buffer)
                copies.append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                result = client.dream(buffer, width, height, 4, {"strength": 0.0})
                trips.append(time.perf_counter() - t0)
                assert bytes(result) == buffer and len(copy) == len(buffer)
        os.environ["DEEPDREAM_TRANSPORT"] = "stdlib"
        stdlib_trips = []
        with DreamClient(connection) as client:
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                result = client.dream(buffer, width, height, 4, {"strength": 0.0})
                stdlib_trips.append(time.perf_counter() - t0)
                assert bytes(result) == buffer
        del os.environ["DEEPDREAM_TRANSPORT"]
        with DreamClient(connection) as client:
            small = pixels[:768, :1024].copy()
            for _ in range(args.repeats):
                seen: list[float] = []
                t0 = time.perf_counter()
                client.dream(
                    small.tobytes(),
                    1024,
                    768,
                    4,
                    {"octaves": 1, "steps": 1},
                    on_progress=lambda *_, seen=seen: seen.append(time.perf_counter()),
                )
                first_progress.append(seen[0] - t0)
    finally:
        process.terminate()
        process.wait()
    tcp_home = Path(tempfile.mkdtemp(prefix="dream-bench-tcp-"))
    process, _, connection = start_server(tcp_home, "--bind", "tcp://127.0.0.1:0")
    try:
        tcp_trips = []
        with DreamClient(connection) as client:
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                result = client.dream(buffer, width, height, 4, {"strength": 0.0})
                tcp_trips.append(time.perf_counter() - t0)
                assert bytes(result) == buffer
    finally:
        process.terminate()
        process.wait()
    copy_s, trip_s = statistics.median(copies), statistics.median(trips)
    tcp_s, stdlib_s = statistics.median(tcp_trips), statistics.median(stdlib_trips)
    latency = statistics.median(first_progress)
    print(f"median of {args.repeats}")
    print(
        f"4000x3000 RGBA u8 ({len(buffer) / 1e6:.0f} MB): plain copy {copy_s * 1000:.1f} ms, "
        f"round trip through the server {trip_s * 1000:.1f} ms = {trip_s / copy_s:.1f}x "
        "the copy (target at most 3x)"
    )
    print(
        f"the same through the standard library's ZMTP: {stdlib_s * 1000:.1f} ms = "
        f"{stdlib_s / copy_s:.1f}x the copy, {stdlib_s / trip_s:.2f}x pyzmq's"
    )
    print(
        f"the same through TCP with CURVE: {tcp_s * 1000:.1f} ms = {tcp_s / copy_s:.1f}x the copy"
    )
    print(f"cold start to hello_ok: {cold_start:.2f} s (target under 5 s)")
    print(f"warm submit to first progress: {latency * 1000:.0f} ms (target under 500 ms)")


if __name__ == "__main__":
    main()
