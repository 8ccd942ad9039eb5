"""I3D for FVD with random weights: layout, loader (strict, one-line errors), preprocessing, features."""

from __future__ import annotations

import argparse
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from qdit.errors import QditError
from qdit.eval.i3d import (
    I3D_MIN_FRAMES,
    I3DFeatures,
    InceptionI3d,
    load_i3d,
    same_padding,
    to_i3d_input,
)


@pytest.fixture(scope="module")
def random_i3d() -> InceptionI3d:
    """Random weights, and batch-norm statistics that are not the identity (so a mix-up would show)."""
    torch.manual_seed(0)
    model = InceptionI3d()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, buf in model.named_buffers():
            if name.endswith("running_mean"):
                buf.copy_(torch.randn(buf.shape, generator=g) * 0.1)
            elif name.endswith("running_var"):
                buf.copy_(torch.rand(buf.shape, generator=g) + 0.5)
    return model.eval()


@pytest.fixture(scope="module")
def saved(random_i3d: InceptionI3d, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("i3d") / "i3d.pt"
    torch.save(random_i3d.state_dict(), path)
    return path


def test_layout_follows_pytorch_i3d(random_i3d: InceptionI3d) -> None:
    sd = random_i3d.state_dict()
    expect = {
        "Conv3d_1a_7x7.conv3d.weight": (64, 3, 7, 7, 7),
        "Conv3d_1a_7x7.bn.running_mean": (64,),
        "Conv3d_2c_3x3.conv3d.weight": (192, 64, 3, 3, 3),
        "Mixed_3b.b0.conv3d.weight": (64, 192, 1, 1, 1),
        "Mixed_3b.b1b.conv3d.weight": (128, 96, 3, 3, 3),
        "Mixed_3b.b3b.conv3d.weight": (32, 192, 1, 1, 1),
        "Mixed_4b.b0.conv3d.weight": (192, 480, 1, 1, 1),
        "Mixed_5c.b2b.bn.running_var": (128,),
        "logits.conv3d.weight": (400, 1024, 1, 1, 1),
        "logits.conv3d.bias": (400,),
    }
    for key, shape in expect.items():
        assert tuple(sd[key].shape) == shape, key
    assert not any(k.startswith("Mixed_3b.b3a") for k in sd)  # the pool branch has no weights
    assert "Conv3d_1a_7x7.conv3d.bias" not in sd and "logits.bn.weight" not in sd
    params = sum(v.numel() for k, v in sd.items() if "num_batches_tracked" not in k)
    assert 12_000_000 < params < 13_000_000  # I3D RGB: about 12.7M including batch-norm statistics


def test_same_padding_is_tensorflow_same() -> None:
    # (size, kernel, stride) -> TF SAME total padding, the smaller half first
    assert same_padding((16, 224, 224), (7, 7, 7), (2, 2, 2)) == (2, 3, 2, 3, 2, 3)
    assert same_padding((8, 56, 56), (3, 3, 3), (1, 1, 1)) == (1, 1, 1, 1, 1, 1)
    assert same_padding((8, 57, 56), (1, 3, 3), (1, 2, 2)) == (0, 1, 1, 1, 0, 0)
    assert same_padding((2, 7, 7), (2, 2, 2), (2, 2, 2)) == (0, 1, 0, 1, 0, 0)
    for n in range(1, 20):
        for k in (1, 2, 3, 7):
            for s in (1, 2):
                lo, hi = same_padding((n, n, n), (k, k, k), (s, s, s))[:2]
                assert (n + lo + hi - k) // s + 1 == -(-n // s)  # output size ceil(n / s)
                assert 0 <= hi - lo <= 1


def test_preprocessing() -> None:
    rng = np.random.default_rng(0)
    gray = torch.from_numpy(rng.integers(0, 256, (2, 3, 8, 8, 1), dtype=np.uint8))
    x = to_i3d_input(gray)
    assert x.shape == (2, 3, I3D_MIN_FRAMES, 224, 224) and x.dtype == torch.float32
    assert -1.0 <= float(x.min()) and float(x.max()) <= 1.0
    torch.testing.assert_close(x[:, 0], x[:, 2])  # grayscale repeated to 3 channels
    torch.testing.assert_close(x[:, :, 0], x[:, :, 2])  # 3 frames, each repeated ceil(9/3) = 3 times
    assert not torch.equal(x[:, :, 2], x[:, :, 3])
    assert to_i3d_input(torch.zeros(1, 8, 4, 4, 3, dtype=torch.uint8)).shape[2] == 16  # 8 frames -> 16
    assert to_i3d_input(torch.zeros(1, 10, 4, 4, 3, dtype=torch.uint8)).shape[2] == 10  # long enough
    white = to_i3d_input(torch.full((1, 9, 224, 224, 3), 255, dtype=torch.uint8))
    assert torch.all(white == 1.0)
    rgb = torch.zeros(1, 9, 224, 224, 3, dtype=torch.uint8)
    rgb[..., 0] = 255  # red stays in channel 0 (no BGR swap)
    y = to_i3d_input(rgb)
    assert torch.all(y[:, 0] == 1.0) and torch.all(y[:, 1:] == -1.0)


def test_loader_round_trip(random_i3d: InceptionI3d, saved: Path, tmp_path: Path) -> None:
    from safetensors.torch import save_file

    loaded = load_i3d(saved)
    assert not loaded.training
    for k, v in random_i3d.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[k], v, rtol=0, atol=0)
    st = tmp_path / "i3d.safetensors"
    save_file({k: v.contiguous() for k, v in random_i3d.state_dict().items()}, str(st))
    assert torch.equal(
        load_i3d(st).state_dict()["Mixed_4d.b1b.conv3d.weight"], random_i3d.Mixed_4d.b1b.conv3d.weight
    )
    # a DataParallel save without batch counters (old PyTorch), and another number of classes
    sd = {f"module.{k}": v for k, v in random_i3d.state_dict().items() if "num_batches_tracked" not in k}
    sd["module.logits.conv3d.weight"] = sd["module.logits.conv3d.weight"][:157]
    sd["module.logits.conv3d.bias"] = sd["module.logits.conv3d.bias"][:157]
    torch.save(sd, tmp_path / "charades.pt")
    assert load_i3d(tmp_path / "charades.pt").num_classes == 157


