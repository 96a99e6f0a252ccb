"""The plug-in in a real GIMP 3, run headless in batch mode, against a real dream server."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import PHOTOS, ROOT, SAMPLES, panned_frames, start_server
from numerics import jump_at_the_wrap_and_in_the_middle
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent / "gimp"))
from sandbox import SUITES, Gimp, find_gimps, install_plugin  # noqa: E402

from dream_link.client import DreamClient  # noqa: E402
from dream_server.engine import Engine  # noqa: E402
from dream_server.params import ChannelsParams  # noqa: E402

pytestmark = pytest.mark.gimp

QUICK = {"octaves": 2, "steps": 3, "preset": "textures"}
ELLIPSE = [100, 60, 220, 160]  # x, y, width, height on the 451x300 cat
FEATHER = 30.0
SHEET = {"layer": "block7", "top": 3, "size": 64, "steps": 4}


GIMPS = find_gimps()
"""Every GIMP 3 line that artists run, each in a root of its own (tests/gimp/sandbox.py)."""


def gimp_id(gimp: Gimp | None) -> str:
    return f"gimp-{gimp.version}" if gimp else "no-gimp"


@pytest.fixture(scope="session", params=GIMPS or [None], ids=gimp_id)
def gimp(request) -> Gimp:  # noqa: ANN001
    if len({found.version for found in GIMPS}) < len(SUITES):
        reason = (
            f"NOT EVERY GIMP 3 IS HERE (found: {GIMPS or 'none'}): the GIMP tests run in one "
            f"root per Debian release ({', '.join(SUITES)}); build them with "
            "`python3 tests/gimp/sandbox.py` (as root)."
        )
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        if request.param is None:
            pytest.skip(reason)
    return request.param


@pytest.fixture(scope="session")
def workspace(gimp):
    """A scratch folder GIMP can see, a GIMP profile with the plug-in installed by install.py,
    and a dream server on this machine."""
    scratch = gimp.scratch_dir()
    home, profile = scratch / "home", scratch / "profile"
    install = install_plugin(profile, home)
    assert install.returncode == 0, install.stdout + install.stderr
    assert (profile / "plug-ins" / "deepdream" / "deepdream.py").stat().st_mode & 0o111
    for name in ("chelsea.png", "coffee.png"):
        shutil.copy(SAMPLES / name, scratch / name)
    photos = scratch / "photos"  # an artist's folder: photos, and a file that is none
    photos.mkdir()
    for source in (SAMPLES / "coffee.png", PHOTOS / "rocket.jpg"):
        shutil.copy(source, photos / source.name)
    (photos / "notes.txt").write_text("not a photo")
    server = start_server(home)
    yield scratch, profile, server
    server.stop()
    shutil.rmtree(scratch, ignore_errors=True)


def test_install_py_puts_the_plug_in_where_this_gimp_looks(gimp, workspace):
    """An artist's first install: this GIMP installed but never started (no profile yet), a
    profile left by another 3.x release; `python3 install.py`, then GIMP finds DeepDream."""
    scratch = workspace[0]
    home = scratch / "artist"
    other = "3.0" if gimp.version != "3.0" else "3.2"
    (home / ".config" / "GIMP" / other).mkdir(parents=True)
    programs = (
        gimp.root / "usr" / "bin"
        if gimp.root
        else Path(shutil.which("gimp-console-" + gimp.version)).parent
    )
    artist = {key: value for key, value in os.environ.items() if key != "XDG_CONFIG_HOME"}
    artist.update(HOME=str(home), DEEPDREAM_HOME=str(scratch / "artist-state"),
                  PATH=f"{os.environ['PATH']}{os.pathsep}{programs}")  # fmt: skip
    installed = subprocess.run(
        [sys.executable, ROOT / "install.py", "--venv", sys.prefix, "--no-sample"],
        env=artist, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert installed.returncode == 0, installed.stdout + installed.stderr
    for release in (gimp.version, other):
        folder = home / ".config" / "GIMP" / release / "plug-ins" / "deepdream"
        assert f"installed the GIMP plug-in in {folder}" in installed.stdout, installed.stdout
    check = subprocess.run(
        [sys.executable, ROOT / "install.py", "--check", "--venv", sys.prefix],
        env=artist, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    profiles = home / ".config" / "GIMP"
    assert (f"GIMP {gimp.version} (system): profile {profiles / gimp.version}; the plug-in is "
            "installed and current") in check.stdout, check.stdout  # fmt: skip
    assert (
        f"GIMP {other} (a profile; this GIMP is not installed): profile "
        f"{profiles / other}; the plug-in is installed and current"
    ) in check.stdout
    answer = scratch / "found.txt"
    script = scratch / "find-deepdream.py"
    script.write_text(
        f"open({gimp.inside(answer)!r}, 'w').write("
        "str(Gimp.get_pdb().procedure_exists('plug-in-deepdream')))\n"
    )
    command = gimp.batch_command(script, {"HOME": gimp.inside(home)})
    ran = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert answer.read_text() == "True", ran.stdout + ran.stderr


def server_for_gimp(gimp: Gimp, server) -> dict[str, str]:  # noqa: ANN001
    """The variables that point GIMP at the test's server: its socket file as GIMP sees it."""
    endpoint = server.record["endpoint"]
    if endpoint.startswith("ipc://"):
        endpoint = "ipc://" + gimp.inside(Path(endpoint.removeprefix("ipc://")))
    variables = {"DEEPDREAM_ENDPOINT": endpoint, "DEEPDREAM_TOKEN": server.record["token"]}
    if "server_key" in server.record:
        variables["DEEPDREAM_SERVER_KEY"] = server.record["server_key"]
    return variables


def run_gimp(
    gimp: Gimp, workspace, scenarios: list[dict], endpoint: str | None = None, pyzmq: bool = True
) -> dict:
    process = start_gimp(gimp, workspace, scenarios, endpoint, pyzmq)
    process.wait(timeout=300)
    return read_reports(workspace, scenarios)


NO_PYZMQ = """
with open(__file__ + ".tried", "a") as tried:  # the proof that the plug-in looked for it
    tried.write("import zmq failed\\n")
raise ImportError("No module named 'zmq': this Python is like the GIMPs that bundle their own")
"""


def start_gimp(
    gimp: Gimp, workspace, scenarios: list[dict], endpoint: str | None = None, pyzmq: bool = True
):
    """gimp-console running tests/gimp/scenarios.py on the scenarios, in the background; with
    `pyzmq` False, `import zmq` fails in its plug-ins' Python, as in the GIMPs for Windows, macOS
    and Flatpak."""
    scratch, profile, server = workspace
    for scenario in scenarios:
        folder = scratch / scenario["name"]
        folder.mkdir()
        folder.chmod(0o777)
        scenario["folder"] = gimp.inside(folder)
        scenario["file"] = gimp.inside(scratch / scenario.get("photo", "chelsea.png"))
        if "exemplars" in scenario:
            folder = gimp.inside(scratch / scenario["exemplars"])
            scenario["params"] = {**scenario["params"], "exemplars-folder": folder}
    (scratch / "scenarios.json").write_text(json.dumps(scenarios))
    environment = {
        "HOME": gimp.inside(scratch / "home"),
        "GIMP3_DIRECTORY": gimp.inside(profile),
        "DEEPDREAM_SCENARIOS": gimp.inside(scratch / "scenarios.json"),
        **server_for_gimp(gimp, server),
        "DEEPDREAM_HOME": gimp.inside(scratch / "home"),
        # babl converts pixels by paths it picks per process, some of them approximate: a
        # 16-bit layer read as float then differs in the last bits from run to run, and the
        # dream makes that up to 3% (seen: 1787 of 65535). Exact paths make runs comparable.
        "BABL_TOLERANCE": "0",
    }
    if endpoint is not None:
        environment["DEEPDREAM_ENDPOINT"] = endpoint
    if "token" in scenarios[0]:
        environment["DEEPDREAM_TOKEN"] = scenarios[0]["token"]
    if not pyzmq:
        blocker = scratch / "without-pyzmq" / "zmq"
        blocker.mkdir(parents=True, exist_ok=True)
        (blocker / "__init__.py").write_text(NO_PYZMQ)
        blocker.chmod(0o777)
        environment["PYTHONPATH"] = gimp.inside(blocker.parent)
    script = ROOT / "tests" / "gimp" / "scenarios.py"
    if gimp.root is not None:  # the root cannot see the project: copy the script in
        script = Path(shutil.copy(script, scratch / "scenarios.py"))
    command = gimp.batch_command(script, environment)
    with open(scratch / f"gimp-{scenarios[0]['name']}.log", "w") as log:  # not a pipe: GIMP
        # A session of its own: the test ends GIMP and everything it started, and nothing else.
        return subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )  # not a pipe: GIMP would block on it


def descendants(pid: int) -> list[int]:
    """The processes started by `pid`, and by those, from /proc."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            # The command name in field 2 may hold spaces: the parent follows its ")".
            parent = int((entry / "stat").read_text().rpartition(")")[2].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(parent, []).append(int(entry.name))
    found, pending = [], [pid]
    while pending:
        for child in children.get(pending.pop(), []):
            found.append(child)
            pending.append(child)
    return found


def command_line(pid: int) -> str:
    try:
        return (Path("/proc") / str(pid) / "cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def end_session(process: subprocess.Popen) -> None:
    """Kill a process started with a session of its own, with all it started, and reap it."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def read_reports(workspace, scenarios: list[dict]) -> dict:
    reports = {}
    log = (workspace[0] / f"gimp-{scenarios[0]['name']}.log").read_text()
    for scenario in scenarios:
        report_file = workspace[0] / scenario["name"] / "report.json"
        assert report_file.exists(), f"no report for {scenario['name']}; GIMP said:\n{log[-3000:]}"
        reports[scenario["name"]] = json.loads(report_file.read_text())
        assert reports[scenario["name"]]["status"] != "script-error", reports[scenario["name"]]
    return reports


