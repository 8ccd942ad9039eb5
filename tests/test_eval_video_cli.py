"""``qdit eval`` on clip samples through a real subprocess: JSON output and one-line errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from qdit.data import DataNotFoundError, load_fashion_mnist_clips
from qdit.eval.cache import refstats_path
from qdit.eval.metrics import feature_stats, frechet_distance
from qdit.eval.npz import save_samples
from qdit.eval.refstats import load_refstats, save_refstats, stats_from_features


def qdit_eval(*args: str, cache: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "QDIT_CACHE": str(cache)}
    return subprocess.run(
        [sys.executable, "-m", "qdit", "eval", *args], capture_output=True, text=True, env=env, timeout=300
    )


def assert_one_line_error(proc: subprocess.CompletedProcess, *fragments: str) -> None:
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("qdit eval: error: ") and "Traceback" not in proc.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


@pytest.fixture(scope="module")
def real() -> tuple[np.ndarray, np.ndarray]:
    try:
        clips, labels, _ = load_fashion_mnist_clips("test", seed=0, num=700)
    except DataNotFoundError as exc:
        pytest.skip(str(exc))
    return clips[..., None], labels


@pytest.fixture
def clips_file(tmp_path: Path, real) -> Path:
    path = tmp_path / "clips.npz"
    save_samples(path, real[0][600:700], real[1][600:700])
    return path


def test_json_against_named_clip_reference(tmp_path: Path, real, clips_file: Path) -> None:
    """The statistics of all 10,000 reference clips take tens of seconds on a busy CPU, so the cache is
    seeded with those of 600 of them (under the shipped ClipNet's fingerprint): this checks the command,
    the reference name and the cache lookup; computing statistics is tested in test_eval_video.py."""
    from qdit.eval.videofeat import VideoFeatures

    cache = tmp_path / "cache"
    clipnet = VideoFeatures(progress=False)
    stats = stats_from_features(clipnet.extract(real[0][:600]).clip_features, keep_features=False)
    path = cache / "refstats" / refstats_path("fashion-mnist-clips-test", "clipnet").name
    path.parent.mkdir(parents=True)
    save_refstats(path, stats, extractor="clipnet", fingerprint=clipnet.fingerprint)
    out = tmp_path / "res" / "metrics.json"
    proc = qdit_eval(
        str(clips_file), "--ref", "fashion-mnist-clips-test", "--json", str(out), "--no-progress", cache=cache
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    result = json.loads(out.read_text())
    assert result["num_samples"] == 100 and result["ref"] == "fashion-mnist-clips-test"
    metrics = result["metrics"]
    assert list(metrics) == ["fvd", "frame_acc", "consistency", "motion"]
    own = clipnet.extract(real[0][600:700]).clip_features  # what the command must have computed
    assert metrics["fvd"] == pytest.approx(
        frechet_distance(*feature_stats(own), stats.mu, stats.sigma), rel=1e-6
    )
    assert metrics["frame_acc"] >= 0.85
    assert 0.5 < metrics["consistency"] < 1 and 0.02 < metrics["motion"] < 0.2
    assert result["video_features"]["name"] == "clipnet"
    assert result["video_features"]["fingerprint"] == clipnet.fingerprint
    assert "inception" not in result
    for name in metrics:
        assert name in proc.stdout
    # the seeded statistics were used, not replaced
    assert load_refstats(path, extractor="clipnet", fingerprint=clipnet.fingerprint).count == 600


def test_errors(
    tmp_path: Path, real, clips_file: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two cases through a real process (exit 2, one line on stderr, no JSON written); the others through
    ``qdit.cli.main`` in this process (the same code path, without paying for a torch import each)."""
    from qdit.cli import main

    cache = tmp_path / "cache"
    monkeypatch.setenv("QDIT_CACHE", str(cache))
    images = tmp_path / "images.npz"
    save_samples(images, np.zeros((12, 28, 28, 1), np.uint8), np.arange(12) % 10)
    unlabeled = tmp_path / "unlabeled.npz"
    save_samples(unlabeled, real[0][:4])
    small = tmp_path / "small.npz"
    save_samples(small, np.zeros((4, 8, 28, 28, 1), np.uint8))
    notes = tmp_path / "i3d.pt"
    notes.write_text("not weights\n")
    out = tmp_path / "m.json"
    clips = str(clips_file)
    in_process = [
        ([str(images), "--ref", "fashion-mnist-test", "--metrics", "fvd"], ("fvd", "video metric")),
        ([clips, "--ref", str(images), "--metrics", "fvd"], ("fvd needs reference clips",)),
        ([str(unlabeled), "--ref", clips, "--metrics", "frame_acc"], ("frame_acc needs the class labels",)),
        ([clips, "--ref", clips, "--video-features", "i3d"], ("needs --i3d PATH",)),
        ([clips, "--ref", clips, "--video-features", "clipnet", "--i3d", str(notes)], ("not clipnet",)),
        ([str(small), "--ref", clips], ("ClipNet features need", "--video-features i3d")),
        (
            [clips, "--ref", clips, "--i3d", str(tmp_path / "none.pt")],
            ("I3D weights not found", "never downloads"),
        ),
    ]
    for args, fragments in in_process:
        assert main(["eval", *args, "--no-progress"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("qdit eval: error: "), err
        for fragment in fragments:
            assert fragment in err[0], err[0]
    by_process = [
        (
            [clips, "--ref", clips, "--metrics", "fid,fvd", "--json", str(out)],
            ("fid", "image metric", "clip samples take"),
        ),
        ([clips, "--ref", clips, "--i3d", str(notes), "--json", str(out)], ("not a checkpoint",)),
    ]
    for args, fragments in by_process:
        assert_one_line_error(qdit_eval(*args, cache=cache), *fragments)
    assert not out.exists()
