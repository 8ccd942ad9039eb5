"""``qdit sample`` end to end, one process and two torchrun processes (gloo)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import TINY, randomize
from qdit.models.dit import DiT

ARCH = json.dumps(
    {
        "input_size": 8,
        "patch_size": 2,
        "in_channels": 1,
        "hidden_size": 64,
        "depth": 2,
        "num_heads": 2,
        "num_classes": 3,
    }
)
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pt"
    torch.save(randomize(DiT(TINY)).state_dict(), path)
    return path


def qdit(*args: str, launcher: list[str] | None = None) -> subprocess.CompletedProcess:
    cmd = (launcher or [sys.executable, "-m"]) + ["qdit", *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=ENV, timeout=300)


def test_sample_writes_npz_grid_and_json(ckpt, tmp_path):
    r = qdit("sample", "--model", str(ckpt), "--arch", ARCH, "--num", "7", "--steps", "3", "--seed", "3",
             "--out", str(tmp_path / "s.npz"), "--grid", str(tmp_path / "g.png"), "--json", str(tmp_path / "s.json"))  # fmt: skip
    assert r.returncode == 0, r.stderr
    data = np.load(tmp_path / "s.npz")
    assert data["arr_0"].dtype == np.uint8 and data["arr_0"].shape == (7, 8, 8, 1)
    assert data["labels"].dtype == np.int64 and data["labels"].tolist() == [0, 1, 2, 0, 1, 2, 0]
    assert (tmp_path / "g.png").stat().st_size > 0
    assert json.loads((tmp_path / "s.json").read_text())["num"] == 7


@pytest.mark.skipif(
    shutil.which("torchrun") is None and not Path(sys.executable).with_name("torchrun").exists(),
    reason="no torchrun",
)
def test_two_process_torchrun_equals_one_process(ckpt, tmp_path):
    common = [
        "sample",
        "--model",
        str(ckpt),
        "--arch",
        ARCH,
        "-n",
        "9",
        "--steps",
        "4",
        "--seed",
        "11",
        "--batch-size",
        "2",
    ]
    one = qdit(*common, "--out", str(tmp_path / "one.npz"))
    assert one.returncode == 0, one.stderr
    torchrun = [
        str(Path(sys.executable).with_name("torchrun")),
        "--nproc_per_node",
        "2",
        "--master_port",
        "29517",
        "-m",
    ]
    two = qdit(*common, "--out", str(tmp_path / "two.npz"), launcher=torchrun)
    assert two.returncode == 0, two.stderr
    a, b = np.load(tmp_path / "one.npz"), np.load(tmp_path / "two.npz")
    np.testing.assert_array_equal(a["labels"], b["labels"])
    # uint8 images: allow at most a one-level rounding flip from float reassociation
    diff = np.abs(a["arr_0"].astype(int) - b["arr_0"].astype(int))
    assert diff.max() <= 1 and (diff > 0).mean() < 0.01


def test_bad_input_one_line_error_and_output_untouched(ckpt, tmp_path):
    out = tmp_path / "s.npz"
    out.write_bytes(b"precious")
    r = qdit("sample", "--model", str(ckpt), "--arch", ARCH, "--num", "0", "--out", str(out))
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and "--num must be >= 1" in r.stderr
    r = qdit("sample", "--model", str(tmp_path / "missing.pt"), "--num", "2", "--out", str(out))
    assert r.returncode == 2 and "model not found" in r.stderr and "Traceback" not in r.stderr
    r = qdit(
        "sample", "--model", str(ckpt), "--arch", ARCH, "--num", "2", "--classes", "0,7", "--out", str(out)
    )
    assert r.returncode == 2 and "--classes" in r.stderr
    assert out.read_bytes() == b"precious"
