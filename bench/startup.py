"""How soon the `deepdream` and `dream-server --status` commands answer, beside the time Python
takes to import torch.

    python bench/startup.py [--runs 5]

Each row is the median of the runs, in seconds of wall-clock time from starting the process:
the quick answers run to their end; for a dream of the sample photo, the rows are the moment
its first progress line appears and the moment its first step is reported.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "dream_server" / "samples" / "coffee.png"
DEEPDREAM = [sys.executable, "-m", "dream_server.cli"]


def until_exit(command: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run(command, capture_output=True, cwd=ROOT)
    return time.perf_counter() - started


def until_progress(command: list[str]) -> tuple[float, float]:
    """Seconds to the first progress line, and to the first reported step."""
    started = time.perf_counter()
    process = subprocess.Popen(command, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, cwd=ROOT)
    first_line = first_step = float("nan")
    text = b""
    while process.poll() is None or process.stderr.peek():
        chunk = process.stderr.read1(4096)
        if not chunk:
            break
        text += chunk
        now = time.perf_counter() - started
        if math.isnan(first_line) and b"|" in text:
            first_line = now
        if b"dreaming" in text:
            first_step = now
            break
    process.kill()
    process.wait()
    return first_line, first_step


def status_times(home: Path, runs: int) -> list[float]:
    """`dream-server --status` asking a running server (one started for it, without a model)."""
    environment = {**os.environ, "DEEPDREAM_HOME": str(home)}
    server = subprocess.Popen([sys.executable, "-m", "dream_server.daemon", "--lazy"], cwd=ROOT,
                              env=environment, stdout=subprocess.DEVNULL)  # fmt: skip
    try:
        while not (home / "endpoint.json").exists():
            time.sleep(0.05)
        status = [sys.executable, "-m", "dream_server.daemon", "--status"]
        times = []
        for _ in range(runs):
            started = time.perf_counter()
            subprocess.run(status, capture_output=True, cwd=ROOT, env=environment, check=True)
            times.append(time.perf_counter() - started)
        return times
    finally:
        server.terminate()
        server.wait()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        output = str(Path(scratch) / "dream.png")
        quick = {
            "python -c 'import torch'": [sys.executable, "-c", "import torch"],
            "deepdream --help": [*DEEPDREAM, "--help"],
            "deepdream --version": [*DEEPDREAM, "--version"],
            "deepdream --list-models": [*DEEPDREAM, "--list-models"],
            "deepdream (argument error)": [*DEEPDREAM, str(SAMPLE), "-o", output, "--steps", "0"],
        }
        rows = {
            name: [until_exit(command) for _ in range(args.runs)] for name, command in quick.items()
        }
        dream = [*DEEPDREAM, str(SAMPLE), "-o", output]
        progress = [until_progress(dream) for _ in range(args.runs)]
        rows["dream-server --status"] = status_times(Path(scratch), args.runs)
    rows["dream: first progress line"] = [line for line, _ in progress]
    rows["dream: first step reported"] = [step for _, step in progress]
    print(f"median of {args.runs} runs, seconds")
    for name, seconds in rows.items():
        print(f"{name:30} {statistics.median(seconds):6.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
