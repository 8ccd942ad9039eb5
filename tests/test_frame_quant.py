"""Frame-aware activation ranges (``frame`` and per-clip ``sample``) against explicit loops over clips and
frames, their kernels against fake quantization, and a tiny video DiT quantized, saved and loaded."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

import qdit
from conftest import randomize
from qdit.kernels.formats import IntWeight, quantize_acts
from qdit.kernels.linear import ActQuant, available_paths, int_linear, prepare_weight
from qdit.kernels.reference import int_linear_reference
from qdit.models.adapter import get_adapter
from qdit.models.latte import VideoDiT, VideoDiTConfig
from qdit.nn import ActQuantizer, QuantLinear, quant_layers
from qdit.quant.activation import (
    FRAME_MAJOR,
    TOKEN_MAJOR,
    ActLayout,
    activation_range,
    as_layout,
    shared_rows,
)
from qdit.quant.primitives import fake_quantize_range
from qdit.quant.rules import PerFrame
from qdit.quant.weight import quantize_weight
from qdit.recipe import QuantSpec, Recipe
from quant_helpers import one_thread  # noqa: F401  (one_thread: autouse fixture)

S, T, N, C = 3, 4, 5, 8  # clips, frames, tokens per frame, channels


def source(seed: int = 0, s: int = S) -> torch.Tensor:
    """``V[s, t, n, c]``: clips whose frames differ in scale (so per-frame and per-clip ranges differ)."""
    g = torch.Generator().manual_seed(seed)
    v = torch.randn(s, T, N, C, generator=g)
    return v * (1 + 3 * torch.rand(s, T, 1, 1, generator=g)) + torch.randn(s, T, 1, 1, generator=g)


def laid_out(v: torch.Tensor, order: str, dims: int) -> tuple[torch.Tensor, list[tuple[int, int | None]]]:
    """``v`` written into the layer input layout by explicit loops, and for each row of
    ``x.reshape(-1, C)`` its ``(clip, frame)`` (frame ``None``: the row stands for every frame)."""
    s, t, n, c = v.shape
    rows: list[tuple[int, int | None]] = []
    if order == FRAME_MAJOR and dims == 3:
        x = torch.empty(s * t, n, c)
        for si in range(s):
            for ti in range(t):
                for ni in range(n):
                    x[si * t + ti, ni] = v[si, ti, ni]
                    rows.append((si, ti))
    elif order == TOKEN_MAJOR and dims == 3:
        x = torch.empty(s * n, t, c)
        for si in range(s):
            for ni in range(n):
                for ti in range(t):
                    x[si * n + ni, ti] = v[si, ti, ni]
                    rows.append((si, ti))
    elif order == FRAME_MAJOR:  # one row per clip and frame (the frame's token 0 stands for it)
        x = torch.empty(s * t, c)
        for si in range(s):
            for ti in range(t):
                x[si * t + ti] = v[si, ti, 0]
                rows.append((si, ti))
    else:  # one row per clip and token, shared by all of the clip's frames
        x = torch.empty(s * n, c)
        for si in range(s):
            for ni in range(n):
                x[si * n + ni] = v[si, 0, ni]
                rows.append((si, None))
    return x, rows


def members(v: torch.Tensor, order: str, dims: int, clip: int, frame: int | None) -> torch.Tensor:
    """The values one range covers, ``[k, C]``, from the source by loops: a frame's tokens (``frame`` set)
    or the whole clip (``None``)."""
    vals = []
    for ti in range(T):
        if frame is not None and ti != frame:
            continue
        for ni in range(N):
            if dims == 2 and order == FRAME_MAJOR and ni > 0:
                continue  # 2-D frame-major: one row per frame
            if dims == 2 and order == TOKEN_MAJOR and ti > 0:
                continue  # 2-D token-major: one row per token, for all frames
            vals.append(v[clip, ti, ni])
    return torch.stack(vals)


def row_ranges(x: torch.Tensor, group: int, gran: str, layout: ActLayout | None) -> tuple[torch.Tensor, torch.Tensor]:
    """activation_range's ranges expanded to one per row and group, ``[rows, G]``."""
    xg, lo, hi = activation_range(x, group, gran, layout=layout)
    shape = (*xg.shape[:-1], 1)
    groups = xg.shape[-2]
    return lo.expand(shape).reshape(-1, groups), hi.expand(shape).reshape(-1, groups)


