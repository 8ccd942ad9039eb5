"""The embedded default model: a small class-conditional DiT trained by qdit on Fashion-MNIST."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from qdit.errors import QditError
from qdit.models.dit import DiT, DiTConfig
from qdit.models.latte import VideoDiT, VideoDiTConfig

EMBEDDED_CONFIG = DiTConfig(
    input_size=28,
    patch_size=4,
    in_channels=1,
    hidden_size=256,
    depth=4,
    num_heads=4,
    mlp_ratio=4.0,
    class_dropout_prob=0.1,
    num_classes=10,
    learn_sigma=True,
)

EMBEDDED_WEIGHTS = "embedded_dit.safetensors"


def asset_path(name: str) -> Path:
    return Path(str(resources.files("qdit") / "assets" / name))


def load_embedded(path: str | Path | None = None) -> DiT:
    """The embedded Fashion-MNIST DiT in eval mode, from the weights shipped with the package."""
    from qdit.models.state_dict import load_state_dict_file, load_strict

    model = DiT(EMBEDDED_CONFIG)
    weights = Path(path) if path is not None else asset_path(EMBEDDED_WEIGHTS)
    load_strict(model, load_state_dict_file(weights), source=str(weights))
    return model.eval()


EMBEDDED_VIDEO_CONFIG = VideoDiTConfig(
    input_size=32,
    num_frames=8,
    patch_size=4,
    in_channels=1,
    hidden_size=256,
    depth=8,
    num_heads=4,
    mlp_ratio=4.0,
    class_dropout_prob=0.1,
    num_classes=10,
    learn_sigma=True,
)

EMBEDDED_VIDEO_WEIGHTS = "embedded_video_dit.safetensors"


def load_embedded_video(path: str | Path | None = None) -> VideoDiT:
    """The embedded moving-Fashion-MNIST video DiT in eval mode (weights stored in fp16, loaded as fp32).

    Reads only; a missing weights file is a one-line :class:`QditError` (the asset is trained separately,
    ``python -m qdit.train --video``, and may be absent from a checkout)."""
    from qdit.models.state_dict import load_state_dict_file, load_strict

    weights = Path(path) if path is not None else asset_path(EMBEDDED_VIDEO_WEIGHTS)
    if not weights.is_file():
        what = "the embedded video model is not installed" if path is None else "video DiT weights not found"
        raise QditError(f"{what}: {weights} is missing")
    model = VideoDiT(EMBEDDED_VIDEO_CONFIG, init_weights=False)
    state = {k: v.float() for k, v in load_state_dict_file(weights).items()}
    load_strict(model, state, source=str(weights))
    return model.eval()
