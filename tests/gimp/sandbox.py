"""Real GIMP 3s for the tests: each released line in a Debian root built once and reused.

Debian 13 (trixie) ships GIMP 3.0 and Debian sid ships GIMP 3.2: a root of each, made with
debootstrap (needs root and the Debian mirror), gives the tests both GIMPs that artists run,
whatever this machine's own Debian is. The roots live in /var/tmp (`DEEPDREAM_GIMP_ROOTS` moves
them) so that later runs on the same machine reuse them. Which GIMP a root holds is read from
its binaries (`gimp-console-3.2`), never written down here.

    python3 tests/gimp/sandbox.py          # make sure every root is there
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

PACKAGES = [
    "gimp", "python3-gi", "gir1.2-gimp-3.0", "python3-zmq",
    "xvfb", "xauth", "xdotool", "imagemagick", "x11-utils",
]  # fmt: skip
SUITES = ("trixie", "sid")
"""Debian 13, whose GIMP is 3.0, and Debian's next release, whose GIMP is 3.2."""
MIRROR = "http://deb.debian.org/debian"
READY_MARK = ".deepdream-gimp-ready"
CONSOLE = re.compile(r"gimp-console-(3\.\d+)$")


def roots_dir() -> Path:
    return Path(os.environ.get("DEEPDREAM_GIMP_ROOTS", "/var/tmp"))


def root_dir(suite: str) -> Path:
    return roots_dir() / f"deepdream-gimp-{suite}"


class Gimp:
    """How to run one GIMP 3 and where it sees files: `host_dir` on this machine is
    `inside(...)` for GIMP."""

    def __init__(self, root: Path | None, version: str) -> None:
        self.root = root
        self.version = version

    def __repr__(self) -> str:
        return f"GIMP {self.version}" + (f" in {self.root}" if self.root else "")

    def inside(self, path: Path) -> str:
        """The path as GIMP sees it."""
        if self.root is None:
            return str(path)
        return "/" + str(Path(path).resolve().relative_to(self.root.resolve()))

    def scratch_dir(self) -> Path:
        """A folder both this machine and GIMP can read and write."""
        base = (self.root / "tmp") if self.root else Path("/tmp")
        folder = Path(
            subprocess.check_output(
                ["mktemp", "-d", "-p", str(base), "dd-XXXXXX"], text=True
            ).strip()
        )
        folder.chmod(0o777)
        return folder

    def batch_command(self, script: Path, environment: dict[str, str]) -> list[str]:
        """gimp-console running a Python script (a path GIMP can see) and quitting."""
        code = f"exec(open({self.inside(script)!r}).read())"
        args = ["-i", "--quit", "--batch-interpreter", "python-fu-eval", "-b", code]
        return self.command(f"gimp-console-{self.version}", args, environment)

    def gui_command(self, args: list[str], environment: dict[str, str]) -> list[str]:
        return self.command(f"gimp-{self.version}", args, environment)

    def command(self, program: str, args: list[str], environment: dict[str, str]) -> list[str]:
        assignments = [f"{key}={value}" for key, value in environment.items()]
        if self.root is None:
            return ["env", *assignments, program, *args]
        return [
            "chroot",
            str(self.root),
            "env",
            "-i",
            "PATH=/usr/bin:/bin",
            *assignments,
            program,
            *args,
        ]


def install_plugin(profile: Path, home: Path) -> subprocess.CompletedProcess:
    """Install the plug-in into a throwaway GIMP profile with install.py, as a user would."""
    project = Path(__file__).resolve().parents[2]
    return subprocess.run(
        [sys.executable, project / "install.py", "--venv", sys.prefix, "--gimp-dir", profile,
         "--no-sample"],
        env={**os.environ, "DEEPDREAM_HOME": str(home)}, capture_output=True, text=True,
    )  # fmt: skip


def console_version(bin_dir: Path) -> str | None:
    """The GIMP 3 version whose `gimp-console-3.N` is in the folder."""
    found = [match.group(1) for program in sorted(bin_dir.glob("gimp-console-3.*"))
             if (match := CONSOLE.match(program.name))]  # fmt: skip
    return found[-1] if found else None


def find_gimps(build: bool = False) -> list[Gimp]:
    """The tests' GIMP 3s: one per Debian root (built first when `build`; the roots build side
    by side), and the system's own where it has one."""
    missing = [s for s in SUITES if not (root_dir(s) / READY_MARK).exists()]
    if build and missing:
        if os.geteuid() != 0:
            raise SystemExit(f"Building the GIMP roots in {roots_dir()} needs root.")
        if not shutil.which("debootstrap"):
            run(["apt-get", "update", "-q"])
            run(["apt-get", "install", "-y", "-q", "debootstrap"])
        with ThreadPoolExecutor(len(missing)) as pool:
            list(pool.map(build_root, missing))
    gimps = []
    system = next((v for v in map(console_version, system_bin_dirs()) if v), None)
    if system is not None:
        gimps.append(Gimp(None, system))
    for gimp in ready_roots():
        if gimp.version != system:
            mount_system_dirs(gimp.root)
            gimps.append(gimp)
    return gimps


def ready_roots() -> list[Gimp]:
    """The roots built so far, with the GIMP each holds (not yet ready to run: see find_gimps)."""
    ready = []
    for suite in SUITES:
        root = root_dir(suite)
        version = console_version(root / "usr" / "bin")
        if (root / READY_MARK).exists() and version:
            ready.append(Gimp(root, version))
    return ready


def system_bin_dirs() -> list[Path]:
    return [Path(folder) for folder in os.environ.get("PATH", "").split(os.pathsep) if folder]


def build_root(suite: str) -> None:
    root = root_dir(suite)
    if root.exists():
        unmount_system_dirs(root)
        shutil.rmtree(root)
    print(f"[gimp] building a Debian {suite} root with its GIMP in {root} (a few minutes, once)",
          flush=True)  # fmt: skip
    run(["debootstrap", "--variant=minbase", suite, str(root), MIRROR])
    mount_system_dirs(root)
    shutil.copy("/etc/resolv.conf", root / "etc" / "resolv.conf")
    # A mirror may serve sid's index a while after its Valid-Until: for a test root, that is
    # better than no root at all.
    (root / "etc" / "apt" / "apt.conf.d" / "99deepdream").write_text(
        'Acquire::Check-Valid-Until "false";\n'
    )
    chroot = ["chroot", str(root), "env", "DEBIAN_FRONTEND=noninteractive"]
    run([*chroot, "apt-get", "update", "-q"])
    run([*chroot, "apt-get", "install", "-y", "-q", "--no-install-recommends", *PACKAGES])
    (root / READY_MARK).write_text("ready\n")


def mount_system_dirs(root: Path) -> None:
    if not (root / "proc" / "self").exists():
        run(["mount", "-t", "proc", "proc", str(root / "proc")])
    if not (root / "dev" / "null").exists() or not os.path.ismount(root / "dev"):
        run(["mount", "--bind", "/dev", str(root / "dev")])
    if not os.path.ismount(root / "dev" / "shm"):
        run(["mount", "-t", "tmpfs", "tmpfs", str(root / "dev" / "shm")])


def unmount_system_dirs(root: Path) -> None:
    for sub in ("dev/shm", "dev", "proc"):
        if os.path.ismount(root / sub):
            subprocess.run(["umount", "-l", str(root / sub)], check=False)


def run(command: list[str]) -> None:
    subprocess.run(command, check=True, stdout=sys.stdout, stderr=sys.stderr)


if __name__ == "__main__":
    for gimp in find_gimps(build=True):
        print(f"[gimp] ready: {gimp}")
