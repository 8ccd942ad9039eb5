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