def raw(workspace, name: str, file: str, shape: tuple, dtype=np.uint8) -> np.ndarray:
    return np.fromfile(workspace[0] / name / file, dtype).reshape(shape)


SCENARIOS = [
    {"name": "feathered", "ellipse": ELLIPSE, "feather": FEATHER, "params": QUICK, "again": True},
    {
        "name": "alpha-mode",
        "ellipse": ELLIPSE,
        "feather": FEATHER,
        "params": {**QUICK, "selection-mode": "alpha"},
        "redream": {"params": {**QUICK, "steps": 4}},
    },
    {"name": "whole-layer", "params": QUICK},
    {"name": "offset-layer", "offsets": [37, 23], "ellipse": [0, 0, 200, 150], "params": QUICK},
    {"name": "gray", "gray": True, "ellipse": ELLIPSE, "format": "Y'A u8", "params": QUICK},
    {"name": "with-alpha", "alpha": True, "params": QUICK},
    {
        "name": "16-bit",
        "precision": "u16",
        "ellipse": ELLIPSE,
        "format": "R'G'B'A u16",
        "params": QUICK,
    },
    {"name": "indexed", "indexed": True, "params": QUICK},
    {
        "name": "custom-layers",
        "ellipse": ELLIPSE,
        "params": {**QUICK, "preset": "custom", "layers": "block3:1,block7/5:0.5"},
    },
    {
        "name": "layers-with-a-preset",
        "ellipse": ELLIPSE,
        "params": {**QUICK, "preset": "objects", "layers": "block5"},
    },
    {
        "name": "layers-with-custom",
        "ellipse": ELLIPSE,
        "params": {**QUICK, "preset": "custom", "layers": "block5"},
    },
    {"name": "tileable", "ellipse": ELLIPSE, "params": {**QUICK, "tileable": True}},
    {
        "name": "redream",
        "ellipse": ELLIPSE,
        "feather": FEATHER,
        "params": QUICK,
        "redream": {"params": {**QUICK, "steps": 4, "seed": 5}},
    },
    {
        "name": "fresh-as-redreamed",
        "ellipse": ELLIPSE,
        "feather": FEATHER,
        "params": {**QUICK, "steps": 4, "seed": 5},
    },
    {
        "name": "redream-retouched-via-xcf",
        "ellipse": ELLIPSE,
        "params": QUICK,
        "redream": {"params": QUICK, "retouch": True, "via_xcf": True},
    },
    {
        "name": "redream-without-its-source",
        "params": QUICK,
        "redream": {"params": QUICK, "remove_source": True},
    },
    {
        "name": "channels",
        "procedure": "channels",
        "ellipse": ELLIPSE,
        "exemplars": "photos",
        "params": {**SHEET, "open-images": True},
    },
    {"name": "channels-whole", "procedure": "channels", "params": SHEET},
    {
        "name": "channels-twice",
        "procedure": "channels",
        "params": {**SHEET, "top": 1, "open-images": True},
        "twice": True,
    },
    {"name": "channels-wrong-layer", "procedure": "channels", "params": {"layer": "block99"}},
    {
        "name": "accentuate",
        "procedure": "accentuate",
        "ellipse": ELLIPSE,
        "feather": FEATHER,
        "params": {"layer": "block7", "channel": 34, "steps": 8},
    },
    {
        "name": "accentuate-gray-16-bit",
        "procedure": "accentuate",
        "gray": True,
        "precision": "u16",
        "ellipse": ELLIPSE,
        "params": {"layer": "block7", "channel": 34, "steps": 2},
    },
    {
        "name": "accentuate-without-mask",
        "procedure": "accentuate",
        "params": {"class": "tabby", "steps": 2, "change-mask": False},
    },
    {
        "name": "accentuate-again",
        "procedure": "accentuate",
        "ellipse": ELLIPSE,
        "feather": FEATHER,
        "params": {"layer": "block7", "channel": 34, "steps": 2},
        "redream": {"params": {"layer": "block7", "channel": 71, "steps": 4}},
    },
    {
        "name": "accentuate-fresh-as-again",
        "procedure": "accentuate",
        "ellipse": ELLIPSE,
        "feather": FEATHER,
        "params": {"layer": "block7", "channel": 71, "steps": 4},
    },
    {
        "name": "accentuate-again-retouched-via-xcf",
        "procedure": "accentuate",
        "params": {"layer": "block7", "channel": 34, "steps": 2},
        "redream": {
            "params": {"class": "tabby", "steps": 2, "change-mask": False},
            "retouch": True,
            "via_xcf": True,
        },
    },
    {
        "name": "accentuate-again-without-its-source",
        "procedure": "accentuate",
        "params": {"layer": "block7", "channel": 34, "steps": 1},
        "redream": {"params": {"layer": "block7", "channel": 34}, "remove_source": True},
    },
    {
        "name": "accentuate-again-cropped",
        "procedure": "accentuate",
        "params": {"layer": "block7", "channel": 34, "steps": 1},
        "redream": {"params": {"layer": "block7", "channel": 34}, "crop": True},
    },
    {
        "name": "selection-misses-layer",
        "offsets": [200, 150],
        "ellipse": [0, 0, 100, 80],
        "params": QUICK,
    },
]


@pytest.fixture(scope="session")
def reports(gimp, workspace) -> dict:
    return run_gimp(gimp, workspace, [dict(s) for s in SCENARIOS])


def new_layer_checks(report: dict) -> dict:
    """Status, the returned layer directly above the source, named after the dream."""
    assert report["status"] == "success", report
    assert len(report["layers_after"]) == len(report["layers_before"]) + 1
    new = report["returned"]
    assert report["source_position"] == report["returned_position"] + 1  # directly above
    assert report["layers_after"][report["returned_position"]] == new
    assert new["name"] == "textures 2x3 · DeepDream"
    return new


def test_a_feathered_selection_becomes_a_new_layer_with_that_mask(workspace, reports):
    report = reports["feathered"]
    new = new_layer_checks(report)
    assert new["has_mask"]
    x, y, width, height = ELLIPSE
    # The layer covers the selection's bounds; feathering widens them a little.
    assert abs(new["offsets"][0] - x) <= FEATHER and abs(new["offsets"][1] - y) <= FEATHER
    assert width <= new["size"][0] <= width + 2 * FEATHER
    w, h = new["size"]
    mask = raw(workspace, "feathered", "mask.raw", (h, w))
    selection = raw(workspace, "feathered", "selection.raw", (h, w))
    assert np.array_equal(mask, selection)
    assert len(np.unique(mask)) > 100  # the feather's soft edge survived
    layer = raw(workspace, "feathered", "layer.raw", (h, w, 4)).astype(int)
    source = raw(workspace, "feathered", "source-before.raw", (300, 451, 4)).astype(int)
    ox, oy = new["offsets"]
    under = source[oy : oy + h, ox : ox + w]
    inside = mask == 255
    assert np.abs(layer[inside][:, :3] - under[inside][:, :3]).mean() > 3


def test_the_source_layer_is_never_modified(workspace, reports):
    for name in reports:
        before = (workspace[0] / name / "source-before.raw").read_bytes()
        after = (workspace[0] / name / "source-after.raw").read_bytes()
        assert before == after, name


def test_alpha_mode_bakes_the_selection_into_transparency(workspace, reports):
    report = reports["alpha-mode"]
    new = new_layer_checks(report)
    assert not new["has_mask"] and new["has_alpha"]
    w, h = new["size"]
    alpha = raw(workspace, "alpha-mode", "layer.raw", (h, w, 4))[:, :, 3].astype(int)
    selection = raw(workspace, "alpha-mode", "selection.raw", (h, w)).astype(int)
    assert np.abs(alpha - selection).max() <= 1


def test_a_tileable_dream_covers_the_layer_and_tiles_with_the_selection_as_its_mask(
    workspace, reports
):
    report = reports["tileable"]
    assert report["status"] == "success", report
    new = report["returned"]
    assert new["name"] == "textures 2x3 tileable · DeepDream"
    assert new["offsets"] == [0, 0] and new["size"] == [451, 300] and new["has_mask"]
    layer = raw(workspace, "tileable", "layer.raw", (300, 451, 4))[:, :, :3]
    wrap, middle = jump_at_the_wrap_and_in_the_middle(layer)
    assert wrap <= 1.25 * middle, (wrap, middle)
    source = raw(workspace, "tileable", "source-before.raw", (300, 451, 4))[:, :, :3]
    source_wrap, source_middle = jump_at_the_wrap_and_in_the_middle(source)
    assert source_wrap > 3 * source_middle  # the cat does not tile: its dream does


def test_without_a_selection_the_whole_layer_is_dreamed(workspace, reports):
    new = new_layer_checks(reports["whole-layer"])
    assert new["offsets"] == [0, 0] and new["size"] == [451, 300] and not new["has_mask"]


def test_a_layer_with_offsets_gets_a_layer_at_the_right_place(workspace, reports):
    report = reports["offset-layer"]
    new = new_layer_checks(report)
    assert report["source"]["offsets"] == [37, 23]
    # The ellipse (0,0)-(200,150) in image coordinates meets the layer from (37,23) on.
    assert new["offsets"][0] >= 37 and new["offsets"][1] >= 23
    assert new["offsets"][0] + new["size"][0] <= 200 and new["offsets"][1] + new["size"][1] <= 150


def test_a_gray_image_gets_a_gray_layer(workspace, reports):
    new = new_layer_checks(reports["gray"])
    assert new["gray"] and new["has_mask"]


def test_transparency_in_the_source_carries_into_the_dream(workspace, reports):
    new = new_layer_checks(reports["with-alpha"])
    layer = raw(workspace, "with-alpha", "layer.raw", (300, 451, 4))
    source = raw(workspace, "with-alpha", "source-before.raw", (300, 451, 4))
    assert new["size"] == [451, 300]
    assert np.array_equal(layer[:, :, 3], source[:, :, 3])
    assert (source[:80, :120, 3] == 0).all()


