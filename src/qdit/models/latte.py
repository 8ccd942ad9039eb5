"""A Latte-style video diffusion transformer: spatial and temporal DiT blocks alternating over
frames × patches, class-conditional with adaLN-Zero and a learned variance.

The layout follows the class-conditional Latte models (variant 1, "interleaved"): even blocks attend over
the patches of one frame, odd blocks over the frames of one patch position; a fixed 1-D sin-cos frame
embedding is added before the first temporal block. Parameter names follow our :class:`~qdit.models.dit.DiT`
(``x_embedder``, ``t_embedder``, ``y_embedder``, ``blocks.{i}``, ``final_layer``), so the spatial blocks
can be warm-started from an image DiT of the same width (:func:`video_from_image`), as Latte does.

Samples are channel-first clips ``[B, C, T, H, W]`` (channel 0 first, like an image's ``[B, C, H, W]``),
so qdit's sampler splits noise and variance channels on dim 1 as for images.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from qdit.errors import QditError
from qdit.models.adapter import DiTAdapter
from qdit.models.dit import (
    DiTBlock,
    FinalLayer,
    LabelEmbedder,
    PatchEmbed,
    TimestepEmbedder,
    init_dit_weights,
    sincos_pos_embed_2d,
)
from qdit.quant.activation import FRAME_MAJOR, TOKEN_MAJOR, ActLayout


@dataclass(frozen=True)
class VideoDiTConfig:
    input_size: int = 32
    num_frames: int = 8
    patch_size: int = 4
    in_channels: int = 1
    hidden_size: int = 256
    depth: int = 8  # blocks in all; even ones spatial, odd ones temporal
    num_heads: int = 4
    mlp_ratio: float = 4.0
    class_dropout_prob: float = 0.1
    num_classes: int = 10
    learn_sigma: bool = True

    def __post_init__(self) -> None:
        if self.input_size % self.patch_size:
            raise ValueError(f"input_size {self.input_size} is not divisible by patch_size {self.patch_size}")
        if self.hidden_size % self.num_heads or self.hidden_size % 4:
            raise ValueError(
                f"hidden_size {self.hidden_size} must be a multiple of 4 and of num_heads {self.num_heads}"
            )
        if self.depth < 2 or self.depth % 2:
            raise ValueError(f"depth counts spatial and temporal blocks in pairs: an even number >= 2, got {self.depth}")
        if self.num_frames < 1:
            raise ValueError(f"num_frames must be >= 1, got {self.num_frames}")

    @property
    def out_channels(self) -> int:
        return self.in_channels * 2 if self.learn_sigma else self.in_channels

    @property
    def grid(self) -> int:
        return self.input_size // self.patch_size

    @property
    def num_patches(self) -> int:
        return self.grid**2

    def to_dict(self) -> dict:
        return asdict(self)


def sincos_embed_1d(dim: int, length: int) -> torch.Tensor:
    """Fixed 1-D sin-cos embedding of positions ``0..length-1``, ``[length, dim]``."""
    omega = 1.0 / 10000 ** (torch.arange(dim // 2, dtype=torch.float64) / (dim / 2.0))
    out = torch.arange(length, dtype=torch.float64)[:, None] * omega[None]
    return torch.cat([torch.sin(out), torch.cos(out)], dim=1).float()


class VideoDiT(nn.Module):
    """``forward(x [B, C, T, H, W], t [B], y [B]) -> [B, out_channels, T, H, W]``."""

    def __init__(self, config: VideoDiTConfig, init_weights: bool = True) -> None:
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
        self.pos_embed = nn.Parameter(sincos_pos_embed_2d(c.hidden_size, c.grid)[None], requires_grad=False)
        self.temp_embed = nn.Parameter(sincos_embed_1d(c.hidden_size, c.num_frames)[None], requires_grad=False)
        self.blocks = nn.ModuleList([DiTBlock(c.hidden_size, c.num_heads, c.mlp_ratio) for _ in range(c.depth)])
        self.final_layer = FinalLayer(c.hidden_size, c.patch_size, c.out_channels)
        if init_weights:
            self.initialize_weights()

    def initialize_weights(self) -> None:
        init_dit_weights(self)

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        b, _, f, hgt, wid = x.shape
        g, p = self.config.grid, self.config.patch_size
        if f != self.config.num_frames or hgt != self.config.input_size or wid != self.config.input_size:
            raise ValueError(
                f"expected clips of {self.config.num_frames} frames of {self.config.input_size}x"
                f"{self.config.input_size}, got {f} frames of {hgt}x{wid}"
            )
        frames = x.transpose(1, 2).reshape(b * f, x.shape[1], hgt, wid)
        h = self.x_embedder(frames) + self.pos_embed  # [B*T, N, D], frame-major
        n, d = h.shape[1], h.shape[2]
        cond = self.t_embedder(t) + self.y_embedder(y, drop=self.training)
        cond_s = cond.repeat_interleave(f, dim=0)  # one row per frame
        cond_t = cond.repeat_interleave(n, dim=0)  # one row per patch position
        for i, block in enumerate(self.blocks):
            if i % 2 == 0:
                h = block(h, cond_s)
            else:
                ht = h.reshape(b, f, n, d).transpose(1, 2).reshape(b * n, f, d)
                if i == 1:
                    ht = ht + self.temp_embed
                ht = block(ht, cond_t)
                h = ht.reshape(b, n, f, d).transpose(1, 2).reshape(b * f, n, d)
        out = self.final_layer(h, cond_s)  # [B*T, N, p*p*C_out]
        co = self.out_channels
        out = out.reshape(b, f, g, g, p, p, co)
        return torch.einsum("bfhwpqc->bcfhpwq", out).reshape(b, co, f, g * p, g * p)


def video_from_image(video: VideoDiT, image_state: dict[str, torch.Tensor]) -> list[str]:
    """Warm-start ``video`` from an image DiT state dict of the same width (Latte's initialisation): the
    embedders, the final layer and the spatial blocks (image block ``k`` -> video block ``2k``) are copied;
    temporal blocks keep their adaLN-Zero start (the identity). Returns the names copied."""
    own = video.state_dict()
    copied: list[str] = []
    with torch.no_grad():
        for key, value in image_state.items():
            target = key
            if key.startswith("blocks."):
                _, idx, rest = key.split(".", 2)
                target = f"blocks.{2 * int(idx)}.{rest}"
            if key == "pos_embed":  # fixed sin-cos, made for this model's own grid
                continue
            if target not in own:
                raise ValueError(
                    f"cannot warm-start from {key}: the video model has no {target} (an image DiT of depth "
                    f"d fills the spatial blocks of a video DiT of depth 2d)"
                )
            if own[target].shape != value.shape:
                raise ValueError(f"cannot warm-start {target}: shape {tuple(value.shape)} vs {tuple(own[target].shape)}")
            own[target].copy_(value)
            copied.append(target)
    return copied


def num_params(model: nn.Module) -> int:
    return sum(math.prod(p.shape) for p in model.parameters())


# --- the adapter ------------------------------------------------------------------------------------
# FRAME_MAJOR: x is [S*T, N, C], row s*T + t is frame t of clip s; TOKEN_MAJOR: x is [S*N, T, C], row
# s*N + n is patch n of clip s, dim 1 the frames (defined with the range math in qdit.quant.activation)


class VideoDiTAdapter(DiTAdapter):
    """:class:`VideoDiT`: samples are clips ``(C, T, H, W)``; spatial blocks see frame-major activations and
    temporal blocks token-major ones (:meth:`activation_layout`)."""

    arch = "video-dit"

    def handles(self, model: nn.Module) -> bool:
        return isinstance(model, VideoDiT)

    def block_names(self, model: nn.Module) -> None:
        return None  # spatial and temporal blocks take differently laid-out inputs

    def describe(self, model: nn.Module) -> dict[str, Any]:
        desc = super().describe(model)
        desc["arch"] = self.arch
        return desc

    def build(self, description: dict[str, Any]) -> nn.Module:
        config = description.get("config")
        if not isinstance(config, dict):
            raise QditError("model description has no video DiT config")
        try:
            cfg = VideoDiTConfig(**config)
        except (TypeError, ValueError) as exc:
            raise QditError(f"bad video DiT config in model description: {exc}") from None
        model = VideoDiT(cfg, init_weights=False)
        if "source" in description:
            object.__setattr__(model, "qdit_source", description["source"])
        return model

    def image_shape(self, model: nn.Module) -> tuple[int, int, int, int]:  # type: ignore[override]
        cfg = model.config  # type: ignore[union-attr]
        return (int(cfg.in_channels), int(cfg.num_frames), int(cfg.input_size), int(cfg.input_size))

    def tokens_per_sample(self, model: nn.Module) -> int:
        return self.num_frames(model) * int(model.config.num_patches)  # type: ignore[union-attr]

    def num_frames(self, model: nn.Module) -> int:
        return int(model.config.num_frames)  # type: ignore[union-attr]

    def activation_layout(self, model: nn.Module) -> dict[str, ActLayout]:
        """``{linear name: (layout, frames, patches)}``: how the leading dims of each linear's input map to
        clips, frames and tokens (:data:`FRAME_MAJOR` or :data:`TOKEN_MAJOR`). The adaLN linears of the
        spatial blocks and the final layer see one row per clip-and-frame, those of the temporal blocks one
        per clip-and-patch (2-D inputs). The timestep embedder's linears see one row per clip (no layout
        needed: the first dim is the clip)."""
        frames = self.num_frames(model)
        patches = int(model.config.num_patches)  # type: ignore[union-attr]
        out: dict[str, ActLayout] = {}
        for name in self.linear_layers(model):
            if name.startswith("blocks."):
                idx = int(name.split(".")[1])
                out[name] = ActLayout(FRAME_MAJOR if idx % 2 == 0 else TOKEN_MAJOR, frames, patches)
            elif name.startswith("final_layer."):
                out[name] = ActLayout(FRAME_MAJOR, frames, patches)
        return out
