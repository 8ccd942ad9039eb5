"""Where qdit keeps downloaded weights and computed reference statistics.

The cache folder is ``$QDIT_CACHE`` when set, else ``${XDG_CACHE_HOME:-~/.cache}/qdit``. Nothing here
creates folders or touches the disk until a caller writes a file.
"""

from __future__ import annotations

import re
from pathlib import Path

from qdit.cachedir import CACHE_ENV, cache_dir

__all__ = ["CACHE_ENV", "cache_dir", "refstats_path"]


def refstats_path(dataset: str, extractor: str) -> Path:
    """``<cache>/refstats/<dataset>-<extractor>.npz``; both parts must be simple names."""
    for part in (dataset, extractor):
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.\-]*", part):
            raise ValueError(f"not a valid cache key part: {part!r}")
    return cache_dir() / "refstats" / f"{dataset}-{extractor}.npz"
