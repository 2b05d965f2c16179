"""Where the development environment keeps binaries and state.

Binaries are cached by version under ``$EDGEFILL_CACHE`` (default
``~/.cache/edgefill``) so that a fresh clone reuses them; running state (the
local cluster, the background S3 server) lives under ``$EDGEFILL_STATE``
(default ``$EDGEFILL_CACHE/state``).
"""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


def cache_dir() -> Path:
    return Path(os.environ.get("EDGEFILL_CACHE", Path.home() / ".cache" / "edgefill"))


def state_dir() -> Path:
    return Path(os.environ.get("EDGEFILL_STATE", cache_dir() / "state"))
