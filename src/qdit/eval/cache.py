"""Where qdit keeps downloaded weights and computed reference statistics.

The cache folder is ``$QDIT_CACHE`` when set, else ``${XDG_CACHE_HOME:-~/.cache}/qdit``. Nothing here
creates folders or touches the disk until a caller writes a file.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

CACHE_ENV = "QDIT_CACHE"


def cache_dir() -> Path:
    """The qdit cache folder (not created)."""
    explicit = os.environ.get(CACHE_ENV)
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "qdit"


def refstats_path(dataset: str, extractor: str) -> Path:
    """``<cache>/refstats/<dataset>-<extractor>.npz``; both parts must be simple names."""
    for part in (dataset, extractor):
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.\-]*", part):
            raise ValueError(f"not a valid cache key part: {part!r}")
    return cache_dir() / "refstats" / f"{dataset}-{extractor}.npz"
