#!/usr/bin/env python3
"""Set up DeepDream for GIMP on this machine, or run its test suite.

    python3 install.py            create the environment, install the GIMP plug-in, dream a sample
    python3 install.py --test     the same set-up with test tools and a GIMP 3 for the tests,
                                  then the whole test suite
    python3 install.py --check    say what is installed and what is missing, for each GIMP 3
    python3 install.py --service  start a dream server with each session (no terminal needed)
    python3 install.py --uninstall

Standard library only: it runs with any Python 3.11+ before anything else is installed.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import hashlib
import importlib.util
import json
import os
import plistlib
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tomllib
import venv
from dataclasses import dataclass
from pathlib import Path
from xml.sax.saxutils import escape

from dream_link.wire import (
    INSTALL_RECORD,
    EndpointRecord,
    ensure_state_dir,
    state_dir,
    write_private_text,
)

ROOT = Path(__file__).resolve().parent
DEFAULT_VENV = ROOT / ".venv"
SAMPLE = ROOT / "dream_server" / "samples" / "coffee.png"
SAMPLE_OUTPUT = ROOT / "out" / "coffee-dream.png"
STAMP = "deepdream-installed"
PYTEST_NO_TESTS = 5
PLUGIN_NAME = "deepdream"
TORCH_CUDA_INDEX = "https://download.pytorch.org/whl/cu128"
"""PyPI's torch for Windows runs on the CPU only; PyTorch's own index has the CUDA builds."""
PLUGIN_PACKAGE = "dream_link"
"""Standard library only: the client, its ZMTP, and the protocol it shares with the server."""

GIMP_SERIES = "3"
"""The GIMP these plug-ins are for: every 3.x release, each with a profile folder of its own
(`GIMP/3.0`, `GIMP/3.2`, and whatever comes next), all running the same plug-in."""
RELEASE = re.compile(rf"(?<![\d.])({GIMP_SERIES}\.\d+)(?:\.\d+)*(?![\d.])")
"""A 3.x release in a program's name or version text (`gimp-console-3.2`, `3.2.6`): `3.2`."""
GIMP_API = f"{GIMP_SERIES}.0"
"""The version of GIMP's Python bindings and of its library folders, the same for every 3.x."""


def release_key(release: str) -> tuple[int, ...]:
    return tuple(int(part) for part in release.split("."))


def profile_base() -> Path:
    """The folder that holds this user's GIMP profiles, one per release."""
    home = Path.home()
    if sys.platform == "win32":
        return Path(os.environ.get("APPDATA", home)) / "GIMP"
    if sys.platform == "darwin":
        return home / "Library" / "Application Support" / "GIMP"
    return Path(os.environ.get("XDG_CONFIG_HOME", home / ".config")) / "GIMP"


FLATPAK_PROFILE_BASE = Path.home() / ".var" / "app" / "org.gimp.GIMP" / "config" / "GIMP"
"""Where a Flatpak GIMP without access to the host's configuration keeps its profiles."""


def profile_releases(base: Path) -> list[str]:
    """The releases whose profile folders exist under `base` (GIMP makes one at its first
    start)."""
    found = [folder.name for folder in base.glob(f"{GIMP_SERIES}.*")
             if folder.is_dir() and RELEASE.fullmatch(folder.name)]  # fmt: skip
    return sorted(found, key=release_key)


def gimp_programs() -> list[Path]:
    """The GIMP programs of this machine's PATH and of the Windows installer's folders."""
    folders = [Path(f) for f in os.environ.get("PATH", "").split(os.pathsep) if f]
    if sys.platform == "win32":
        # the installer's folders, for everyone and for one user
        for variable, below in (("ProgramFiles", ""), ("LOCALAPPDATA", "Programs")):
            if os.environ.get(variable):
                programs = Path(os.environ[variable]) / below
                folders += [bundle / "bin" for bundle in programs.glob(f"GIMP {GIMP_SERIES}*")]
    return [program for folder in folders for program in folder.glob("gimp*")]


