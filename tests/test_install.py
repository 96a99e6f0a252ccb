"""install.py: what it stops and removes, and what it leaves alone."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from conftest import ROOT, start_server


def uninstall(home, tmp_path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, ROOT / "install.py", "--uninstall", "--venv", tmp_path / "no-venv",
         "--gimp-dir", tmp_path / "profile"],
        env={**os.environ, "DEEPDREAM_HOME": str(home)}, capture_output=True, text=True,
        timeout=60,
    )  # fmt: skip


def test_a_stale_endpoint_file_naming_another_program_leaves_that_program_running(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    bystander = subprocess.Popen(["sleep", "60"])
    try:
        (home / "endpoint.json").write_text(json.dumps({"pid": bystander.pid}))
        run = uninstall(home, tmp_path)
        assert run.returncode == 0, run.stderr
        assert f"process {bystander.pid}, which is not a dream server" in run.stdout
        assert bystander.poll() is None
    finally:
        bystander.kill()
        bystander.wait()


def test_a_running_dream_server_is_stopped(tmp_path):
    server = start_server(tmp_path / "home")
    try:
        run = uninstall(server.home, tmp_path)
        assert f"stopped the running dream server (pid {server.process.pid})" in run.stdout
        assert server.process.wait(timeout=30) == 0
    finally:
        server.stop()


def test_it_checks_the_python_that_gimp_runs_the_plug_in_with_and_says_what_it_lacks(tmp_path):
    # GIMP starts the plug-in through `#!/usr/bin/env python3`: the python3 on its PATH, here one
    # without GIMP's bindings (this environment's).
    first_on_path = tmp_path / "bin"
    first_on_path.mkdir()
    (first_on_path / "python3").symlink_to(sys.executable)
    profile = tmp_path / "profile"
    profile.mkdir()
    run = subprocess.run(
        [sys.executable, ROOT / "install.py", "--check", "--venv", tmp_path / "no-venv",
         "--gimp-dir", profile],
        env={**os.environ, "PATH": f"{first_on_path}{os.pathsep}{os.environ['PATH']}",
             "DEEPDREAM_HOME": str(tmp_path / "home")},
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    version = ".".join(map(str, sys.version_info[:3]))
    said = f"GIMP of {profile}: runs plug-ins with {first_on_path / 'python3'} (Python {version})"
    assert f"{said}: it lacks GIMP's Python bindings" in run.stdout, run.stdout
    assert "sudo apt install gir1.2-gimp-3.0 python3-gi" in run.stdout
