"""``qdit eval`` through a real subprocess: exit codes, one-line errors, JSON output."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from qdit.eval.inception import inception_weights_path
from qdit.eval.npz import save_samples

WEIGHTS = inception_weights_path()


def qdit_eval(*args: str, cache: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "QDIT_CACHE": str(cache)}
    return subprocess.run(
        [sys.executable, "-m", "qdit", "eval", *args], capture_output=True, text=True, env=env, timeout=300
    )


def assert_one_line_error(proc: subprocess.CompletedProcess, *fragments: str) -> None:
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("qdit eval: error: ")
    assert "Traceback" not in proc.stderr
    for fragment in fragments:
        assert fragment in lines[0]


@pytest.fixture
def samples(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    path = tmp_path / "samples.npz"
    save_samples(path, rng.integers(0, 256, (12, 16, 16, 3), dtype=np.uint8), np.arange(12) % 3)
    return path


@pytest.fixture
def cache_with_weights(tmp_path: Path) -> Path:
    """A fresh cache folder (so reference statistics land in tmp) that links the real weights file."""
    if not WEIGHTS.is_file():
        pytest.skip(f"Inception weights not found at {WEIGHTS} (run `make setup`)")
    cache = tmp_path / "cache"
    (cache / "inception").mkdir(parents=True)
    (cache / "inception" / WEIGHTS.name).symlink_to(WEIGHTS)
    return cache


def test_missing_samples_file(tmp_path: Path) -> None:
    out = tmp_path / "m.json"
    proc = qdit_eval(
        str(tmp_path / "nope.npz"), "--ref", "fashion-mnist-test", "--json", str(out), cache=tmp_path
    )
    assert_one_line_error(proc, "samples file not found", "nope.npz")
    assert not out.exists()


def test_bad_samples_and_options(tmp_path: Path, samples: Path) -> None:
    bad = tmp_path / "bad.npz"
    np.savez(bad, arr_0=np.zeros((4, 8, 8, 3), np.float32))
    assert_one_line_error(qdit_eval(str(bad), "--ref", "fashion-mnist-test", cache=tmp_path), "must be uint8")
    assert_one_line_error(
        qdit_eval(str(samples), "--ref", "fashion-mnist-test", "--metrics", "fid,kid", cache=tmp_path),
        "unknown metric(s) kid",
    )
    assert_one_line_error(qdit_eval(str(samples), "--ref", "imagenet", cache=tmp_path), "unknown reference")
    assert_one_line_error(
        qdit_eval(
            str(samples), "--ref", "fashion-mnist-test", "--bf16", "--inception-mode", "fast", cache=tmp_path
        ),
        "--bf16 and --inception-mode fast disagree",
    )
    assert_one_line_error(
        qdit_eval(str(samples), "--ref", str(tmp_path / "ref.npz"), cache=tmp_path),
        "reference file not found",
    )
    assert_one_line_error(
        qdit_eval(str(samples), "--ref", str(samples), "--metrics", "domain_fd", cache=tmp_path),
        "28x28 grayscale",
    )


def test_missing_weights_and_existing_json_untouched(tmp_path: Path, samples: Path) -> None:
    out = tmp_path / "m.json"
    out.write_text("{}\n")
    proc = qdit_eval(
        str(samples), "--ref", str(samples), "--metrics", "fid", "--json", str(out), cache=tmp_path
    )
    assert_one_line_error(proc, "Inception weights not found", "make setup")
    assert out.read_text() == "{}\n"


def test_inception_score_is_refused_clearly(tmp_path: Path, samples: Path, cache_with_weights: Path) -> None:
    proc = qdit_eval(str(samples), "--ref", str(samples), "--metrics", "is", cache=cache_with_weights)
    assert_one_line_error(proc, "Inception Score needs the Inception classification layer", "domain_is")


def test_json_written(tmp_path: Path, samples: Path, cache_with_weights: Path) -> None:
    rng = np.random.default_rng(1)
    ref = tmp_path / "ref.npz"
    np.savez(ref, arr_0=rng.integers(0, 256, (12, 16, 16, 3), dtype=np.uint8))
    out = tmp_path / "res" / "metrics.json"
    args = [str(samples), "--ref", str(ref), "--metrics", "fid,precision,recall", "--batch-size", "8"]
    proc = qdit_eval(*args, "--json", str(out), "--no-progress", cache=cache_with_weights)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    result = json.loads(out.read_text())
    assert result["num_samples"] == 12 and result["ref"] == str(ref)
    assert list(result["metrics"]) == ["fid", "precision", "recall"]
    assert result["metrics"]["fid"] > 0 and 0 <= result["metrics"]["precision"] <= 1
    # the default mode: fast, the stem in fp32 and the blocks in bf16
    assert result["inception"] == {"mode": "fast", "dtype": "float32+bfloat16", "batch_size": 8}
    for name in ("fid", "precision", "recall"):
        assert name in proc.stdout
    assert len(list((cache_with_weights / "refstats").glob("file-*-inception-fast3.npz"))) == 1
    assert [p.name for p in out.parent.iterdir()] == ["metrics.json"]
