"""The plug-in's client: finds a server, starts one when none answers, and explains failures."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import zmq
from conftest import ROOT, start_server

from dream_link.client import DreamClient
from dream_link.wire import DreamError, plain_password, schema_hash, state_dir
from dream_server.devices import devices
from dream_server.params import plugin_schemas


@pytest.fixture()
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("DEEPDREAM_HOME", str(tmp_path))
    for variable in ("DEEPDREAM_ENDPOINT", "DEEPDREAM_TOKEN", "DEEPDREAM_SERVER_KEY"):
        monkeypatch.delenv(variable, raising=False)
    yield tmp_path
    endpoint = tmp_path / "endpoint.json"
    if endpoint.exists():  # a server the test started: stop it
        pid = json.loads(endpoint.read_text())["pid"]
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 20
        while endpoint.exists() and time.monotonic() < deadline:
            time.sleep(0.1)


def test_the_client_needs_only_the_standard_library_and_pyzmq():
    blocker = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, *args):\n"
        "        if name.split('.')[0] in ('numpy', 'torch', 'gi', 'PIL', 'dream_server'):\n"
        "            raise ImportError(f'{name} is not allowed in the client')\n"
        "sys.meta_path.insert(0, Block())\n"
        "import dream_link.client\n"
        "print('ok')\n"
    )
    run = subprocess.run([sys.executable, "-c", blocker], cwd=ROOT, capture_output=True, text=True)
    assert run.stdout.strip() == "ok", run.stderr


def test_with_no_server_running_it_starts_one_from_the_recorded_environment(home):
    (home / "daemon.json").write_text(json.dumps({"python": sys.executable}))
    started = time.monotonic()
    with DreamClient() as client:
        assert client.server_info["device"] == ",".join(devices("auto"))
        pixels = np.full((64, 64, 3), 128, np.uint8)
        result = client.dream(pixels.tobytes(), 64, 64, 3, {"octaves": 1, "steps": 1})
        assert len(result) == pixels.size
    print(f"cold start to a finished first dream: {time.monotonic() - started:.1f} s")
    with DreamClient() as again:  # and the next client finds that one
        assert (
            again.connection.endpoint
            == json.loads((home / "endpoint.json").read_text())["endpoint"]
        )


def test_the_server_it_starts_keeps_its_log_and_lock_private_whatever_the_umask(home):
    (home / "daemon.json").write_text(json.dumps({"python": sys.executable}))
    (home / "dream-server.log").write_text("an older log, made readable to all\n")
    (home / "dream-server.log").chmod(0o666)
    everyone = os.umask(0)  # files would be created readable and writable by all
    try:
        with DreamClient() as client:
            assert client.ping()
    finally:
        os.umask(everyone)
    for name in ("dream-server.log", "daemon.lock"):
        assert (home / name).stat().st_mode & 0o777 == 0o600, name


def test_without_an_installed_environment_it_says_to_run_install(home):
    with pytest.raises(DreamError, match=r"Run `python3 install.py`"):
        DreamClient()


def test_a_server_that_cannot_start_points_at_its_log(home):
    broken = home / "broken-python"
    broken.write_text("#!/bin/sh\necho 'ImportError: no torch here' >&2\nexit 3\n")
    broken.chmod(0o755)
    (home / "daemon.json").write_text(json.dumps({"python": str(broken)}))
    with pytest.raises(DreamError, match="could not start.*dream-server.log"):
        DreamClient()
    assert "no torch here" in (home / "dream-server.log").read_text()


def test_an_explicit_endpoint_that_does_not_answer_is_not_replaced(home, monkeypatch):
    monkeypatch.setenv("DEEPDREAM_ENDPOINT", "tcp://127.0.0.1:9")
    monkeypatch.setenv("DEEPDREAM_TOKEN", "x")
    monkeypatch.setenv("DEEPDREAM_SERVER_KEY", zmq.curve_keypair()[0].decode())
    nobody = "No dream server is running at tcp://127.0.0.1:9, where DEEPDREAM_ENDPOINT points"
    with pytest.raises(DreamError, match=nobody):
        DreamClient()
    assert not (home / "endpoint.json").exists()


def test_pixels_that_do_not_match_their_size_are_refused_before_sending(server):
    with DreamClient(server.connection) as client, pytest.raises(DreamError, match="neither"):
        client.dream(b"12345", 2, 2, 3, {})


def test_messages_name_the_log_where_the_server_runs(server):
    from dream_link.client import Connection

    with DreamClient(server.connection) as client:
        assert client.server_log == str(server.home / "dream-server.log")
        client.connection = Connection("tcp://gpu-box:5757", "token", "key")
        client.server_info = {"log": "/home/artist/.config/deepdream/dream-server.log"}
        assert client.server_log == (
            "the dream server's log on gpu-box (/home/artist/.config/deepdream/dream-server.log "
            "there)"
        )


def test_a_restarted_server_is_found_although_the_environment_has_a_stale_token(home, monkeypatch):
    # GIMP keeps the environment it was started with; the server restarted with a new token.
    restarted = start_server(home)
    try:
        monkeypatch.setenv("DEEPDREAM_ENDPOINT", restarted.record["endpoint"])
        monkeypatch.setenv("DEEPDREAM_TOKEN", "the token of the server before")
        with DreamClient() as client:
            assert client.connection.token == restarted.record["token"]
            assert client.ping()
        monkeypatch.setenv("DEEPDREAM_HOME", str(home / "elsewhere"))  # no endpoint file there
        with pytest.raises(DreamError, match="not take DEEPDREAM_TOKEN: set it to the token in"):
            DreamClient()
    finally:
        restarted.stop()


class Relay:
    """A program between a client and a server on the loopback, which forwards every byte and
    keeps a copy of what the client sent."""

    def __init__(self, target_port: int) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.heard = bytearray()
        self.target_port = target_port
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            server = socket.create_connection(("127.0.0.1", self.target_port))
            threading.Thread(target=self._pump, args=(client, server, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, False), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket, keep: bool) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                if keep:
                    self.heard += data
                sink.sendall(data)
        for end in (source, sink):
            with contextlib.suppress(OSError):
                end.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self.listener.close()


def test_the_endpoint_files_token_goes_only_to_the_endpoint_it_names(home, monkeypatch, transport):
    # DEEPDREAM_ENDPOINT names a relay, and DEEPDREAM_TOKEN is stale: the token of the
    # endpoint file is for the server that wrote it, not for whatever the environment names.
    server = start_server(home, "--bind", "tcp://127.0.0.1:0")
    relay = Relay(int(server.record["endpoint"].rsplit(":", 1)[1]))
    try:
        monkeypatch.setenv("DEEPDREAM_ENDPOINT", f"tcp://127.0.0.1:{relay.port}")
        monkeypatch.setenv("DEEPDREAM_TOKEN", "the token of the server before")
        with DreamClient() as client:
            assert client.connection.endpoint == server.record["endpoint"]
            assert client.ping()
        token = server.record["token"]
        for secret in (token, plain_password(token)):
            assert secret.encode() not in relay.heard
        assert plain_password("the token of the server before").encode() in relay.heard
    finally:
        relay.close()
        server.stop()


def test_a_server_from_another_release_is_refused_with_the_one_thing_to_do(server):
    installed = schema_hash(plugin_schemas())  # what install.py writes next to the plug-in
    with DreamClient(server.connection, schema=installed) as client:
        assert client.server_info["schema"] == installed
    changed = plugin_schemas()
    changed["dream"][0]["default"] = "a default of another release"
    with pytest.raises(DreamError, match=r"different releases .* run `python3 install.py` again"):
        DreamClient(server.connection, schema=schema_hash(changed))


def test_in_gimps_flatpak_the_client_finds_the_hosts_server_and_says_how_to_start_one(
    tmp_path, monkeypatch
):
    monkeypatch.delenv("DEEPDREAM_HOME", raising=False)
    for variable in ("DEEPDREAM_ENDPOINT", "DEEPDREAM_TOKEN", "HOST_XDG_CONFIG_HOME"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    # what Flatpak sets for GIMP's plug-ins: the app's own config folder
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / ".var/app/org.gimp.GIMP/config"))
    monkeypatch.setenv("FLATPAK_ID", "org.gimp.GIMP")
    assert state_dir() == tmp_path / ".config" / "deepdream"  # the host's, where the server is
    (tmp_path / ".config" / "deepdream").mkdir(parents=True)
    (tmp_path / ".config" / "deepdream" / "daemon.json").write_text(
        json.dumps({"python": sys.executable})
    )  # a recorded environment, which the sandbox could not run
    with pytest.raises(DreamError, match=r"Flatpak sandbox .* `python3 install.py --service`"):
        DreamClient()
    host_server = start_server(tmp_path / ".config" / "deepdream")
    try:
        with DreamClient() as client:
            assert client.connection.endpoint == host_server.record["endpoint"]
    finally:
        host_server.stop()


def test_an_endpoint_without_a_real_port_is_refused_before_connecting(home, monkeypatch, transport):
    monkeypatch.setenv("DEEPDREAM_ENDPOINT", "tcp://127.0.0.1:99999")
    monkeypatch.setenv("DEEPDREAM_TOKEN", "x")
    with pytest.raises(DreamError, match=r"DEEPDREAM_ENDPOINT: 'tcp://127.0.0.1:99999' has no "
                       r"port from 1 to 65535: write tcp://HOST:PORT"):  # fmt: skip
        DreamClient()
