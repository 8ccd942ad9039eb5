"""Where qdit keeps files it makes or fetches: ``$QDIT_CACHE``, else ``${XDG_CACHE_HOME:-~/.cache}/qdit``.

Nothing here creates folders or touches the disk.
"""

from __future__ import annotations

import os
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