def system_releases() -> list[str]:
    """The GIMP 3 releases installed with the system or from the Windows and macOS bundles:
    from their programs' names (`gimp-3.2`, `gimp-console-3.2.exe`), the macOS bundle's
    Info.plist, or else what a plain `gimp` says of its version."""
    found = set()
    plain = None
    for program in gimp_programs():
        name = program.name.removesuffix(".exe")
        if match := RELEASE.fullmatch(name.removeprefix("gimp-console-").removeprefix("gimp-")):
            found.add(match.group(1))
        elif name in ("gimp", f"gimp-{GIMP_SERIES}", "gimp-console"):
            plain = plain or program
    if sys.platform == "darwin":
        for info in Path("/Applications").glob("GIMP*.app/Contents/Info.plist"):
            with contextlib.suppress(OSError, ValueError, plistlib.InvalidFileException):
                bundle = plistlib.loads(info.read_bytes())
                version = str(bundle.get("CFBundleShortVersionString", ""))
                if match := RELEASE.fullmatch(version):
                    found.add(match.group(1))
    if not found and plain is not None:
        with contextlib.suppress(OSError, subprocess.TimeoutExpired):
            said = subprocess.run([str(plain), "--version"], capture_output=True, text=True,
                                  timeout=60).stdout  # fmt: skip
            if match := RELEASE.search(said):
                found.add(match.group(1))
    return sorted(found, key=release_key)


def flatpak_release(flatpak: str) -> str | None:
    """The release of the Flatpak GIMP, from `flatpak info` (`Version: 3.2.6`)."""
    info = subprocess.run([flatpak, "info", FLATPAK_GIMP], capture_output=True, text=True)
    if info.returncode != 0:
        return None
    for line in info.stdout.splitlines():
        if line.strip().startswith("Version:") and (match := RELEASE.search(line)):
            return match.group(1)
    return GIMP_API  # a Flatpak GIMP 3 that does not say: the first release's profile


def default_profiles() -> list[Path]:
    """Where the plug-in goes when no GIMP is named: each installed release's profile (made
    if GIMP has not run yet) and each release's profile that exists, system and Flatpak."""
    return sorted({gimp.profile for gimp in find_gimps(None) if gimp.profile is not None})


def parameter_files(python: Path) -> dict[str, str]:
    """The parameter files written next to the plug-in, which its procedures and dialogs are
    built from: `parameters.json` for the dream's, `parameters-NAME.json` for each other."""
    schemas = json.loads(subprocess.run([str(python), "-m", "dream_server.params"], check=True,
                                        capture_output=True, text=True).stdout)  # fmt: skip
    return {
        f"parameters{'' if name == 'dream' else '-' + name}.json": json.dumps(schema, indent=1)
        for name, schema in schemas.items()
    }


def plugin_contents(python: Path) -> dict[str, str]:
    """What goes into the plug-in's folder, by path inside it: the plug-in, the package it
    talks to the server with, the parameter files its dialogs are built from, and the help
    domain its Help buttons open (GIMP looks for help/<language>/gimp-help.xml, then help/en)."""
    contents = {"deepdream.py": (ROOT / "gimp_plugin" / "deepdream.py").read_text()}
    for module in sorted((ROOT / PLUGIN_PACKAGE).glob("*.py")):
        contents[f"{PLUGIN_PACKAGE}/{module.name}"] = module.read_text()
    contents.update(parameter_files(python))
    contents["help/en/gimp-help.xml"] = HELP_INDEX
    contents["help/en/index.html"] = help_page()
    return contents


HELP_SECTIONS = ("## In GIMP", "## Feature visualization")
"""The README's sections that GIMP's Help button opens for the plug-in's dialogs."""
HELP_INDEX = """<?xml version="1.0" encoding="UTF-8"?>
<gimp-help>
  <help-missing ref="index.html"/>
</gimp-help>
"""
"""The help domain's map (help/en/gimp-help.xml): every help id of the plug-in leads to the page."""


def help_page() -> str:
    """The README's words for the dialogs as a page for a browser: the same text, written once."""
    readme = (ROOT / "README.md").read_text()
    parts = []
    for heading in HELP_SECTIONS:
        start = readme.index(f"\n{heading}\n") + 1
        end = readme.find("\n## ", start + 1)
        parts.append(readme[start : end if end > 0 else None])
    body = markdown_to_html("\n".join(parts))
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        "<title>DeepDream for GIMP</title><style>body{max-width:46em;margin:2em auto;"
        "font-family:sans-serif;line-height:1.45;padding:0 1em}pre{overflow-x:auto}"
        "</style></head>\n<body>\n" + body + "</body></html>\n"
    )


