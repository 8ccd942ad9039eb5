"""Atomic file writes (a temporary file beside the target, then renamed over it) and output checks.

Every output keeps the mode a new file gets (``0o666`` less the umask), or the mode of the file it
replaces; :func:`check_outputs` is the one check of a command's output paths, run before the work.
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
import tempfile
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

from qdit.errors import QditError


def umask() -> int:
    """The process umask, read without changing it where the OS allows (Linux ``/proc``)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def output_mode(target: str | os.PathLike, folder: bool = False) -> int:
    """The permission bits an output written over ``target`` gets: those of the file (or folder) it
    replaces, else what a new one gets (``0o666`` / ``0o777`` less the umask)."""
    try:
        return stat.S_IMODE(os.stat(target).st_mode)
    except OSError:
        return (0o777 if folder else 0o666) & ~umask()


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path in the target's folder; on success it replaces ``path``, on error it is removed."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=suffix or ".tmp", dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, output_mode(target))
        os.replace(tmp_path, target)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def atomic_write(path: str | os.PathLike, writer: Callable[[Path], None], suffix: str = "") -> None:
    with atomic_path(path, suffix) as tmp:
        writer(tmp)


def write_json(path: str | os.PathLike, obj: object) -> None:
    atomic_write(path, lambda p: p.write_text(json.dumps(obj, indent=2, sort_keys=False) + "\n"), ".json")


def _key(path: Path) -> Path:
    """A path's identity: the resolved path (symlinks followed, ``..`` removed)."""
    return path.expanduser().resolve()


def _inside(inner: Path, outer: Path) -> bool:
    return inner != outer and outer in inner.parents


def _check_writable(name: str, path: Path, folder: bool) -> None:
    if path.exists():
        if folder and not path.is_dir():
            raise QditError(f"{name} {path} exists and is not a folder")
        if not folder and path.is_dir():
            raise QditError(f"{name} {path} is a folder; give a file name")
    parent = path.parent
    while not parent.exists():  # the folders that will be created
        if parent == parent.parent:
            break
        parent = parent.parent
    if not parent.is_dir():
        raise QditError(f"{name} {path}: {parent} is not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise QditError(f"{name} {path}: cannot write in {parent} (permission denied)")


def check_outputs(
    outputs: Mapping[str, str | os.PathLike | None],
    inputs: Mapping[str, str | os.PathLike | None] | None = None,
    folders: tuple[str, ...] = (),
) -> None:
    """Fail before any work when an output cannot be written or would destroy another file we use.

    ``outputs`` and ``inputs`` map an option name (``--out``) to its path (``None``: not given);
    ``folders`` names the outputs that are folders. Two outputs may not be the same file, nor one lie
    inside an output folder (it would be replaced with the folder), and no output may be an input;
    every output's folder must be writable and a file output may not be an existing folder (and vice
    versa).
    """
    given = {name: Path(p) for name, p in outputs.items() if p is not None and str(p) != ""}
    used = {name: Path(p) for name, p in (inputs or {}).items() if p is not None and str(p) != ""}
    for name, path in given.items():
        _check_writable(name, path, name in folders)
    names = list(given)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            pa, pb = _key(given[a]), _key(given[b])
            if pa == pb:
                raise QditError(f"{b} {given[b]} is the same file as {a}; give each output its own path")
            for (x, px), (y, py) in (((a, pa), (b, pb)), ((b, pb), (a, pa))):
                if y in folders and _inside(px, py):
                    raise QditError(
                        f"{x} {given[x]} lies inside the output folder {y} {given[y]}, which is replaced "
                        "as a whole; write it elsewhere"
                    )
    for name, path in given.items():
        p = _key(path)
        for iname, ipath in used.items():
            q = _key(ipath)
            same = p == q or (path.exists() and ipath.exists() and os.path.samefile(path, ipath))
            if same or (name in folders and _inside(q, p)):
                raise QditError(f"{name} {path} would overwrite the input {iname}; write it elsewhere")
