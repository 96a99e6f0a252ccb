"""Weights that download on first use, tested against a local HTTP server (never the internet)."""

from __future__ import annotations

import hashlib
import http.server
import socket
import threading
from pathlib import Path

import pytest
import torch

from dream_server.errors import WeightsUnavailable
from dream_server.models import MODELS, load_model
from dream_server.weights import MIRROR_VARIABLE, WeightsFile, cache_dir, ensure_weights


@pytest.fixture()
def hub(tmp_path, monkeypatch) -> Path:
    """A private torch hub cache, so nothing the user has cached is read or touched."""
    home = tmp_path / "torch-home"
    monkeypatch.setenv("TORCH_HOME", str(home))
    monkeypatch.setattr(torch.hub, "_hub_dir", None)
    return home


@pytest.fixture()
def server(tmp_path):
    """An HTTP server on 127.0.0.1 serving the files the test puts into its folder."""
    folder = tmp_path / "served"
    folder.mkdir()

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(folder), **kwargs)

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield folder, f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def served_weights(folder: Path, base_url: str, name: str, content: bytes, hash_prefix=None):
    (folder / name).write_bytes(content)
    digest = hashlib.sha256(content).hexdigest()
    return WeightsFile(f"{base_url}/{name}", len(content) / 1e6, hash_prefix or digest[:8])


def test_download_lands_in_the_hub_cache_with_progress(hub, server):
    folder, url = server
    content = bytes(range(256)) * 9000  # a little over 2 MB: several chunks
    weights = served_weights(folder, url, "toy-net.pth", content)
    reports = []
    path = ensure_weights("toy-net", weights, lambda done, total: reports.append((done, total)))
    assert path == cache_dir() / "toy-net.pth" and path.read_bytes() == content
    assert str(path).startswith(str(hub))
    assert reports[-1] == (len(content), len(content))
    assert [done for done, _ in reports] == sorted(done for done, _ in reports)
    (folder / "toy-net.pth").unlink()  # a second call must not need the server
    assert ensure_weights("toy-net", weights) == path


def test_wrong_hash_is_refused_and_nothing_is_kept(hub, server):
    folder, url = server
    weights = served_weights(folder, url, "toy-net.pth", b"tampered" * 1000, "0badc0de")
    with pytest.raises(WeightsUnavailable, match="not the expected file") as info:
        ensure_weights("toy-net", weights)
    assert "0badc0de" in str(info.value) and "toy-net" in str(info.value)
    assert not cache_dir().exists() or not any(cache_dir().iterdir())


def test_server_down_names_model_url_size_and_the_offline_way(hub):
    weights = WeightsFile(f"http://127.0.0.1:{free_port()}/vgg16-397923af.pth", 527.8, "397923af")
    with pytest.raises(WeightsUnavailable) as info:
        ensure_weights("vgg16", weights, timeout_s=5)
    message = str(info.value)
    for expected in ("'vgg16'", weights.url, "528 MB", "effnet-lite0", "--weights FILE"):
        assert expected in message
    assert not any(cache_dir().iterdir())


def test_a_model_downloads_from_a_mirror_on_first_use_and_loads_strictly(hub, server, monkeypatch):
    folder, url = server
    spec = MODELS["inception-v1"]
    torch.save(spec.build().state_dict(), folder / spec.weights.filename)
    monkeypatch.setenv(MIRROR_VARIABLE, url)
    model = load_model("inception-v1")
    assert (cache_dir() / spec.weights.filename).exists()
    assert model(torch.rand(1, 3, 96, 96), ["mixed4c"])["mixed4c"].shape[1] == 512


def test_torchvision_weights_are_checked_against_the_hash_in_their_name(hub, server, monkeypatch):
    folder, url = server
    spec = MODELS["googlenet"]
    torch.save(spec.build().state_dict(), folder / spec.weights.filename)  # right shape, wrong file
    monkeypatch.setenv(MIRROR_VARIABLE, url)
    with pytest.raises(WeightsUnavailable, match="expected 1378be20"):
        load_model("googlenet")
    assert not (cache_dir() / spec.weights.filename).exists()
