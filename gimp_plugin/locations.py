"""Where DeepDream keeps its small files: the server's endpoint file and log, install.py's record.

Standard library only: install.py, the dream server and the GIMP plug-in all import it, so the
three always look in the same place.
"""

from __future__ import annotations

import os
import stat
import sys
from pathlib import Path

ENDPOINT_FILE = "endpoint.json"
"""Written by the running server (mode 0600): endpoint, token, pid, log."""
INSTALL_RECORD = "daemon.json"
"""Written by install.py: the Python of the environment to start the server from."""
LOG_FILE = "dream-server.log"


def state_dir() -> Path:
    override = os.environ.get("DEEPDREAM_HOME")
    if override:
        return Path(override)
    if sys.platform == "win32":
        return Path(os.environ.get("APPDATA", Path.home())) / "deepdream"
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Application Support" / "deepdream"
    return Path(os.environ.get("XDG_CONFIG_HOME", Path.home() / ".config")) / "deepdream"


def ensure_state_dir() -> Path:
    """The state folder, created private to this user (it holds the server's token)."""
    folder = state_dir()
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    if os.name == "posix":
        info = folder.stat()
        shared = info.st_mode & stat.S_ISVTX or info.st_uid != os.getuid()  # like /tmp
        if info.st_mode & 0o077 and not shared:
            folder.chmod(0o700)  # made by an older release, or by hand
    return folder


def log_path() -> Path:
    return state_dir() / LOG_FILE