def markdown_to_html(text: str) -> str:
    """The Markdown that the README uses: headings, paragraphs, lists, code blocks and tables
    (kept as text), code, emphasis and links."""

    def inline(line: str) -> str:
        line = escape(line)
        line = re.sub(r"!\[[^\]]*\]\([^)]*\)", "", line)
        line = re.sub(r"`([^`]+)`", r"<code>\1</code>", line)
        line = re.sub(r"\*\*([^*]+)\*\*", r"<strong>\1</strong>", line)
        line = re.sub(r"\*([^*]+)\*", r"<em>\1</em>", line)
        return re.sub(r"\[([^\]]+)\]\(([^)]+)\)", r'<a href="\2">\1</a>', line)

    html, block, fenced = [], [], False

    def close() -> None:
        if block:
            first = block[0]
            if first.startswith("#"):
                level = len(first) - len(first.lstrip("#"))
                html.append(f"<h{level}>{inline(first.lstrip('# '))}</h{level}>")
            elif first.startswith("|"):
                html.append("<pre>" + escape("\n".join(block)) + "</pre>")
            elif first.startswith("- "):
                items = " ".join(block).split("- ")[1:]
                html.append("<ul>" + "".join(f"<li>{inline(i)}</li>" for i in items) + "</ul>")
            else:
                html.append(f"<p>{inline(' '.join(block))}</p>")
            block.clear()

    for line in text.splitlines():
        if line.startswith("```"):
            close()
            html.append("</pre>" if fenced else "<pre>")
            fenced = not fenced
        elif fenced:
            html[-1] += escape(line) + "\n"
        elif not line.strip():
            close()
        else:
            block.append(line)
    close()
    return "\n".join(html) + "\n"


def install_plugin(python: Path, profiles: list[Path]) -> list[Path]:
    """Write the plug-in into each profile's plug-ins folder (folder name = file name), in
    place of what an earlier release put there."""
    contents = plugin_contents(python)
    installed = []
    for profile in profiles:
        target = profile / "plug-ins" / PLUGIN_NAME
        if target.is_dir():
            shutil.rmtree(target)
        for name, text in contents.items():
            # a fresh modification time: GIMP reads the procedures again, new settings and all
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            (target / name).write_text(text)
        (target / "deepdream.py").chmod(0o755)
        installed.append(target)
        say(f"installed the GIMP plug-in in {target}")
    return installed


FLATPAK_GIMP = "org.gimp.GIMP"
INTERPRETER_FOLDERS = tuple(
    os.path.expandvars(folder.format(api=GIMP_API, series=GIMP_SERIES)) for folder in (
        "/usr/lib/gimp/{api}/interpreters", "/usr/lib/x86_64-linux-gnu/gimp/{api}/interpreters",
        "/usr/lib/aarch64-linux-gnu/gimp/{api}/interpreters",
        "/Applications/GIMP.app/Contents/Resources/lib/gimp/{api}/interpreters",
        r"%ProgramFiles%\GIMP {series}\lib\gimp\{api}\interpreters",
    )
)  # fmt: skip
GIMP_PYTHON_PROBE = (
    "import sys; print(sys.version.split()[0], flush=True); import gi; "
    f"gi.require_version('Gimp', '{GIMP_API}'); from gi.repository import Gimp\n"
    "try:\n    import zmq; print('pyzmq')\nexcept ImportError:\n    print('stdlib')"
)


@dataclass(frozen=True)
class GimpFound:
    """One GIMP 3 release of this machine: where its profile is, as seen from here, and the
    command of the Python it runs plug-ins with."""

    kind: str
    release: str | None
    """`3.2`; None for a profile named with --gimp-dir."""
    profile: Path | None
    """None where each use makes a profile of its own (the tests' GIMPs)."""
    python: list[str] | None
    sandboxed: bool = False
    """A Flatpak: its plug-ins cannot start a server outside the sandbox."""
    installed: bool = True
    """False for a profile left by a release that is no longer installed."""

    def describe(self) -> str:
        if self.release is None:
            return f"GIMP of {self.profile}"
        return f"GIMP {self.release} ({self.kind})"


