"""The embedded default model: a small class-conditional DiT trained by qdit on Fashion-MNIST."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from qdit.models.dit import DiT, DiTConfig

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
    from qdit.models.checkpoint import load_state_dict_file, load_strict

    model = DiT(EMBEDDED_CONFIG)
    weights = Path(path) if path is not None else asset_path(EMBEDDED_WEIGHTS)
    load_strict(model, load_state_dict_file(weights), source=str(weights))
    return model.eval()