def test_a_16_bit_image_dreams_at_16_bits(workspace, reports):
    new = new_layer_checks(reports["16-bit"])
    w, h = new["size"]
    layer = raw(workspace, "16-bit", "layer.raw", (h, w, 4), np.uint16)
    assert np.mean(layer[:, :, :3] % 257 != 0) > 0.5  # values between the 8-bit levels


def test_an_indexed_image_is_refused_and_left_alone(reports):
    report = reports["indexed"]
    assert report["status"] == "execution-error"
    assert "Image > Mode > RGB" in report["message"]
    assert report["layers_after"] == report["layers_before"]


def test_custom_layers_from_a_script_name_the_new_layer(reports):
    report = reports["custom-layers"]
    assert report["status"] == "success", report
    assert report["returned"]["name"] == "block3:1,block7/5:0.5 2x3 · DeepDream"


def test_dreaming_again_right_after_a_dream_dreams_that_layer_again_in_place(reports):
    # Ctrl+F: the same procedure with the last values, on what is active: the new dream layer
    # (not its mask), which is dreamed again from its source, not stacked on.
    report = reports["feathered"]
    again = report["again"]
    assert again["active"] == ["Layer"]
    assert again["status"] == "success", again
    assert again["layers_after"] == report["layers_after"]  # no new layer, the same names
    assert again["returned_position"] == report["returned_position"]


def made_again_in_place(report: dict) -> dict:
    """The layer a scenario made, as running the plug-in on it again left it: the same layer,
    where it was, and no new one."""
    again = report["redream"]
    assert again["status"] == "success", again
    before, after = again["before"], again["after"]
    assert after["id"] == before["id"] and after["position"] == before["position"]
    assert after["offsets"] == before["offsets"] and after["size"] == before["size"]
    assert len(again["layers_after"]) == len(report["layers_after"])
    return after


def test_a_dream_layer_dreamed_again_with_new_values_is_that_dream_in_place(workspace, reports):
    report, fresh = reports["redream"], reports["fresh-as-redreamed"]
    after = made_again_in_place(report)
    assert after["has_mask"] and after["name"] == "textures 2x4 · DeepDream"
    w, h = after["size"]
    # Bit for bit what a fresh dream with those values gives (the CPU, the same seed), and
    # the feathered mask as it was.
    redreamed = raw(workspace, "redream", "redreamed.raw", (h, w, 4))
    assert np.array_equal(redreamed, raw(workspace, "fresh-as-redreamed", "layer.raw", (h, w, 4)))
    assert np.array_equal(raw(workspace, "redream", "redreamed-mask.raw", (h, w)),
                          raw(workspace, "redream", "mask.raw", (h, w)))  # fmt: skip
    first = raw(workspace, "redream", "layer.raw", (h, w, 4))
    assert not np.array_equal(redreamed, first)
    assert fresh["status"] == "success"


def test_a_dream_whose_selection_became_its_alpha_keeps_that_alpha_when_dreamed_again(
    workspace, reports
):
    redream = reports["alpha-mode"]["redream"]
    assert redream["status"] == "success", redream
    w, h = redream["after"]["size"]
    first = raw(workspace, "alpha-mode", "layer.raw", (h, w, 4))
    again = raw(workspace, "alpha-mode", "redreamed.raw", (h, w, 4))
    assert np.array_equal(again[:, :, 3], first[:, :, 3])  # the feathered ellipse, as it was
    assert not np.array_equal(again[:, :, :3], first[:, :, :3])


def test_a_dream_layer_whose_source_is_gone_says_so_in_one_line_and_stays_as_it_was(reports):
    redream = reports["redream-without-its-source"]["redream"]
    assert redream["status"] == "execution-error"
    message = redream["message"]
    assert "(Background) is not in this image any more" in message and "\n" not in message
    assert "Layer > New from Visible" in message
    assert redream["layers_after"] == [{k: v for k, v in redream["before"].items()
                                        if k not in ("id", "position")}]  # fmt: skip


def test_a_dream_layer_kept_in_an_xcf_file_dreams_again_from_the_retouched_photo(
    workspace, reports
):
    report = reports["redream-retouched-via-xcf"]
    redream = report["redream"]
    assert redream["status"] == "success", redream
    assert redream["after"]["name"] == redream["before"]["name"] == "textures 2x3 · DeepDream"
    w, h = redream["after"]["size"]
    ox, oy = redream["after"]["offsets"]
    first = raw(workspace, "redream-retouched-via-xcf", "layer.raw", (h, w, 4)).astype(int)
    again = raw(workspace, "redream-retouched-via-xcf", "redreamed.raw", (h, w, 4)).astype(int)
    white = again[100 - oy + 10 : 140 - oy - 10, 150 - ox + 10 : 210 - ox - 10, :3]
    assert (
        white.mean()
        > first[100 - oy + 10 : 140 - oy - 10, 150 - ox + 10 : 210 - ox - 10, :3].mean() + 40
    )  # the white square shows through the dream


def test_layers_typed_with_a_preset_are_the_layers_dreamed(reports, workspace):
    typed, custom = reports["layers-with-a-preset"], reports["layers-with-custom"]
    assert typed["status"] == custom["status"] == "success", (typed, custom)
    assert typed["returned"]["name"] == "block5 2x3 · DeepDream"
    shape = (*typed["returned"]["size"][::-1], 4)
    assert np.array_equal(
        raw(workspace, "layers-with-a-preset", "layer.raw", shape),
        raw(workspace, "layers-with-custom", "layer.raw", shape),
    )


def test_a_stale_token_in_gimps_environment_does_not_stop_the_dream(gimp, workspace):
    # GIMP keeps the environment it started with; the server restarted with a new token.
    scenario = {"name": "stale-token", "ellipse": ELLIPSE, "params": QUICK, "token": "before"}
    report = run_gimp(gimp, workspace, [scenario])["stale-token"]
    assert report["status"] == "success", report


VISUALIZE = {"layer": "block7", "channel": 5, "samples": 3, "size": 96, "steps": 24}


def test_feature_visualization_opens_a_new_image_with_a_layer_per_sample(gimp, workspace):
    scenario = {"name": "visualize", "procedure": "visualize", "params": VISUALIZE}
    report = run_gimp(gimp, workspace, [scenario])["visualize"]
    assert report["status"] == "success", report
    assert report["images_after"] == report["images_before"] + 1
    assert report["size"] == [96, 96]
    assert report["title"] == "block7-5 feature visualization.xcf"  # not "[Untitled]"
    assert sorted(layer["name"] for layer in report["layers"]) == [
        "block7/5 #1", "block7/5 #2", "block7/5 #3"
    ]  # fmt: skip
    samples = [raw(workspace, "visualize", f"sample-{i}.raw", (96, 96, 3)) for i in range(3)]
    assert all(sample.std() > 10 for sample in samples)  # pictures, not flat grey
    assert not np.array_equal(samples[0], samples[1])


def test_feature_visualization_adds_as_many_patches_of_the_artists_photos_as_asked(gimp, workspace):
    scenario = {"name": "visualize-exemplars", "procedure": "visualize", "exemplars": "photos",
                "params": {**VISUALIZE, "samples": 1, "exemplars-each": 3}}  # fmt: skip
    report = run_gimp(gimp, workspace, [scenario])["visualize-exemplars"]
    assert report["status"] == "success", report
    names = [layer["name"] for layer in report["layers"]]
    assert names[0] == "block7/5 #1" and len(names) == 4  # the render, and 3 as asked
    assert all(name.startswith("block7/5 in ") for name in names[1:])
    photos = {name.rpartition(" in ")[2].split(" #")[0] for name in names[1:]}  # GIMP numbers
    assert photos <= {"coffee.png", "rocket.jpg"}  # a second "coffee.png" layer "... #1"
    patches = [raw(workspace, "visualize-exemplars", f"sample-{i}.raw", (96, 96, 3))
               for i in range(1, 4)]  # fmt: skip
    assert all(patch.std() > 5 for patch in patches)  # pieces of photos, not blanks


def test_feature_visualization_side_by_side_is_one_labelled_layer(gimp, workspace):
    scenario = {
        "name": "visualize-sheet",
        "procedure": "visualize",
        "params": {**VISUALIZE, "layout": "sheet"},
    }
    report = run_gimp(gimp, workspace, [scenario])["visualize-sheet"]
    assert report["status"] == "success", report
    [layer] = report["layers"]
    assert layer["name"] == "block7/5 · 3 samples"
    width, height = report["size"]
    assert layer["size"] == [width, height] and width > 2 * 96 and height > 96
    sheet = raw(workspace, "visualize-sheet", "sample-0.raw", (height, width, 3))
    label_rows = sheet[96 + 4 : 96 + 4 + 18]  # under the first row of samples: their labels
    assert (label_rows < 128).any() and (label_rows == 255).mean() > 0.5  # dark text on white


@pytest.fixture(scope="module")
def local_engine() -> Engine:
    """The engine on the device the server picks by itself, to compare its results with."""
    return Engine("auto")


def sheet_cell(sheet: np.ndarray, row: int, column: int, size: int = 64) -> np.ndarray:
    """A picture of a contact sheet of `size` px cells (dream_server.sheets' layout)."""
    top, left = 4 + row * (size + 18 + 4), 4 + column * (size + 4)
    return sheet[top : top + size, left : left + size]