def test_loader_errors(random_i3d: InceptionI3d, tmp_path: Path) -> None:
    sd = random_i3d.state_dict()

    def save(name: str, obj) -> Path:
        path = tmp_path / name
        torch.save(obj, path)
        return path

    text = tmp_path / "notes.pt"
    text.write_text("weights go here\n")
    truncated = tmp_path / "truncated.pt"
    full = save("full.pt", {k: sd[k] for k in list(sd)[:40]})
    truncated.write_bytes(full.read_bytes()[:5000])
    script = tmp_path / "i3d_torchscript.pt"
    with zipfile.ZipFile(script, "w") as zf:
        zf.writestr("i3d/code/__torch__.py", "")
        zf.writestr("i3d/constants.pkl", b"")
    wrong_shape = dict(sd)
    wrong_shape["Mixed_4c.b1b.conv3d.weight"] = torch.zeros(224, 112, 1, 3, 3)
    nan = dict(sd)
    nan["Mixed_3c.b0.conv3d.weight"] = torch.full_like(sd["Mixed_3c.b0.conv3d.weight"], float("nan"))

    cases = {
        tmp_path / "absent.pt": "I3D weights not found",
        text: "not a checkpoint",
        truncated: "cannot read checkpoint",
        script: "TorchScript archive",
        save(
            "no_head.pt", {k: v for k, v in sd.items() if not k.startswith("logits")}
        ): "logits.conv3d.weight",
        save("missing.pt", {k: v for k, v in sd.items() if not k.startswith("Mixed_5c.b0")}): "missing key",
        save("extra.pt", {**sd, "Mixed_6a.b0.conv3d.weight": torch.zeros(1)}): "unexpected key",
        save("shape.pt", wrong_shape): "'Mixed_4c.b1b.conv3d.weight' has shape",
        save("nan.pt", nan): "non-finite",
        save(
            "objects.pt", {"state": sd["logits.conv3d.bias"], "args": argparse.Namespace(lr=1)}
        ): "Python objects",
    }
    for path, fragment in cases.items():
        with pytest.raises(QditError) as info:
            load_i3d(path)
        msg = str(info.value)
        assert fragment in msg, (path.name, msg)
        assert "\n" not in msg, (path.name, msg)


def test_features_shapes_and_determinism(random_i3d: InceptionI3d) -> None:
    rng = np.random.default_rng(0)
    clips = rng.integers(0, 256, (2, 3, 8, 8, 1), dtype=np.uint8)  # tiny: 3 frames -> 9, 8x8 -> 224x224
    logits = I3DFeatures(model=random_i3d, batch_size=2, progress=False)
    assert logits.key == "i3d-logits" and len(logits.fingerprint) == 16
    f = logits.extract(clips)
    assert f.clip_features.shape == (2, 400) and f.frame_features is None
    assert np.all(np.isfinite(f.clip_features)) and not np.allclose(f.clip_features[0], f.clip_features[1])
    pool = I3DFeatures(model=random_i3d, features="pool", batch_size=1, progress=False)
    assert pool.key == "i3d-pool" and pool.fingerprint == logits.fingerprint
    p = pool.extract(clips[1:])
    assert p.clip_features.shape == (1, 1024)
    # logits are a linear map of the pooled features: checks both paths and batch independence at once
    w = random_i3d.logits.conv3d.weight.detach().flatten(1).numpy()
    b = random_i3d.logits.conv3d.bias.detach().numpy()
    np.testing.assert_allclose(p.clip_features[0] @ w.T + b, f.clip_features[1], rtol=1e-4, atol=1e-4)
    again = logits.extract(clips[1:])  # same input, same numbers
    np.testing.assert_allclose(again.clip_features[0], f.clip_features[1], rtol=1e-5, atol=1e-5)
    with pytest.raises(QditError, match="must be 'logits' or 'pool'"):
        I3DFeatures(model=random_i3d, features="mixed_5c")
    with pytest.raises(QditError, match="need a weights file"):
        I3DFeatures()
    with pytest.raises(QditError, match=r"\[N, T, H, W, C\]"):
        logits.extract(np.zeros((2, 8, 8, 1), np.uint8))
