"""How fast the DeepDream dialog's preview answers, on a warm server, in one run.

The preview asks for exactly what the dialog's DreamPreview sends: a 256x256 area of a photo at
full size with the 64 px of context around it the whole dream would give it (384x384 RGBA u8),
with the default settings. Two figures, medians of --repeats:

1. First preview: the request to the drawn result (the dialog opens on a warm server).
2. Updated preview: a setting changes while a preview renders (after --change-after s): the
   render under way is cancelled on the server and the new one runs; from the change to the new
   result.

Before it asks, the dialog waits for GIMP's preview to settle when it opens (200 ms, GimpPreview's
own delay) and for the settings to be still for 50 ms after a change; those waits are added in
the last column. Targets on the 2-core machine: 1.5 s and 1 s. The update is measured for a
change of strength and for a change of preset to `objects`, whose deep layers cost the most.

Run: .venv/bin/python bench/preview_speed.py [--repeats 7]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from daemon_speed import start_server  # noqa: E402

from dream_link.client import DreamClient  # noqa: E402
from dream_link.wire import DreamCancelled  # noqa: E402

AREA, CONTEXT = 256, 32  # the plug-in's PREVIEW_CONTEXT
OPEN_SETTLE_S, CHANGE_SETTLE_S = 0.2, 0.05
PHOTO = Path(__file__).resolve().parent.parent / "tests" / "photos" / "rocket.jpg"


def preview_request() -> tuple[bytes, int]:
    side = AREA + 2 * CONTEXT
    photo = Image.open(PHOTO).convert("RGBA")
    left, top = (photo.width - side) // 2, (photo.height - side) // 2
    return np.asarray(photo.crop((left, top, left + side, top + side))).tobytes(), side


def first_preview(client: DreamClient, pixels: bytes, side: int) -> float:
    started = time.perf_counter()
    client.dream(pixels, side, side, 4, {"preset": "animals"})
    return time.perf_counter() - started


def updated_preview(
    client: DreamClient, pixels: bytes, side: int, change_after: float, changed_to: dict
) -> float:
    """A render under way, then a change: cancel it, render the new settings."""
    changed = threading.Event()
    changed_at = []

    def change() -> None:
        changed_at.append(time.perf_counter())
        changed.set()

    threading.Timer(change_after, change).start()
    try:
        client.dream(pixels, side, side, 4, {"preset": "animals"}, should_stop=changed.is_set)
        raise SystemExit(f"the first render ended before the change at {change_after} s")
    except DreamCancelled:
        pass
    client.dream(pixels, side, side, 4, changed_to)
    return time.perf_counter() - changed_at[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--change-after", type=float, default=0.4)
    args = parser.parse_args()
    pixels, side = preview_request()
    home = Path(tempfile.mkdtemp(prefix="dream-bench-"))
    process, _, connection = start_server(home)
    try:
        with DreamClient(connection, start_server=False) as client:
            first_preview(client, pixels, side)  # warm: the model's first run
            firsts = [first_preview(client, pixels, side) for _ in range(args.repeats)]
            updates = {
                name: [
                    updated_preview(client, pixels, side, args.change_after, changed_to)
                    for _ in range(args.repeats)
                ]
                for name, changed_to in (
                    ("strength 1 -> 0.5", {"preset": "animals", "strength": 0.5}),
                    ("preset -> objects", {"preset": "objects"}),
                )
            }
    finally:
        process.terminate()
        process.wait()
    print(f"preview of {AREA}x{AREA} with {CONTEXT} px of context ({side}x{side} RGBA u8), "
          f"default settings, warm server; medians of {args.repeats}")  # fmt: skip
    print(f"{'':28}{'server':>10}{'+ settling':>14}{'target':>10}")
    rows = [("first preview", firsts, OPEN_SETTLE_S, 1.5)]
    rows += [(f"update: {name}", times, CHANGE_SETTLE_S, 1.0) for name, times in updates.items()]
    for name, times, settle, target in rows:
        median = statistics.median(times)
        print(f"{name:28}{median:>9.2f}s{median + settle:>13.2f}s{target:>9.1f}s")


if __name__ == "__main__":
    main()