def find_gimps(given: list[Path] | None) -> list[GimpFound]:
    """The GIMP 3 releases of this machine: installed with the system (or the Windows and macOS
    bundles), as a Flatpak, and the tests' roots, each with its profile; the profiles of other
    3.x releases that exist; or the profiles `given` with --gimp-dir."""
    if given:
        return [GimpFound("given", None, profile, system_python()) for profile in given]
    found = []
    base = profile_base()
    installed = system_releases()
    if not installed and any(interpreter_files()):
        installed = [GIMP_API]  # GIMP 3's library is there, its programs are not on PATH
    python = system_python()
    for release in sorted({*installed, *profile_releases(base)}, key=release_key):
        here = release in installed
        kind = "system" if here else "a profile; this GIMP is not installed"
        found.append(GimpFound(kind, release, base / release, python, installed=here))
    flatpak = shutil.which("flatpak")
    release = flatpak_release(flatpak) if flatpak else None
    if release is not None:
        permissions = subprocess.run([flatpak, "info", "--show-permissions", FLATPAK_GIMP],
                                     capture_output=True, text=True).stdout  # fmt: skip
        # Flathub's GIMP has xdg-config/GIMP: its profiles are the host's ~/.config/GIMP/3.x.
        shares_profile = "xdg-config/GIMP" in permissions
        flatpak_base = base if shares_profile else FLATPAK_PROFILE_BASE
        python = [flatpak, "run", "--command=python3", FLATPAK_GIMP]
        for other in sorted({release, *profile_releases(flatpak_base)}, key=release_key):
            if not any(gimp.profile == flatpak_base / other for gimp in found):
                found.append(GimpFound(f"Flatpak {FLATPAK_GIMP}", other, flatpak_base / other,
                                       python, sandboxed=True,
                                       installed=other == release))  # fmt: skip
    for gimp in tests_gimps():
        python = ["chroot", str(gimp.root), "python3"] if os.geteuid() == 0 else None
        found.append(GimpFound(f"the tests' root {gimp.root}", gimp.version, None, python))
    return found


def tests_gimps() -> list:
    """The GIMPs that tests/gimp/sandbox.py keeps for the tests (none on Windows)."""
    if not hasattr(os, "geteuid"):
        return []
    spec = importlib.util.spec_from_file_location("sandbox", ROOT / "tests" / "gimp" / "sandbox.py")
    if spec is None or not Path(spec.origin).exists():
        return []
    sandbox = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(sandbox)
    return sandbox.ready_roots()


def interpreter_files() -> list[Path]:
    return [interp for folder in map(Path, INTERPRETER_FOLDERS) if folder.is_dir()
            for interp in sorted(folder.glob("*.interp"))]  # fmt: skip


def system_python() -> list[str] | None:
    """The Python that a GIMP installed with the system (or a Windows or macOS bundle) runs the
    plug-in with: the one an `.interp` file maps `python3` to; else the `python3` that the
    plug-in's `#!/usr/bin/env python3` finds."""
    for interp in interpreter_files():
        for line in interp.read_text(errors="replace").splitlines():
            name, _, program = line.strip().partition("=")
            if name in ("python3", "python") and Path(program).exists():
                return [program]
    found = shutil.which("python3")
    return [found] if found else None


@functools.cache
def probe_python(python: tuple[str, ...]) -> subprocess.CompletedProcess:
    """What a Python says of its version, of GIMP's bindings and of pyzmq (once per Python:
    the releases of one system share it)."""
    return subprocess.run([*python, "-c", GIMP_PYTHON_PROBE], capture_output=True, text=True,
                          timeout=120)  # fmt: skip


