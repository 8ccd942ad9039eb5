from __future__ import annotations

import gzip

import numpy as np
import pytest

from qdit.data import DataNotFoundError, find_data_dir, load_fashion_mnist


def write_idx(path, arr: np.ndarray) -> None:
    header = bytes([0, 0, 8, arr.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + arr.astype(np.uint8).tobytes())


def make_fake(root, n=5):
    rng = np.random.default_rng(0)
    for _split, prefix in (("train", "train"), ("test", "t10k")):
        write_idx(root / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 255, (n, 28, 28)))
        write_idx(root / f"{prefix}-labels-idx1-ubyte.gz", np.arange(n) % 10)


def test_missing_files_error_says_how_to_get_them(tmp_path, monkeypatch):
    monkeypatch.delenv("QDIT_FASHION_MNIST", raising=False)
    with pytest.raises(DataNotFoundError, match="apt-get install dataset-fashion-mnist"):
        load_fashion_mnist("train", data_dir=tmp_path)


def test_reads_idx_files_from_env_dir(tmp_path, monkeypatch):
    make_fake(tmp_path)
    monkeypatch.setenv("QDIT_FASHION_MNIST", str(tmp_path))
    assert find_data_dir() == tmp_path
    x, y = load_fashion_mnist("test")
    assert x.shape == (5, 28, 28) and x.dtype == np.uint8
    assert y.tolist() == [0, 1, 2, 3, 4]


def test_truncated_file_is_reported(tmp_path):
    make_fake(tmp_path)
    with gzip.open(tmp_path / "t10k-images-idx3-ubyte.gz", "wb") as f:
        f.write(bytes([0, 0, 8, 3]) + (5).to_bytes(4, "big") + (28).to_bytes(4, "big") * 2 + b"\x00" * 10)
    with pytest.raises(ValueError, match="truncated"):
        load_fashion_mnist("test", data_dir=tmp_path)


def test_bad_split():
    with pytest.raises(ValueError, match="split"):
        load_fashion_mnist("valid")


def test_real_data_when_installed():
    try:
        x, y = load_fashion_mnist("test")
    except DataNotFoundError:
        pytest.skip("Fashion-MNIST not installed")
    assert x.shape == (10000, 28, 28)
    assert np.bincount(y).tolist() == [1000] * 10
