from __future__ import annotations

import pytest
import torch

from qdit.models.dit import DiT, DiTConfig

TINY = DiTConfig(
    input_size=8, patch_size=2, in_channels=1, hidden_size=64, depth=2, num_heads=2, num_classes=3
)


def randomize(model: torch.nn.Module, seed: int = 0, std: float = 0.05) -> torch.nn.Module:
    """Non-trivial weights (adaLN-Zero init makes a fresh DiT output zeros)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name != "pos_embed":
                p.copy_(torch.randn(p.shape, generator=g) * std)
    return model


@pytest.fixture
def tiny_dit() -> DiT:
    torch.manual_seed(0)
    return randomize(DiT(TINY)).eval()


def pytest_configure(config: pytest.Config) -> None:
    # Tiny tests gain nothing from threads, and on a 2-core machine shared with other jobs extra
    # OpenMP threads spin at barriers; QDIT_TEST_THREADS overrides.
    import os

    torch.set_num_threads(int(os.environ.get("QDIT_TEST_THREADS", "1")))
