"""diffusers transformers through qdit: a tiny random DiTTransformer2DModel and PixArtTransformer2DModel made
here, saved with save_pretrained, quantized (library and ``qdit quantize --model FOLDER``), saved, reloaded
on the meta device, and compared with full precision."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from importlib.util import find_spec
from pathlib import Path
from typing import Any

import pytest
import torch

pytestmark = pytest.mark.skipif(
    find_spec("diffusers") is None, reason="diffusers is not installed (pip install 'qdit[diffusers]')"
)


def hf() -> Any:
    """``diffusers``, imported when a test runs, not when pytest collects this file: importing its models
    imports triton, which tests/test_kernels_triton.py must import first (in interpreter mode). (Not a
    module-level proxy object either: pytest probes every module attribute while collecting.)"""
    return pytest.importorskip("diffusers")


import qdit  # noqa: E402
from qdit.api import load_model  # noqa: E402
from qdit.diffusion.calibration import calibration_runner  # noqa: E402
from qdit.errors import QditError  # noqa: E402
from qdit.models.adapter import get_adapter  # noqa: E402
from qdit.models.diffusers_models import (  # noqa: E402
    DiffusersDiTAdapter,
    PixArtAdapter,
    is_diffusers_dir,
    load_diffusers,
    set_captions,
)
from qdit.recipe import QuantSpec, Recipe  # noqa: E402
from quant_helpers import one_thread  # noqa: E402, F401  (autouse fixture)

NUM_CLASSES = 5


def sqnr(ref: torch.Tensor, x: torch.Tensor) -> float:
    return float(10 * torch.log10(ref.pow(2).mean() / (ref - x).pow(2).mean()))


def assert_integer_close(got: torch.Tensor, fake: torch.Tensor) -> None:
    """The integer kernels against fake quantization, end to end: a last-bit difference in one layer
    can move an activation across a rounding boundary later (as in tests/test_integer_models.py)."""
    assert float((got - fake).abs().max() / fake.abs().max()) <= 5e-3


def trained_like(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Random weights with what trained DiTs show and random ones lack: a few input channels of large
    magnitude in every linear (Q-DiT's observation), so group quantization has something to win."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():  # (the sin-cos position table is a buffer, left as it is)
            p.copy_(torch.randn(p.shape, generator=g) * 0.05)
        for module in model.modules():
            if isinstance(module, torch.nn.Linear) and module.in_features >= 16:
                cols = torch.randperm(module.in_features, generator=g)[:2]
                module.weight[:, cols] *= 12.0
    return model.eval()


def tiny_dit(seed: int = 0) -> torch.nn.Module:
    model = hf().DiTTransformer2DModel(
        num_attention_heads=2, attention_head_dim=32, in_channels=4, out_channels=8, num_layers=2,
        sample_size=8, patch_size=2, num_embeds_ada_norm=NUM_CLASSES, norm_num_groups=32,
    )  # fmt: skip
    return trained_like(model, seed)


def tiny_pixart(seed: int = 0) -> torch.nn.Module:
    model = hf().PixArtTransformer2DModel(
        num_attention_heads=2, attention_head_dim=32, in_channels=4, out_channels=8, num_layers=2,
        sample_size=8, patch_size=2, cross_attention_dim=64, caption_channels=48,
    )  # fmt: skip
    return trained_like(model, seed)


def dit_inputs(n: int = 6, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, 8, 8, generator=g)
    t = torch.randint(0, 1000, (n,), generator=g)
    y = torch.arange(n) % (NUM_CLASSES + 1)  # the null label included
    return x, t, y


def dit_out(model: torch.nn.Module, inputs: tuple) -> torch.Tensor:
    x, t, y = inputs
    with torch.no_grad():
        return model(x, timestep=t, class_labels=y, return_dict=False)[0]  # diffusers' own signature


def write_pipeline(root: Path, transformer: torch.nn.Module) -> Path:
    """A DiTPipeline-style folder: model_index.json, transformer/, scheduler/ (no VAE)."""
    transformer.save_pretrained(root / "transformer")
    scheduler = hf().DDIMScheduler(num_train_timesteps=1000, beta_schedule="linear")
    scheduler.save_pretrained(root / "scheduler")
    index = {
        "_class_name": "DiTPipeline",
        "transformer": ["diffusers", "DiTTransformer2DModel"],
        "scheduler": ["diffusers", "DDIMScheduler"],
    }
    (root / "model_index.json").write_text(json.dumps(index))
    return root


@pytest.fixture(scope="module")
def dit_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_pipeline(tmp_path_factory.mktemp("dit_pipe"), tiny_dit())


def test_dit_adapter_knows_the_model() -> None:
    model = tiny_dit()
    adapter = get_adapter(model)
    assert isinstance(adapter, DiffusersDiTAdapter)
    groups = adapter.layer_groups(model)
    assert len(groups["default"]) == 12  # to_q, to_k, to_v, to_out.0, ff.net.0.proj, ff.net.2 per block
    assert groups["adaln"] == ["transformer_blocks.0.norm1.linear", "transformer_blocks.1.norm1.linear"]
    assert adapter.block_names(model) == ["transformer_blocks.0", "transformer_blocks.1"]
    assert adapter.image_shape(model) == (4, 8, 8)
    # the label table has num_embeds_ada_norm + 1 rows: label 5 is diffusers' null class
    assert adapter.num_classes(model) == NUM_CLASSES and adapter.has_null_class(model)


def test_dit_quantize_save_load_same_outputs(tmp_path: Path) -> None:
    fp = tiny_dit()
    inputs = dit_inputs()
    ref = dit_out(fp, inputs)
    for spec, floor in (
        (QuantSpec(w_bits=8, a_bits=8, w_group=32, a_group=32), 30.0),
        (QuantSpec(w_bits=4, a_bits=8, w_group=32, a_group=32), 10.0),
    ):
        q = qdit.quantize(copy.deepcopy(fp), spec, kernel="fake")
        out = dit_out(q, inputs)
        assert sqnr(ref, out) > floor
        qdit.save(q, tmp_path / spec.label().replace(" ", "_"))
        back = qdit.load(tmp_path / spec.label().replace(" ", "_"), kernel="fake")
        assert type(back).__name__ == "DiTTransformer2DModel"
        assert torch.equal(dit_out(back, inputs), out)
        assert_integer_close(dit_out(qdit.load(tmp_path / spec.label().replace(" ", "_")), inputs), out)


def test_dit_w4a8_group_dynamic_beats_per_channel_rtn() -> None:
    fp = tiny_dit()
    inputs = dit_inputs()
    ref = dit_out(fp, inputs)
    qdit_q = qdit.quantize(copy.deepcopy(fp), QuantSpec(w_bits=4, a_bits=8, w_group=32, a_group=32))
    rtn = qdit.quantize(copy.deepcopy(fp), Recipe.baseline("rtn"))
    assert sqnr(ref, dit_out(qdit_q, inputs)) > sqnr(ref, dit_out(rtn, inputs)) + 1.0  # dB


def test_pipeline_folder_loads_with_its_schedule(dit_folder: Path) -> None:
    assert is_diffusers_dir(dit_folder) and is_diffusers_dir(dit_folder / "transformer")
    model = load_model(str(dit_folder))
    assert model.qdit_schedule["beta_schedule"] == "linear"
    assert get_adapter(model).noise_schedule(model)["num_train_timesteps"] == 1000
    torch.testing.assert_close(dit_out(model, dit_inputs()), dit_out(tiny_dit(), dit_inputs()))
    bare = load_diffusers(dit_folder / "transformer")
    assert getattr(bare, "qdit_schedule", None) is None


def test_unsupported_folder_is_one_line_error(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"_class_name": "UNet2DModel"}))
    with pytest.raises(QditError, match="no adapter for diffusers 'UNet2DModel'"):
        load_model(str(tmp_path))


def run_cli(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run(
        [sys.executable, "-m", "qdit", *args], capture_output=True, text=True, env=env, timeout=300
    )


@pytest.mark.parametrize("bits", ["8", "4"])
def test_cli_quantizes_a_pipeline_folder(tmp_path: Path, dit_folder: Path, bits: str) -> None:
    out = tmp_path / "q"
    res = run_cli(
        "quantize", "--model", str(dit_folder), "--w-bits", bits, "--a-bits", "8", "--group-size", "32",
        "--device", "cpu", "--out", str(out),
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert f"quantized 12 layers (W{bits}A8 g32/32 token rtn)" in res.stdout
    back = qdit.load(out, kernel="fake")
    # the same RTN recipe in this process gives the same model: the CLI's saved model is what it quantized
    here = qdit.quantize(
        load_model(str(dit_folder)), QuantSpec(w_bits=int(bits), a_bits=8, w_group=32, a_group=32), kernel="fake"
    )
    inputs = dit_inputs()
    assert torch.equal(dit_out(back, inputs), dit_out(here, inputs))
    assert back.qdit_schedule["beta_schedule"] == "linear" and back.qdit_source == str(dit_folder)
    ref = dit_out(tiny_dit(), inputs)
    assert sqnr(ref, dit_out(back, inputs)) > (30.0 if bits == "8" else 10.0)


def test_cli_gptq_calibrates_block_by_block_on_a_diffusers_dit(tmp_path: Path, dit_folder: Path) -> None:
    out = tmp_path / "q"
    res = run_cli(
        "quantize", "--model", str(dit_folder), "--w-bits", "4", "--a-bits", "8", "--group-size", "32",
        "--weight-method", "gptq", "--calib-samples", "2", "--calib-steps", "2", "--calib-cfg", "1.5",
        "--device", "cpu", "--out", str(out),
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    inputs = dit_inputs()
    assert sqnr(dit_out(tiny_dit(), inputs), dit_out(qdit.load(out), inputs)) > 10.0


def test_quantized_transformer_drops_into_a_pipeline(tmp_path: Path) -> None:
    fp = tiny_dit()
    qdit.save(
        qdit.quantize(copy.deepcopy(fp), QuantSpec(w_bits=8, a_bits=8, w_group=32, a_group=32)), tmp_path
    )
    pipe = hf().DiTPipeline(
        transformer=fp, vae=tiny_vae(), scheduler=hf().DDIMScheduler(), id2label={0: "a"}
    )  # fmt: skip
    pipe.transformer = qdit.load(tmp_path)
    pipe.set_progress_bar_config(disable=True)
    images = pipe(class_labels=[0, 1], num_inference_steps=2, guidance_scale=1.0, output_type="np").images
    assert images.shape == (2, 16, 16, 3)


def tiny_vae() -> torch.nn.Module:
    torch.manual_seed(0)
    return hf().AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(32, 32),
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"), norm_num_groups=32, sample_size=16,
    ).eval()  # fmt: skip


# --- PixArt ---------------------------------------------------------------------------------------
def pixart_inputs(n: int = 4, seed: int = 2) -> dict:
    g = torch.Generator().manual_seed(seed)
    return dict(
        hidden_states=torch.randn(n, 4, 8, 8, generator=g),
        encoder_hidden_states=torch.randn(n, 6, 48, generator=g),
        timestep=torch.randint(0, 1000, (n,), generator=g),
        added_cond_kwargs={"resolution": None, "aspect_ratio": None},
        return_dict=False,
    )


def pixart_out(model: torch.nn.Module, inputs: dict) -> torch.Tensor:
    with torch.no_grad():
        return model(**inputs)[0]


def test_pixart_adapter_quantizes_self_and_cross_attention() -> None:
    model = tiny_pixart()
    adapter = get_adapter(model)
    assert isinstance(adapter, PixArtAdapter)
    groups = adapter.layer_groups(model)
    assert len(groups["default"]) == 20 and "transformer_blocks.1.attn2.to_k" in groups["default"]
    assert groups["caption"] == ["caption_projection.linear_1", "caption_projection.linear_2"]
    assert adapter.num_classes(model) is None  # no captions given yet
    with pytest.raises(QditError, match="set_captions"):
        calibration_runner(model, adapter, num_samples=2, steps=2, cfg_scale=1.5, seed=0, batch_size=2)


def test_pixart_w8a8_and_w4a8(tmp_path: Path) -> None:
    fp = tiny_pixart()
    set_captions(fp, torch.randn(3, 6, 48, generator=torch.Generator().manual_seed(3)))  # for static RTN
    inputs = pixart_inputs()
    ref = pixart_out(fp, inputs)
    w8 = qdit.quantize(copy.deepcopy(fp), QuantSpec(w_bits=8, a_bits=8, w_group=32, a_group=32), kernel="fake")
    out8 = pixart_out(w8, inputs)
    assert sqnr(ref, out8) >= 30.0
    w4 = qdit.quantize(copy.deepcopy(fp), QuantSpec(w_bits=4, a_bits=8, w_group=32, a_group=32))
    rtn = qdit.quantize(copy.deepcopy(fp), Recipe.baseline("rtn"))
    assert sqnr(ref, pixart_out(w4, inputs)) > sqnr(ref, pixart_out(rtn, inputs)) + 1.0  # dB
    qdit.save(w8, tmp_path / "w8")
    fake = qdit.load(tmp_path / "w8", kernel="fake")
    assert torch.equal(pixart_out(fake, inputs), out8)
    integer = qdit.load(tmp_path / "w8", kernel="int")  # the integer path equals fake quantization
    assert_integer_close(pixart_out(integer, inputs), out8)


def test_cli_quantizes_a_pixart_folder_with_dynamic_activations(tmp_path: Path) -> None:
    fp = tiny_pixart()
    fp.save_pretrained(tmp_path / "pixart")
    out = tmp_path / "q"
    res = run_cli(
        "quantize", "--model", str(tmp_path / "pixart"), "--w-bits", "8", "--a-bits", "8", "--group-size", "16",
        "--include", "caption", "--device", "cpu", "--out", str(out),
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert "quantized 22 layers" in res.stdout  # 10 per block, and the caption projection's two
    inputs = pixart_inputs()
    assert sqnr(pixart_out(fp, inputs), pixart_out(qdit.load(out), inputs)) >= 30.0
    # calibrating specs need captions to drive the model, which a folder does not hold: one line, exit 2
    res = run_cli(
        "quantize", "--model", str(tmp_path / "pixart"), "--weight-method", "gptq", "--group-size", "32",
        "--device", "cpu", "--out", str(tmp_path / "q2"),
    )  # fmt: skip
    assert res.returncode == 2 and "set_captions" in res.stderr


def test_pixart_calibrates_with_given_captions() -> None:
    fp = tiny_pixart()
    g = torch.Generator().manual_seed(3)
    set_captions(fp, torch.randn(3, 6, 48, generator=g))
    adapter = get_adapter(fp)
    assert adapter.num_classes(fp) == 3 and adapter.has_null_class(fp)
    calib = qdit.CalibConfig(num_samples=2, steps=2, cfg_scale=1.5, batch_size=2)
    q = qdit.quantize(
        copy.deepcopy(fp), QuantSpec(w_bits=4, a_bits=8, w_group=32, a_group=32, weight_method="gptq"), calib
    )
    inputs = pixart_inputs()
    assert sqnr(pixart_out(fp, inputs), pixart_out(q, inputs)) > 10.0


# --- sampling through a VAE ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def pipe_with_vae(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = write_pipeline(tmp_path_factory.mktemp("dit_pipe_vae"), tiny_dit())
    tiny_vae().save_pretrained(root / "vae")
    index = json.loads((root / "model_index.json").read_text())
    (root / "model_index.json").write_text(json.dumps({**index, "vae": ["diffusers", "AutoencoderKL"]}))
    return root


def test_sample_decodes_a_pipeline_through_its_vae(tmp_path: Path, pipe_with_vae: Path) -> None:
    from qdit.eval.npz import load_samples

    q = tmp_path / "q"
    res = run_cli(
        "quantize", "--model", str(pipe_with_vae), "--group-size", "32", "--device", "cpu", "--out", str(q)
    )
    assert res.returncode == 0, res.stderr
    assert qdit.load(q).qdit_vae == str((pipe_with_vae / "vae").resolve())  # the VAE travels with the model
    for model in (pipe_with_vae, q):
        out = tmp_path / f"{model.name}.npz"
        res = run_cli(
            "sample", "--model", str(model), "-n", "3", "--steps", "2", "--cfg", "1.5", "--classes", "0,4",
            "--out", str(out),
        )  # fmt: skip
        assert res.returncode == 0, res.stderr
        samples = load_samples(out)
        assert samples.images.shape == (3, 16, 16, 3) and samples.labels.tolist() == [
            0,
            4,
            0,
        ]  # decoded RGB, 2x the latent


def test_official_layout_checkpoint_with_vae(tmp_path: Path, pipe_with_vae: Path) -> None:
    from conftest import randomize
    from qdit.eval.npz import load_samples
    from qdit.models.dit import DiT, DiTConfig

    cfg = DiTConfig(
        input_size=8, patch_size=2, in_channels=4, hidden_size=64, depth=2, num_heads=2, num_classes=3
    )
    ckpt = tmp_path / "tiny.pt"
    torch.save(randomize(DiT(cfg)).state_dict(), ckpt)
    q, out = tmp_path / "q", tmp_path / "s.npz"
    vae = str(pipe_with_vae / "vae")
    res = run_cli(
        "quantize", "--model", str(ckpt), "--arch", json.dumps(cfg.to_dict()), "--vae", vae, "--group-size", "32",
        "--device", "cpu", "--out", str(q),
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    res = run_cli("sample", "--model", str(q), "-n", "2", "--steps", "2", "--out", str(out))
    assert res.returncode == 0, res.stderr
    assert load_samples(out).images.shape == (2, 16, 16, 3)
    res = run_cli("sample", "--model", str(q), "-n", "2", "--vae", str(tmp_path), "--out", str(out))
    assert res.returncode == 2 and "not a diffusers AutoencoderKL folder" in res.stderr


def toy_latent_features(dim: int = 6) -> Any:
    """Differentiable toy features of the tiny DiT's 4x8x8 latents (a fixed random projection), with
    reference statistics: the search's default gradient strategy needs them (Inception needs weights)."""
    import numpy as np

    from qdit.eval.features import FeatureSpace

    proj = np.random.default_rng(0).standard_normal((4 * 8 * 8, dim)).astype(np.float32)
    ref = np.random.default_rng(1).standard_normal((200, dim))
    proj_t = torch.from_numpy(proj)

    def extract(images: np.ndarray) -> np.ndarray:
        return (images.reshape(len(images), -1).astype(np.float32) / 127.5 - 1) @ proj

    def differentiable(x: torch.Tensor) -> torch.Tensor:  # the same, from model-space NCHW latents
        return x.float().clamp(-1, 1).permute(0, 2, 3, 1).reshape(len(x), -1) @ proj_t

    return FeatureSpace("toy_fd", extract, ref.mean(0), np.cov(ref, rowvar=False), differentiable)


