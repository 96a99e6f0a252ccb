"""Model weights that are downloaded on first use: cache, download with progress, verification.

Files go into the torch hub cache (`$TORCH_HOME/hub/checkpoints`), where torchvision keeps them
too, so a file either tool downloaded serves both. `DEEPDREAM_WEIGHTS_MIRROR` points downloads
at another server that holds the same file names (an organisation's mirror, or a test server).
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .errors import WeightsUnavailable

log = logging.getLogger(__name__)

DownloadProgress = Callable[[int, int | None], None]
"""Called with (bytes so far, total bytes or None) while a file downloads."""

MIRROR_VARIABLE = "DEEPDREAM_WEIGHTS_MIRROR"
CHUNK = 1 << 20


@dataclass(frozen=True)
class WeightsFile:
    url: str
    size_mb: float
    sha256_prefix: str | None
    """Leading hex digits of the file's SHA-256; torchvision puts them in the file name."""

    @property
    def filename(self) -> str:
        return self.url.rsplit("/", 1)[-1]

    def source_url(self) -> str:
        mirror = os.environ.get(MIRROR_VARIABLE)
        return f"{mirror.rstrip('/')}/{self.filename}" if mirror else self.url


def cache_dir() -> Path:
    import torch  # here, not above: the model catalogue names weights files without torch

    return Path(torch.hub.get_dir()) / "checkpoints"


def cached_path(weights: WeightsFile) -> Path:
    return cache_dir() / weights.filename


def ensure_weights(
    model: str,
    weights: WeightsFile,
    on_progress: DownloadProgress | None = None,
    timeout_s: float = 30.0,
) -> Path:
    """The cached weights file, downloading and verifying it first if it is not there yet."""
    target = cached_path(weights)
    if target.exists():
        return target
    url = weights.source_url()
    target.parent.mkdir(parents=True, exist_ok=True)
    log.info("Downloading the weights of %s (%.0f MB) from %s", model, weights.size_mb, url)
    # Download next to the target and rename at the end, so an interrupted download never
    # leaves a truncated file where the cache would trust it.
    fd, partial_name = tempfile.mkstemp(prefix=f".{weights.filename}.", dir=target.parent)
    partial = Path(partial_name)
    try:
        with os.fdopen(fd, "wb") as out:
            digest = _download(url, out, on_progress, timeout_s, model, weights)
        if weights.sha256_prefix and not digest.startswith(weights.sha256_prefix):
            raise WeightsUnavailable(
                f"The weights downloaded for '{model}' from {url} are not the expected file "
                f"(SHA-256 {digest[:16]}..., expected {weights.sha256_prefix}...). The download "
                "was corrupted or the server sent another file: try again, or download the file "
                f"yourself and pass it with --weights FILE. Nothing was kept."
            )
        partial.chmod(0o644)  # a shared cache, like torch hub's own files
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)
    return target


def _download(
    url: str,
    out,  # noqa: ANN001 - a binary file object
    on_progress: DownloadProgress | None,
    timeout_s: float,
    model: str,
    weights: WeightsFile,
) -> str:
    sha256 = hashlib.sha256()
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            total = response.length
            done = 0
            while chunk := response.read(CHUNK):
                out.write(chunk)
                sha256.update(chunk)
                done += len(chunk)
                if on_progress:
                    on_progress(done, total)
            if total is not None and done != total:
                raise OSError(f"the connection closed after {done} of {total} bytes")
    except (urllib.error.URLError, OSError, ValueError) as err:
        reason = getattr(err, "reason", err)
        raise WeightsUnavailable(
            f"Could not download the weights of '{model}' ({weights.size_mb:.0f} MB) from {url}: "
            f"{reason}. Without network access use --model effnet-lite0 (built in, works "
            f"offline), or fetch that file on another machine and pass it with --weights FILE "
            f"(or copy it to {cached_path(weights)})."
        ) from err
    return sha256.hexdigest()
