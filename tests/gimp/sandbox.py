"""A real GIMP 3 for the tests: the system's, or one in a Debian 13 root built once and reused.

Debian 13 ships GIMP 3 (`apt-get install gimp`); on Debian 12, whose GIMP is 2.10, GIMP 3 runs
from a Debian 13 root made with debootstrap (needs root and the Debian mirror). The root lives
in /var/tmp (`DEEPDREAM_GIMP_ROOT` moves it) so that later runs on the same machine reuse it.

    python3 tests/gimp/sandbox.py          # make sure a GIMP 3 is there; print how to run it
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

PACKAGES = [
    "gimp", "python3-gi", "gir1.2-gimp-3.0", "python3-zmq",
    "xvfb", "xauth", "xdotool", "imagemagick", "x11-utils",
]  # fmt: skip
SUITE = "trixie"
MIRROR = "http://deb.debian.org/debian"
READY_MARK = ".deepdream-gimp-ready"


def root_dir() -> Path:
    return Path(os.environ.get("DEEPDREAM_GIMP_ROOT", "/var/tmp/deepdream-gimp3-root"))


class Gimp:
    """How to run GIMP 3 and where it sees files: `host_dir` on this machine is `inside(...)`."""

    def __init__(self, root: Path | None) -> None:
        self.root = root

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
        return self.command("gimp-console-3.0", args, environment)

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


def find_gimp(build: bool = False) -> Gimp | None:
    """The system's GIMP 3, else the Debian 13 root (built first when `build`), else None."""
    if shutil.which("gimp-console-3.0"):
        return Gimp(None)
    root = root_dir()
    if not (root / READY_MARK).exists():
        if not build:
            return None
        build_root(root)
    mount_system_dirs(root)
    return Gimp(root)


def build_root(root: Path) -> None:
    if os.geteuid() != 0:
        raise SystemExit(f"Building the GIMP 3 root in {root} needs root.")
    if not shutil.which("debootstrap"):
        run(["apt-get", "update", "-q"])
        run(["apt-get", "install", "-y", "-q", "debootstrap"])
    if root.exists():
        unmount_system_dirs(root)
        shutil.rmtree(root)
    print(
        f"[gimp] building a Debian 13 root with GIMP 3 in {root} (a few minutes, once)", flush=True
    )
    run(["debootstrap", "--variant=minbase", SUITE, str(root), MIRROR])
    mount_system_dirs(root)
    shutil.copy("/etc/resolv.conf", root / "etc" / "resolv.conf")
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
    gimp = find_gimp(build=True)
    where = "the system" if gimp.root is None else f"the Debian 13 root in {gimp.root}"
    print(f"[gimp] GIMP 3 is ready in {where}")
