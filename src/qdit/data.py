"""Fashion-MNIST from the standard idx ``.gz`` files (no download: the files must be on disk)."""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np

ENV_VAR = "QDIT_FASHION_MNIST"
DEFAULT_DIRS = ("/usr/share/datasets/fashion-mnist",)
CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
HOW_TO_GET = (
    "install them with `apt-get install dataset-fashion-mnist` (Debian), or point --data-dir or "
    f"${ENV_VAR} at a folder holding the four idx .gz files"
)


class DataNotFoundError(FileNotFoundError):
    pass


def find_data_dir(data_dir: str | os.PathLike | None = None) -> Path:
    """The first folder that holds the Fashion-MNIST files: ``data_dir``, ``$QDIT_FASHION_MNIST``,
    then the Debian package's folder."""
    candidates = [data_dir] if data_dir is not None else [os.environ.get(ENV_VAR), *DEFAULT_DIRS]
    needed = [f for pair in _FILES.values() for f in pair]
    for cand in candidates:
        if cand and all((Path(cand) / f).is_file() for f in needed):
            return Path(cand)
    where = str(data_dir) if data_dir is not None else ", ".join(c for c in candidates if c)
    raise DataNotFoundError(f"Fashion-MNIST files not found in {where}; {HOW_TO_GET}")


def _read_idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise ValueError(f"{path} is not an idx file of unsigned bytes")
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(dims)):
        raise ValueError(f"{path} is truncated: expected {int(np.prod(dims))} values, found {body.size}")
    return body.reshape(dims)


def load_fashion_mnist(
    split: str = "train", data_dir: str | os.PathLike | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Images uint8 ``[N, 28, 28]`` and labels int64 ``[N]`` of ``split`` ("train" or "test")."""
    if split not in _FILES:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    root = find_data_dir(data_dir)
    img_file, lbl_file = _FILES[split]
    images = _read_idx(root / img_file)
    labels = _read_idx(root / lbl_file).astype(np.int64)
    if images.shape[0] != labels.shape[0]:
        raise ValueError(f"{root}: {images.shape[0]} images but {labels.shape[0]} labels")
    return images, labels


# --- the embedded video family: a Fashion-MNIST garment moving on a slightly larger canvas ----------
CLIP_FRAMES = 8
CLIP_SIZE = 32
# (start x, start y, step x, step y): the garment goes out 4 px along the direction and comes back, 1 px per
# frame, so every frame is crisp (integer offsets) and the 8 paths are closed under a horizontal flip
MOTIONS = (
    (0, 0, 1, 1), (4, 4, -1, -1), (0, 4, 1, -1), (4, 0, -1, 1),
    (0, 2, 1, 0), (4, 2, -1, 0), (2, 0, 0, 1), (2, 4, 0, -1),
)  # fmt: skip
_TRIANGLE = (0, 1, 2, 3, 4, 3, 2, 1)
FLIP_MOTION = (3, 2, 1, 0, 5, 4, 6, 7)  # MOTIONS[FLIP_MOTION[m]] is MOTIONS[m] mirrored left-right (x -> 4 - x)


def clip_offsets(motion: int, frames: int = CLIP_FRAMES) -> list[tuple[int, int]]:
    """``(x, y)`` top-left offsets of the garment in each frame of a clip with path ``motion``."""
    sx, sy, dx, dy = MOTIONS[motion]
    tri = [_TRIANGLE[i % len(_TRIANGLE)] for i in range(frames)]
    return [(sx + dx * k, sy + dy * k) for k in tri]


def make_clips(images: np.ndarray, motions: np.ndarray, frames: int = CLIP_FRAMES) -> np.ndarray:
    """Clips uint8 ``[N, T, 32, 32]``: garment ``images[i]`` (``[N, 28, 28]``) moving along path ``motions[i]``
    on a black canvas."""
    if images.ndim != 3 or images.shape[1:] != (28, 28):
        raise ValueError(f"expected garments [N, 28, 28], got {images.shape}")
    motions = np.asarray(motions, dtype=np.int64)
    if motions.shape != (images.shape[0],) or motions.min(initial=0) < 0 or motions.max(initial=0) >= len(MOTIONS):
        raise ValueError(f"motions must be {images.shape[0]} path ids in [0, {len(MOTIONS) - 1}]")
    out = np.zeros((images.shape[0], frames, CLIP_SIZE, CLIP_SIZE), dtype=np.uint8)
    for m in range(len(MOTIONS)):
        idx = np.nonzero(motions == m)[0]
        for f, (x, y) in enumerate(clip_offsets(m, frames)):
            out[idx, f, y : y + 28, x : x + 28] = images[idx]
    return out


def clip_motions(n: int, seed: int) -> np.ndarray:
    """The path of each of ``n`` clips drawn from the seed (the reference clip sets use this)."""
    return np.random.default_rng(seed).integers(0, len(MOTIONS), size=n)


def load_fashion_mnist_clips(
    split: str = "train", data_dir: str | os.PathLike | None = None, seed: int = 0, num: int | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Reference clips uint8 ``[N, T, 32, 32]``, their labels and their motion ids, made deterministically
    from the Fashion-MNIST ``split`` (the first ``num`` garments)."""
    images, labels = load_fashion_mnist(split, data_dir)
    if num is not None:
        images, labels = images[:num], labels[:num]
    motions = clip_motions(len(images), seed)
    return make_clips(images, motions), labels, motions
