"""The GIMP plug-in's own overhead on a 4000x3000 RGBA layer, beside a plain buffer copy.

Runs a real GIMP 3 (tests/gimp/sandbox.py finds or builds it) against a real dream server, and
calls plug-in-deepdream with strength 0, a job on which the server does no dreaming: what is
left is the plug-in (start, read, send, receive, write, layer mask, undo group). Prints the
medians beside a plain copy of the same 48 MB buffer inside GIMP's Python (target: under 1.5 s).

Run (as root on Debian 12, for the GIMP root): .venv/bin/python bench/plugin_overhead.py
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "gimp"))
sys.path.insert(0, str(ROOT / "bench"))
from daemon_speed import start_server  # noqa: E402
from sandbox import find_gimps, install_plugin  # noqa: E402

IN_GIMP = r"""
import json, statistics, time
from gi.repository import Gegl, Gimp
Gegl.init(None)
image = Gimp.Image.new(4000, 3000, Gimp.ImageBaseType.RGB)
layer = Gimp.Layer.new(image, "photo", 4000, 3000, Gimp.ImageType.RGBA_IMAGE, 100.0,
                       Gimp.LayerMode.NORMAL)
image.insert_layer(layer, None, 0)
layer.fill(Gimp.FillType.WHITE)
image.select_ellipse(Gimp.ChannelOps.REPLACE, 0, 0, 4000, 3000)
Gimp.Selection.feather(image, 50.0)
procedure = Gimp.get_pdb().lookup_procedure("plug-in-deepdream")
calls, copies, reads = [], [], []
for _ in range(REPEATS):
    config = procedure.create_config()
    config.set_property("run-mode", Gimp.RunMode.NONINTERACTIVE)
    config.set_property("image", image)
    config.set_core_object_array("drawables", [layer])
    config.set_property("strength", 0.0)
    start = time.perf_counter()
    result = procedure.run(config)
    calls.append(time.perf_counter() - start)
    assert result.index(0) == Gimp.PDBStatusType.SUCCESS, result.index(1)
    image.remove_layer(result.index(1))
    start = time.perf_counter()
    pixels = layer.get_buffer().get(Gegl.Rectangle.new(0, 0, 4000, 3000), 1.0, "R'G'B'A u8",
                                    Gegl.AbyssPolicy.CLAMP)
    reads.append(time.perf_counter() - start)
    start = time.perf_counter()
    copy = bytearray(pixels)
    copies.append(time.perf_counter() - start)
with open(OUT, "w") as out:
    json.dump({"call": statistics.median(calls), "copy": statistics.median(copies),
               "read": statistics.median(reads)}, out)
"""


def main(repeats: int = 5) -> None:
    gimp = find_gimps(build=True)[-1]  # the newest GIMP
    scratch = gimp.scratch_dir()
    home = scratch / "server-home"  # its socket file must be where GIMP can see it
    profile = scratch / "profile"
    install = install_plugin(profile, home)
    if install.returncode != 0:
        raise SystemExit(f"install.py failed:\n{install.stdout}{install.stderr}")
    report = scratch / "report.json"
    script = scratch / "overhead.py"
    script.write_text(
        IN_GIMP.replace("REPEATS", str(repeats)).replace("OUT", repr(gimp.inside(report)))
    )
    server, cold_start, connection = start_server(home)
    try:
        environment = {
            "HOME": gimp.inside(scratch),
            "GIMP3_DIRECTORY": gimp.inside(profile),
            "DEEPDREAM_ENDPOINT": "ipc://" + gimp.inside(Path(connection.endpoint[6:])),
            "DEEPDREAM_TOKEN": connection.token,
        }
        command = gimp.batch_command(script, environment)
        subprocess.run(command, check=True, capture_output=True, timeout=600)
        figures = json.loads(report.read_text())
    finally:
        server.terminate()
        server.wait()
        shutil.rmtree(scratch, ignore_errors=True)
    print(f"4000x3000 RGBA u8 layer, feathered selection, strength 0, median of {repeats}:")
    print(f"  plug-in call, everything but the dream: {figures['call']:.2f} s (target under 1.5 s)")
    print(
        f"  plain copy of the 48 MB buffer:         {figures['copy']:.3f} s "
        f"({figures['call'] / figures['copy']:.0f}x)"
    )
    print(f"  reading the layer once:                 {figures['read']:.3f} s")


if __name__ == "__main__":
    main()
