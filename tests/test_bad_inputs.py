"""Bad input on the command line: one line on stderr, exit 2, before any work, and no output touched."""

from __future__ import annotations

import json
import os
import pickle
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import TINY, randomize
from qdit.cli import main
from qdit.models.dit import DiT

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    code = main(list(args))
    err = capsys.readouterr().err
    return code, err


def one_line_error(err: str, command: str, text: str) -> None:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"qdit {command}: error: ") and text in lines[0], err


@pytest.fixture
def no_work(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if a command gets as far as loading a model (the checks must come first)."""

    def boom(*args: object, **kwargs: object) -> None:
        raise AssertionError("the command started its work before checking its options")

    monkeypatch.setattr("qdit.api.load_model", boom)


@pytest.fixture
def existing(tmp_path: Path) -> Path:
    path = tmp_path / "s.npz"
    np.savez(path, arr_0=np.zeros((2, 4, 4, 1), np.uint8), labels=np.zeros(2, np.int64))
    return path


@pytest.mark.parametrize("other", ["--json", "--grid", "--gif"])
def test_sample_output_collisions_keep_the_existing_file(capsys, tmp_path, existing, no_work, other) -> None:
    before = existing.read_bytes()
    code, err = run(capsys, "sample", "--num", "2", "--out", str(existing), other, str(existing))
    assert code == 2
    one_line_error(err, "sample", f"{other} {existing} is the same file as --out")
    assert existing.read_bytes() == before
    # the same file by another spelling, and through a symlink
    (tmp_path / "link.npz").symlink_to(existing)
    for alias in (str(tmp_path / "." / "s.npz"), str(tmp_path / "link.npz")):
        code, err = run(capsys, "sample", "--num", "2", "--out", str(existing), other, alias)
        assert code == 2 and "is the same file as --out" in err
    assert existing.read_bytes() == before


@pytest.mark.parametrize(
    ("value", "message"),
    [("nan", "--cfg must be a finite number, got nan"), ("inf", "--cfg must be a finite number, got inf"),
     ("-inf", "--cfg must be a finite number"), ("0.5", "--cfg must be >= 1, got 0.5")],
)  # fmt: skip
def test_sample_cfg_must_be_finite_and_at_least_one(capsys, existing, no_work, value, message) -> None:
    before = existing.read_bytes()
    code, err = run(capsys, "sample", "--num", "2", f"--cfg={value}", "--out", str(existing))
    assert code == 2
    one_line_error(err, "sample", message)
    assert existing.read_bytes() == before


@pytest.mark.parametrize("command", ["search", "demo"])
def test_other_commands_share_the_cfg_rule(capsys, tmp_path, no_work, command) -> None:
    extra = ["--out", str(tmp_path / "r.json")] if command == "search" else ["--out", str(tmp_path / "d")]
    code, err = run(capsys, command, "--cfg", "nan", *extra)
    assert code == 2
    one_line_error(err, command, "--cfg must be a finite number, got nan")
    code, err = run(capsys, "quantize", "--calib-cfg", "inf", "--out", str(tmp_path / "q"))
    assert code == 2
    one_line_error(err, "quantize", "--calib-cfg must be a finite number, got inf")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("value", ["0", "-3"])
def test_grid_num_must_be_positive(capsys, existing, no_work, value) -> None:
    code, err = run(capsys, "sample", "--num", "2", "--grid-num", value, "--out", str(existing))
    assert code == 2
    one_line_error(err, "sample", f"--grid-num must be >= 1, got {value}")


def test_quantize_checks_its_outputs_before_the_work(capsys, tmp_path, no_work) -> None:
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "keep.txt").write_text("mine")
    code, err = run(capsys, "quantize", "--out", str(notes))
    assert code == 2
    one_line_error(
        err, "quantize", f"refusing to overwrite {notes}: it is not empty and not a qdit model folder"
    )
    assert (notes / "keep.txt").read_text() == "mine"
    code, err = run(
        capsys, "quantize", "--out", str(tmp_path / "q"), "--json", str(tmp_path / "q" / "s.json")
    )
    assert code == 2
    one_line_error(err, "quantize", "lies inside the output folder --out")
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    code, err = run(capsys, "quantize", "--out", str(a_file))
    assert code == 2
    one_line_error(err, "quantize", "exists and is not a folder")
    code, err = run(capsys, "quantize", "--out", str(a_file / "q"))
    assert code == 2
    one_line_error(err, "quantize", f"{a_file} is not a folder")
    assert a_file.read_text() == "x"
    recipe = tmp_path / "recipe.json"
    recipe.write_text('{"version": 1}')
    code, err = run(
        capsys, "quantize", "--recipe", str(recipe), "--out", str(tmp_path / "q"), "--json", str(recipe)
    )
    assert code == 2
    one_line_error(err, "quantize", "would overwrite the input --recipe")
    assert recipe.read_text() == '{"version": 1}'


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere")
def test_an_unwritable_output_folder_is_reported_first(capsys, tmp_path, no_work) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        code, err = run(capsys, "sample", "--num", "2", "--out", str(locked / "s.npz"))
        assert code == 2
        one_line_error(err, "sample", "permission denied")
    finally:
        locked.chmod(0o700)


def test_search_outputs_and_resume(capsys, tmp_path, no_work) -> None:
    out = tmp_path / "r.json"
    code, err = run(capsys, "search", "--out", str(out), "--resume")
    assert code == 2
    one_line_error(err, "search", f"--resume: no search state at {out}.state.json")
    for option in ("--json", "--plot", "--state"):
        code, err = run(capsys, "search", "--out", str(out), option, str(out))
        assert code == 2
        one_line_error(err, "search", f"{option} {out} is the same file as --out")
    assert list(tmp_path.iterdir()) == []


def test_eval_json_may_not_replace_the_samples(capsys, existing) -> None:
    before = existing.read_bytes()
    code, err = run(capsys, "eval", str(existing), "--ref", "fashion-mnist-test", "--json", str(existing))
    assert code == 2
    one_line_error(err, "eval", "--json")
    assert "would overwrite the input SAMPLES" in err and existing.read_bytes() == before


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
@pytest.mark.parametrize("command", ["quantize", "search", "eval"])
def test_device_cuda_without_cuda_and_unknown_devices(capsys, tmp_path, existing, no_work, command) -> None:
    first = {"quantize": ["--out", str(tmp_path / "q")], "search": ["--out", str(tmp_path / "r.json")],
             "eval": [str(existing), "--ref", "fashion-mnist-test"]}[command]  # fmt: skip
    code, err = run(capsys, command, *first, "--device", "cuda")
    assert code == 2
    one_line_error(err, command, "--device cuda: CUDA is not available")
    code, err = run(capsys, command, *first, "--device", "bogus")
    assert code == 2
    one_line_error(err, command, "--device 'bogus' is not a device")
    code, err = run(capsys, command, *first, "--device", "meta")
    assert code == 2
    one_line_error(err, command, "qdit runs on cpu, cuda, mps, xpu, not meta")


def test_version_and_no_traceback_through_the_real_entry_point(tmp_path, existing) -> None:
    r = subprocess.run([sys.executable, "-m", "qdit", "--version"], capture_output=True, text=True, env=ENV)
    from qdit import __version__

    assert r.returncode == 0 and r.stdout.strip() == f"qdit {__version__}"
    before = existing.read_bytes()
    r = subprocess.run(
        [sys.executable, "-m", "qdit", "sample", "--num", "2", "--out", str(existing), "--json", str(existing)],
        capture_output=True, text=True, env=ENV,
    )  # fmt: skip
    assert r.returncode == 2 and "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert existing.read_bytes() == before


class Evil:
    def __reduce__(self) -> tuple:
        return (os.system, (f"touch {Path(os.environ.get('QDIT_EVIL_MARK', '/nonexistent')).as_posix()}",))


def test_pickles_and_text_files_as_checkpoints(capsys, tmp_path, monkeypatch) -> None:
    mark = tmp_path / "pwned"
    monkeypatch.setenv("QDIT_EVIL_MARK", str(mark))
    evil = tmp_path / "evil.pt"
    torch.save({"w": torch.zeros(2), "x": Evil()}, evil)
    raw = tmp_path / "raw.pkl"
    raw.write_bytes(pickle.dumps({"w": Evil()}))
    text = tmp_path / "notes.pt"
    text.write_text("hello\nworld\n")
    out = tmp_path / "s.npz"
    for path, message in ((evil, "holds Python objects besides tensors (it holds posix.system)"),
                          (raw, "holds Python objects besides tensors"),
                          (text, "is not a checkpoint (a text file)")):  # fmt: skip
        code, err = run(capsys, "sample", "--model", str(path), "--num", "1", "--out", str(out))
        assert code == 2
        one_line_error(err, "sample", message)
        assert "weights_only=False" not in err and "Traceback" not in err
    assert not mark.exists()  # nothing was unpickled
    assert not out.exists()


def test_text_or_npy_file_as_samples(capsys, tmp_path) -> None:
    text = tmp_path / "s.npz"
    text.write_text("not samples\n")
    code, err = run(capsys, "eval", str(text), "--ref", "fashion-mnist-test")
    assert code == 2
    one_line_error(err, "eval", "is not a readable .npz (not a zip archive)")
    assert "allow_pickle" not in err
    npy = tmp_path / "a.npy"
    np.save(npy, np.zeros((2, 28, 28, 1), np.uint8))
    code, err = run(capsys, "eval", str(npy), "--ref", "fashion-mnist-test")
    assert code == 2
    one_line_error(err, "eval", "is not a readable .npz (a .npy array)")


def test_eval_labels_outside_the_classes(capsys, tmp_path) -> None:
    path = tmp_path / "s.npz"
    np.savez(path, arr_0=np.zeros((12, 28, 28, 1), np.uint8), labels=np.array([0] * 11 + [10], np.int64))
    code, err = run(capsys, "eval", str(path), "--ref", "fashion-mnist-test", "--metrics", "class_acc")
    assert code == 2
    one_line_error(
        err,
        "eval",
        "labels must be class ids in [0, 9] for class_acc (Fashion-MNIST), got 10 (1 out of range)",
    )
    np.savez(path, arr_0=np.zeros((12, 28, 28, 1), np.uint8), labels=np.array([-1] * 12, np.int64))
    code, err = run(capsys, "eval", str(path), "--ref", "fashion-mnist-test", "--metrics", "class_acc")
    assert code == 2 and "got -1 (12 out of range)" in err


def test_nan_weights_in_a_checkpoint_are_refused(capsys, tmp_path) -> None:
    state = randomize(DiT(TINY)).state_dict()
    state["blocks.1.mlp.fc1.bias"][3] = float("nan")
    ckpt = tmp_path / "nan.pt"
    torch.save(state, ckpt)
    arch = json.dumps({"input_size": 8, "patch_size": 2, "in_channels": 1, "hidden_size": 64, "depth": 2,
                       "num_heads": 2, "num_classes": 3})  # fmt: skip
    code, err = run(
        capsys, "sample", "--model", str(ckpt), "--arch", arch, "--num", "2", "--out", str(tmp_path / "s.npz")
    )
    assert code == 2
    one_line_error(
        err,
        "sample",
        "tensor 'blocks.1.mlp.fc1.bias' has 1 non-finite value (NaN) of 256, the first at index [3]",
    )
    assert not (tmp_path / "s.npz").exists()


def test_a_diverging_model_stops_sampling_naming_the_step() -> None:
    from qdit.diffusion.sampler import NonFiniteSampleError, SamplerConfig, sample_images

    model = randomize(DiT(TINY)).eval()
    with torch.no_grad():
        model.final_layer.linear.bias[0] = float("inf")
    with pytest.raises(NonFiniteSampleError, match=r"NaN or Inf after step 1 of 3"):
        sample_images(model, 2, config=SamplerConfig(steps=3))


def test_outputs_keep_the_umask_mode_or_the_mode_they_replace(tmp_path) -> None:
    from qdit.io.atomic import write_json

    old = os.umask(0o027)
    try:
        write_json(tmp_path / "new.json", {"a": 1})
        assert stat.S_IMODE((tmp_path / "new.json").stat().st_mode) == 0o640
        kept = tmp_path / "kept.json"
        kept.write_text("{}")
        kept.chmod(0o604)
        write_json(kept, {"a": 2})
        assert stat.S_IMODE(kept.stat().st_mode) == 0o604 and json.loads(kept.read_text()) == {"a": 2}
        from qdit.eval.npz import save_samples

        save_samples(tmp_path / "s.npz", np.zeros((1, 4, 4, 1), np.uint8))
        assert stat.S_IMODE((tmp_path / "s.npz").stat().st_mode) == 0o640
    finally:
        os.umask(old)


def test_quantized_folders_get_normal_modes(tmp_path) -> None:
    import qdit
    from qdit.recipe import QuantSpec

    old = os.umask(0o022)
    try:
        model = qdit.quantize(randomize(DiT(TINY)).eval(), QuantSpec(4, 8, 32, 32))
        qdit.save(model, tmp_path / "q")
        assert stat.S_IMODE((tmp_path / "q").stat().st_mode) == 0o755
        for f in (tmp_path / "q").iterdir():
            assert stat.S_IMODE(f.stat().st_mode) == 0o644, f
    finally:
        os.umask(old)


def test_train_numbers_are_checked_before_reading_data(capsys, tmp_path) -> None:
    code, err = run(capsys, "train", "embedded", "--max-minutes", "nan", "--out", str(tmp_path / "t"))
    assert code == 2
    one_line_error(err, "train", "max_minutes must be a finite number, got nan")
    assert list(tmp_path.iterdir()) == []


def test_resolve_device_with_cuda_present(monkeypatch) -> None:
    from qdit.commands.common import resolve_device
    from qdit.errors import QditError

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert resolve_device("auto") == "cuda" and resolve_device("cuda:0") == "cuda:0"
    with pytest.raises(QditError, match="--device cuda:3: there are only 1 CUDA device"):
        resolve_device("cuda:3")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == "cpu" and resolve_device("cpu") == "cpu"


def test_check_outputs_rules(tmp_path) -> None:
    from qdit.errors import QditError
    from qdit.io.atomic import check_outputs

    model = tmp_path / "q"
    model.mkdir()
    (model / "qdit.json").write_text("{}")
    with pytest.raises(QditError, match="--out .* would overwrite the input --model"):
        check_outputs({"--out": model}, {"--model": model}, folders=("--out",))
    with pytest.raises(QditError, match="would overwrite the input --model"):  # a folder holding an input
        check_outputs({"--out": tmp_path}, {"--model": model / "qdit.json"}, folders=("--out",))
    hard = tmp_path / "hard.json"
    os.link(model / "qdit.json", hard)  # the same file under another name
    with pytest.raises(QditError, match="would overwrite the input --model"):
        check_outputs({"--json": hard}, {"--model": model / "qdit.json"})
    with pytest.raises(QditError, match="is a folder; give a file name"):
        check_outputs({"--json": model})
    check_outputs({"--out": tmp_path / "new" / "deeper" / "s.npz", "--json": None, "--grid": ""})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hard.json", "q"]  # checking creates nothing