def test_strongest_channels_opens_a_sheet_of_them_beside_patches_of_the_artists_photos(
    workspace, reports, local_engine
):
    report = reports["channels"]
    assert report["status"] == "success", report
    assert report["images_after"] == report["images_before"] + 1
    assert len(report["layers_after"]) == 1  # the photo is left as it was
    labels = [part.split()[0] for part in report["channels"].split(", ")]
    assert len(labels) == 3 and all(label.startswith("block7/") for label in labels)
    assert report["title"].endswith(" block7 channels.xcf")  # after the photo or its layer
    # 3 rows: the channel's picture, then 4 patches from the folder's photos and the open image
    width, height = report["size"]
    assert (width, height) == (4 + 5 * 68, 4 + 3 * 86)
    sheet = raw(workspace, "channels", "sheet.raw", (height, width, 3))
    for row in range(3):
        assert all(sheet_cell(sheet, row, column).std() > 5 for column in range(5))
    # without a selection: the channels the whole photo excites most, as the engine names them
    whole = reports["channels-whole"]
    cat = np.array(Image.open(SAMPLES / "chelsea.png").convert("RGB"))
    expected = local_engine.strongest_channels(cat, ChannelsParams.from_mapping({"top": 3}))
    assert whole["channels"] == ", ".join(f"{c.label} {c.share:.1%}" for c in expected)
    assert whole["channels"] != report["channels"]  # the selection's are its own
    # the open images' patches are the photo's (2 at most from one photo), not those of a
    # sheet DeepDream made before
    twice = reports["channels-twice"]
    assert twice["status"] == "success", twice
    first, second = (raw(workspace, "channels-twice", name, (86 + 4, 3 * 68 + 4, 3))
                     for name in ("first-sheet.raw", "sheet.raw"))  # fmt: skip
    assert np.array_equal(first, second)
    wrong = reports["channels-wrong-layer"]
    assert wrong["status"] == "execution-error" and "block99" in wrong["message"]


