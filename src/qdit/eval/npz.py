"""Sample and reference ``.npz`` files.

Samples (the guided-diffusion / ADM convention): ``arr_0`` uint8 ``[N, H, W, C]`` (C = 1 or 3) and
``labels`` int64 ``[N]`` (optional when reading: unconditional samples have none). Video samples
(clips) have ``arr_0`` uint8 ``[N, T, H, W, C]``.

References for ``qdit eval --ref``:

- ``fashion-mnist-test`` / ``fashion-mnist-train``: the data set's images (``[N, 28, 28, 1]``) and labels;
- ``fashion-mnist-clips-test`` / ``fashion-mnist-clips-train``: the moving-garment clips made from that
  split (``qdit.data.load_fashion_mnist_clips(split, seed=0)``, ``[N, 8, 32, 32, 1]``) and labels, for
  video metrics;
- a ``.npz`` with images (or clips) in ``arr_0`` (an ADM reference batch; ``labels`` optional): features are
  computed from the images with qdit's own extractor (and cached), so that samples and reference go
  through exactly the same preprocessing; precomputed ``mu``/``sigma`` in such a file are ignored;
- a ``.npz`` without ``arr_0`` but with precomputed Inception statistics ``mu`` ``[2048]`` and
  ``sigma`` ``[2048, 2048]`` (``mu_s``/``sigma_s`` for sFID, ``features`` and optionally their k=3
  ``radii`` for precision/recall, when present), e.g. a file from qdit's reference-statistics cache.
"""

from __future__ import annotations

import hashlib
import os
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from qdit.errors import QditError
from qdit.io.atomic import atomic_path

IMAGES_KEY = "arr_0"
LABELS_KEY = "labels"
NAMED_REFS = {"fashion-mnist-test": "test", "fashion-mnist-train": "train"}
NAMED_CLIP_REFS = {"fashion-mnist-clips-test": "test", "fashion-mnist-clips-train": "train"}
CLIP_REF_SEED = 0  # the seed of the reference clips' paths (qdit.data.clip_motions)
STATS_KEYS = ("mu", "sigma", "mu_s", "sigma_s", "features", "radii")


@dataclass
class Samples:
    images: np.ndarray  # uint8 [N, H, W, C], or clips [N, T, H, W, C]
    labels: np.ndarray | None  # int64 [N]

    @property
    def is_video(self) -> bool:
        return self.images.ndim == 5


@dataclass
class Reference:
    """What ``--ref`` names: images (and labels) or precomputed statistics."""

    name: str  # cache key: "fashion-mnist-test", or "file-<hash>" for a file
    source: str  # what the user gave
    images: np.ndarray | None = None  # uint8 [N, H, W, C], or clips [N, T, H, W, C]
    labels: np.ndarray | None = None
    stats: dict[str, np.ndarray] = field(default_factory=dict)  # precomputed Inception statistics


def check_images(images: np.ndarray, what: str = "images") -> np.ndarray:
    """uint8 ``[N, H, W, C]`` with C = 1 or 3 (``[N, H, W]`` is taken as C = 1); else QditError."""
    arr = np.asarray(images)
    if arr.dtype != np.uint8:
        raise QditError(f"{what} must be uint8, got {arr.dtype}")
    if arr.ndim == 3:
        arr = arr[..., None]
    if arr.ndim != 4 or arr.shape[-1] not in (1, 3) or arr.shape[0] == 0:
        raise QditError(
            f"{what} must have shape [N, H, W, C] with N > 0 and C = 1 or 3, got {list(arr.shape)}"
        )
    return arr


def check_clips(clips: np.ndarray, what: str = "clips") -> np.ndarray:
    """uint8 ``[N, T, H, W, C]`` with C = 1 or 3 and T >= 1; else QditError."""
    arr = np.asarray(clips)
    if arr.dtype != np.uint8:
        raise QditError(f"{what} must be uint8, got {arr.dtype}")
    if arr.ndim != 5 or arr.shape[-1] not in (1, 3) or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise QditError(
            f"{what} must have shape [N, T, H, W, C] with N, T > 0 and C = 1 or 3, got {list(arr.shape)}"
        )
    return arr


def check_samples(arr: np.ndarray, what: str = "samples") -> np.ndarray:
    """Images (:func:`check_images`) or, for a 5-D array, clips (:func:`check_clips`)."""
    return check_clips(arr, what) if np.ndim(arr) == 5 else check_images(arr, what)


def check_labels(labels: np.ndarray, n: int, what: str = "labels") -> np.ndarray:
    """Integer ``[n]`` -> int64; else QditError."""
    arr = np.asarray(labels)
    if not np.issubdtype(arr.dtype, np.integer):
        raise QditError(f"{what} must be integers, got {arr.dtype}")
    if arr.shape != (n,):
        raise QditError(f"{what} must have shape [{n}] (one per image), got {list(arr.shape)}")
    return arr.astype(np.int64)


def save_samples(path: str | os.PathLike, images: np.ndarray, labels: np.ndarray | None = None) -> None:
    """Write a samples ``.npz`` of images or clips atomically (validated first; an existing file is replaced
    only on success)."""
    imgs = check_samples(images)
    arrays = {IMAGES_KEY: imgs}
    if labels is not None:
        arrays[LABELS_KEY] = check_labels(labels, imgs.shape[0])
    with atomic_path(path, ".npz") as tmp, open(tmp, "wb") as f:
        np.savez(f, **arrays)


ZIP_MAGIC = b"PK\x03\x04"
NPY_MAGIC = b"\x93NUMPY"


