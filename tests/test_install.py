"""install.py: what it stops and removes, and what it leaves alone."""

from __future__ import annotations

import importlib.util
import json
import os
import shlex
import shutil
import subprocess
import sys
import time

import pytest
from conftest import ROOT, start_server

from dream_link.client import Connection, DreamClient


def uninstall(home, tmp_path, environment=os.environ) -> subprocess.CompletedProcess:  # noqa: ANN001, B008
    return subprocess.run(
        [sys.executable, ROOT / "install.py", "--uninstall", "--venv", tmp_path / "no-venv",
         "--gimp-dir", tmp_path / "profile"],
        env={**environment, "DEEPDREAM_HOME": str(home)}, capture_output=True, text=True,
        timeout=60,
    )  # fmt: skip


def test_a_stale_endpoint_file_naming_another_program_leaves_that_program_running(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    bystander = subprocess.Popen(["sleep", "60"])
    try:
        (home / "endpoint.json").write_text(
            json.dumps({"endpoint": "ipc:///gone.sock", "token": "t", "pid": bystander.pid})
        )
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


def test_the_service_starts_a_server_that_loads_no_model_before_the_first_job(tmp_path):
    home, no_tools = tmp_path / "home", tmp_path / "bin"
    no_tools.mkdir()  # no systemctl: the unit is written, and install.py says how to start it
    environment = {**os.environ, "HOME": str(home), "XDG_CONFIG_HOME": str(home / ".config"),
                   "PATH": str(no_tools), "DEEPDREAM_HOME": str(home / "state")}  # fmt: skip
    everyone = os.umask(0)  # the unit holds the command it runs: it stays this user's
    try:
        run = subprocess.run(
            [sys.executable, ROOT / "install.py", "--service", "--venv", sys.prefix],
            env=environment, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
    finally:
        os.umask(everyone)
    assert run.returncode == 1, run.stderr  # written, not started: the user has a step to take
    unit = home / ".config" / "systemd" / "user" / "dream-server.service"
    assert unit.stat().st_mode & 0o777 == 0o600
    assert ("in your desktop session, run `systemctl --user daemon-reload && systemctl --user "
            "enable --now dream-server.service`") in run.stdout  # fmt: skip
    [exec_start] = [line for line in unit.read_text().splitlines() if line.startswith("ExecStart=")]
    command = shlex.split(exec_start.removeprefix("ExecStart="))
    assert command[0] == sys.executable and "--idle-unload" in command
    server = start_server(home / "state", *command[3:])  # as systemd would start it
    try:
        with DreamClient(Connection(server.record["endpoint"], server.record["token"])) as client:
            time.sleep(1.0)  # a server that loads at start has its model by now
            assert client.status()["loaded_models"] == []
            client.dream(bytes(64 * 48 * 3), 64, 48, 3, {"octaves": 1, "steps": 1})
            assert client.status()["loaded_models"] == ["effnet-lite0"]
    finally:
        server.stop()
    removed = uninstall(home / "state", tmp_path, environment)
    assert f"removed the service {unit}" in removed.stdout and not unit.exists()


def test_a_first_install_on_a_disk_without_room_for_torch_stops_before_it_and_says_so(
    tmp_path, monkeypatch
):
    install = load_install_py(monkeypatch)
    free_gb = shutil.disk_usage(tmp_path).free / 1e9
    with pytest.raises(SystemExit, match=r"about \d+ GB on the disk of .* GB free: free some "
                                         r"space \(or choose a folder on another disk with "
                                         r"--venv\), then run this again"):  # fmt: skip
        install.check_room(tmp_path, needed_gb=free_gb + 1000)
    install.check_room(tmp_path, needed_gb=0.001)  # room enough: on it goes
    (tmp_path / "lib" / "python3.11" / "site-packages" / "torch").mkdir(parents=True)
    install.check_room(tmp_path, needed_gb=free_gb + 1000)  # torch is there: nothing to fetch


def load_install_py(monkeypatch):  # noqa: ANN001, ANN201 - the fixture; the module
    """install.py as a module, for the checks it makes before it installs anything."""
    spec = importlib.util.spec_from_file_location("install", ROOT / "install.py")
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "install", module)  # its dataclasses look it up there
    spec.loader.exec_module(module)
    return module