def test_accentuate_adds_a_layer_of_the_selection_masked_where_it_changed(workspace, reports):
    report = reports["accentuate"]
    assert report["status"] == "success", report
    new = report["returned"]
    assert new["name"] == "block7/34 accentuated · DeepDream" and new["has_mask"]
    assert len(report["layers_after"]) == 2
    width, height = new["size"]
    before = raw(workspace, "accentuate", "source-before.raw", (300, 451, 4))
    after = raw(workspace, "accentuate", "source-after.raw", (300, 451, 4))
    assert np.array_equal(before, after)
    layer = raw(workspace, "accentuate", "layer.raw", (height, width, 4)).astype(np.float32)
    x, y = new["offsets"]
    source = before[y : y + height, x : x + width, :3]
    assert 1.0 < np.abs(layer[:, :, :3] - source).mean() < 40  # the photo, a feature turned up
    alpha = layer[:, :, 3]  # the feathered ellipse
    assert alpha[0, 0] == alpha[-1, -1] == 0 and alpha[height // 2, width // 2] == 255
    mask = raw(workspace, "accentuate", "mask.raw", (height, width))
    assert mask[height // 2 - 20 : height // 2 + 20, width // 2 - 20 : width // 2 + 20].max() > 128
    assert mask.min() < 64  # white where it changed, not everywhere
    gray = reports["accentuate-gray-16-bit"]
    assert gray["status"] == "success", gray
    assert gray["returned"]["gray"] and gray["returned"]["has_mask"]
    plain = reports["accentuate-without-mask"]
    assert plain["status"] == "success", plain
    assert plain["returned"]["name"] == "class tabby accentuated · DeepDream"
    assert not plain["returned"]["has_mask"] and plain["returned"]["size"] == [451, 300]


def test_an_accentuated_layer_accentuated_again_with_new_values_is_that_layer_in_place(
    workspace, reports
):
    report, fresh = reports["accentuate-again"], reports["accentuate-fresh-as-again"]
    after = made_again_in_place(report)
    assert after["name"] == "block7/71 accentuated · DeepDream" and after["has_mask"]
    assert len(report["layers_after"]) == 2
    # Bit for bit what a fresh accentuation with those values gives (the CPU, the same seed):
    # its pixels, its alpha (the selection) and its mask (where it changed now).
    w, h = after["size"]
    assert fresh["status"] == "success" and fresh["returned"]["size"] == [w, h]
    for redone, file, shape in (("redreamed.raw", "layer.raw", (h, w, 4)),
                                ("redreamed-mask.raw", "mask.raw", (h, w))):  # fmt: skip
        assert np.array_equal(raw(workspace, "accentuate-again", redone, shape),
                              raw(workspace, "accentuate-fresh-as-again", file, shape))  # fmt: skip
    first = raw(workspace, "accentuate-again", "layer.raw", (h, w, 4))
    assert not np.array_equal(first, raw(workspace, "accentuate-again", "redreamed.raw", (h, w, 4)))


def test_an_accentuated_layer_kept_in_an_xcf_file_accentuates_again_from_the_retouched_photo(
    workspace, reports
):
    report = reports["accentuate-again-retouched-via-xcf"]
    again = report["redream"]
    assert again["status"] == "success", again
    assert again["before"]["name"] == "block7/34 accentuated · DeepDream"
    assert again["after"]["name"] == "class tabby accentuated · DeepDream"
    assert again["before"]["has_mask"] and not again["after"]["has_mask"]  # asked for none now
    name = "accentuate-again-retouched-via-xcf"
    first = raw(workspace, name, "layer.raw", (300, 451, 4)).astype(int)
    redone = raw(workspace, name, "redreamed.raw", (300, 451, 4)).astype(int)
    square = (slice(110, 130), slice(160, 200), slice(0, 3))  # inside the white square painted
    assert redone[square].mean() > first[square].mean() + 40


def test_an_accentuated_layer_that_cannot_be_made_again_says_why_in_one_line_and_stays(reports):
    gone = reports["accentuate-again-without-its-source"]["redream"]
    cropped = reports["accentuate-again-cropped"]["redream"]
    for again in (gone, cropped):
        assert again["status"] == "execution-error" and "\n" not in again["message"]
    assert "accentuation was made from (Background) is not in this image any more" in gone[
        "message"] and "Layer > New from Visible" in gone["message"]  # fmt: skip
    assert ("resized to 431x290 after it accentuated 451x300 pixels of Background: accentuate "
            "that layer anew") in cropped["message"]  # fmt: skip
    assert gone["layers_after"] == [{k: v for k, v in gone["before"].items()
                                     if k not in ("id", "position")}]  # fmt: skip
    assert cropped["layers_after"][0] == {k: v for k, v in cropped["before"].items()
                                          if k not in ("id", "position")}  # fmt: skip


def test_a_gimp_whose_python_has_no_pyzmq_dreams_the_same_through_the_standard_library(
    gimp, workspace, reports
):
    same = ("feathered", "alpha-mode", "gray", "16-bit", "accentuate")
    scenarios = [{**s, "name": f"{s['name']}-stdlib"} for s in SCENARIOS
                 if s["name"] in (*same, "channels")]  # fmt: skip
    visualize = {"procedure": "visualize", "params": VISUALIZE}
    scenarios += [{**visualize, "name": "visualize-stdlib"}]
    without = run_gimp(gimp, workspace, scenarios, pyzmq=False)
    tried = workspace[0] / "without-pyzmq" / "zmq" / "__init__.py.tried"
    assert tried.read_text().count("import zmq failed") >= len(scenarios)  # a plug-in run each
    for name in same:
        assert without[f"{name}-stdlib"]["returned"] == reports[name]["returned"], name
        for file in ("source-before.raw", "layer.raw", "mask.raw"):
            through_pyzmq = workspace[0] / name / file
            if through_pyzmq.exists():
                stdlib = (workspace[0] / f"{name}-stdlib" / file).read_bytes()
                assert stdlib == through_pyzmq.read_bytes(), f"{name}: {file}"
    assert without["channels-stdlib"]["channels"] == reports["channels"]["channels"]
    sheet = (workspace[0] / "channels-stdlib" / "sheet.raw").read_bytes()
    assert sheet == (workspace[0] / "channels" / "sheet.raw").read_bytes()
    with_pyzmq = run_gimp(gimp, workspace, [{**visualize, "name": "visualize-pyzmq"}])
    assert without["visualize-stdlib"]["layers"] == with_pyzmq["visualize-pyzmq"]["layers"]
    for index in range(3):
        sample = f"sample-{index}.raw"
        stdlib = (workspace[0] / "visualize-stdlib" / sample).read_bytes()
        assert stdlib == (workspace[0] / "visualize-pyzmq" / sample).read_bytes(), sample


def test_the_zoom_makes_a_new_image_of_frames_that_playback_plays_and_leaves_the_source(
    gimp, workspace
):
    params = {**QUICK, "frames": 3, "zoom": 1.1, "steps-per-frame": 1, "fps": 8.0}
    scenario = {"name": "zoom", "procedure": "zoom", "ellipse": ELLIPSE, "params": params}
    too_long = {"name": "zoom-too-long", "procedure": "zoom", "params": {"frames": 10000}}
    reports = run_gimp(gimp, workspace, [scenario, too_long])
    # 10000 frames of the 451x300 layer would wait in 4.1 GB: refused before any work
    refused = reports["zoom-too-long"]
    assert refused["status"] == "execution-error"
    assert "4.1 GB" in refused["message"] and "`deepdream zoom`" in refused["message"]
    assert refused["images_after"] == refused["images_before"]
    report = reports["zoom"]
    assert report["status"] == "success", report
    # named after the photo's file, or where a script's image has none (GIMP 3.0), its layer
    named_after = Path(report["source_file"] or report["layers_before"][0]["name"]).stem
    assert report["title"] == f"{named_after} zoom.xcf"
    assert named_after in ("chelsea", "Background")
    assert report["images_after"] == report["images_before"] + 1
    assert report["size"] == ELLIPSE[2:]  # the selection's part of the layer
    # The top layer is the last frame; GIMP reads each layer's delay from its name.
    assert [frame["name"] for frame in report["frames"]] == [
        "Frame 3 (125ms)", "Frame 2 (125ms)", "Frame 1 (125ms)"
    ]  # fmt: skip
    assert report["layers_after"] == report["layers_before"]
    before = raw(workspace, "zoom", "source-before.raw", (300, 451, 3))
    assert np.array_equal(raw(workspace, "zoom", "source-after.raw", (300, 451, 3)), before)
    width, height = ELLIPSE[2:]
    frames = [raw(workspace, "zoom", f"frame-{i}.raw", (height, width, 3)) for i in range(3)]
    x, y = ELLIPSE[:2]
    source_part = before[y : y + height, x : x + width].astype(np.float32)
    assert 1.0 < np.abs(frames[0] - source_part).mean() < 40  # a dream of that part
    assert not np.array_equal(frames[1], frames[2])


def test_the_zoom_on_its_own_image_goes_on_from_its_last_frame_as_one_longer_zoom(gimp, workspace):
    params = {**QUICK, "zoom": 1.1, "steps-per-frame": 1, "fps": 8.0}
    in_two = {"name": "zoom-in-two", "procedure": "zoom", "ellipse": ELLIPSE,
              "params": {**params, "frames": 3}, "go_on": {**params, "frames": 2}}  # fmt: skip
    at_once = {"name": "zoom-at-once", "procedure": "zoom", "ellipse": ELLIPSE,
               "params": {**params, "frames": 5}}  # fmt: skip
    reports = run_gimp(gimp, workspace, [in_two, at_once])
    report = reports["zoom-in-two"]
    assert report["go_on"] == {"status": "success", "same_image": True}, report
    names = [frame["name"] for frame in report["frames"]]
    assert names == [f"Frame {k} (125ms)" for k in (5, 4, 3, 2, 1)]
    assert names == [frame["name"] for frame in reports["zoom-at-once"]["frames"]]
    width, height = ELLIPSE[2:]
    for index in range(5):  # bit for bit the frames of the zoom made at once
        two = raw(workspace, "zoom-in-two", f"frame-{index}.raw", (height, width, 3))
        once = raw(workspace, "zoom-at-once", f"frame-{index}.raw", (height, width, 3))
        assert np.array_equal(two, once), index


def test_deepdream_frames_dreams_every_frame_into_a_new_image_with_names_delays_and_offsets(
    gimp, workspace
):
    scratch = workspace[0]
    paths = []
    for index, frame in enumerate(panned_frames(4)):
        paths.append(scratch / f"pan-{index}.png")
        Image.fromarray(frame).save(paths[-1])
    frames = [gimp.inside(path) for path in paths]
    params = {**QUICK, "steps-per-frame": 1}
    scenario = {"name": "frames", "procedure": "frames", "frames": frames, "params": params}
    single = {"name": "frames-of-one", "procedure": "frames", "frames": frames[:1], "params": QUICK}
    reports = run_gimp(gimp, workspace, [scenario, single])
    report = reports["frames"]
    assert report["status"] == "success", report
    assert report["images_after"] == report["images_before"] + 1
    assert report["layers_after"] == report["layers_before"]  # the source image is untouched
    names = ["Frame 4 (130ms)", "Frame 3 (120ms)", "Frame 2 (110ms)", "Frame 1 (100ms)"]
    assert [frame["name"] for frame in report["frames"]] == names  # the top one last
    assert [frame["offsets"] for frame in report["frames"]] == [[6, 3], [4, 3], [2, 3], [0, 3]]
    assert report["size"] == [204, 134] and report["title"].endswith(" dream.xcf")
    dreamed = [raw(workspace, "frames", f"frame-{i}.raw", (128, 192, 3)) for i in range(4)]
    sources = [raw(workspace, "frames", f"source-{i}.raw", (128, 192, 3)) for i in range(4)]
    for got, source in zip(dreamed, sources, strict=True):
        assert 1.0 < np.abs(got.astype(np.float32) - source).mean() < 40  # a dream of it
    refused = reports["frames-of-one"]
    assert refused["status"] == "execution-error"
    assert "this image has one layer: use Filters > Artistic > DeepDream" in refused["message"]


def test_a_selection_that_misses_the_layer_says_so(reports):
    report = reports["selection-misses-layer"]
    assert report["status"] == "execution-error"
    assert "does not touch this layer" in report["message"]
    assert report["layers_after"] == report["layers_before"]


def cancelled_in_the_middle(gimp, workspace, scenario: dict, running_for: float = 0.0) -> dict:  # noqa: ANN001
    """Run the scenario and do what GIMP's Cancel button does once its job has run for
    `running_for` s: kill the plug-in process outright. Returns the scenario's report."""
    scratch, _, server = workspace
    process = start_gimp(gimp, workspace, [scenario])
    with DreamClient(server.connection) as client:
        deadline = time.monotonic() + 60
        while not any(job["running"] for job in client.status()["queue"]):
            if process.poll() is not None or time.monotonic() > deadline:
                log = (scratch / f"gimp-{scenario['name']}.log").read_text()
                raise AssertionError(f"the dream never started; GIMP said:\n{log}")
            time.sleep(0.1)
        time.sleep(running_for)
        plug_ins = [
            pid
            for pid in descendants(process.pid)
            if "plug-ins/deepdream/deepdream.py" in command_line(pid)
        ]
        assert plug_ins, "the plug-in process of this GIMP was not found"
        for pid in plug_ins:
            os.kill(pid, signal.SIGKILL)
        killed = time.monotonic()
        while client.status()["queue"]:
            assert time.monotonic() - killed < 2.0, "the server kept dreaming for nobody"
            time.sleep(0.05)
    process.wait(timeout=120)
    return read_reports(workspace, [scenario])[scenario["name"]]


def test_cancelling_kills_the_plug_in_and_leaves_the_image_as_it_was(gimp, workspace):
    scenario = {
        "name": "cancelled",
        "photo": "coffee.png",
        "ellipse": [50, 50, 500, 300],
        "params": {"octaves": 4, "steps": 200},
    }
    report = cancelled_in_the_middle(gimp, workspace, scenario)
    assert report["status"] != "success"
    assert report["layers_after"] == report["layers_before"]
    before = (workspace[0] / "cancelled" / "source-before.raw").read_bytes()
    assert (workspace[0] / "cancelled" / "source-after.raw").read_bytes() == before


def test_a_cancelled_zoom_leaves_no_half_made_image(gimp, workspace):
    params = {**QUICK, "frames": 500, "steps-per-frame": 1}
    scenario = {"name": "zoom-cancelled", "procedure": "zoom", "params": params}
    report = cancelled_in_the_middle(gimp, workspace, scenario, running_for=3.0)  # frames came
    assert report["status"] != "success"
    assert report["images_after"] == report["images_before"]
    assert report["layers_after"] == report["layers_before"]
    before = (workspace[0] / "zoom-cancelled" / "source-before.raw").read_bytes()
    assert (workspace[0] / "zoom-cancelled" / "source-after.raw").read_bytes() == before


def test_an_unreachable_server_gives_a_clear_error_and_changes_nothing(gimp, workspace):
    scenario = {"name": "unreachable", "ellipse": ELLIPSE, "params": QUICK}
    nobody = f"ipc://{gimp.inside(workspace[0])}/nobody.sock"
    report = run_gimp(gimp, workspace, [scenario], endpoint=nobody)["unreachable"]
    assert report["status"] == "execution-error"
    assert report["message"] == (
        f"No dream server is running at {nobody}, where DEEPDREAM_ENDPOINT points: start "
        "`dream-server` there, or unset DEEPDREAM_ENDPOINT so that DeepDream starts its own."
    )
    assert report["layers_after"] == report["layers_before"]


ARTIFACTS = ROOT / "test-artifacts" / "gimp-gui"
NO_STARTUP_DIALOGS = (
    "(color-profile-policy keep)\n(show-welcome-dialog no)\n(show-tips no)\n"
    # GIMP's usual title, and the active layer's name, which a test reads as a person would
    '(image-title-format "%D*%f-%p.%i (%t, %L) %wx%h [%n]")\n'
)
SCREEN = (1366, 768)
"""A laptop's screen: every dialog must fit on it whole."""
WIDGET_MAP = ROOT / "tests" / "gimp" / "widget_map"


class Screen:
    """GIMP's GUI on a virtual X screen, driven with xdotool like a person at the keyboard and
    mouse; the plug-in's widgets are found by their words (tests/gimp/widget_map), wherever the
    theme puts them."""

    def __init__(self, gimp: Gimp, display: str, scratch: Path) -> None:
        self.gimp = gimp
        self.display = display
        self.scratch = scratch
        self.map_file = scratch / "widgets.json"
        self.app: subprocess.Popen | None = None  # GIMP, once started

    def tool(self, program: str, *args: str, check: bool = True) -> str:
        command = self.gimp.command(program, list(args), {"DISPLAY": self.display})
        run = subprocess.run(command, capture_output=True, text=True, timeout=60)
        if check and run.returncode != 0:
            raise AssertionError(f"{program} {args}: {run.stderr}")
        return run.stdout

    def window_titles(self) -> dict[str, str]:
        ids = self.tool("xdotool", "search", "--onlyvisible", "--name", ".", check=False).split()
        return {i: self.tool("xdotool", "getwindowname", i, check=False).strip() for i in ids}

    def wait_for_window(self, pattern: str, timeout: float = 120, exact: bool = False) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for window, title in self.window_titles().items():
                if title == pattern if exact else pattern in title:
                    return window
            time.sleep(0.5)
        raise AssertionError(f"no window titled '{pattern}' in {timeout} s: {self.window_titles()}")

    def wait_for_the_plug_in_to_end(self, timeout: float = 120) -> None:
        """Until GIMP runs no DeepDream plug-in process: what it does after GIMP shows its new
        layer (a mask, its memory, the end of its undo step) is done."""
        deadline = time.monotonic() + timeout
        while any("plug-ins/deepdream/deepdream.py" in command_line(pid)
                  for pid in descendants(self.app.pid)):  # fmt: skip
            assert time.monotonic() < deadline, f"the plug-in still runs after {timeout} s"
            time.sleep(0.2)

    def keys(self, window: str, *keys: str) -> None:
        self.tool("xdotool", "windowfocus", window)
        for key in keys:
            try:
                self.tool("xdotool", "key", "--window", window, key)
            except AssertionError:
                # Alt+O on OK can close its window between the key's press and its release,
                # which then fails (BadWindow): an error only while the window is still there.
                if window in self.window_titles():
                    raise
            time.sleep(0.6)

    def type(self, window: str, text: str) -> None:
        """Type into the focused widget of the window, as a keyboard does."""
        self.tool("xdotool", "windowfocus", window)
        self.tool("xdotool", "type", "--delay", "50", text)
        time.sleep(0.6)

    def screenshot(self, name: str) -> None:
        self.tool("import", "-window", "root", self.gimp.inside(self.scratch / name))
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        shutil.copy(self.scratch / name, ARTIFACTS / f"{self.gimp.version}-{name}")

    def grab(self, box: list[int]) -> np.ndarray:
        """The pixels shown in a box (x, y, width, height) of the screen."""
        x, y, width, height = box
        path = self.scratch / "grab.png"
        self.tool("import", "-window", "root", "-crop", f"{width}x{height}+{x}+{y}", "+repage",
                  self.gimp.inside(path))  # fmt: skip
        return np.asarray(Image.open(path).convert("RGB"), np.float32)

    # -- the plug-in's widgets, by their words ----------------------------------------------

    def dialog(self, title: str, timeout: float = 30) -> dict:
        """The plug-in's window of that title as its widget map last described it."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError, ValueError):
                for window in json.loads(self.map_file.read_text())["windows"]:
                    if window["title"] == title:
                        return window
            time.sleep(0.25)
        raise AssertionError(f"the plug-in shows no window titled '{title}'")

    def fresh_dialog(self, title: str) -> dict:
        """The window as described after this moment (what a person sees now)."""
        asked = time.time()
        while True:
            window = self.dialog(title)
            if json.loads(self.map_file.read_text())["time"] > asked + 0.1:
                return window
            time.sleep(0.2)

    def wait_for_words(self, title: str, words: str, timeout: float = 60) -> dict:
        """The window once one of its widgets says these words (the server's answer, which
        can take a model's loading): as a person waits for it."""
        deadline = time.monotonic() + timeout
        while True:
            window = self.fresh_dialog(title)
            if any(words in (widget.get("text") or "") for widget in window["widgets"]):
                return window
            assert time.monotonic() < deadline, f"'{title}' did not say '{words}' in {timeout} s"

    def control(self, title: str, words: str) -> dict:
        """The widget a person means by these words: the one a label of those words names (its
        mnemonic widget, else the first control beside it), or a button that says them."""
        widgets = self.fresh_dialog(title)["widgets"]
        by_id = {widget["id"]: widget for widget in widgets}
        for widget in widgets:
            if widget.get("text") != words:
                continue
            inside = [w for w in widgets if w["parent"] == widget["id"] and w["type"] != "Label"]
            if widget["type"].startswith("Label") and widget["type"] != "Label" and inside:
                return inside[0]  # GIMP's labelled widgets: the control beside their label
            if widget["type"] != "Label":  # it carries its own words: a button, a spin scale
                return widget
            if "for" in widget and widget["for"] in by_id:
                return by_id[widget["for"]]
            beside = [w for w in widgets if w["parent"] == widget["parent"]
                      and w["id"] != widget["id"] and w["type"] != "Label"]  # fmt: skip
            return beside[0] if beside else widget
        raise AssertionError(f"no control '{words}' in '{title}': " + ", ".join(
            sorted({w["text"] for w in widgets if w.get("text")})))  # fmt: skip

    def widget_of_type(self, title: str, kind: str) -> dict:
        return next(w for w in self.fresh_dialog(title)["widgets"] if w["type"] == kind)

    def click(self, widget: dict) -> None:
        """A left click in the middle of the widget."""
        x, y, width, height = widget["box"]
        self.tool("xdotool", "mousemove", str(x + width // 2), str(y + height // 2), "click", "1")
        time.sleep(0.6)

    def unfold(self, title: str, words: str) -> None:
        """Open the folded group of these words by a click on its title."""
        widgets = self.fresh_dialog(title)["widgets"]
        label = next(w for w in widgets if w.get("text") == words and w["type"] == "Label")
        self.click(label)
        unfolded = [w for w in self.fresh_dialog(title)["widgets"]
                    if w["type"] == "Expander" and w.get("text") == words]  # fmt: skip
        assert unfolded and unfolded[0]["expanded"], f"'{words}' did not open"

    def scrolled_to(self, title: str) -> dict[str, float]:
        """Where the window's scrolled view is: {"horizontal": x, "vertical": y}."""
        return {w["orientation"]: w["value"] for w in self.fresh_dialog(title)["widgets"]
                if w["type"] == "Scrollbar"}  # fmt: skip

    def alt_key(self, title: str, words: str) -> str:
        """The Alt+key that the label of these words underlines."""
        label = next(w["label"] for w in self.fresh_dialog(title)["widgets"]
                     if w.get("text") == words and "_" in w.get("label", ""))  # fmt: skip
        return "alt+" + label[label.index("_") + 1].lower()

    def choose(self, title: str, words: str, value: str, window: str) -> None:
        """Pick a value of the choice that these words name, from the keyboard: its Alt+key,
        then the arrow keys, one step at a time, the other way at the end of the list."""
        self.keys(window, self.alt_key(title, words))
        direction, before = "Down", None
        for _ in range(24):
            now = self.control(title, words).get("value")
            if now == value:
                return
            if now == before:  # the end of the list: the other way
                direction = "Up"
            before = now
            self.keys(window, direction)
        raise AssertionError(f"'{value}' could not be chosen in '{words}'")


def gimp_warnings(log: Path) -> list[str]:
    """What GIMP printed from or about the plug-in that a terminal would show: warnings and
    CRITICALs."""
    lines = log.read_text(errors="replace").splitlines()
    return [line for line in lines
            if any(mark in line for mark in ("WARNING", "CRITICAL", "Warning", "mnemonic",
                                             "does not exist", "Traceback"))
            and ("deepdream" in line.lower() or "gimp_procedure" in line or "mnemonic" in line
                 or "_gimp_pdb" in line or "Traceback" in line)]  # fmt: skip


def browser_for(gimp: Gimp, scratch: Path) -> None:
    """The web browser of the GUI tests' desktop: it writes each address it is asked to open
    into opened.txt (GIMP's help opens pages in the desktop's browser for HTML)."""
    browser = scratch / "browser.sh"
    browser.write_text(f'#!/bin/sh\necho "$1" >> {gimp.inside(scratch / "opened.txt")}\n')
    browser.chmod(0o755)
    applications = scratch / "home" / ".local" / "share" / "applications"
    applications.mkdir(parents=True, exist_ok=True)
    (applications / "test-browser.desktop").write_text(
        "[Desktop Entry]\nType=Application\nName=Test browser\n"
        f"Exec={gimp.inside(browser)} %u\nMimeType=text/html;\n"
    )
    config = scratch / "home" / ".config"
    config.mkdir(parents=True, exist_ok=True)
    (config / "mimeapps.list").write_text(
        "[Default Applications]\ntext/html=test-browser.desktop\n"
    )


@contextlib.contextmanager
def gimp_gui(gimp: Gimp, workspace, display: str, file: str = "chelsea.png"):
    """GIMP's GUI with the cat (or `file` in the scratch folder) open, on a laptop-sized virtual
    screen of its own, talking to the test's server; everything it started ends with it. What
    GIMP prints goes to gimp-gui.log, read by the tests."""
    scratch, profile, server = workspace
    (profile / "gimprc").write_text(NO_STARTUP_DIALOGS)
    for settings in (profile / "plug-in-settings").glob("*plug-in-deepdream*"):
        settings.unlink()  # (GimpProcedureConfigRun-PROC.last): each test starts from the defaults
    browser_for(gimp, scratch)
    widget_map = scratch / "widget_map"
    shutil.copytree(WIDGET_MAP, widget_map, dirs_exist_ok=True)
    screen = Screen(gimp, display, scratch)
    screen.map_file.unlink(missing_ok=True)
    environment = {
        "HOME": gimp.inside(scratch / "home"),
        "DISPLAY": display,
        "GIMP3_DIRECTORY": gimp.inside(profile),
        "PYTHONPATH": gimp.inside(widget_map),
        "DEEPDREAM_WIDGET_MAP": gimp.inside(screen.map_file),
        **server_for_gimp(gimp, server),
        # the server's state folder, as an artist's GIMP shares it: where a restarted server's
        # new token is
        "DEEPDREAM_HOME": gimp.inside(scratch / "home"),
    }
    width, height = SCREEN
    clear_stale_lock(gimp, display)
    xvfb = subprocess.Popen(
        gimp.command(
            "Xvfb", [display, "-screen", "0", f"{width}x{height}x24", "-nolisten", "tcp"], {}
        ),  # fmt: skip
        start_new_session=True,
    )
    time.sleep(1)
    log = open(scratch / "gimp-gui.log", "w")  # noqa: SIM115 - closed when GIMP has ended
    app = subprocess.Popen(
        gimp.gui_command(["--no-splash", gimp.inside(scratch / file)], environment),
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    screen.app = app
    try:
        yield screen
    finally:
        with contextlib.suppress(Exception):  # what the screen showed last, for a failure
            screen.screenshot(f"last{display[1:]}.png")
        end_session(app)
        end_session(xvfb)
        log.close()
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        shutil.copy(scratch / "gimp-gui.log", ARTIFACTS / f"{gimp.version}-gimp{display[1:]}.log")
        if screen.map_file.exists():
            shutil.copy(screen.map_file, ARTIFACTS / f"{gimp.version}-widgets{display[1:]}.json")


def clear_stale_lock(gimp: Gimp, display: str) -> None:
    """Remove the lock file an Xvfb killed on this display left, when the process it names is
    no Xvfb: Xvfb refuses a display whose lock names any live process, and a killed one's pid
    is soon another process's."""
    number = display.lstrip(":")
    tmp = (gimp.root or Path("/")) / "tmp"
    lock = tmp / f".X{number}-lock"
    try:
        pid = int(lock.read_text().strip())
    except (OSError, ValueError):
        return
    if "Xvfb" not in command_line(pid):
        lock.unlink(missing_ok=True)
        (tmp / ".X11-unix" / f"X{number}").unlink(missing_ok=True)


def wait_for_file(path: Path, timeout: float = 30) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and path.read_text().strip():
            return path.read_text()
        time.sleep(0.3)
    raise AssertionError(f"nothing wrote {path} within {timeout} s")


def fits_the_screen(window: dict) -> bool:
    x, y, width, height = window["box"]
    return x >= 0 and y >= 0 and x + width <= SCREEN[0] and y + height <= SCREEN[1]


NOT_SETTINGS = ("Label", "Frame", "Expander", "Button", "MenuButton")


def out_of_alt_reach(window: dict) -> list[str]:
    """The settings of a dialog whose label underlines no letter: no Alt+key reaches them."""
    return [widget["text"] for widget in window["widgets"]
            if widget.get("label") and widget.get("type") not in NOT_SETTINGS
            and "_" not in widget["label"]]  # fmt: skip


def test_in_the_gui_the_filter_is_in_its_menu_runs_and_one_undo_removes_it(gimp, workspace):
    with gimp_gui(gimp, workspace, ":97") as screen:
        main = screen.wait_for_window("1 layer)")
        screen.tool("xdotool", "mousemove", "1360", "760")  # no tooltips over the menus
        screen.screenshot("1-opened.png")
        screen.keys(main, "alt+r", "a")  # Filters > Artistic, by their mnemonics
        screen.screenshot("2-filters-artistic.png")
        screen.keys(main, "d")  # DeepDream...
        screen.wait_for_window("DeepDream", timeout=30, exact=True)
        screen.screenshot("3-dialog.png")
        screen.click(screen.control("DeepDream", "Help"))  # the README's words on the dialog
        opened = wait_for_file(workspace[0] / "opened.txt")
        assert opened.strip().endswith("/plug-ins/deepdream/help/en/index.html"), opened
        screen.click(screen.control("DeepDream", "OK"))
        screen.wait_for_window("2 layers)")
        screen.screenshot("4-dreamed.png")
        screen.keys(main, "ctrl+z")
        screen.wait_for_window("1 layer)", timeout=20)
        screen.screenshot("5-undone.png")
        screen.keys(main, "ctrl+f")  # Repeat Last, with the values just used
        screen.wait_for_window("2 layers)")
        screen.screenshot("6-repeated.png")
        # DeepDream on the dream just made: it opens with that dream's settings and dreams
        # the same layer again; one undo takes that back, a second the dream itself
        screen.keys(main, "alt+r", "a", "d")
        dialog = screen.wait_for_window("DeepDream", timeout=30, exact=True)
        screen.keys(dialog, screen.alt_key("DeepDream", "Steps"), "ctrl+a")
        screen.type(dialog, "2")
        screen.keys(dialog, "Tab")
        screen.click(screen.control("DeepDream", "OK"))
        screen.wait_for_window("[animals 4x2 · DeepDream]")
        screen.screenshot("7-dreamed-again.png")
        assert "2 layers)" in screen.window_titles()[main]
        screen.keys(main, "ctrl+z")
        screen.wait_for_window("[animals 4x10 · DeepDream]", timeout=20)
        assert "2 layers)" in screen.window_titles()[main]
        screen.keys(main, "ctrl+z")
        screen.wait_for_window("1 layer)", timeout=20)
        screen.keys(main, "alt+f", "Down", "Right")  # File > Create
        screen.screenshot("8-file-create.png")
        screen.keys(main, "f")  # DeepDream Feature Visualization...
        title = "DeepDream Feature Visualization"
        screen.wait_for_window(title, timeout=30)
        screen.unfold(title, "Advanced")
        screen.screenshot("9-visualize-dialog.png")  # grouped, in plain words
        visualize = screen.fresh_dialog(title)
        words = {widget.get("text") for widget in visualize["widgets"]}
        assert {"What to show", "Pictures", "Their look", "Broad shapes"} <= words
        assert fits_the_screen(visualize), visualize["box"]
        assert out_of_alt_reach(visualize) == []
    assert gimp_warnings(workspace[0] / "gimp-gui.log") == []


def jobs_done(server) -> int:  # noqa: ANN001
    """How many jobs the server has taken, once none is queued or running."""
    with DreamClient(server.connection) as client:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            status = client.status()
            if not status["queue"]:
                return status["counters"].get("jobs", 0)
            time.sleep(0.2)
    raise AssertionError("the server's queue did not empty within 60 s")


def wait_for_a_new_job(server, done_before: int) -> int:  # noqa: ANN001
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        done = jobs_done(server)
        if done > done_before:
            time.sleep(1.0)  # the preview draws what came back
            return done
        time.sleep(0.3)
    raise AssertionError("the dialog sent the server no job within 60 s")


def test_the_dialog_previews_the_dream_and_checks_the_layers_before_it_dreams(gimp, workspace):
    server = workspace[2]
    with gimp_gui(gimp, workspace, ":96") as screen:
        main = screen.wait_for_window("1 layer)")
        done = jobs_done(server)
        screen.keys(main, "alt+r", "a", "d")  # Filters > Artistic > DeepDream...
        dialog = screen.wait_for_window("DeepDream", timeout=30, exact=True)
        done = wait_for_a_new_job(server, done)  # the dialog opens with a preview
        screen.screenshot("preview-1-animals.png")
        area = screen.widget_of_type("DeepDream", "PreviewArea")["box"]
        # no selection: it opens on the middle of the 451x300 layer
        middle = {"horizontal": (451 - area[2]) // 2, "vertical": (300 - area[3]) // 2}
        assert screen.scrolled_to("DeepDream") == middle
        animals = screen.grab(area)

        screen.click(screen.control("DeepDream", "Preview"))  # off: the layer as it is
        screen.screenshot("preview-2-off.png")
        original = screen.grab(area)
        # A dream moves pixels by about 10 levels in 255 on average; the same pixels by 0.
        assert np.abs(animals - original).mean() > 5

        screen.choose("DeepDream", "Preset", "objects", dialog)
        time.sleep(2)
        assert jobs_done(server) == done  # no preview asked for while it is off
        assert np.array_equal(screen.grab(area), original)

        screen.click(screen.control("DeepDream", "Preview"))  # on again: the objects' dream
        done = wait_for_a_new_job(server, done)
        screen.screenshot("preview-3-objects.png")
        objects = screen.grab(area)
        assert np.abs(objects - original).mean() > 5
        assert np.abs(objects - animals).mean() > 3  # another look

        screen.click(screen.control("DeepDream", "Layers"))
        screen.type(dialog, "block99")
        screen.keys(dialog, "Tab")  # on to the next setting
        assert screen.control("DeepDream", "Preset")["value"] == "custom"  # what is dreamed
        screen.unfold("DeepDream", "Advanced")
        screen.keys(dialog, "alt+o")  # OK: the server refuses the layers, the dialog stays
        shown = screen.wait_for_words("DeepDream", "block99")  # the server's refusal
        screen.screenshot("preview-4-wrong-layers.png")
        assert fits_the_screen(shown), f"{shown['box']} is not on a {SCREEN} screen"
        assert out_of_alt_reach(shown) == []
        assert "1 layer)" in screen.window_titles()[main]

        screen.click(screen.control("DeepDream", "Layers"))
        screen.keys(dialog, "ctrl+a", "BackSpace")  # mended: the refusal goes
        time.sleep(1)
        shown = screen.fresh_dialog("DeepDream")
        assert not [w for w in shown["widgets"] if "block99" in w.get("text", "")]
        assert screen.control("DeepDream", "Preset")["value"] == "objects"  # as chosen before
        screen.click(screen.control("DeepDream", "OK"))
        screen.wait_for_window("2 layers)")
        screen.screenshot("preview-5-dreamed.png")
        assert "[objects 4x10 · DeepDream" in screen.window_titles()[main]
    assert gimp_warnings(workspace[0] / "gimp-gui.log") == []


def test_a_dream_layer_reopens_with_its_dream_and_a_preset_chosen_then_dreams_it_again(
    gimp, workspace
):
    """Layers typed once never override a preset chosen later; and DeepDream on the dream
    layer it made opens with that dream's settings and dreams the same layer again."""
    with gimp_gui(gimp, workspace, ":94") as screen:
        main = screen.wait_for_window("1 layer)")
        screen.keys(main, "alt+r", "a", "d")
        dialog = screen.wait_for_window("DeepDream", timeout=30, exact=True)
        screen.click(screen.control("DeepDream", "Layers"))
        screen.type(dialog, "block7")
        screen.keys(dialog, "Tab")
        assert screen.control("DeepDream", "Preset")["value"] == "custom"
        screen.click(screen.control("DeepDream", "OK"))
        screen.wait_for_window("2 layers)")
        assert "[block7 4x10 · DeepDream" in screen.window_titles()[main]

        screen.keys(main, "alt+r", "a", "d")  # on the new layer: its dream's settings
        dialog = screen.wait_for_window("DeepDream", timeout=30, exact=True)
        assert screen.control("DeepDream", "Layers")["value"] == "block7"
        assert screen.control("DeepDream", "Preset")["value"] == "custom"
        screen.choose("DeepDream", "Preset", "objects", dialog)
        assert screen.control("DeepDream", "Layers")["value"] == ""
        screen.screenshot("presets-objects-chosen.png")
        screen.click(screen.control("DeepDream", "OK"))
        screen.wait_for_window("[objects 4x10 · DeepDream")  # the same layer, dreamed again
        assert "2 layers)" in screen.window_titles()[main]
    assert gimp_warnings(workspace[0] / "gimp-gui.log") == []


def search_action(screen, window: str, words: str) -> None:  # noqa: ANN001 - Screen
    """Run a menu item through Help > Search and Run a Command, as people find one."""
    screen.keys(window, "slash")
    search = screen.wait_for_window("Search Actions", timeout=20)
    screen.type(search, words)  # into its entry
    time.sleep(1)
    screen.tool("xdotool", "key", "Return")  # to what has the focus: the first match


def test_in_the_gui_strongest_channels_and_accentuate_show_what_the_network_sees(gimp, workspace):
    with gimp_gui(gimp, workspace, ":94") as screen:
        main = screen.wait_for_window("1 layer)")
        screen.tool("xdotool", "mousemove", "1360", "760")
        title = "DeepDream Strongest Channels"
        search_action(screen, main, title)
        dialog = screen.wait_for_window(title, timeout=30, exact=True)
        for words, value in (("Steps", "4"), ("Size", "64")):
            screen.keys(dialog, screen.alt_key(title, words), "ctrl+a")
            screen.type(dialog, value)
            screen.keys(dialog, "Tab")
        screen.unfold(title, "Advanced")
        screen.screenshot("channels-1-dialog.png")
        shown = screen.fresh_dialog(title)
        words = {widget.get("text") for widget in shown["widgets"]}
        assert {"What to look at", "Examples from your photos", "Their pictures"} <= words
        assert fits_the_screen(shown), shown["box"]
        assert out_of_alt_reach(shown) == []
        screen.keys(dialog, "alt+o")
        screen.wait_for_window("block7 channels")  # a new image: the sheet
        time.sleep(2)  # drawn
        screen.screenshot("channels-2-sheet.png")
        screen.keys(main, "alt+1")  # back to the photo's tab
        screen.wait_for_window("[chelsea] (imported)")
        title = "DeepDream Accentuate"
        search_action(screen, main, title)
        dialog = screen.wait_for_window(title, timeout=30, exact=True)
        screen.keys(dialog, screen.alt_key(title, "Steps"), "ctrl+a")
        screen.type(dialog, "4")
        screen.keys(dialog, "Tab")
        screen.click(screen.control(title, "Class"))
        screen.type(dialog, "tabbby")  # a typo: OK asks the server, which refuses it
        screen.keys(dialog, "Tab")
        screen.unfold(title, "Advanced")
        screen.keys(dialog, "alt+o")
        shown = screen.wait_for_words(title, "'tabbby' is not an ImageNet class")
        screen.screenshot("accentuate-1-dialog.png")
        words = {widget.get("text") for widget in shown["widgets"]}
        assert {"What to turn up", "How much", "The result"} <= words
        assert fits_the_screen(shown), shown["box"]
        assert out_of_alt_reach(shown) == []
        screen.click(screen.control(title, "Class"))
        screen.keys(dialog, "ctrl+a", "BackSpace")  # mended: the whole layer, turned up
        screen.keys(dialog, "Tab")
        screen.keys(dialog, "alt+o")
        screen.wait_for_window("[block7 accentuated · DeepDream]")  # the new layer, active
        screen.wait_for_the_plug_in_to_end()  # GIMP shows the layer before its mask
        screen.screenshot("accentuate-2-layer.png")
        assert "2 layers)" in screen.window_titles()[main]
        screen.keys(main, "ctrl+z")  # one step takes it back
        screen.wait_for_window("1 layer)", timeout=20)
        # the server restarted (a new token and socket): the dialog opens again with the last
        # values, and accentuates again
        server = workspace[2]
        server.stop()
        restarted = start_server(server.home)
        server.process, server.record = restarted.process, restarted.record  # the fixture's
        search_action(screen, main, title)
        dialog = screen.wait_for_window(title, timeout=30, exact=True)
        assert screen.control(title, "Steps")["value"] == "4"
        screen.screenshot("accentuate-3-again.png")
        screen.keys(dialog, "alt+o")
        screen.wait_for_window("[block7 accentuated · DeepDream]")
        screen.wait_for_the_plug_in_to_end()
        assert "2 layers)" in screen.window_titles()[main]
        # on the accentuated layer, the dialog opens with its settings, and OK accentuates that
        # layer again, in place, one undo step; Ctrl+F does it with the last values
        search_action(screen, main, title)
        dialog = screen.wait_for_window(title, timeout=30, exact=True)
        assert screen.control(title, "Steps")["value"] == "4"
        screen.keys(dialog, screen.alt_key(title, "Channel"), "ctrl+a")
        screen.type(dialog, "34")
        screen.keys(dialog, "Tab")
        screen.keys(dialog, "alt+o")
        screen.wait_for_window("[block7/34 accentuated · DeepDream]")
        screen.wait_for_the_plug_in_to_end()
        screen.screenshot("accentuate-4-in-place.png")
        assert "2 layers)" in screen.window_titles()[main]
        screen.keys(main, "ctrl+z")
        screen.wait_for_window("[block7 accentuated · DeepDream]", timeout=20)
        screen.keys(main, "ctrl+f")
        screen.wait_for_window("[block7/34 accentuated · DeepDream]")
        screen.wait_for_the_plug_in_to_end()
        assert "2 layers)" in screen.window_titles()[main]
        # Strongest Channels, opened again after the restart, has its last values too
        title = "DeepDream Strongest Channels"
        search_action(screen, main, title)
        dialog = screen.wait_for_window(title, timeout=30, exact=True)
        assert screen.control(title, "Steps")["value"] == "4"
        assert screen.control(title, "Size")["value"] == "64"
        screen.screenshot("channels-3-again.png")
        screen.click(screen.control(title, "Cancel"))
        time.sleep(1)
        assert title not in screen.window_titles().values()
    assert gimp_warnings(workspace[0] / "gimp-gui.log") == []


def test_in_the_gui_the_zoom_dialog_makes_a_new_image_of_frames(gimp, workspace):
    with gimp_gui(gimp, workspace, ":95") as screen:
        main = screen.wait_for_window("1 layer)")
        screen.tool("xdotool", "mousemove", "1360", "760")
        screen.keys(main, "alt+r", "i")  # Filters > Animation
        screen.screenshot("zoom-1-filters-animation.png")
        screen.keys(main, "z")  # DeepDream Zoom...
        dialog = screen.wait_for_window("DeepDream Zoom", timeout=30, exact=True)
        frames = screen.control("DeepDream Zoom", "Frames")
        screen.keys(dialog, "alt+" + frames["label"][frames["label"].index("_") + 1].lower())
        screen.keys(dialog, "ctrl+a")  # into the number by its Alt+key, as a person edits it
        screen.type(dialog, "3")
        screen.keys(dialog, "Tab")
        screen.unfold("DeepDream Zoom", "Advanced")
        screen.screenshot("zoom-2-dialog.png")
        shown = screen.fresh_dialog("DeepDream Zoom")
        assert fits_the_screen(shown) and out_of_alt_reach(shown) == []
        screen.keys(dialog, "alt+o")
        screen.wait_for_window("3 layers)")  # a new image, a layer per frame
        screen.screenshot("zoom-3-frames.png")
    assert gimp_warnings(workspace[0] / "gimp-gui.log") == []


def test_in_the_gui_deepdream_frames_dreams_an_opened_gif_into_a_new_image(gimp, workspace):
    frames = [Image.fromarray(frame) for frame in panned_frames(3)]
    frames[0].save(workspace[0] / "pan.gif", save_all=True, append_images=frames[1:],
                   duration=100, loop=0, optimize=False)  # fmt: skip
    with gimp_gui(gimp, workspace, ":96", "pan.gif") as screen:
        main = screen.wait_for_window("3 layers)")
        screen.tool("xdotool", "mousemove", "1360", "760")
        screen.keys(main, "alt+r", "i", "f")  # Filters > Animation > DeepDream Frames...
        dialog = screen.wait_for_window("DeepDream Frames", timeout=30, exact=True)
        screen.keys(dialog, screen.alt_key("DeepDream Frames", "Steps"), "ctrl+a")
        screen.type(dialog, "2")
        screen.keys(dialog, "Tab")
        screen.unfold("DeepDream Frames", "Advanced")
        screen.screenshot("frames-1-dialog.png")
        shown = screen.fresh_dialog("DeepDream Frames")
        assert fits_the_screen(shown) and out_of_alt_reach(shown) == []
        screen.keys(dialog, "alt+o")
        screen.wait_for_window("pan dream")  # the new image, named after the animation
        screen.screenshot("frames-2-dreamed.png")
        assert "3 layers)" in screen.window_titles()[main]
    assert gimp_warnings(workspace[0] / "gimp-gui.log") == []


def test_a_zoom_that_would_take_long_says_how_long_and_asks_first(gimp, workspace):
    server = workspace[2]
    with DreamClient(server.connection) as client:  # a pace for the built-in model here
        client.dream(bytes(96 * 64 * 3), 96, 64, 3, {"octaves": 1, "steps": 2})
    with gimp_gui(gimp, workspace, ":93") as screen:
        main = screen.wait_for_window("1 layer)")
        screen.keys(main, "alt+r", "i", "z")  # Filters > Animation > DeepDream Zoom...
        dialog = screen.wait_for_window("DeepDream Zoom", timeout=30, exact=True)
        screen.keys(dialog, screen.alt_key("DeepDream Zoom", "Frames"), "ctrl+a")
        screen.type(dialog, "2000")
        screen.keys(dialog, "Tab")
        screen.click(screen.control("DeepDream Zoom", "OK"))
        screen.wait_for_words("DeepDream Zoom", "2000 frames will take about", timeout=30)
        screen.screenshot("zoom-4-asks.png")
        done = jobs_done(server)  # the settings' check, and nothing since
        screen.click(screen.control("DeepDream Zoom", "Cancel"))
        time.sleep(3)
        assert jobs_done(server) == done  # nothing was started
        assert "1 layer)" in screen.window_titles()[main]
        assert not any("Frame" in title for title in screen.window_titles().values())
    assert gimp_warnings(workspace[0] / "gimp-gui.log") == []
