"""A diffusion transformer (DiT) with adaLN-Zero blocks.

Parameter names and shapes follow the public facebookresearch/DiT state-dict layout, so an official
``DiT-XL-2-256x256.pt`` loads strictly into :class:`DiT`. The code itself is our own.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from qdit.kernels.linear import AdaNorm
from qdit.nn.quant_linear import QuantLinear


@dataclass(frozen=True)
class DiTConfig:
    input_size: int = 32
    patch_size: int = 2
    in_channels: int = 4
    hidden_size: int = 1152
    depth: int = 28
    num_heads: int = 16
    mlp_ratio: float = 4.0
    class_dropout_prob: float = 0.1
    num_classes: int = 1000
    learn_sigma: bool = True

    def __post_init__(self) -> None:
        if self.input_size % self.patch_size:
            raise ValueError(f"input_size {self.input_size} is not divisible by patch_size {self.patch_size}")
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}")
        if self.hidden_size % 4:
            raise ValueError("hidden_size must be a multiple of 4 for the 2-D sin-cos position embedding")

    @property
    def out_channels(self) -> int:
        return self.in_channels * 2 if self.learn_sigma else self.in_channels

    @property
    def num_patches(self) -> int:
        return (self.input_size // self.patch_size) ** 2

    def to_dict(self) -> dict:
        return asdict(self)


_SIZES = {
    "XL": dict(depth=28, hidden_size=1152, num_heads=16),
    "L": dict(depth=24, hidden_size=1024, num_heads=16),
    "B": dict(depth=12, hidden_size=768, num_heads=12),
    "S": dict(depth=12, hidden_size=384, num_heads=6),
}


def dit_config(name: str, **overrides: object) -> DiTConfig:
    """Config by official name, e.g. ``"DiT-XL/2"`` (``"DiT-XL-2"`` is accepted too)."""
    key = name.replace("DiT-", "").replace("-", "/")
    try:
        size, patch = key.split("/")
        base = dict(_SIZES[size], patch_size=int(patch))
    except (KeyError, ValueError):
        names = ", ".join(f"DiT-{s}/{p}" for s in _SIZES for p in (2, 4, 8))
        raise ValueError(f"unknown DiT architecture {name!r}; known: {names}") from None
    base.update(overrides)
    return DiTConfig(**base)  # type: ignore[arg-type]


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of (possibly fractional) timesteps: ``[cos(t w), sin(t w)]``."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


def sincos_pos_embed_2d(dim: int, grid: int) -> torch.Tensor:
    """Fixed 2-D sin-cos position embedding, ``[grid*grid, dim]``.

    Token ``k`` sits at row ``k // grid`` and column ``k % grid``; the first half of the channels
    encodes the column and the second half the row (the official DiT ordering).
    """

    def one_axis(d: int, pos: torch.Tensor) -> torch.Tensor:
        omega = 1.0 / 10000 ** (torch.arange(d // 2, dtype=torch.float64) / (d / 2.0))
        out = pos.reshape(-1, 1).double() * omega[None]
        return torch.cat([torch.sin(out), torch.cos(out)], dim=1)

    coords = torch.arange(grid, dtype=torch.float64)
    rows = coords.repeat_interleave(grid)
    cols = coords.repeat(grid)
    return torch.cat([one_axis(dim // 2, cols), one_axis(dim // 2, rows)], dim=1).float()


class PatchEmbed(nn.Module):
    def __init__(self, patch: int, in_ch: int, dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_ch, dim, kernel_size=patch, stride=patch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class TimestepEmbedder(nn.Module):
    def __init__(self, dim: int, freq_dim: int = 256) -> None:
        super().__init__()
        self.freq_dim = freq_dim
        self.mlp = nn.Sequential(nn.Linear(freq_dim, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        emb = timestep_embedding(t, self.freq_dim)
        return self.mlp(emb.to(self.mlp[0].weight.dtype))


class LabelEmbedder(nn.Module):
    """Class embedding with one extra row, the null class used for classifier-free guidance."""

    def __init__(self, num_classes: int, dim: int, dropout_prob: float) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.dropout_prob = dropout_prob
        self.embedding_table = nn.Embedding(num_classes + int(dropout_prob > 0), dim)

    def forward(self, y: torch.Tensor, drop: bool = False) -> torch.Tensor:
        if drop and self.dropout_prob > 0:
            mask = torch.rand(y.shape[0], device=y.device) < self.dropout_prob
            y = torch.where(mask, torch.full_like(y, self.num_classes), y)
        return self.embedding_table(y)


def gated_linear(
    linear: nn.Module, h: torch.Tensor, residual: torch.Tensor | None, gate: torch.Tensor | None
) -> torch.Tensor:
    """``linear(h)``, or with ``residual`` a DiT block's gated residual branch ``residual +
    gate.unsqueeze(1) * linear(h)``: a quantized linear on an integer kernel computes that itself (the
    kernel adds it before writing the output: no pass over memory for the scaling and the sum). On the
    fake-quantization path (calibration, the search's probes and hooks) the block computes it, so a
    layer's output is always its product."""
    if residual is None or gate is None:
        return linear(h)
    if isinstance(linear, QuantLinear) and linear.takes_gated_residual() and h.shape[0] > 0:
        return linear(h, residual=residual, gate=gate)
    return residual + gate.unsqueeze(1) * linear(h)


@dataclass(frozen=True)
class AdaLNInput:
    """A block's ``modulate(norm(x), shift, scale)``, not computed yet: a quantized linear on an integer
    kernel computes it while it quantizes its input (:func:`ada_linear`); anything else gets
    :meth:`value`. ``norm`` is a LayerNorm without affine over the last dim."""

    x: torch.Tensor
    norm: nn.LayerNorm
    shift: torch.Tensor
    scale: torch.Tensor

    @property
    def shape(self) -> torch.Size:
        return self.x.shape

    def value(self) -> torch.Tensor:
        return modulate(self.norm(self.x), self.shift, self.scale)


def ada_linear(linear: nn.Module, h: torch.Tensor | AdaLNInput) -> torch.Tensor:
    """``linear(h)``, with an :class:`AdaLNInput` ``h`` computed by the layer itself where it can (a
    quantized linear on an integer kernel: :class:`qdit.kernels.linear.AdaNorm`), else by the block. On
    the fake-quantization path (calibration, the search's probes and hooks) the layer always gets the
    modulated tensor."""
    if isinstance(h, torch.Tensor):
        return linear(h)
    if isinstance(linear, QuantLinear) and linear.takes_ada_norm() and h.x.shape[0] > 0:
        return linear(h.x, ada_norm=AdaNorm(h.shift, h.scale, h.norm.eps))
    return linear(h.value())


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(
        self,
        x: torch.Tensor | AdaLNInput,
        residual: torch.Tensor | None = None,
        gate: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The attention branch; with ``residual`` and ``gate``, ``residual + gate * branch`` (:func:`gated_linear`)."""
        b, n, c = x.shape
        qkv = ada_linear(self.qkv, x).reshape(b, n, 3, self.num_heads, c // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        out = F.scaled_dot_product_attention(q, k, v)
        return gated_linear(self.proj, out.transpose(1, 2).reshape(b, n, c), residual, gate)


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU(approximate="tanh")
        self.fc2 = nn.Linear(hidden, dim)

    def forward(
        self,
        x: torch.Tensor | AdaLNInput,
        residual: torch.Tensor | None = None,
        gate: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The MLP branch; with ``residual`` and ``gate``, ``residual + gate * branch`` (:func:`gated_linear`)."""
        return gated_linear(self.fc2, self.act(ada_linear(self.fc1, x)), residual, gate)


class DiTBlock(nn.Module):
    def __init__(self, dim: int, num_heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift1, scale1, gate1, shift2, scale2, gate2 = self.adaLN_modulation(c).chunk(6, dim=1)
        x = self.attn(AdaLNInput(x, self.norm1, shift1, scale1), residual=x, gate=gate1)
        return self.mlp(AdaLNInput(x, self.norm2, shift2, scale2), residual=x, gate=gate2)


class FinalLayer(nn.Module):
    def __init__(self, dim: int, patch: int, out_ch: int) -> None:
        super().__init__()
        self.norm_final = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(dim, patch * patch * out_ch)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 2 * dim))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=1)
        return ada_linear(self.linear, AdaLNInput(x, self.norm_final, shift, scale))