def check_gimp_python(gimp: GimpFound) -> bool:
    """Whether the Python that this GIMP runs plug-ins with can run the plug-in (it needs GIMP's
    bindings; pyzmq it uses where it has it); says what it found, and what to do."""
    where = gimp.describe()
    if gimp.python is None:
        say(f"{where}: found no Python that it would run plug-ins with")
        return False
    try:
        result = probe_python(tuple(gimp.python))
    except (OSError, subprocess.TimeoutExpired) as err:
        say(f"{where}: could not run {' '.join(gimp.python)} ({err})")
        return False
    version, *transport = result.stdout.split() or ["?"]
    runs = f"{where}: runs plug-ins with {' '.join(gimp.python)} (Python {version})"
    if result.returncode != 0:
        say(
            f"{runs}: it lacks GIMP's Python bindings (gi with Gimp {GIMP_API}): install them with "
            f"`sudo apt install gir1.2-gimp-{GIMP_API} python3-gi`, or check that this is GIMP "
            f"{GIMP_SERIES}"
        )
        return False
    through = {"pyzmq": "pyzmq", "stdlib": "the standard library (it has no pyzmq)"}
    say(f"{runs}: the plug-in talks to the server through {through[transport[0]]}")
    if gimp.sandboxed:
        say(f"{where}: a sandbox, which cannot start the dream server: keep one running with "
            "`python3 install.py --service`, or start `dream-server` before dreaming")  # fmt: skip
    return True


def plugin_state(profile: Path, contents: dict[str, str] | None) -> str:
    """`installed and current`, `installed from another release: ...`, or `missing`."""
    folder = profile / "plug-ins" / PLUGIN_NAME
    if not (folder / "deepdream.py").exists():
        return "missing"
    stale = sorted(
        name for name, text in (contents or {}).items()
        if not (folder / name).exists() or (folder / name).read_text() != text
    )  # fmt: skip
    if stale:
        return f"installed from another release ({', '.join(stale)} differ): run install.py again"
    return "installed and current"


def say(message: str) -> None:
    print(f"[install] {message}", flush=True)


def venv_python(venv_dir: Path) -> Path:
    return venv_dir / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def run(*command: str | Path, **kwargs) -> None:  # noqa: ANN003
    subprocess.run([str(part) for part in command], check=True, **kwargs)


def windows_with_nvidia() -> bool:
    """Where torch comes from PyTorch's CUDA wheels: PyPI's for Windows are CPU-only."""
    return sys.platform == "win32" and shutil.which("nvidia-smi") is not None


def room_needed_gb() -> float:
    """Disk space a first install takes on this platform: torch with its CUDA libraries is
    5.6 GB in the environment (Linux x86_64, Windows with an NVIDIA GPU), pip unpacking each
    wheel on the way; a CPU-only torch is under 1 GB."""
    linux_cuda = sys.platform.startswith("linux") and os.uname().machine == "x86_64"
    return 8.0 if linux_cuda or windows_with_nvidia() else 2.0


def check_room(venv_dir: Path, needed_gb: float) -> None:
    """Stop before pip runs out of disk space halfway through torch, saying how much to free;
    an environment that has torch already needs little more."""
    if any(venv_dir.glob("lib*/python*/site-packages/torch")) or any(
        venv_dir.glob("Lib/site-packages/torch")
    ):
        return
    free_gb = shutil.disk_usage(venv_dir).free / 1e9
    if free_gb < needed_gb:
        sys.exit(f"[install] torch and what it needs take about {needed_gb:.0f} GB on the disk of "
                 f"{venv_dir}, which has {free_gb:.1f} GB free: free some space (or choose a "
                 "folder on another disk with --venv), then run this again.")  # fmt: skip


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
        check_room(venv_dir, room_needed_gb())
        say("installing torch, torchvision and the package (the first time takes a few minutes)")
        run(python, "-m", "pip", "install", "--quiet", "--upgrade", "pip")
        if windows_with_nvidia():
            say(f"an NVIDIA GPU: torch from PyTorch's CUDA wheels ({TORCH_CUDA_INDEX})")
            run(python, "-m", "pip", "install", "--quiet", *torch_requirements(),
                "--index-url", TORCH_CUDA_INDEX)  # fmt: skip
        run(python, "-m", "pip", "install", "--quiet", "-e", f"{ROOT}{extras}")
        stamp.write_text("\n".join([*have, wanted]) + "\n")
    else:
        say(f"environment {venv_dir} is up to date")
    return python


def torch_requirements() -> list[str]:
    """pyproject.toml's requirements of torch and torchvision, with their version bounds."""
    dependencies = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    return [d for d in dependencies if d.split(">")[0].split("<")[0] in ("torch", "torchvision")]


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