def _open_npz(path: Path, what: str) -> np.lib.npyio.NpzFile:
    if not path.exists():
        raise QditError(f"{what} file not found: {path}")
    if not path.is_file():
        raise QditError(f"{what} path is not a file: {path}")
    try:
        with open(path, "rb") as f:
            head = f.read(len(NPY_MAGIC))
    except OSError as exc:
        raise QditError(f"cannot read {what} file {path}: {exc}") from None
    if not head.startswith(ZIP_MAGIC):  # np.load would try a pickle (refused) and say so
        kind = "a .npy array" if head == NPY_MAGIC else "an empty file" if not head else "not a zip archive"
        raise QditError(f"{what} file {path} is not a readable .npz ({kind}); write it with numpy.savez")
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise QditError(f"{what} file {path} is not a readable .npz ({exc})") from exc


def _read(npz: np.lib.npyio.NpzFile, key: str, path: Path) -> np.ndarray:
    try:
        return npz[key]
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise QditError(f"{path}: cannot read array {key!r} ({exc})") from exc


def load_samples(path: str | os.PathLike) -> Samples:
    """Read and validate a samples ``.npz``."""
    p = Path(path)
    with _open_npz(p, "samples") as npz:
        if IMAGES_KEY not in npz.files:
            raise QditError(
                f"{p}: no {IMAGES_KEY!r} array (found {sorted(npz.files)}); samples must be in arr_0"
            )
        images = check_samples(_read(npz, IMAGES_KEY, p), f"{p}: {IMAGES_KEY}")
        labels = None
        if LABELS_KEY in npz.files:
            labels = check_labels(_read(npz, LABELS_KEY, p), images.shape[0], f"{p}: {LABELS_KEY}")
    return Samples(images=images, labels=labels)


def _file_key(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return f"file-{h.hexdigest()[:16]}"


def load_reference(ref: str, data_dir: str | os.PathLike | None = None) -> Reference:
    """Resolve ``--ref``: a named data set (``fashion-mnist-test``/``-train``, ``fashion-mnist-clips-test``/
    ``-train``) or a reference ``.npz``."""
    if ref in NAMED_CLIP_REFS:
        from qdit.data import DataNotFoundError, load_fashion_mnist_clips

        try:
            clips, labels, _ = load_fashion_mnist_clips(NAMED_CLIP_REFS[ref], data_dir, seed=CLIP_REF_SEED)
        except DataNotFoundError as exc:
            raise QditError(str(exc)) from exc
        return Reference(name=ref, source=ref, images=clips[..., None], labels=labels)
    if ref in NAMED_REFS:
        from qdit.data import DataNotFoundError, load_fashion_mnist

        try:
            images, labels = load_fashion_mnist(NAMED_REFS[ref], data_dir)
        except DataNotFoundError as exc:
            raise QditError(str(exc)) from exc
        return Reference(name=ref, source=ref, images=images[..., None], labels=labels)
    p = Path(ref)
    if not p.exists() and p.suffix != ".npz":
        names = ", ".join([*NAMED_REFS, *NAMED_CLIP_REFS])
        raise QditError(f"unknown reference {ref!r}: give one of {names} or a reference .npz file")
    with _open_npz(p, "reference") as npz:
        if IMAGES_KEY in npz.files:
            images = check_samples(_read(npz, IMAGES_KEY, p), f"{p}: {IMAGES_KEY}")
            labels = None
            if LABELS_KEY in npz.files:
                labels = check_labels(_read(npz, LABELS_KEY, p), images.shape[0], f"{p}: {LABELS_KEY}")
            return Reference(name=_file_key(p), source=str(p), images=images, labels=labels)
        if "mu" not in npz.files or "sigma" not in npz.files:
            raise QditError(
                f"{p}: a reference .npz needs images in 'arr_0' or statistics 'mu' and 'sigma' "
                f"(found {sorted(npz.files)})"
            )
        stats = {k: _read(npz, k, p) for k in STATS_KEYS if k in npz.files}
    _check_stats(stats, p)
    return Reference(name=_file_key(p), source=str(p), stats=stats)


def _check_stats(stats: dict[str, np.ndarray], path: Path) -> None:
    for mu_key, sigma_key in (("mu", "sigma"), ("mu_s", "sigma_s")):
        if mu_key not in stats and sigma_key not in stats:
            continue
        if mu_key not in stats or sigma_key not in stats:
            raise QditError(f"{path}: {mu_key!r} and {sigma_key!r} must come together")
        mu, sigma = stats[mu_key], stats[sigma_key]
        d = mu.shape[0] if mu.ndim == 1 else -1
        if mu.ndim != 1 or sigma.shape != (d, d):
            raise QditError(
                f"{path}: {mu_key!r} must be [D] and {sigma_key!r} [D, D], got {list(mu.shape)} and {list(sigma.shape)}"
            )
        if not (np.issubdtype(mu.dtype, np.floating) and np.issubdtype(sigma.dtype, np.floating)):
            raise QditError(f"{path}: {mu_key!r}/{sigma_key!r} must be floating point")
    if "features" in stats:
        f = stats["features"]
        if f.ndim != 2 or f.shape[1] != stats["mu"].shape[0] or not np.issubdtype(f.dtype, np.floating):
            raise QditError(
                f"{path}: 'features' must be float [N, {stats['mu'].shape[0]}], got {list(f.shape)}"
            )
    if "radii" in stats and (
        "features" not in stats or stats["radii"].shape != (stats["features"].shape[0],)
    ):
        raise QditError(f"{path}: 'radii' must come with 'features' and have one value per feature row")
