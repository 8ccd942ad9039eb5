"""The video DiT end to end on a tiny random model: its frame mixing, the warm start from an image DiT,
quantize -> save -> load, sampling clips, and ``--model embedded-video`` on the command line (with the
embedded asset pointed at a tiny model, or at a missing file)."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

import qdit
from conftest import randomize
from qdit.calib import CalibConfig
from qdit.cli import main
from qdit.diffusion.sampler import SamplerConfig, generate, sample_images, to_uint8_nhwc
from qdit.models.dit import DiT, DiTConfig
from qdit.models.latte import VideoDiT, VideoDiTConfig, video_from_image
from qdit.recipe import QuantSpec, Recipe

TINY_VIDEO = VideoDiTConfig(
    input_size=8,
    num_frames=4,
    patch_size=4,
    in_channels=1,
    hidden_size=32,
    depth=2,
    num_heads=2,
    num_classes=3,
)
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def tiny_video(seed: int = 0) -> VideoDiT:
    """Random weights everywhere (adaLN-Zero would make a fresh model output zeros); fixed embeddings kept."""
    model = VideoDiT(TINY_VIDEO)
    temp = model.temp_embed.detach().clone()
    randomize(model, seed)
    with torch.no_grad():
        model.temp_embed.copy_(temp)
    return model.eval()


def zero_temporal_adaln(model: VideoDiT) -> VideoDiT:
    """Temporal (odd) blocks back at their adaLN-Zero start: each is the identity."""
    with torch.no_grad():
        for i in range(1, len(model.blocks), 2):
            for p in model.blocks[i].adaLN_modulation[-1].parameters():
                p.zero_()
    return model


def clip_inputs(batch: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    c = TINY_VIDEO
    x = torch.randn(batch, c.in_channels, c.num_frames, c.input_size, c.input_size, generator=g)
    return (
        x,
        torch.randint(0, 1000, (batch,), generator=g),
        torch.randint(0, c.num_classes, (batch,), generator=g),
    )


# --- the model ---------------------------------------------------------------------------------------
def test_forward_shape_and_wrong_clip_size() -> None:
    model = tiny_video()
    x, t, y = clip_inputs(3)
    with torch.no_grad():
        out = model(x, t, y)
    assert out.shape == (3, 2, 4, 8, 8)  # noise and learned variance channels
    with pytest.raises(ValueError, match="expected clips of 4 frames of 8x8"):
        model(x[:, :, :3], t, y)


def _frame_change(model: VideoDiT, frame: int) -> torch.Tensor:
    """Per frame, how much the output moves when only input frame ``frame`` is perturbed."""
    x, t, y = clip_inputs(2, seed=1)
    bumped = x.clone()
    bumped[:, :, frame] += 0.5 * torch.randn(
        bumped[:, :, frame].shape, generator=torch.Generator().manual_seed(2)
    )
    with torch.no_grad():
        diff = (model(bumped, t, y) - model(x, t, y)).abs()
    return diff.amax(dim=(0, 1, 3, 4))  # [T]


def test_temporal_blocks_mix_frames_only_once_their_adaln_is_nonzero() -> None:
    k = 2
    at_init = _frame_change(zero_temporal_adaln(tiny_video()), k)
    assert at_init[k] > 1e-3  # the perturbed frame itself changes ...
    others = [f for f in range(TINY_VIDEO.num_frames) if f != k]
    assert torch.all(at_init[others] == 0)  # ... and no other frame, bit for bit
    trained = _frame_change(tiny_video(), k)
    assert torch.all(trained[others] > 1e-4), trained  # temporal attention carries it to every frame


def test_video_from_image_copies_block_k_to_2k_and_matches_the_image_dit_frame_by_frame() -> None:
    c = replace(TINY_VIDEO, depth=4)  # two image blocks, so that k -> 2k differs from k -> k
    image_cfg = DiTConfig(
        input_size=c.input_size, patch_size=c.patch_size, in_channels=c.in_channels, hidden_size=c.hidden_size,
        depth=c.depth // 2, num_heads=c.num_heads, num_classes=c.num_classes,
    )  # fmt: skip
    image = randomize(DiT(image_cfg), seed=3).eval()
    video = VideoDiT(c).eval()  # temporal blocks at their adaLN-Zero start
    copied = video_from_image(video, image.state_dict())
    assert "blocks.2.attn.qkv.weight" in copied
    assert not any(n.startswith(("blocks.1.", "blocks.3.")) for n in copied)  # temporal blocks stay fresh
    assert torch.equal(video.blocks[2].mlp.fc1.weight, image.blocks[1].mlp.fc1.weight)
    # The frame embedding is added to the residual stream before the first temporal block (as in Latte),
    # so the warm start is the image model frame by frame only without it.
    with torch.no_grad():
        video.temp_embed.zero_()
    x, t, y = clip_inputs(2, seed=4)
    with torch.no_grad():
        got = video(x, t, y)
        for f in range(c.num_frames):
            want = image(x[:, :, f], t, y)
            torch.testing.assert_close(got[:, :, f], want, rtol=1e-5, atol=1e-6)


def test_video_from_image_rejects_a_different_width() -> None:
    image = DiT(
        DiTConfig(
            input_size=8, patch_size=4, in_channels=1, hidden_size=64, depth=1, num_heads=2, num_classes=3
        )
    )
    with pytest.raises(ValueError, match="cannot warm-start"):
        video_from_image(VideoDiT(TINY_VIDEO), image.state_dict())


# --- quantize, save, load ---------------------------------------------------------------------------
def test_calibration_runner_samples_clips() -> None:
    from qdit.diffusion.calibration import calibration_runner

    model = tiny_video()
    run = calibration_runner(model, num_samples=3, steps=2, cfg_scale=1.5, seed=0, batch_size=2)
    assert run().shape == (3, 1, 4, 8, 8)


@pytest.mark.parametrize(
    "spec",
    [QuantSpec(8, 8, 0, 0), QuantSpec(4, 8, 32, 32, weight_method="gptq"), QuantSpec(8, 8, 32, 32, "static")],
    ids=["W8A8", "W4A8-g32-gptq", "W8A8-static"],
)
def test_quantize_save_load_reproduces_the_quantized_model(tmp_path: Path, spec: QuantSpec) -> None:
    # GPTQ and static scales calibrate by sampling clips through the adapter's calibration runner
    calib = CalibConfig(num_samples=2, steps=2, batch_size=2)
    model = qdit.quantize(tiny_video(), Recipe(default=spec, include=["adaln"]), calib)
    model.qdit_source = "test"
    qdit.save(model, tmp_path / "q")
    loaded = qdit.load(tmp_path / "q")
    assert type(loaded) is VideoDiT and loaded.config == TINY_VIDEO and loaded.qdit_source == "test"
    x, t, y = clip_inputs(3, seed=5)
    with torch.inference_mode():
        assert torch.equal(loaded(x, t, y), model(x, t, y))


# --- sampling clips -----------------------------------------------------------------------------------
def test_sample_clips_deterministic_per_seed_and_independent_of_batch_size() -> None:
    model = tiny_video()
    config = SamplerConfig(steps=3, cfg_scale=1.5)
    clips, labels = sample_images(model, 5, seed=7, config=config, batch_size=2)
    assert clips.dtype == np.uint8 and clips.shape == (5, 4, 8, 8, 1)
    assert labels.tolist() == [0, 1, 2, 0, 1]
    again, _ = sample_images(model, 5, seed=7, config=config, batch_size=5)
    assert np.array_equal(clips, again)
    other, _ = sample_images(model, 5, seed=8, config=config, batch_size=5)
    assert not np.array_equal(clips, other)
    # the layout: clip n, frame f, pixel (h, w) is channel 0 of the model's [N, C, T, H, W] sample
    x = generate(model, (1, 4, 8, 8), 3, labels, 7, config, batch_size=5)
    ref = ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    assert np.array_equal(to_uint8_nhwc(x), clips)
    assert np.array_equal(clips, ref.permute(0, 2, 3, 4, 1).numpy())
    assert len({clips[0, f].tobytes() for f in range(4)}) == 4  # the frames differ


# --- the command line with the embedded video model ---------------------------------------------
@pytest.fixture
def embedded_video(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> VideoDiT:
    """The embedded video asset pointed at a tiny random model, stored in fp16 like the real asset."""
    import qdit.models.embedded as embedded

    root = tmp_path_factory.mktemp("assets")
    model = tiny_video(seed=1)
    save_file(
        {k: v.half().contiguous() for k, v in model.state_dict().items()},
        str(root / embedded.EMBEDDED_VIDEO_WEIGHTS),
    )
    monkeypatch.setattr(embedded, "EMBEDDED_VIDEO_CONFIG", TINY_VIDEO)
    monkeypatch.setattr(embedded, "asset_path", lambda name: root / name)
    return embedded.load_embedded_video()


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def test_load_embedded_video_converts_fp16_to_fp32(embedded_video: VideoDiT) -> None:
    from qdit.api import load_model

    model = load_model("embedded-video")
    assert type(model) is VideoDiT and model.qdit_source == "embedded-video" and not model.training
    assert all(p.dtype == torch.float32 for p in model.parameters())
    fp16 = tiny_video(seed=1).state_dict()["blocks.1.attn.qkv.weight"].half().float()
    assert torch.equal(model.state_dict()["blocks.1.attn.qkv.weight"], fp16)


def test_cli_sample_writes_clips_gif_and_frame_grid(embedded_video, tmp_path, capsys) -> None:
    out = tmp_path / "clips.npz"
    code, stdout, err = run(
        capsys, "sample", "--model", "embedded-video", "-n", "5", "--steps", "3", "--seed", "2", "--out", str(out),
        "--gif", str(tmp_path / "clips.gif"), "--grid", str(tmp_path / "frames.png"), "--json", str(tmp_path / "s.json"),
    )  # fmt: skip
    assert code == 0, err
    assert "sampled 5 clips of 4 frames" in stdout
    data = np.load(out)
    assert data["arr_0"].dtype == np.uint8 and data["arr_0"].shape == (5, 4, 8, 8, 1)
    assert data["labels"].tolist() == [0, 1, 2, 0, 1]
    want, _ = sample_images(embedded_video, 5, seed=2, config=SamplerConfig(steps=3, clip_denoised=True))
    assert np.array_equal(data["arr_0"], want)
    with Image.open(tmp_path / "clips.gif") as gif:
        assert gif.n_frames == 4 and gif.info.get("loop") == 0
        # 5 clips in one row, 8x8 with 2-pixel gaps, scaled 2x
        assert gif.size == ((5 * (8 + 2) + 2) * 2, (8 + 2 + 2) * 2)
        gif.seek(2)
        frame2 = np.asarray(gif.convert("L"))
    # GIF frame 2 shows frame 2 of clip 0 at the top left (grayscale survives the palette exactly)
    assert np.array_equal(frame2[4 : 4 + 16 : 2, 4 : 4 + 16 : 2], data["arr_0"][0, 2, :, :, 0])
    with Image.open(tmp_path / "frames.png") as grid:
        # a row per clip, the 4 frames across
        assert grid.size == ((4 * (8 + 2) + 2) * 2, (5 * (8 + 2) + 2) * 2)
        pixels = np.asarray(grid)
    assert np.array_equal(
        pixels[4 + 3 * 20 : 4 + 3 * 20 + 16 : 2, 4 + 2 * 20 : 4 + 2 * 20 + 16 : 2],
        data["arr_0"][3, 2, :, :, 0],
    )
    assert json.loads((tmp_path / "s.json").read_text())["kind"] == "clips"


def test_cli_quantize_embedded_video_then_sample_the_folder(embedded_video, tmp_path, capsys) -> None:
    qdir = tmp_path / "w8a8"
    code, _, err = run(
        capsys, "quantize", "--model", "embedded-video", "--w-bits", "8", "--a-bits", "8", "--group-size", "32",
        "--include", "adaln", "--out", str(qdir),
    )  # fmt: skip
    assert code == 0, err
    assert json.loads((qdir / "qdit.json").read_text())["model"]["source"] == "embedded-video"
    # a fresh process, without the monkeypatched asset: the folder alone rebuilds the video model
    r = subprocess.run(
        [sys.executable, "-m", "qdit", "sample", "--model", str(qdir), "-n", "3", "--steps", "2",
         "--out", str(tmp_path / "q.npz")],
        capture_output=True, text=True, env=ENV, timeout=300,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "sampled 3 clips of 4 frames" in r.stdout
    from qdit.kernels.linear import available_paths

    kernels = r.stdout.splitlines()[0]  # integer kernels where they apply, e.g. "kernels: 10 amx"
    assert kernels.startswith("kernels:") and "fake" not in kernels
    assert any(path in kernels for path in available_paths()), kernels
    clips = np.load(tmp_path / "q.npz")["arr_0"]
    assert clips.shape == (3, 4, 8, 8, 1)
    want = qdit.quantize(
        copy.deepcopy(embedded_video), Recipe(default=QuantSpec(8, 8, 32, 32), include=["adaln"])
    )
    ref, _ = sample_images(want, 3, seed=0, config=SamplerConfig(steps=2, clip_denoised=True))
    assert np.array_equal(clips, ref)


def test_cli_gif_on_an_image_model_is_one_line(tmp_path, capsys) -> None:
    ckpt = tmp_path / "tiny.pt"
    cfg = DiTConfig(
        input_size=8, patch_size=4, in_channels=1, hidden_size=32, depth=1, num_heads=2, num_classes=3
    )
    torch.save(randomize(DiT(cfg)).state_dict(), ckpt)
    arch = json.dumps({"num_heads": 2})
    code, _, err = run(capsys, "sample", "--model", str(ckpt), "--arch", arch, "-n", "2", "--steps", "1",
                       "--out", str(tmp_path / "s.npz"), "--gif", str(tmp_path / "s.gif"))  # fmt: skip
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and "--gif needs a video model" in err
    assert not (tmp_path / "s.npz").exists() and not (tmp_path / "s.gif").exists()


def test_cli_embedded_video_without_the_asset_is_one_line(tmp_path, capsys, monkeypatch) -> None:
    import qdit.models.embedded as embedded

    monkeypatch.setattr(embedded, "EMBEDDED_VIDEO_WEIGHTS", "no_such_video_dit.safetensors")
    for command in (["sample", "-n", "2"], ["quantize"], ["search"]):
        out = tmp_path / (
            "r.json" if command[0] == "search" else "out.npz" if command[0] == "sample" else "q"
        )
        code, _, err = run(capsys, *command, "--model", "embedded-video", "--out", str(out))
        assert code == 2, command
        lines = err.strip().splitlines()
        assert len(lines) == 1 and "embedded video model is not installed" in lines[0], err
        assert "no_such_video_dit.safetensors is missing" in lines[0]
        assert not out.exists()


# a video DiT of the clip family's shape (8 frames of 32x32), tiny inside: the search scores it with ClipNet
SEARCH_VIDEO = VideoDiTConfig(
    input_size=32, num_frames=8, patch_size=8, in_channels=1, hidden_size=32, depth=2, num_heads=2,
    mlp_ratio=2.0, num_classes=10,
)  # fmt: skip


@pytest.fixture
def search_video(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> VideoDiT:
    import qdit.models.embedded as embedded

    root = tmp_path_factory.mktemp("assets")
    torch.manual_seed(3)
    model = randomize(VideoDiT(SEARCH_VIDEO))
    save_file({k: v.half().contiguous() for k, v in model.state_dict().items()}, str(root / embedded.EMBEDDED_VIDEO_WEIGHTS))
    monkeypatch.setattr(embedded, "EMBEDDED_VIDEO_CONFIG", SEARCH_VIDEO)
    real = embedded.asset_path
    monkeypatch.setattr(embedded, "asset_path", lambda name: root / name if "video" in name else real(name))
    return embedded.load_embedded_video()


@pytest.mark.parametrize("method", ["cheap", "full"])
def test_cli_search_on_the_video_model_with_fvd(search_video, tmp_path, capsys, method) -> None:
    """The search on clips: FVD on ClipNet features to the float model's clips (fd-fp: no reference set
    needed), the gradient strategy differentiating through ClipNet; the recipe then quantizes the model."""
    from qdit.recipe import Recipe

    argv = ["search", "--model", "embedded-video", "--method", method, "--choices", "8,16,32", "--budget-group", "16", "--fitness", "fd-fp",
            "--num-samples", "4", "--steps", "2", "--batch-size", "8", "--out", str(tmp_path / "r.json"),
            "--json", str(tmp_path / "rep.json"), "--no-progress", "--device", "cpu"]  # fmt: skip
    argv += ["--candidates", "2", "--cheap-budget", "12"] if method == "cheap" else ["--population", "3", "--top-k", "2", "--generations", "1"]
    code, _, err = run(capsys, *argv)
    assert code == 0, err
    rep = json.loads((tmp_path / "rep.json").read_text())
    assert rep["budget"]["met"] and rep["evaluations"] >= 6
    state = json.loads((tmp_path / "r.json.state.json").read_text())
    assert '"features": "fvd"' in json.dumps(state)  # the fitness was measured on ClipNet's clip features
    if method == "cheap":
        assert rep["strategy"] == "gradient" and rep["sensitivity_passes"] >= 1
    else:
        assert len(rep["history"]) == 6  # 3 initial + 1 epoch of 3
    recipe = Recipe.load(tmp_path / "r.json")
    assert len(recipe.overrides) == 4 * SEARCH_VIDEO.depth
    code, _, err = run(capsys, "quantize", "--model", "embedded-video", "--recipe", str(tmp_path / "r.json"),
                       "--out", str(tmp_path / "q"))  # fmt: skip
    assert code == 0, err


def test_video_fvd_features_are_differentiable_like_the_extractor(search_video) -> None:
    """The search's differentiable FVD features equal the extractor's on the same clips (up to the
    rounding to uint8 that the extractor sees)."""
    from qdit.eval.features import video_feature_space

    space = video_feature_space(None)
    torch.manual_seed(0)
    clips = to_uint8_nhwc(torch.rand(3, 1, 8, 32, 32) * 2 - 1)  # uint8 [3, 8, 32, 32, 1]
    model_space = torch.from_numpy(clips).float().div(127.5).sub(1).permute(0, 4, 1, 2, 3)
    direct = space.extract(clips)
    diff = space.differentiable(model_space).detach().numpy()
    assert np.allclose(diff, direct, atol=2e-3 * np.abs(direct).max())
    assert direct.shape == (3, 256) and np.abs(direct).max() > 0


def test_bench_forward_on_clips(embedded_video) -> None:
    from qdit.commands.bench import CONFIGS, bench_embedded

    result = bench_embedded("embedded-video", None, batch=2, repeats=1)
    assert result["kind"] == "clips" and result["group"] == 32
    assert set(result["forward_ms"]) == set(CONFIGS)


def test_cli_train_embedded_video_warm_starts_and_resumes(tmp_path, capsys) -> None:
    """`qdit train embedded-video`: the image DiT's blocks become the spatial blocks, the EMA warms up, and
    the same command resumes where the run stopped."""
    from qdit.models.embedded import EMBEDDED_WEIGHTS, asset_path
    from qdit.models.state_dict import load_state_dict_file

    run_dir = tmp_path / "run"
    args = ["train", "embedded-video", "--out", str(run_dir), "--max-steps", "2", "--batch-size", "2",
            "--threads", "1", "--init", str(asset_path(EMBEDDED_WEIGHTS))]  # fmt: skip
    code, _, err = run(capsys, *args)
    assert code == 0, err
    config = json.loads((run_dir / "config.json").read_text())
    assert config["video"] and config["train"]["ema_warmup"] and config["train"]["batch_size"] == 2
    image = load_state_dict_file(asset_path(EMBEDDED_WEIGHTS))
    ema = load_state_dict_file(run_dir / "ema.safetensors")
    # two steps at a warm-up lr move the weights a little: the spatial block 2 is image block 1, nearly
    w_img, w_vid = image["blocks.1.mlp.fc1.weight"], ema["blocks.2.mlp.fc1.weight"]
    assert torch.allclose(w_img, w_vid, atol=1e-3) and not torch.allclose(w_img, ema["blocks.1.mlp.fc1.weight"], atol=1e-3)
    state = torch.load(run_dir / "state.pt", weights_only=True)
    assert state["step"] == 2
    code, _, err = run(capsys, *[a if a != "2" or i != 5 else "3" for i, a in enumerate(args)])
    assert code == 0, err
    assert torch.load(run_dir / "state.pt", weights_only=True)["step"] == 3
