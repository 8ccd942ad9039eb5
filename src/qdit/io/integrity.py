"""Integrity of quantized model folders: a sha256 per file and of the description, checked at load.

:func:`qdit.io.checkpoint.save` records, in ``qdit.json`` under ``"integrity"``:

* ``files``: the sha256 of every file it wrote besides ``qdit.json`` (``model.safetensors``);
* ``recipe``: the sha256 of the recipe (its canonical JSON), or ``null`` when the model has none;
* ``meta``: the sha256 of the rest of ``qdit.json`` (its canonical JSON, the digests above included),
  so an edited layer spec (``a_bits``, ``a_group``, ...) or model description is caught too.

:func:`verify` recomputes all of them and also requires ``qdit.json`` to be byte for byte what
:func:`meta_text` writes, so that even an edit that parses to the same values (``1e-05`` vs ``1E-05``)
is reported: a single flipped bit anywhere in the folder fails the load with one line naming the file.
Folders of format version 1 predate digests; they load unverified with a warning.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from qdit.errors import QditError

KEY = "integrity"
ALGORITHM = "sha256"
META_FILE = "qdit.json"
FIRST_VERSION_WITH_DIGESTS = 2


class IntegrityError(QditError):
    """A quantized folder whose files or description do not match the digests recorded at save time."""


class UnverifiedWarning(UserWarning):
    """A quantized folder loaded without checking its digests (an old format, or verification off)."""


def file_digest(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def _canonical(obj: object) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def meta_text(meta: Mapping[str, Any]) -> str:
    """The exact text of ``qdit.json`` for ``meta`` (what :func:`verify` compares the file against)."""
    return json.dumps(meta, indent=2) + "\n"


def _covered(meta: Mapping[str, Any]) -> dict[str, Any]:
    """What the ``meta`` digest covers: all of ``qdit.json`` except that digest itself."""
    out = dict(meta)
    if isinstance(out.get(KEY), Mapping):
        out[KEY] = {k: v for k, v in out[KEY].items() if k != "meta"}
    return out


def digests(folder: str | os.PathLike, files: Iterable[str], meta: Mapping[str, Any]) -> dict[str, Any]:
    """The ``"integrity"`` entry for ``meta`` and the ``files`` already written in ``folder``."""
    recipe = meta.get("recipe")
    record: dict[str, Any] = {
        "algorithm": ALGORITHM,
        "files": {name: file_digest(Path(folder) / name) for name in sorted(files)},
        "recipe": None if recipe is None else _canonical(recipe),
    }
    record["meta"] = _canonical(_covered({**meta, KEY: record}))
    return record


def verify(folder: str | os.PathLike, meta: Mapping[str, Any]) -> None:
    """Check ``folder`` against the digests in its ``meta`` (as read from its ``qdit.json``).

    Raises :class:`IntegrityError` naming the file that does not match. A version-1 folder (no
    digests) only warns.
    """
    root = Path(folder)
    meta_path = root / META_FILE
    if meta.get("format_version", 1) < FIRST_VERSION_WITH_DIGESTS:
        warnings.warn(
            f"{root} was written by an older qdit (format version {meta.get('format_version')}) without "
            "checksums: it is loaded unverified; save it again to add them",
            UnverifiedWarning,
            stacklevel=3,
        )
        return
    record = meta.get(KEY)
    if not isinstance(record, dict) or record.get("algorithm") != ALGORITHM:
        raise IntegrityError(f"{meta_path}: the checksums ({KEY!r}) are missing or corrupt")
    files, recorded_meta = record.get("files"), record.get("meta")
    if not isinstance(files, dict) or not files or not isinstance(recorded_meta, str):
        raise IntegrityError(f"{meta_path}: the checksums ({KEY!r}) are missing or corrupt")
    try:
        raw = meta_path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise IntegrityError(f"{meta_path} is unreadable: {exc}") from None
    if _canonical(_covered(meta)) != recorded_meta or raw != meta_text(meta):
        raise IntegrityError(
            f"{meta_path} does not match its checksum: the model description was edited or is corrupt"
        )
    recipe = meta.get("recipe")
    if record.get("recipe") != (None if recipe is None else _canonical(recipe)):
        raise IntegrityError(f"{meta_path}: the recipe does not match its checksum (edited or corrupt)")
    for name, digest in files.items():
        path = root / str(name)
        if Path(str(name)).name != name or name == META_FILE:
            raise IntegrityError(f"{meta_path}: bad file name {name!r} in the checksums")
        if not path.is_file():
            raise IntegrityError(f"{root} is incomplete: {name} is missing")
        try:
            actual = file_digest(path)
        except OSError as exc:
            raise IntegrityError(f"{path} is unreadable: {exc}") from None
        if actual != digest:
            raise IntegrityError(
                f"{path} is corrupt: its sha256 does not match the one recorded in {META_FILE} "
                "(the file changed after it was saved)"
            )
