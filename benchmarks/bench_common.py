"""What the benchmark scripts share: the description of the run recorded beside every result, and
interleaved best-of timing. Imported by the scripts as a sibling module (``python benchmarks/X.py`` puts
this folder first on ``sys.path``)."""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def git_commit() -> str | None:
    """The repository's short HEAD, or None outside a git checkout."""
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                              text=True, check=True).stdout.strip()  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        return None


def run_meta(a: argparse.Namespace, **extra: object) -> dict:
    """Machine, torch, date, commit and arguments of this run (``extra`` added as is)."""
    import torch

    return {"machine": platform.processor() or platform.machine(), "platform": platform.platform(),
            "cpus": os.cpu_count(), "threads": getattr(a, "threads", None), "torch": torch.__version__,
            "date": time.strftime("%Y-%m-%d %H:%M"), "commit": git_commit(), "args": dict(vars(a)),
            **extra}  # fmt: skip


def best_times(
    fns: dict[str, Callable[[], object]], repeats: int, clock: Callable[[], float] = time.perf_counter
) -> dict[str, float]:
    """Best time (s) of each function, the functions called in turn (interleaved) each round, so that a
    change of the host's load touches every function alike."""
    for fn in fns.values():
        fn()  # warm-up
    best = dict.fromkeys(fns, float("inf"))
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = clock()
            fn()
            best[name] = min(best[name], clock() - t0)
    return best
