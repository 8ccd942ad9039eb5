"""Quantized folders carry sha256 digests: every flipped bit, edited spec or NaN is caught at load."""

from __future__ import annotations

import json
import random
import warnings
from pathlib import Path

import pytest
import torch

import qdit
from qdit.errors import QditError
from qdit.io.checkpoint import FORMAT_VERSION, read_meta
from qdit.io.integrity import IntegrityError, UnverifiedWarning, meta_text, verify
from qdit.quant.finite import NonFiniteError
from qdit.recipe import QuantSpec, Recipe
from quant_helpers import dit_inputs, one_thread, tiny_dit  # noqa: F401  (one_thread: autouse fixture)


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> Path:
    model = qdit.quantize(tiny_dit(), Recipe(QuantSpec(4, 8, 32, 32)))
    path = tmp_path_factory.mktemp("integrity") / "q"
    qdit.save(model, path)
    return path


def copy_of(saved: Path, tmp_path: Path) -> Path:
    out = tmp_path / "q"
    out.mkdir()
    for f in saved.iterdir():
        (out / f.name).write_bytes(f.read_bytes())
    return out


def test_digests_are_recorded_and_a_clean_folder_loads(saved: Path) -> None:
    meta = read_meta(saved)
    assert meta["format_version"] == FORMAT_VERSION == 2
    record = meta["integrity"]
    assert record["algorithm"] == "sha256" and set(record["files"]) == {"model.safetensors"}
    assert len(record["files"]["model.safetensors"]) == 64 and len(record["meta"]) == 64
    assert record["recipe"] is not None
    assert (saved / "qdit.json").read_text() == meta_text(meta)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a verified folder loads without any warning
        qdit.load(saved)


def test_every_flipped_bit_of_the_description_is_reported(saved: Path, tmp_path: Path) -> None:
    q = copy_of(saved, tmp_path)
    meta_path = q / "qdit.json"
    original = meta_path.read_bytes()
    rng = random.Random(0)
    for pos in range(len(original)):  # every byte, one random bit of it
        data = bytearray(original)
        data[pos] ^= 1 << rng.randrange(8)
        meta_path.write_bytes(bytes(data))
        with pytest.raises(QditError) as info:
            verify(q, read_meta(q))
        assert "qdit.json" in str(info.value) and "\n" not in str(info.value)
    meta_path.write_bytes(original)
    verify(q, read_meta(q))


def test_flipped_bits_of_the_weights_file_are_reported_and_named(saved: Path, tmp_path: Path) -> None:
    q = copy_of(saved, tmp_path)
    weights = q / "model.safetensors"
    original = weights.read_bytes()
    rng = random.Random(1)
    positions = [0, 7, 8, 100, len(original) // 2, len(original) - 1] + rng.sample(range(len(original)), 40)
    for pos in positions:
        data = bytearray(original)
        data[pos] ^= 1 << rng.randrange(8)
        weights.write_bytes(bytes(data))
        with pytest.raises(IntegrityError, match=r"model\.safetensors is corrupt: its sha256 does not match"):
            qdit.load(q)
    weights.write_bytes(original)
    qdit.load(q)


@pytest.mark.parametrize(("field", "value"), [("a_bits", 4), ("a_group", 64), ("w_bits", 8)])
def test_an_edited_layer_spec_is_reported(saved: Path, tmp_path: Path, field: str, value: int) -> None:
    q = copy_of(saved, tmp_path)
    meta = json.loads((q / "qdit.json").read_text())
    layer = next(iter(meta["layers"].values()))
    layer["spec"][field] = value
    (q / "qdit.json").write_text(meta_text(meta))  # well-formed, only the value differs
    with pytest.raises(IntegrityError, match="qdit.json does not match its checksum"):
        qdit.load(q)


def test_an_edited_recipe_is_reported(saved: Path, tmp_path: Path) -> None:
    q = copy_of(saved, tmp_path)
    meta = json.loads((q / "qdit.json").read_text())
    meta["recipe"]["default"]["a_group"] = 64
    from qdit.io.integrity import _canonical, _covered

    # even with the description's digest forged to match, the recipe's own digest fails
    meta["integrity"]["meta"] = _canonical(_covered(meta))
    (q / "qdit.json").write_text(meta_text(meta))
    with pytest.raises(IntegrityError, match="the recipe does not match its checksum"):
        qdit.load(q)


def test_missing_digests_in_a_version_2_folder_are_an_error(saved: Path, tmp_path: Path) -> None:
    q = copy_of(saved, tmp_path)
    meta = json.loads((q / "qdit.json").read_text())
    del meta["integrity"]
    (q / "qdit.json").write_text(meta_text(meta))
    with pytest.raises(IntegrityError, match="checksums .* are missing or corrupt"):
        qdit.load(q)


def test_version_1_folders_load_unverified_with_a_warning(saved: Path, tmp_path: Path) -> None:
    q = copy_of(saved, tmp_path)
    meta = json.loads((q / "qdit.json").read_text())
    del meta["integrity"]
    meta["format_version"] = 1
    (q / "qdit.json").write_text(json.dumps(meta, indent=2) + "\n")
    inputs = dit_inputs()
    with pytest.warns(UnverifiedWarning, match="without checksums"):
        old = qdit.load(q)
    with torch.no_grad():
        assert torch.equal(old(*inputs), qdit.load(saved)(*inputs))


def test_opt_out_skips_the_digests_but_not_the_finite_check(saved: Path, tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    q = copy_of(saved, tmp_path)
    tensors = load_file(str(q / "model.safetensors"))
    key = next(k for k in tensors if k.endswith(".weight_scale"))
    tensors[key] = tensors[key].clone()
    tensors[key][0, 0] = float("nan")
    save_file(tensors, str(q / "model.safetensors"), metadata={"format": "qdit"})
    with pytest.raises(IntegrityError, match="model.safetensors is corrupt"):
        qdit.load(q)
    with pytest.raises(NonFiniteError, match=rf"tensor '{key}' has 1 non-finite value \(NaN\)"):
        qdit.load(q, verify=False)
    bias = next(k for k in tensors if k.endswith(".bias"))
    tensors[key][0, 0] = 1.0
    tensors[bias] = tensors[bias].clone()
    tensors[bias][0] = float("inf")
    save_file(tensors, str(q / "model.safetensors"), metadata={"format": "qdit"})
    with pytest.raises(NonFiniteError, match=rf"tensor '{bias}' has 1 non-finite value \(Inf\)"):
        qdit.load(q, verify=False)


def test_save_refuses_non_finite_tensors_and_keeps_the_old_folder(saved: Path, tmp_path: Path) -> None:
    q = copy_of(saved, tmp_path)
    before = {p.name: p.read_bytes() for p in q.iterdir()}
    model = qdit.load(q)
    with torch.no_grad():
        model.final_layer.linear.bias[1] = float("nan")
    with pytest.raises(NonFiniteError, match="final_layer.linear.bias"):
        qdit.save(model, q)
    assert {p.name: p.read_bytes() for p in q.iterdir()} == before