CASES = [(order, dims) for order in (FRAME_MAJOR, TOKEN_MAJOR) for dims in (3, 2)]


@pytest.mark.parametrize("order, dims", CASES)
@pytest.mark.parametrize("gran", ["frame", "sample"])
@pytest.mark.parametrize("group", [0, 4])
def test_ranges_match_loops_over_clips_and_frames(order: str, dims: int, gran: str, group: int) -> None:
    v = source()
    x, rows = laid_out(v, order, dims)
    layout = ActLayout(order, T, N)
    lo, hi = row_ranges(x, group, gran, layout)
    g = group or C
    for r, (clip, frame) in enumerate(rows):
        # frame: the row's frame (a 2-D token-major row belongs to every frame: the clip); sample: the clip
        vals = members(v, order, dims, clip, frame if gran == "frame" else None)
        for j in range(C // g):
            block = vals[:, j * g : (j + 1) * g]
            assert lo[r, j] == min(block.min().item(), 0.0), (r, j)
            assert hi[r, j] == max(block.max().item(), 0.0), (r, j)
    # and the fake quantizer uses exactly these ranges
    aq = ActQuantizer(C, 6, group, gran)
    aq.set_layout(layout)
    xg, _, _ = activation_range(x, group, gran, layout=layout)
    want = fake_quantize_range(
        xg.reshape(-1, C // g, g), lo.unsqueeze(-1), hi.unsqueeze(-1), 6, False
    ).reshape(x.shape)
    assert torch.equal(aq(x), want)


def test_frame_and_sample_differ_where_frames_differ() -> None:
    v = source()
    for order, dims in CASES:
        x, _ = laid_out(v, order, dims)
        layout = ActLayout(order, T, N)
        frame, sample = row_ranges(x, 0, "frame", layout), row_ranges(x, 0, "sample", layout)
        if order == TOKEN_MAJOR and dims == 2:  # rows shared by all frames: a frame is the clip
            assert torch.equal(frame[0], sample[0])
        else:
            assert not torch.equal(frame[0], sample[0])


def test_without_a_layout_frame_equals_sample_per_first_dim() -> None:
    x = source().reshape(S * T, N, C)
    for group in (0, 4):
        f_lo, f_hi = row_ranges(x, group, "frame", None)
        s_lo, s_hi = row_ranges(x, group, "sample", None)
        assert torch.equal(f_lo, s_lo) and torch.equal(f_hi, s_hi)
        # per first dim: the frame-major layout's frames (each first-dim row is one frame)
        l_lo, l_hi = row_ranges(x, group, "frame", ActLayout(FRAME_MAJOR, T, N))
        assert torch.equal(f_lo, l_lo) and torch.equal(f_hi, l_hi)


def test_shared_rows_says_which_rows_share_a_range() -> None:
    lay_f, lay_t = ActLayout(FRAME_MAJOR, T, N), ActLayout(TOKEN_MAJOR, T, N)
    assert shared_rows((S * T, N, C), "token", lay_f) == 1
    assert shared_rows((S * T, N, C), "frame", lay_f) == N
    assert shared_rows((S * T, N, C), "sample", lay_f) == T * N
    assert shared_rows((S * T, C), "frame", lay_f) == 1
    assert shared_rows((S * T, C), "sample", lay_f) == T
    assert shared_rows((S * N, T, C), "frame", lay_t) is None  # every T-th row: not consecutive
    assert shared_rows((S * N, T, C), "sample", lay_t) == N * T
    assert shared_rows((S * N, C), "frame", lay_t) == N
    assert shared_rows((S * N, C), "sample", lay_t) == N
    assert shared_rows((S, N, C), "sample", None) == N
    assert shared_rows((S, N, C), "static", None) is None


def test_bad_layouts_and_shapes_are_clear_errors() -> None:
    x = torch.randn(S * T + 1, N, C)
    with pytest.raises(ValueError, match=r"leading dim 13 is not a multiple of 4 frames per clip"):
        activation_range(x, 0, "frame", layout=ActLayout(FRAME_MAJOR, T, N))
    with pytest.raises(ValueError, match=r"leading dim 16 is not a multiple of 5 tokens per clip"):
        activation_range(torch.randn(16, T, C), 0, "sample", layout=ActLayout(TOKEN_MAJOR, T, N))
    with pytest.raises(ValueError, match="have 3 frames, the token-major layout says 4"):
        activation_range(torch.randn(S * N, 3, C), 0, "frame", layout=ActLayout(TOKEN_MAJOR, T, N))
    with pytest.raises(ValueError, match="have 6 tokens per frame, the layout says 5"):
        activation_range(torch.randn(S * T, 6, C), 0, "frame", layout=ActLayout(FRAME_MAJOR, T, N))
    with pytest.raises(ValueError, match="2-D or 3-D"):
        activation_range(torch.randn(S * T, N, 2, C), 0, "frame", layout=ActLayout(FRAME_MAJOR, T))
    with pytest.raises(ValueError, match="needs the tokens per frame"):
        as_layout((TOKEN_MAJOR, T))
    with pytest.raises(ValueError, match="unknown activation layout 'frame-first'"):
        as_layout(("frame-first", T, N))
    with pytest.raises(ValueError, match="frames must be a positive integer"):
        as_layout((FRAME_MAJOR, 0))
    assert as_layout((FRAME_MAJOR, T)) == ActLayout(FRAME_MAJOR, T, 0)  # frame-major needs no tokens
    layer = QuantLinear.from_linear(nn.Linear(C, 4), QuantSpec(8, 8, 4, 4, "frame"), name="blocks.1.mlp.fc1")
    layer.set_layout((TOKEN_MAJOR, T, N))
    for path in ("fake", *available_paths()):
        layer.set_kernel(path)
        with pytest.raises(ValueError, match="layer blocks.1.mlp.fc1: .* leading dim 16 is not a multiple of 5"):
            layer(torch.randn(16, T, C))
    # token granularity has no use for the layout
    assert activation_range(x, 0, "token", layout=ActLayout(FRAME_MAJOR, T, N))[0].shape == (13, N, 1, C)


@pytest.mark.parametrize("order, dims", CASES)
@pytest.mark.parametrize("gran", ["token", "sample", "frame", "static"])
def test_every_granularity_is_independent_of_the_other_clips(order: str, dims: int, gran: str) -> None:
    a, _ = laid_out(source(1, s=2), order, dims)
    b, _ = laid_out(source(2, s=1) * 5, order, dims)  # a louder clip must not change the others
    aq = ActQuantizer(C, 8, 4, gran)
    aq.set_layout((order, T, N))
    if gran == "static":
        aq.set_range(torch.full((C,), -2.0), torch.full((C,), 3.0))
    together = aq(torch.cat([a, b]))
    assert torch.equal(together, torch.cat([aq(a), aq(b)]))
    if gran != "static":
        layer = QuantLinear.from_linear(nn.Linear(C, 6), QuantSpec(8, 8, 4, 4, gran))
        layer.set_layout((order, T, N))
        torch.testing.assert_close(layer(torch.cat([a, b])), torch.cat([layer(a), layer(b)]), rtol=0, atol=1e-6)


# --- the integer kernels -------------------------------------------------------------------------------
@pytest.mark.parametrize("path", available_paths())
@pytest.mark.parametrize("order, dims", CASES)
@pytest.mark.parametrize("gran", ["frame", "sample"])
def test_integer_paths_match_fake_quantization(path: str, order: str, dims: int, gran: str) -> None:
    k, n = 64, 40
    g = torch.Generator().manual_seed(3)
    v = torch.randn(S, T, N, k, generator=g) * (1 + 4 * torch.rand(S, T, 1, 1, generator=g))
    x, _ = laid_out(v, order, dims)
    layout = ActLayout(order, T, N)
    w, bias = torch.randn(n, k, generator=g), torch.randn(n, generator=g)
    qw = quantize_weight(w, 4, 32, False)
    iw = IntWeight.from_qweight(qw)
    act = ActQuant(8, 16, False, gran, layout)
    y = int_linear(x, prepare_weight(iw, 16, path), act, bias).reshape(-1, n)
    ref = int_linear_reference(quantize_acts(x, 8, 16, False, gran, layout=layout), iw, bias)
    xg, lo, hi = activation_range(x, 16, gran, layout=layout)
    xf = fake_quantize_range(xg, lo, hi, 8, False).reshape(-1, k)
    fake = nn.functional.linear(xf.double(), qw.dequantize().double(), bias.double()).float()
    scale = ref.abs().max()
    assert (y - ref).abs().max() <= 3e-6 * scale
    assert (y - fake).abs().max() <= 3e-6 * scale
    # the layout matters: without it the same input gives other codes (a check that it reached the path)
    plain = int_linear(x, prepare_weight(iw, 16, path), ActQuant(8, 16, False, gran), bias).reshape(-1, n)
    if not (order == FRAME_MAJOR and gran == "frame"):  # there a frame is a first-dim row anyway
        assert not torch.equal(plain, y)


@pytest.mark.parametrize("path", available_paths())
def test_quant_linear_on_a_kernel_keeps_its_layout(path: str) -> None:
    x, _ = laid_out(source(4), TOKEN_MAJOR, 3)
    layer = QuantLinear.from_linear(nn.Linear(C, 16), QuantSpec(8, 8, 4, 4, "frame"))
    layer.set_layout((TOKEN_MAJOR, T, N))
    want = layer(x)
    layer.set_kernel(path)
    assert layer.act_spec() == ActQuant(8, 4, False, "frame", ActLayout(TOKEN_MAJOR, T, N))
    assert (layer(x) - want).abs().max() <= 1e-5 * want.abs().max()
    layer.to(torch.float32)  # a re-preparation keeps the quantizer (and its layout)
    assert layer.act_quant is not None and layer.act_quant.layout == ActLayout(TOKEN_MAJOR, T, N)
    assert "token-major x4" in repr(layer)
    assert "layout" not in "".join(layer.state_dict())  # architecture knowledge, never stored


@pytest.mark.parametrize("path", ["fake", *available_paths()])
def test_a_granularity_value_and_its_spelling_give_the_same_layer(path: str) -> None:
    x, _ = laid_out(source(5), TOKEN_MAJOR, 3)
    outs, reprs = [], []
    for gran in (PerFrame(), "frame"):
        torch.manual_seed(0)
        layer = QuantLinear.from_linear(nn.Linear(C, 16), QuantSpec(8, 8, 4, 4, gran))
        layer.set_layout((TOKEN_MAJOR, T, N))
        layer.set_kernel(path)
        assert layer.act_quant is not None and layer.act_quant.granularity == PerFrame()
        outs.append(layer(x))
        reprs.append(repr(layer))
        # the quantizer and the kernel's spec built from either directly agree too
        aq = ActQuantizer(C, 8, 4, gran)
        aq.set_layout((TOKEN_MAJOR, T, N))
        outs.append(aq(x))
    assert torch.equal(outs[0], outs[2]) and torch.equal(outs[1], outs[3])
    assert reprs[0] == reprs[1] and "A8, group=4, frame, token-major x4" in reprs[0]
    assert ActQuant(8, 4, False, PerFrame()) == ActQuant(8, 4, False, "frame")
    codes = [quantize_acts(x, 8, 4, False, gran).codes for gran in (PerFrame(), "frame")]
    assert torch.equal(codes[0], codes[1])


def test_an_unknown_granularity_spelling_names_the_known_ones() -> None:
    msg = r"^activation granularity must be one of token, sample, frame, static, got 'row'$"
    x = torch.randn(2, 3, C)
    for make in (
        lambda: ActQuantizer(C, 8, 4, "row"),
        lambda: ActQuant(8, 4, False, "row"),
        lambda: activation_range(x, 4, "row"),
        lambda: quantize_acts(x, 8, 4, False, "row"),
        lambda: shared_rows(x.shape, "row", None),
    ):
        with pytest.raises(ValueError, match=msg):
            make()


# --- a tiny video DiT end to end ----------------------------------------------------------------------
VIDEO = VideoDiTConfig(input_size=8, num_frames=4, patch_size=4, hidden_size=32, depth=2, num_heads=2)


def tiny_video(seed: int = 0) -> VideoDiT:
    torch.manual_seed(seed)
    return randomize(VideoDiT(VIDEO), seed=seed, std=0.2).eval()


def video_inputs(b: int = 2, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, VIDEO.in_channels, VIDEO.num_frames, VIDEO.input_size, VIDEO.input_size, generator=g)
    x = x * torch.linspace(0.2, 4.0, VIDEO.num_frames).view(1, 1, -1, 1, 1)  # quiet and loud frames
    return x, torch.randint(0, 1000, (b,), generator=g), torch.randint(0, VIDEO.num_classes, (b,), generator=g)


def video_recipe(gran: str) -> Recipe:
    return Recipe(QuantSpec(8, 8, 16, 16, gran), include=["adaln"])


def check_layouts(model: nn.Module, want: dict) -> None:
    layers = quant_layers(model)
    assert layers and all(name in want for name in layers)
    for name, layer in layers.items():
        assert layer.act_quant is not None and layer.act_quant.layout == want[name], name


def test_video_dit_frame_quantization_end_to_end(tmp_path: Path) -> None:
    inputs = video_inputs()
    float_model = tiny_video()
    want = get_adapter(float_model).activation_layout(float_model)
    assert {lay.order for lay in want.values()} == {FRAME_MAJOR, TOKEN_MAJOR}
    frame = qdit.quantize(tiny_video(), video_recipe("frame"), kernel="fake")
    check_layouts(frame, want)
    sample = qdit.quantize(tiny_video(), video_recipe("sample"), kernel="fake")
    check_layouts(sample, want)
    with torch.no_grad():
        ref, out_f, out_s = float_model(*inputs), frame(*inputs), sample(*inputs)
    assert torch.isfinite(out_f).all()
    assert not torch.equal(out_f, out_s)  # the option does something on this model
    assert (out_f - ref).norm() < 0.1 * ref.norm()
    # batch independence through the whole model: each clip alone gives the batch's result
    with torch.no_grad():
        alone = torch.cat([frame(*(t[i : i + 1] for t in inputs)) for i in range(2)])
    assert (alone - out_f).abs().max() <= 1e-5 * out_f.abs().max()
    # save / load: the layouts come back from the architecture; fake loads exactly
    qdit.save(frame, tmp_path / "q")
    fake = qdit.load(tmp_path / "q", kernel="fake")
    check_layouts(fake, want)
    with torch.no_grad():
        assert torch.equal(fake(*inputs), out_f)
    fast = qdit.load(tmp_path / "q", kernel="int")
    check_layouts(fast, want)
    check_integer_matches_fake(fast, frame, inputs)


def check_integer_matches_fake(fast: nn.Module, fake: nn.Module, inputs: tuple) -> None:
    """Layer by layer on the inputs each layer sees in ``fake``: equal up to float rounding (end to end a
    last-bit difference may move a later activation across a rounding boundary, so only loosely)."""
    assert all(layer.kernel != "fake" for layer in quant_layers(fast).values())
    seen: dict[str, torch.Tensor] = {}
    hooks = [
        layer.register_forward_hook(lambda m, a, o, n=name: seen.__setitem__(n, a[0]) and None)
        for name, layer in quant_layers(fake).items()
    ]
    with torch.no_grad():
        want = fake(*inputs)
        for h in hooks:
            h.remove()
        for name, layer in quant_layers(fast).items():
            ref = quant_layers(fake)[name](seen[name])
            assert (layer(seen[name]) - ref).abs().max() <= 1e-5 * ref.abs().max(), name
        got = fast(*inputs)
    assert (got - want).abs().max() <= 5e-3 * want.abs().max()


def test_video_dit_kernel_paths_take_frame_granularity() -> None:
    """qdit.quantize(kernel="int") puts every frame-quantized layer on an integer path (no fallback)."""
    model = qdit.quantize(tiny_video(), video_recipe("frame"), kernel="int")
    fake = qdit.quantize(tiny_video(), video_recipe("frame"), kernel="fake")
    check_integer_matches_fake(model, fake, video_inputs(seed=1))


def test_image_model_layers_have_no_layout() -> None:
    from quant_helpers import tiny_dit

    model = qdit.quantize(tiny_dit(), QuantSpec(8, 8, 32, 32, "frame"), kernel="fake")
    assert all(layer.act_quant.layout is None for layer in quant_layers(model).values())
    assert get_adapter(model).activation_layout(model) == {}
