from __future__ import annotations

import numpy as np
import pytest
import torch

from qdit.models.dit import DiT, DiTConfig, dit_config, sincos_pos_embed_2d, timestep_embedding
from qdit.models.state_dict import CheckpointError, load_state_dict_file, load_strict


def official_state_dict_shapes(
    depth: int, hidden: int, patch: int, in_ch: int, input_size: int, classes: int
) -> dict:
    """Key names and shapes of facebookresearch/DiT's ``DiT`` state dict, written out by hand."""
    h, mlp, out = hidden, 4 * hidden, 2 * in_ch
    shapes = {
        "pos_embed": (1, (input_size // patch) ** 2, h),
        "x_embedder.proj.weight": (h, in_ch, patch, patch),
        "x_embedder.proj.bias": (h,),
        "t_embedder.mlp.0.weight": (h, 256),
        "t_embedder.mlp.0.bias": (h,),
        "t_embedder.mlp.2.weight": (h, h),
        "t_embedder.mlp.2.bias": (h,),
        "y_embedder.embedding_table.weight": (classes + 1, h),
        "final_layer.linear.weight": (patch * patch * out, h),
        "final_layer.linear.bias": (patch * patch * out,),
        "final_layer.adaLN_modulation.1.weight": (2 * h, h),
        "final_layer.adaLN_modulation.1.bias": (2 * h,),
    }
    for i in range(depth):
        b = f"blocks.{i}."
        shapes.update({
            b + "attn.qkv.weight": (3 * h, h), b + "attn.qkv.bias": (3 * h,),
            b + "attn.proj.weight": (h, h), b + "attn.proj.bias": (h,),
            b + "mlp.fc1.weight": (mlp, h), b + "mlp.fc1.bias": (mlp,),
            b + "mlp.fc2.weight": (h, mlp), b + "mlp.fc2.bias": (h,),
            b + "adaLN_modulation.1.weight": (6 * h, h), b + "adaLN_modulation.1.bias": (6 * h,),
        })  # fmt: skip
    return shapes


def random_official(shapes: dict, seed: int = 0, dtype: torch.dtype = torch.float32) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {k: (torch.randn(s, generator=g) * 0.02).to(dtype) for k, s in shapes.items()}


def test_dit_xl2_official_layout_loads_strictly_and_runs(tmp_path):
    shapes = official_state_dict_shapes(depth=28, hidden=1152, patch=2, in_ch=4, input_size=32, classes=1000)
    path = tmp_path / "DiT-XL-2-256x256.pt"
    torch.save(random_official(shapes, dtype=torch.bfloat16), path)  # bf16 keeps the file at 1.3 GB
    with torch.device("meta"):  # skip 675M random initialisations: every tensor is loaded below
        model = DiT(dit_config("DiT-XL/2"), init_weights=False)
    model = model.to_empty(device="cpu")
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == shapes
    load_strict(model, load_state_dict_file(path))
    with torch.no_grad():
        out = model.eval()(torch.randn(1, 4, 32, 32), torch.tensor([500]), torch.tensor([207]))
    assert out.shape == (1, 8, 32, 32)
    assert torch.isfinite(out).all() and out.abs().sum() > 0


@pytest.mark.parametrize(
    "name,depth,hidden,patch", [("DiT-S/8", 12, 384, 8), ("DiT-B/4", 12, 768, 4), ("DiT-L-2", 24, 1024, 2)]
)
def test_named_configs(name, depth, hidden, patch):
    cfg = dit_config(name)
    assert (cfg.depth, cfg.hidden_size, cfg.patch_size) == (depth, hidden, patch)


def test_unknown_arch_lists_known():
    with pytest.raises(ValueError, match="DiT-XL/2"):
        dit_config("DiT-M/3")


def test_missing_key_is_named(tmp_path, tiny_dit):
    sd = tiny_dit.state_dict()
    sd.pop("blocks.1.mlp.fc2.bias")
    with pytest.raises(CheckpointError, match=r"missing key 'blocks.1.mlp.fc2.bias'"):
        load_strict(DiT(tiny_dit.config), sd)


def test_unexpected_key_is_named(tiny_dit):
    sd = dict(tiny_dit.state_dict(), **{"blocks.9.attn.qkv.weight": torch.zeros(1)})
    with pytest.raises(CheckpointError, match=r"unexpected key 'blocks.9.attn.qkv.weight'"):
        load_strict(DiT(tiny_dit.config), sd)


def test_wrong_shape_names_key_and_shapes(tiny_dit):
    sd = tiny_dit.state_dict()
    sd["blocks.0.attn.proj.weight"] = torch.zeros(64, 32)
    with pytest.raises(
        CheckpointError,
        match=r"'blocks.0.attn.proj.weight' has shape \(64, 32\), the model expects \(64, 64\)",
    ):
        load_strict(DiT(tiny_dit.config), sd)


def test_corrupt_and_missing_checkpoint(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match=r"bad.pt is not a checkpoint \(a text file\)"):
        load_state_dict_file(bad)
    good = tmp_path / "good.pt"
    torch.save({"w": torch.zeros(3)}, good)
    bad.write_bytes(good.read_bytes()[:40])  # a truncated zip
    with pytest.raises(CheckpointError, match="cannot read checkpoint") as info:
        load_state_dict_file(bad)
    assert "\n" not in str(info.value)
    with pytest.raises(CheckpointError, match="not found"):
        load_state_dict_file(tmp_path / "nope.pt")


def test_training_checkpoint_prefers_ema(tmp_path, tiny_dit):
    sd = tiny_dit.state_dict()
    path = tmp_path / "ckpt.pt"
    torch.save({"model": {k: v * 0 for k, v in sd.items()}, "ema": sd}, path)
    loaded = load_state_dict_file(path)
    assert torch.equal(loaded["blocks.0.attn.qkv.weight"], sd["blocks.0.attn.qkv.weight"])


def test_timestep_embedding_closed_form():
    t = torch.tensor([0.0, 1.0, 999.0])
    emb = timestep_embedding(t, 8)
    freqs = np.exp(-np.log(10000) * np.arange(4) / 4)
    ref = np.concatenate([np.cos(t.numpy()[:, None] * freqs), np.sin(t.numpy()[:, None] * freqs)], axis=1)
    np.testing.assert_allclose(emb.numpy(), ref, rtol=1e-5, atol=1e-5)


def test_pos_embed_layout():
    pe = sincos_pos_embed_2d(8, 3).numpy()
    assert pe.shape == (9, 8)
    # token 5 sits at row 1, column 2; first half encodes the column, second half the row
    omega = 1.0 / 10000 ** (np.arange(2) / 2.0)
    col, row = 2.0, 1.0
    ref = np.concatenate([np.sin(col * omega), np.cos(col * omega), np.sin(row * omega), np.cos(row * omega)])
    np.testing.assert_allclose(pe[5], ref, rtol=1e-6)


def test_adaln_zero_init_outputs_zero():
    model = DiT(
        DiTConfig(
            input_size=8, patch_size=2, in_channels=1, hidden_size=64, depth=2, num_heads=2, num_classes=3
        )
    )
    out = model(torch.randn(2, 1, 8, 8), torch.tensor([1, 2]), torch.tensor([0, 3]))
    assert out.shape == (2, 2, 8, 8) and torch.count_nonzero(out) == 0


def test_config_validation():
    with pytest.raises(ValueError, match="not divisible by patch_size"):
        DiTConfig(input_size=28, patch_size=3)
