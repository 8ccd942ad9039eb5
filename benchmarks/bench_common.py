"""What the benchmark scripts share: the description of the run recorded beside every result, and
interleaved best-of timing. Imported by the scripts as a sibling module (``python benchmarks/X.py`` puts
this folder first on ``sys.path``)."""

from __future__ import annotations

import argparse
import hashlib
import json
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


def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo``; else what :mod:`platform` knows): hosts of one
    architecture differ in speed and in the kernels they can run (AMX or not)."""
    try:
        with open("/proc/cpuinfo") as f:
            found = next((line for line in f if line.startswith("model name")), "")
    except OSError:
        found = ""
    return found.partition(":")[2].strip() or platform.processor() or platform.machine()


def run_meta(a: argparse.Namespace, **extra: object) -> dict:
    """Machine, CPU, torch, date, commit and arguments of this run (``extra`` added as is)."""
    import torch

    return {"machine": platform.processor() or platform.machine(), "cpu": cpu_name(), "platform": platform.platform(),
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


def drawn_with(npz: Path) -> dict | None:
    """The config ``npz``'s samples were drawn with, by :func:`sample_once`'s stamp beside them; None when
    there is no stamp or the file is not the one it stamped (another size)."""
    stamp = npz.with_suffix(".sample.json")
    made = json.loads(stamp.read_text()) if stamp.is_file() else {}
    ok = npz.is_file() and made.get("size") == npz.stat().st_size
    return made.get("config") if ok else None


def sample_once(npz: Path, config: dict, sample: Callable[[], None]) -> float:
    """Seconds ``sample()`` took to write ``npz``. When ``npz`` is there already and its stamp (``.sample.json``
    beside it) says it was made with ``config``, the seconds it took then, without sampling again: a run
    whose scoring was cut short resumes at the scoring."""
    from qdit.io.atomic import write_json

    stamp = npz.with_suffix(".sample.json")
    if drawn_with(npz) == config:
        return float(json.loads(stamp.read_text())["seconds"])
    stamp.unlink(missing_ok=True)  # vouches for nothing while the samples are redone
    t0 = time.perf_counter()
    sample()
    seconds = time.perf_counter() - t0
    write_json(stamp, {"config": config, "seconds": seconds, "size": npz.stat().st_size})
    return seconds


class Block:
    """A region of a Markdown file (BENCHMARKS.md) that a script writes: everything between
    ``<!-- {name}: begin -->`` and ``<!-- {name}: end -->``, so the numbers there come from the script's
    JSON and nowhere else."""

    def __init__(self, name: str) -> None:
        self.begin, self.end = f"<!-- {name}: begin -->", f"<!-- {name}: end -->"

    def in_doc(self, doc: str) -> bool:
        return self.begin in doc and self.end in doc.split(self.begin, 1)[1]

    def replace(self, doc: str, text: str) -> str:
        """``doc`` with what lies between the markers replaced by ``text``."""
        head, rest = doc.split(self.begin, 1)
        _, tail = rest.split(self.end, 1)
        return f"{head}{self.begin}\n{text}{self.end}{tail}"

    def read(self, doc: str) -> str:
        """What lies between the markers (as :meth:`replace` wrote it)."""
        return doc.split(self.begin, 1)[1].split(self.end, 1)[0].removeprefix("\n")

    def write(self, path: Path, text: str) -> str | None:
        """Put ``text`` between the markers of the file ``path``; a one-line error (nothing written)
        when the file or its markers are missing."""
        doc = path.read_text() if path.is_file() else ""
        if not self.in_doc(doc):
            return f"{path} has no {self.begin} ... {self.end} block to put the table in"
        path.write_text(self.replace(doc, text))
        return None


def weights_digest(model: str) -> str | None:
    """SHA-256 of a model's weight files: a built-in model's shipped file, or the file or folder given by
    path (None for a name with no files here)."""
    from qdit.models.embedded import EMBEDDED_VIDEO_WEIGHTS, EMBEDDED_WEIGHTS, asset_path

    shipped = {"embedded": EMBEDDED_WEIGHTS, "embedded-video": EMBEDDED_VIDEO_WEIGHTS}
    path = asset_path(shipped[model]) if model in shipped else Path(model)
    files = [path] if path.is_file() else sorted(f for f in path.rglob("*") if f.is_file()) if path.is_dir() else []
    if not files:
        return None
    h = hashlib.sha256()
    for f in files:
        h.update(f.relative_to(path).as_posix().encode() if f != path else b"")
        with open(f, "rb") as fh:
            while chunk := fh.read(1 << 22):
                h.update(chunk)
    return h.hexdigest()


def check_weights(work: Path, model: str, record: bool) -> str | None:
    """An error if the cache folder ``work`` may hold models and samples made from other weights of
    ``model`` (the cache keys name the model, not its weights): it records other weights, or it holds
    cached files but no record of ``model``'s weights; else None, recording the weights when ``record``."""
    stamp = work / "weights.json"
    known = json.loads(stamp.read_text()) if stamp.is_file() else {}
    digest = weights_digest(model)
    if digest is None:
        return None
    if known.get(model, digest) != digest:
        return (f"{work} holds models and samples made from other weights of {model} (sha256 "
                f"{known[model][:12]}, now {digest[:12]}): give another folder or delete it")  # fmt: skip
    # lock files (results.py's, around its JSON) hold nothing made from the weights
    cached = (f for f in work.iterdir() if f.name != "weights.json" and f.suffix != ".lock") if work.is_dir() else iter(())
    if model not in known and next(cached, None) is not None:
        return (f"{work} holds cached models and samples without a record of the weights of {model} "
                "they were made from: give another folder or delete it")  # fmt: skip
    if model not in known and record:
        from qdit.io.atomic import write_json

        work.mkdir(parents=True, exist_ok=True)
        write_json(stamp, {**known, model: digest})
    return None