def test_cli_search_on_a_pipeline_folder_and_quantize_by_its_recipe(
    tmp_path: Path, dit_folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``qdit search --model FOLDER`` with the default cheap (gradient) search: geometry, model function,
    noise schedule and guidance all come from the diffusers adapter; the recipe names the model's own
    linears and ``qdit quantize --model FOLDER --recipe`` applies it."""
    import qdit.commands.search as cmd
    from qdit.cli import main
    from qdit.search.fitness import ModelObjective

    monkeypatch.setattr(cmd, "_features", lambda args, model, device: toy_latent_features())
    schedules = []
    original = ModelObjective.__init__

    def spy(self: ModelObjective, *a: Any, **k: Any) -> None:
        original(self, *a, **k)
        schedules.append(self.diffusion)

    monkeypatch.setattr(ModelObjective, "__init__", spy)
    recipe_path = tmp_path / "r.json"
    argv = [
        "search", "--model", str(dit_folder), "--num-samples", "3", "--steps", "2", "--batch-size", "8",
        "--candidates", "2", "--cheap-budget", "6", "--out", str(recipe_path), "--json", str(tmp_path / "rep.json"),
        "--no-progress", "--device", "cpu",
    ]  # fmt: skip
    assert main(argv) == 0
    rep = json.loads((tmp_path / "rep.json").read_text())
    assert rep["method"] == "cheap" and rep["strategy"] == "gradient"
    # the pipeline's own scheduler (here linear too, but read from scheduler/, not assumed)
    assert schedules and schedules[0].num_timesteps == 1000
    recipe = Recipe.load(recipe_path)
    model = load_model(str(dit_folder))
    default = get_adapter(model).layer_groups(model)["default"]
    assert sorted(recipe.overrides) == sorted(default) and len(default) == 12
    assert all(name.startswith("transformer_blocks.") for name in recipe.overrides)
    out = tmp_path / "q"
    assert main(["quantize", "--model", str(dit_folder), "--recipe", str(recipe_path), "--device", "cpu",
                 "--out", str(out)]) == 0  # fmt: skip
    back = qdit.load(out, kernel="fake")
    here = qdit.quantize(load_model(str(dit_folder)), recipe, kernel="fake")
    inputs = dit_inputs()
    assert torch.equal(dit_out(back, inputs), dit_out(here, inputs))
    assert sqnr(dit_out(tiny_dit(), inputs), dit_out(back, inputs)) > 10.0


def test_search_objective_samples_with_the_adapters_schedule_and_model_function(dit_folder: Path) -> None:
    """The search's objective asks the adapter: a pipeline whose scheduler is not qdit's linear default
    is sampled with its own betas, through diffusers' forward signature."""
    from qdit.diffusion.schedule import GaussianDiffusion
    from qdit.search.fitness import ModelObjective, model_geometry
    from qdit.search.recipes import searchable_layers
    from qdit.search.space import build_space

    model = load_model(str(dit_folder))
    schedule = dict(model.qdit_schedule, beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    object.__setattr__(model, "qdit_schedule", schedule)
    assert model_geometry(model) == ((4, 8, 8), NUM_CLASSES)
    base = QuantSpec(w_bits=4, a_bits=8)
    layers = searchable_layers(model, base)
    assert {layer.tokens for layer in layers} == {16}  # (8 / patch 2) ** 2
    space = build_space(layers, 4, 8)
    obj = ModelObjective.build(model, space, base, toy_latent_features(), with_proxy=True, keep_float=False)
    betas = torch.as_tensor(obj.diffusion.betas)
    assert torch.allclose(betas, torch.as_tensor(GaussianDiffusion.from_scheduler_config(schedule).betas))
    assert not torch.allclose(betas, torch.as_tensor(GaussianDiffusion.linear().betas))
    assert obj.proxy(space.uniform(32)).value > 0


def test_bench_times_a_pipeline_folder(dit_folder: Path) -> None:
    from qdit.commands.bench import CONFIGS, bench_embedded

    result = bench_embedded(str(dit_folder), None, batch=2, repeats=1)
    assert set(result["forward_ms"]) == set(CONFIGS) and all(v > 0 for v in result["forward_ms"].values())
    assert result["group"] == 64  # the tiny DiT's widths (64, 256): 128 does not divide 64
