"""Keeping a model load's freed temporaries from pinning memory (glibc only; a no-op elsewhere).

glibc serves an allocation from ``mmap`` when it is larger than a threshold that grows, up to 32 MB,
each time such a chunk is freed. While a model loads, each layer leaves a few long-lived buffers and
frees temporaries of similar sizes; once the threshold has grown, both come from the same heap, the
freed holes cannot be returned, and resident memory ends well above what the model holds. A fixed
threshold during the load sends every large temporary to ``mmap`` (returned on free); afterwards the
threshold is set to glibc's own dynamic ceiling, so that later allocations behave as they would have.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache

_M_MMAP_THRESHOLD = -3  # mallopt parameter (malloc.h)
_DURING = 128 * 1024  # glibc's initial threshold
_AFTER = 32 * 1024 * 1024  # glibc's DEFAULT_MMAP_THRESHOLD_MAX on 64-bit: where the dynamic one tops out


@cache
def _mallopt() -> ctypes._CFuncPtr | None:  # type: ignore[name-defined]
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        fn = libc.mallopt
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_int]
    fn.restype = ctypes.c_int
    return fn


@contextmanager
def compact_allocations() -> Iterator[None]:
    """Large temporaries freed inside the block go back to the system (see the module docstring)."""
    fn = _mallopt()
    if fn is not None:
        fn(_M_MMAP_THRESHOLD, _DURING)
    try:
        yield
    finally:
        if fn is not None:
            fn(_M_MMAP_THRESHOLD, _AFTER)
