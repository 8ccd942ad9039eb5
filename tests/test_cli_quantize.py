from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import torch

import qdit
from conftest import TINY
from qdit.api import load_model
from qdit.errors import QditError
from qdit.recipe import QuantSpec, Recipe
from quant_helpers import dit_inputs, one_thread, run_qdit, tiny_dit  # noqa: F401  (one_thread: autouse fixture)

ARCH = json.dumps(TINY.to_dict())


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return run_qdit("quantize", *args)


@pytest.fixture
def checkpoint(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.pt"
    torch.save(tiny_dit().state_dict(), path)  # the official layout: a bare state dict
    return path


def test_cli_quantize_writes_a_model_folder(tmp_path: Path, checkpoint: Path) -> None:
    out = tmp_path / "q"
    summary = tmp_path / "summary.json"
    res = run_cli(
        "--model", str(checkpoint), "--arch", ARCH, "--w-bits", "4", "--a-bits", "8", "--group-size", "32",
        "--weight-method", "gptq", "--include", "adaln", "--calib-samples", "2", "--calib-steps", "2",
        "--device", "cpu", "--out", str(out), "--json", str(summary),
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert sorted(p.name for p in out.iterdir()) == ["model.safetensors", "qdit.json"]
    assert "quantized 10 layers (W4A8 g32/32 token gptq)" in res.stdout
    report = json.loads(summary.read_text())
    assert report["layers_quantized"] == 10 and report["size_mb_after"] < report["size_mb_before"]
    model = load_model(str(out))
    assert torch.isfinite(model(*dit_inputs())).all()
    assert model.qdit_source == str(checkpoint)


def test_cli_rtn_output_equals_library(tmp_path: Path, checkpoint: Path) -> None:
    recipe = tmp_path / "recipe.json"
    Recipe(QuantSpec(3, 8, 16, 16, "sample"), overrides={"blocks.1.mlp.fc2": {"w_group": 128}}).save(recipe)
    out = tmp_path / "q"
    res = run_cli(
        "--model", str(checkpoint), "--arch", '{"num_heads": 2}', "--recipe", str(recipe), "--out", str(out)
    )
    assert res.returncode == 0, res.stderr
    want = qdit.quantize(tiny_dit(), Recipe.load(recipe))
    inputs = dit_inputs()
    assert torch.equal(qdit.load(out)(*inputs), want(*inputs))


def test_cli_frame_granularity_on_an_image_model_is_sample(tmp_path: Path, checkpoint: Path) -> None:
    # an image has no frames: --act-granularity frame quantizes as sample does (one range per image)
    out = tmp_path / "q"
    res = run_cli("--model", str(checkpoint), "--arch", ARCH, "--act-granularity", "frame", "--group-size", "32",
                  "--out", str(out))  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert "frame" in res.stdout
    want = qdit.quantize(tiny_dit(), Recipe(QuantSpec(4, 8, 32, 32, "sample")), kernel="fake")
    inputs = dit_inputs()
    with torch.no_grad():
        assert torch.equal(qdit.load(out, kernel="fake")(*inputs), want(*inputs))


def test_cli_granularities_come_from_the_recipe() -> None:
    import argparse

    from qdit.commands.quantize import add_parser
    from qdit.recipe import ACT_GRANULARITIES

    parser = add_parser(argparse.ArgumentParser().add_subparsers())
    action = next(a for a in parser._actions if "--act-granularity" in a.option_strings)
    assert action.help is not None and action.help.startswith(" | ".join(ACT_GRANULARITIES))


@pytest.mark.parametrize(
    "args, message",
    [
        (["--w-bits", "9"], "qdit quantize: error: w_bits must be an integer in 2..8, got 9"),
        (
            ["--group-size", "48"],
            "layer blocks.0.attn.qkv: weight group 48 does not divide its input width 64",
        ),
        (["--include", "adanl"], "did you mean 'adaln'"),
        (["--act-granularity", "tensor"], "act_granularity must be one of token, sample, frame, static"),
    ],
)
def test_cli_bad_input_is_one_line_and_keeps_output(
    tmp_path: Path, checkpoint: Path, args: list[str], message: str
) -> None:
    out = tmp_path / "q"
    out.mkdir()
    (out / "qdit.json").write_text("previous result")
    res = run_cli("--model", str(checkpoint), "--arch", ARCH, "--out", str(out), *args)
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], res.stderr
    assert sorted(p.name for p in out.iterdir()) == ["qdit.json"]
    assert (out / "qdit.json").read_text() == "previous result"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["q", "tiny.pt"]


def test_load_model_specs(tmp_path: Path, checkpoint: Path) -> None:
    model = load_model(str(checkpoint), ARCH)
    assert model.config == TINY
    with pytest.raises(QditError, match="cannot infer the head count"):
        load_model(str(checkpoint))
    with pytest.raises(QditError, match="unknown DiTConfig field 'hiden_size'; did you mean hidden_size"):
        load_model(str(checkpoint), '{"hiden_size": 64}')
    with pytest.raises(QditError, match="model not found"):
        load_model(str(tmp_path / "nope.pt"))
    with pytest.raises(QditError, match="neither a quantized qdit model folder .* nor a diffusers"):
        load_model(str(tmp_path))
    with pytest.raises(ValueError, match="missing key|unexpected key|shape"):
        load_model(str(checkpoint), "DiT-S/2")


def test_calibrate_once_quantize_twice_equals_library(tmp_path: Path, checkpoint: Path) -> None:
    """`qdit calibrate` writes the statistics; `qdit quantize --calib` uses them (no sampling) and gives
    exactly what the library gives with the same Calibration, for GPTQ and for static activations."""
    calib = tmp_path / "calib.pt"
    res = run_qdit("calibrate", "--model", str(checkpoint), "--arch", ARCH, "--hessian", "--calib-samples", "2",
                   "--calib-steps", "2", "--device", "cpu", "--out", str(calib))  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert "calibrated 8 layers" in res.stdout
    stats = qdit.Calibration.load(calib)
    assert len(stats) == 8 and all(stats[n].hessian is not None for n in stats)
    x, t, y = dit_inputs()
    for flags, spec in (
        (["--weight-method", "gptq", "--group-size", "32"], QuantSpec(4, 8, 32, 32, weight_method="gptq")),
        (["--act-granularity", "static", "--group-size", "0"], QuantSpec(4, 8, 0, 0, "static")),
    ):
        out = tmp_path / f"q_{spec.weight_method}_{spec.act_granularity}"
        res = run_cli("--model", str(checkpoint), "--arch", ARCH, "--w-bits", "4", "--a-bits", "8", *flags,
                      "--calib", str(calib), "--device", "cpu", "--out", str(out))  # fmt: skip
        assert res.returncode == 0, res.stderr
        ref = qdit.quantize(load_model(str(checkpoint), ARCH), spec, qdit.Calibration.load(calib), kernel="fake")
        got = load_model(str(out), kernel="fake")
        with torch.no_grad():
            assert torch.equal(got(x, t, y), ref(x, t, y))


def test_quantize_with_a_calibration_that_does_not_fit_is_one_line(tmp_path: Path, checkpoint: Path) -> None:
    calib = tmp_path / "calib.pt"
    res = run_qdit("calibrate", "--model", str(checkpoint), "--arch", ARCH, "--calib-samples", "1",
                   "--calib-steps", "1", "--device", "cpu", "--out", str(calib))  # fmt: skip
    assert res.returncode == 0, res.stderr
    res = run_cli("--model", str(checkpoint), "--arch", ARCH, "--weight-method", "gptq", "--group-size", "32", "--calib", str(calib),
                  "--device", "cpu", "--out", str(tmp_path / "q"))  # fmt: skip
    assert res.returncode == 2 and len(res.stderr.strip().splitlines()) == 1
    assert "no Hessians" in res.stderr and not (tmp_path / "q").exists()
    res = run_cli("--model", "embedded", "--act-granularity", "static", "--calib", str(calib),
                  "--device", "cpu", "--out", str(tmp_path / "q2"))  # fmt: skip
    assert res.returncode == 2 and len(res.stderr.strip().splitlines()) == 1
    assert "input width" in res.stderr and "made for another model" in res.stderr