def check(venv_dir: Path, given: list[Path] | None) -> int:
    python = venv_python(venv_dir)
    contents = plugin_contents(python) if python.exists() else None
    gimps = find_gimps(given)
    if not gimps:
        say(f"GIMP {GIMP_SERIES}: none found (installed with the system, as a Flatpak, or the "
            "tests' roots)")  # fmt: skip
    for gimp in gimps:
        if gimp.profile is None:
            say(f"{gimp.describe()}: the tests install the plug-in into profiles of their own")
        else:
            state = plugin_state(gimp.profile, contents)
            say(f"{gimp.describe()}: profile {gimp.profile}; the plug-in is {state}")
        if gimp.installed:
            check_gimp_python(gimp)
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


SERVICE_ARGUMENTS = ("-m", "dream_server.daemon", "--lazy", "--idle-unload", "10")
"""A server that starts with the session: no model is loaded before the first job, and the
models are let go after 10 minutes without work."""
SYSTEMD_UNIT = "dream-server.service"
LAUNCHD_LABEL = "org.deepdream.dream-server"
WINDOWS_TASK = "DeepDream dream server"


def service_file() -> Path | None:
    """Where the per-user service is described (None on Windows: a scheduled task)."""
    if sys.platform == "win32":
        return None
    if sys.platform == "darwin":
        return Path.home() / "Library" / "LaunchAgents" / f"{LAUNCHD_LABEL}.plist"
    config = Path(os.environ.get("XDG_CONFIG_HOME", Path.home() / ".config"))
    return config / "systemd" / "user" / SYSTEMD_UNIT


def service_command(python: Path) -> list[str]:
    if os.name == "nt":  # pythonw: no console window for a server nobody looks at
        windowless = python.with_name("pythonw.exe")
        python = windowless if windowless.exists() else python
    return [str(python), *SERVICE_ARGUMENTS]


def systemd_unit(python: Path) -> str:
    return "\n".join([
        "[Unit]",
        "Description=DeepDream dream server (for GIMP and the deepdream command)",
        "",
        "[Service]",
        f"ExecStart={shlex.join(service_command(python))}",
        # exit code 1: another server holds the lock (one the plug-in started); try again later
        "Restart=on-failure",
        "RestartSec=30",
        "",
        "[Install]",
        "WantedBy=default.target",
        "",
    ])  # fmt: skip


def launchd_plist(python: Path) -> str:
    arguments = "".join(f"<string>{escape(part)}</string>" for part in service_command(python))
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        '<!DOCTYPE plist PUBLIC "-//Apple//DTD PLIST 1.0//EN" '
        '"http://www.apple.com/DTDs/PropertyList-1.0.dtd">\n'
        '<plist version="1.0"><dict>'
        f"<key>Label</key><string>{LAUNCHD_LABEL}</string>"
        f"<key>ProgramArguments</key><array>{arguments}</array>"
        "<key>RunAtLoad</key><true/>"
        "<key>KeepAlive</key><dict><key>SuccessfulExit</key><false/></dict>"
        "</dict></plist>\n"
    )


def install_service(python: Path) -> int:
    """A dream server for this user that starts with the session, without a terminal: a systemd
    user unit, a launchd agent on macOS, a scheduled task at log-on on Windows."""
    stop_running_server()  # the service's server takes its place
    command = service_command(python)
    if sys.platform == "win32":
        task = subprocess.list2cmdline(command)
        steps = [["schtasks", "/Create", "/F", "/SC", "ONLOGON", "/TN", WINDOWS_TASK, "/TR", task],
                 ["schtasks", "/Run", "/TN", WINDOWS_TASK]]  # fmt: skip
    elif sys.platform == "darwin":
        path = service_file()
        path.parent.mkdir(parents=True, exist_ok=True)
        write_private_text(path, launchd_plist(python))
        say(f"wrote {path}")
        steps = [["launchctl", "load", "-w", str(path)]]
    else:
        path = service_file()
        path.parent.mkdir(parents=True, exist_ok=True)
        write_private_text(path, systemd_unit(python))
        say(f"wrote {path}")
        steps = [["systemctl", "--user", "daemon-reload"],
                 ["systemctl", "--user", "enable", "--now", SYSTEMD_UNIT]]  # fmt: skip
    for index, step in enumerate(steps):
        try:
            done = subprocess.run(step, capture_output=True, text=True, timeout=60)
        except (OSError, subprocess.TimeoutExpired) as err:
            done = subprocess.CompletedProcess(step, 1, "", str(err))
        if done.returncode != 0:
            why = (done.stderr.strip().splitlines() or ["no reason given"])[-1]
            left = " && ".join(shlex.join(later) for later in steps[index:])
            say(f"could not run `{shlex.join(step)}` ({why}): in your desktop session, run "
                f"`{left}` to start the server now and with every session")  # fmt: skip
            return 1
    say(f"the dream server now starts with your session: {shlex.join(command)}")
    return 0