def init_dit_weights(model: nn.Module) -> None:
    """DiT's initialisation (shared by the video DiT, which has the same embedders, blocks and final layer):
    xavier linears, small embeddings, and adaLN-Zero, so every residual branch and the output start at 0."""
    for m in model.modules():
        if isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            nn.init.zeros_(m.bias)
    w = model.x_embedder.proj.weight
    nn.init.xavier_uniform_(w.view(w.shape[0], -1))
    nn.init.zeros_(model.x_embedder.proj.bias)
    nn.init.normal_(model.y_embedder.embedding_table.weight, std=0.02)
    nn.init.normal_(model.t_embedder.mlp[0].weight, std=0.02)
    nn.init.normal_(model.t_embedder.mlp[2].weight, std=0.02)
    for block in model.blocks:
        nn.init.zeros_(block.adaLN_modulation[-1].weight)
        nn.init.zeros_(block.adaLN_modulation[-1].bias)
    for p in (*model.final_layer.adaLN_modulation[-1].parameters(), *model.final_layer.linear.parameters()):
        nn.init.zeros_(p)


class DiT(nn.Module):
    """Class-conditional diffusion transformer: ``forward(x, t, y) -> [N, out_channels, H, W]``."""

    def __init__(self, config: DiTConfig, init_weights: bool = True) -> None:
        super().__init__()
        self.config = config
        c = config
        self.in_channels = c.in_channels
        self.out_channels = c.out_channels
        self.learn_sigma = c.learn_sigma
        self.num_classes = c.num_classes
        self.x_embedder = PatchEmbed(c.patch_size, c.in_channels, c.hidden_size)
        self.t_embedder = TimestepEmbedder(c.hidden_size)
        self.y_embedder = LabelEmbedder(c.num_classes, c.hidden_size, c.class_dropout_prob)
        pos = sincos_pos_embed_2d(c.hidden_size, c.input_size // c.patch_size)
        self.pos_embed = nn.Parameter(pos.unsqueeze(0), requires_grad=False)
        self.blocks = nn.ModuleList(
            [DiTBlock(c.hidden_size, c.num_heads, c.mlp_ratio) for _ in range(c.depth)]
        )
        self.final_layer = FinalLayer(c.hidden_size, c.patch_size, c.out_channels)
        if init_weights:  # skip when a checkpoint will overwrite every tensor anyway
            self.initialize_weights()

    def initialize_weights(self) -> None:
        init_dit_weights(self)

    def unpatchify(self, x: torch.Tensor) -> torch.Tensor:
        p, ch = self.config.patch_size, self.out_channels
        h = w = int(x.shape[1] ** 0.5)
        x = x.reshape(x.shape[0], h, w, p, p, ch)
        return torch.einsum("nhwpqc->nchpwq", x).reshape(x.shape[0], ch, h * p, w * p)

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        h = self.x_embedder(x) + self.pos_embed
        cond = self.t_embedder(t) + self.y_embedder(y, drop=self.training)
        for block in self.blocks:
            h = block(h, cond)
        return self.unpatchify(self.final_layer(h, cond))
