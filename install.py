#!/usr/bin/env python3
"""Set up DeepDream for GIMP on this machine, or run its test suite.

    python3 install.py            create the environment, install the GIMP plug-in, dream a sample
    python3 install.py --test     the same set-up with test tools and a GIMP 3 for the tests,
                                  then the whole test suite
    python3 install.py --check    say what is installed and what is missing
    python3 install.py --uninstall

Standard library only: it runs with any Python 3.11+ before anything else is installed.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import venv
from pathlib import Path

from dream_wire import ENDPOINT_FILE, INSTALL_RECORD, ensure_state_dir, state_dir

ROOT = Path(__file__).resolve().parent
DEFAULT_VENV = ROOT / ".venv"
SAMPLE = ROOT / "dream_server" / "samples" / "coffee.png"
SAMPLE_OUTPUT = ROOT / "out" / "coffee-dream.png"
STAMP = "deepdream-installed"
PYTEST_NO_TESTS = 5
PLUGIN_NAME = "deepdream"
PLUGIN_FILES = ("gimp_plugin/deepdream.py", "dream_client.py",
                "dream_zmtp.py", "dream_wire.py")  # fmt: skip
"""Copied into the plug-in's folder: the plug-in, its client, and what the client shares with
the server."""


def gimp_profiles() -> list[Path]:
    """GIMP 3 profile folders of this user, for each way GIMP is installed."""
    home = Path.home()
    if sys.platform == "win32":
        return [Path(os.environ.get("APPDATA", home)) / "GIMP" / "3.0"]
    if sys.platform == "darwin":
        return [home / "Library" / "Application Support" / "GIMP" / "3.0"]
    config = Path(os.environ.get("XDG_CONFIG_HOME", home / ".config"))
    return [config / "GIMP" / "3.0", home / ".var/app/org.gimp.GIMP/config/GIMP/3.0"]


def gimp_installed() -> bool:
    return any(shutil.which(name) for name in ("gimp-3.0", "gimp-console-3.0", "gimp"))


def install_plugin(python: Path, profiles: list[Path]) -> list[Path]:
    """Copy the plug-in into each profile's plug-ins folder (folder name = file name)."""
    schemas = {
        name: subprocess.run(
            [str(python), "-m", "dream_server.params", *which],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        for name, which in (
            ("parameters.json", []),
            ("parameters-visualize.json", ["visualize"]),
            ("parameters-zoom.json", ["zoom"]),
        )
    }
    installed = []
    for profile in profiles:
        target = profile / "plug-ins" / PLUGIN_NAME
        target.mkdir(parents=True, exist_ok=True)
        for name in PLUGIN_FILES:
            # a fresh modification time: GIMP reads the procedures again, new settings and all
            shutil.copy(ROOT / name, target / Path(name).name)
        for file_name, schema in schemas.items():
            (target / file_name).write_text(schema)
        (target / "deepdream.py").chmod(0o755)
        installed.append(target)
        say(f"installed the GIMP plug-in in {target}")
    return installed


FLATPAK_GIMP = "org.gimp.GIMP"
INTERPRETER_FOLDERS = (
    "/usr/lib/gimp/3.0/interpreters", "/usr/lib/x86_64-linux-gnu/gimp/3.0/interpreters",
    "/usr/lib/aarch64-linux-gnu/gimp/3.0/interpreters",
    "/Applications/GIMP.app/Contents/Resources/lib/gimp/3.0/interpreters",
    os.path.expandvars(r"%ProgramFiles%\GIMP 3\lib\gimp\3.0\interpreters"),
)  # fmt: skip
GIMP_PYTHON_PROBE = (
    "import sys; print(sys.version.split()[0], flush=True); import gi; "
    "gi.require_version('Gimp', '3.0'); from gi.repository import Gimp; import zmq"
)


def gimp_python(profile: Path) -> list[str] | None:
    """The command of the Python that the GIMP owning `profile` runs the plug-in with: Flatpak
    GIMP's own; else the one an `.interp` file of GIMP maps `python3` to (the Windows and macOS
    bundles); else the `python3` that the plug-in's `#!/usr/bin/env python3` finds."""
    if f"app/{FLATPAK_GIMP}/" in profile.as_posix():
        flatpak = shutil.which("flatpak")
        return [flatpak, "run", "--command=python3", FLATPAK_GIMP] if flatpak else None
    for folder in map(Path, INTERPRETER_FOLDERS):
        for interp in sorted(folder.glob("*.interp")) if folder.is_dir() else ():
            for line in interp.read_text(errors="replace").splitlines():
                name, _, program = line.strip().partition("=")
                if name in ("python3", "python") and Path(program).exists():
                    return [program]
    found = shutil.which("python3")
    return [found] if found else None


def check_gimp_python(profile: Path) -> bool:
    """Whether the Python that this profile's GIMP runs plug-ins with can run the plug-in (it
    needs GIMP's bindings and pyzmq); says what it found, and what to do."""
    where = f"GIMP of {profile}"
    command = gimp_python(profile)
    if command is None:
        say(f"{where}: found no Python that it would run plug-ins with")
        return False
    try:
        result = subprocess.run([*command, "-c", GIMP_PYTHON_PROBE], capture_output=True,
                                text=True, timeout=120)  # fmt: skip
    except (OSError, subprocess.TimeoutExpired) as err:
        say(f"{where}: could not run {' '.join(command)} ({err})")
        return False
    version = result.stdout.strip() or "?"
    runs = f"{where}: runs plug-ins with {' '.join(command)} (Python {version})"
    if result.returncode == 0:
        say(f"{runs}: it has GIMP's bindings and pyzmq")
        return True
    failure = (result.stderr.strip().splitlines() or [""])[-1]
    if "zmq" in failure:
        bundled = command[0] != shutil.which("python3")
        advice = (
            "this GIMP bundles its own Python, in which the plug-in does not load yet (see README)"
            if bundled
            else "install it with `sudo apt install python3-zmq`"
        )
        say(f"{runs}: it lacks pyzmq: {advice}")
    else:
        say(
            f"{runs}: it lacks GIMP's Python bindings (gi with Gimp 3.0): install them with "
            "`sudo apt install gir1.2-gimp-3.0 python3-gi`, or check that this is GIMP 3"
        )
    return False


def say(message: str) -> None:
    print(f"[install] {message}", flush=True)


def venv_python(venv_dir: Path) -> Path:
    return venv_dir / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def run(*command: str | Path, **kwargs) -> None:  # noqa: ANN003
    subprocess.run([str(part) for part in command], check=True, **kwargs)


def ensure_environment(venv_dir: Path, with_tests: bool) -> Path:
    """The daemon's virtual environment with the package installed; skipped when up to date."""
    python = venv_python(venv_dir)
    if not python.exists():
        if venv_dir.exists() and any(venv_dir.iterdir()) and not (venv_dir / "pyvenv.cfg").exists():
            sys.exit(f"[install] {venv_dir} exists and is not a virtual environment: "
                     "choose another folder with --venv.")  # fmt: skip
        say(f"creating the environment in {venv_dir}")
        venv.EnvBuilder(with_pip=True, clear=True).create(venv_dir)
    extras = "[test]" if with_tests else ""
    wanted = hashlib.sha256(
        (ROOT / "pyproject.toml").read_bytes() + extras.encode() + str(ROOT).encode()
    ).hexdigest()
    stamp = venv_dir / STAMP
    have = stamp.read_text().split() if stamp.exists() else []
    if wanted not in have:
        say("installing torch, torchvision and the package (the first time takes a few minutes)")
        run(python, "-m", "pip", "install", "--quiet", "--upgrade", "pip")
        run(python, "-m", "pip", "install", "--quiet", "-e", f"{ROOT}{extras}")
        stamp.write_text("\n".join([*have, wanted]) + "\n")
    else:
        say(f"environment {venv_dir} is up to date")
    return python


def record_environment(python: Path) -> None:
    """Tell the plug-in's client which Python to start the dream server with."""
    folder = ensure_state_dir()
    record = {"python": str(python), "project": str(ROOT)}
    (folder / INSTALL_RECORD).write_text(json.dumps(record, indent=2) + "\n")
    say(f"recorded the environment in {folder / INSTALL_RECORD}")


def check_embedded_model(python: Path) -> None:
    run(python, "-c", "from dream_server.models import load_model; load_model('effnet-lite0')")
    say("the built-in model (effnet-lite0) loads")


def dream_sample(venv_dir: Path) -> None:
    SAMPLE_OUTPUT.parent.mkdir(exist_ok=True)
    deepdream = venv_dir / ("Scripts/deepdream.exe" if os.name == "nt" else "bin/deepdream")
    say(f"dreaming {SAMPLE.relative_to(ROOT)} (about 10 seconds on two CPU cores)")
    run(deepdream, SAMPLE, "-o", SAMPLE_OUTPUT, "--preset", "animals")
    say(f"done: the sample dream is {SAMPLE_OUTPUT}")


def run_tests(python: Path, pytest_args: list[str]) -> int:
    say("running the test suite")
    code = subprocess.run([str(python), "-m", "pytest", *pytest_args], cwd=ROOT).returncode
    if code == PYTEST_NO_TESTS:
        print("[install] pytest collected no tests: that is a failure", file=sys.stderr)
        return 1
    return code


def check(venv_dir: Path, profiles: list[Path]) -> int:
    say(f"GIMP 3: {'found' if gimp_installed() else 'not found on PATH'}")
    for profile in profiles:
        plugin = profile / "plug-ins" / PLUGIN_NAME / "deepdream.py"
        if profile.exists():
            say(f"plug-in in {profile}: {'installed' if plugin.exists() else 'missing'}")
            check_gimp_python(profile)
    python = venv_python(venv_dir)
    if python.exists():
        status = subprocess.run([str(python), "-m", "dream_server.daemon", "--status"],
                                capture_output=True, text=True)  # fmt: skip
        for line in status.stdout.strip().splitlines():
            say(f"dream server: {line}")
    if not python.exists():
        say(f"daemon environment: missing ({venv_dir}); run: python3 install.py")
        return 1
    say(f"daemon environment: {venv_dir}")
    probe = (
        "import torch, dream_server; from dream_server.devices import select_device;"
        "from dream_server.weights import cache_dir; from dream_server.models import MODELS;"
        "print('package', dream_server.__version__, 'torch', torch.__version__);"
        "print('device', select_device('auto'));"
        "ready=[n for n, s in MODELS.items()"
        " if s.weights is None or (cache_dir() / s.weights.filename).exists()];"
        "print('models ready', ', '.join(ready))"
    )
    result = subprocess.run([str(python), "-c", probe], capture_output=True, text=True)
    for line in (result.stdout + result.stderr).strip().splitlines():
        say(line)
    return result.returncode


def stop_running_server() -> None:
    """A server started from an older install would not know the new parameters: stop it.

    The endpoint file may be stale (a server killed outright leaves it) and its process id
    reused by another program: only a process that is a dream server is stopped.
    """
    try:
        pid = int(json.loads((state_dir() / ENDPOINT_FILE).read_text())["pid"])
    except (OSError, ValueError, KeyError, TypeError):
        return
    if not is_dream_server(pid):
        say(f"the endpoint file names process {pid}, which is not a dream server: left alone")
        return
    try:
        os.kill(pid, signal.SIGTERM)
    except OSError:
        return
    say(f"stopped the running dream server (pid {pid}); the plug-in starts a fresh one")


def is_dream_server(pid: int) -> bool:
    """Whether process `pid` runs dream-server, from its command line."""
    if Path("/proc").is_dir():
        try:
            command = (Path("/proc") / str(pid) / "cmdline").read_bytes().replace(b"\0", b" ")
        except OSError:
            return False
        text = command.decode(errors="replace")
    elif os.name == "nt":
        return False  # no command line to check: never stop what may be another program
    else:  # macOS and the BSDs
        ps = subprocess.run(["ps", "-p", str(pid), "-o", "command="], capture_output=True,
                            text=True)  # fmt: skip
        text = ps.stdout
    return "dream_server.daemon" in text or "dream-server" in text


def uninstall(venv_dir: Path, profiles: list[Path]) -> int:
    stop_running_server()
    targets = [p / "plug-ins" / PLUGIN_NAME for p in profiles]
    if (venv_dir / "pyvenv.cfg").exists():  # never delete a folder that is not a venv
        targets.append(venv_dir)
    targets.append(state_dir() / INSTALL_RECORD)
    removed = [t for t in targets if t.exists()]
    for target in removed:
        shutil.rmtree(target) if target.is_dir() else target.unlink()
        say(f"removed {target}")
    if not removed:
        say("nothing to remove")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    action = parser.add_mutually_exclusive_group()
    action.add_argument("--test", action="store_true", help="set up, then run the whole test suite")
    action.add_argument("--check", action="store_true", help="diagnose the installation")
    action.add_argument("--uninstall", action="store_true", help="remove what install.py added")
    parser.add_argument("--venv", type=Path, default=DEFAULT_VENV, help="environment folder")
    parser.add_argument("--no-sample", action="store_true", help="skip the sample dream")
    parser.add_argument(
        "--gimp-dir",
        type=Path,
        action="append",
        help="GIMP 3 profile folder to install into (default: those found)",
    )
    args, pytest_args = parser.parse_known_args()  # with --test, the rest goes to pytest
    if pytest_args and not args.test:
        parser.error(f"unrecognized arguments: {' '.join(pytest_args)}")
    args.venv = args.venv.absolute()  # recorded for the plug-in, which runs elsewhere
    if sys.version_info < (3, 11):  # noqa: UP036 - this file runs before anything checks
        sys.exit(f"Python 3.11 or newer is needed; this is {sys.version.split()[0]}.")
    profiles = args.gimp_dir or gimp_profiles()
    if args.check:
        return check(args.venv, profiles)
    if args.uninstall:
        return uninstall(args.venv, profiles)
    try:
        python = ensure_environment(args.venv, with_tests=args.test)
        check_embedded_model(python)
        if args.test:  # the tests use folders of their own: leave the user's server alone
            run(python, ROOT / "tests" / "gimp" / "sandbox.py")
            return run_tests(python, pytest_args)
        record_environment(python)
        stop_running_server()
        found = args.gimp_dir or [p for p in profiles if p.exists()]
        if not found and gimp_installed():
            found = profiles[:1]
        if found:
            for profile in install_plugin(python, found):
                check_gimp_python(profile.parent.parent)
        else:
            say("no GIMP 3 found: skipped the plug-in (install GIMP 3, then run this again)")
        if not args.no_sample:
            dream_sample(args.venv)
    except subprocess.CalledProcessError as err:
        print(
            f"[install] failed: {' '.join(map(str, err.cmd))} exited with {err.returncode}",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
