from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from qdit.errors import QditError
from qdit.eval.npz import check_images, load_reference, load_samples, save_samples


def images(n: int = 6, h: int = 8, c: int = 1, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, h, h, c), dtype=np.uint8)


def test_samples_round_trip(tmp_path: Path) -> None:
    x, y = images(c=3), np.arange(6) % 3
    path = tmp_path / "out" / "samples.npz"
    save_samples(path, x, y)
    s = load_samples(path)
    np.testing.assert_array_equal(s.images, x)
    assert s.labels is not None and s.labels.dtype == np.int64
    np.testing.assert_array_equal(s.labels, y)
    assert sorted(p.name for p in path.parent.iterdir()) == ["samples.npz"]  # no temporary left behind
    with np.load(path) as npz:
        assert sorted(npz.files) == ["arr_0", "labels"]


def test_samples_without_labels_and_nhw(tmp_path: Path) -> None:
    path = tmp_path / "s.npz"
    np.savez(path, arr_0=images()[..., 0])  # [N, H, W] is read as one channel
    s = load_samples(path)
    assert s.images.shape == (6, 8, 8, 1) and s.labels is None


def test_save_rejects_bad_arrays_and_keeps_existing_file(tmp_path: Path) -> None:
    path = tmp_path / "s.npz"
    save_samples(path, images(), np.zeros(6, dtype=np.int64))
    before = path.read_bytes()
    with pytest.raises(QditError, match="uint8"):
        save_samples(path, images().astype(np.float32))
    with pytest.raises(QditError, match="shape"):
        save_samples(path, images(c=2))
    with pytest.raises(QditError, match=r"labels must have shape \[6\]"):
        save_samples(path, images(), np.zeros(5, dtype=np.int64))
    with pytest.raises(QditError, match="integers"):
        save_samples(path, images(), np.zeros(6, dtype=np.float32))
    assert path.read_bytes() == before


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        ({"arr_0": np.zeros((2, 4, 4, 3), np.float32)}, "must be uint8"),
        ({"arr_0": np.zeros((2, 4, 4, 4), np.uint8)}, "shape"),
        ({"arr_0": np.zeros((4, 4), np.uint8)}, "shape"),
        ({"images": np.zeros((2, 4, 4, 3), np.uint8)}, "no 'arr_0'"),
        (
            {"arr_0": np.zeros((2, 4, 4, 3), np.uint8), "labels": np.zeros(3, np.int64)},
            "labels must have shape",
        ),
    ],
)
def test_load_samples_validation(tmp_path: Path, arrays: dict, message: str) -> None:
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    with pytest.raises(QditError, match=message):
        load_samples(path)


def test_load_samples_missing_and_corrupt(tmp_path: Path) -> None:
    with pytest.raises(QditError, match="not found"):
        load_samples(tmp_path / "nope.npz")
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"this is not a zip file")
    with pytest.raises(QditError, match="not a readable .npz"):
        load_samples(bad)
    with pytest.raises(QditError, match="not a file"):
        load_samples(tmp_path)


def test_check_images() -> None:
    assert check_images(images()[..., 0]).shape == (6, 8, 8, 1)
    with pytest.raises(QditError, match="N > 0"):
        check_images(np.zeros((0, 4, 4, 1), np.uint8))


def test_reference_from_images_file(tmp_path: Path) -> None:
    path = tmp_path / "ref.npz"
    np.savez(path, arr_0=images(c=3), mu=np.zeros(3), sigma=np.eye(3))
    ref = load_reference(str(path))
    assert ref.images is not None and ref.images.shape == (6, 8, 8, 3) and ref.labels is None
    assert ref.name.startswith("file-") and ref.source == str(path)
    assert load_reference(str(path)).name == ref.name  # keyed by content


def test_reference_from_statistics_file(tmp_path: Path) -> None:
    path = tmp_path / "stats.npz"
    np.savez(path, mu=np.zeros(4), sigma=np.eye(4), features=np.zeros((10, 4), np.float32))
    ref = load_reference(str(path))
    assert ref.images is None and set(ref.stats) == {"mu", "sigma", "features"}
    np.savez(path, mu=np.zeros(4), sigma=np.eye(3))
    with pytest.raises(QditError, match=r"'mu' must be \[D\]"):
        load_reference(str(path))
    np.savez(path, mu=np.zeros(4), sigma=np.eye(4), mu_s=np.zeros(2))
    with pytest.raises(QditError, match="must come together"):
        load_reference(str(path))
    np.savez(path, something=np.zeros(4))
    with pytest.raises(QditError, match="needs images in 'arr_0' or statistics"):
        load_reference(str(path))


def test_reference_unknown_name_or_missing_file(tmp_path: Path) -> None:
    with pytest.raises(QditError, match="unknown reference 'cifar10'"):
        load_reference("cifar10")
    with pytest.raises(QditError, match="not found"):
        load_reference(str(tmp_path / "missing.npz"))


def test_named_reference(tmp_path: Path) -> None:
    from qdit.data import DataNotFoundError, find_data_dir

    try:
        find_data_dir()
    except DataNotFoundError:
        pytest.skip("Fashion-MNIST files not installed")
    ref = load_reference("fashion-mnist-test")
    assert ref.images is not None and ref.images.shape == (10000, 28, 28, 1) and ref.images.dtype == np.uint8
    assert ref.labels is not None and ref.labels.shape == (10000,)
    with pytest.raises(QditError, match="Fashion-MNIST files not found"):
        load_reference("fashion-mnist-train", data_dir=tmp_path)