def uninstall_service() -> list[str]:
    """Stop and remove the service, if there is one; what was removed."""
    path = service_file()
    if sys.platform == "win32":
        steps = [["schtasks", "/End", "/TN", WINDOWS_TASK],
                 ["schtasks", "/Delete", "/F", "/TN", WINDOWS_TASK]]  # fmt: skip
    elif path is None or not path.exists():
        return []
    elif sys.platform == "darwin":
        steps = [["launchctl", "unload", "-w", str(path)]]
    else:
        steps = [["systemctl", "--user", "disable", "--now", SYSTEMD_UNIT]]
    for step in steps:
        with contextlib.suppress(OSError, subprocess.TimeoutExpired):
            subprocess.run(step, capture_output=True, timeout=60)
    if path is not None and path.exists():
        path.unlink()
        with contextlib.suppress(OSError, subprocess.TimeoutExpired):
            subprocess.run(["systemctl", "--user", "daemon-reload"], capture_output=True,
                           timeout=60)  # fmt: skip
        return [str(path)]
    return []


def stop_running_server() -> None:
    """A server started from an older install would not know the new parameters: stop it.

    The endpoint file may be stale (a server killed outright leaves it) and its process id
    reused by another program: only a process that is a dream server is stopped.
    """
    record = EndpointRecord.read()
    if record is None or not isinstance(record.pid, int):
        return
    pid = record.pid
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
    services = uninstall_service()
    for service in services:
        say(f"removed the service {service}")
    stop_running_server()
    targets = [p / "plug-ins" / PLUGIN_NAME for p in profiles]
    if (venv_dir / "pyvenv.cfg").exists():  # never delete a folder that is not a venv
        targets.append(venv_dir)
    targets.append(state_dir() / INSTALL_RECORD)
    removed = [t for t in targets if t.exists()]
    for target in removed:
        shutil.rmtree(target) if target.is_dir() else target.unlink()
        say(f"removed {target}")
    if not removed and not services:
        say("nothing to remove")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    action = parser.add_mutually_exclusive_group()
    action.add_argument("--test", action="store_true", help="set up, then run the whole test suite")
    action.add_argument("--check", action="store_true", help="diagnose the installation")
    action.add_argument("--uninstall", action="store_true", help="remove what install.py added")
    action.add_argument(
        "--service",
        action="store_true",
        help="start a dream server with each session of this user, without a terminal "
        "(needed by GIMP's Flatpak, which cannot start one)",
    )
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
    if args.check:
        return check(args.venv, args.gimp_dir)
    if args.uninstall:
        return uninstall(args.venv, args.gimp_dir or default_profiles())
    if args.service:
        python = venv_python(args.venv)
        if not python.exists():
            sys.exit(f"[install] no environment in {args.venv}: run `python3 install.py` first.")
        return install_service(python)
    try:
        python = ensure_environment(args.venv, with_tests=args.test)
        check_embedded_model(python)
        if args.test:  # the tests use folders of their own: leave the user's server alone
            run(python, ROOT / "tests" / "gimp" / "sandbox.py")
            return run_tests(python, pytest_args)
        record_environment(python)
        stop_running_server()
        gimps = [gimp for gimp in find_gimps(args.gimp_dir) if gimp.profile is not None]
        if gimps:
            install_plugin(python, sorted({gimp.profile for gimp in gimps}))
            for gimp in gimps:
                if gimp.installed:
                    check_gimp_python(gimp)
        else:
            say(f"no GIMP {GIMP_SERIES} found: skipped the plug-in (install GIMP "
                f"{GIMP_SERIES}, then run this again)")  # fmt: skip
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
