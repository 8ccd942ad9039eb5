"""Shared helpers for the quantization tests: tiny random DiTs, numpy reference quantizers, one CPU thread."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator

import numpy as np
import pytest
import torch

from conftest import TINY, randomize
from qdit.models.dit import DiT


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Iterator[None]:
    """Tiny tensors run far faster on one thread than on two contended ones (shared 2-core machines)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def run_qdit(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """``python -m qdit ARGS`` on one thread, output captured."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run(
        [sys.executable, "-m", "qdit", *args], capture_output=True, text=True, env=env, timeout=timeout
    )


def tiny_dit(seed: int = 0) -> DiT:
    torch.manual_seed(seed)
    return randomize(DiT(TINY), seed=seed).eval()


def dit_inputs(n: int = 3, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, TINY.in_channels, TINY.input_size, TINY.input_size, generator=g)
    t = torch.randint(0, 1000, (n,), generator=g)
    y = torch.randint(0, TINY.num_classes, (n,), generator=g)
    return x, t, y


def ref_quant_group(
    v: np.ndarray, lo: np.float32, hi: np.float32, bits: int, symmetric: bool
) -> tuple[np.ndarray, np.ndarray]:
    """One group ``v`` quantized with the range ``[lo, hi]`` by the SPEC formulas (float32 numpy)."""
    if symmetric:
        qmax = 2 ** (bits - 1) - 1
        s = np.float32(max(abs(lo), abs(hi))) / np.float32(qmax)
        s = np.float32(1) if s == 0 else s
        q = np.clip(np.round(v / s), -(2 ** (bits - 1)), qmax).astype(np.float32)
        return q * s, q
    qmax = 2**bits - 1
    s = (np.float32(hi) - np.float32(lo)) / np.float32(qmax)
    s = np.float32(1) if s == 0 else s
    z = np.float32(np.clip(np.round(-np.float32(lo) / s), 0, qmax))
    q = np.clip(np.round(v / s) + z, 0, qmax).astype(np.float32)
    return (q - z) * s, q


def ref_fake_quant(x: np.ndarray, bits: int, group: int, symmetric: bool) -> tuple[np.ndarray, np.ndarray]:
    """The SPEC formulas written out with loops in float32 numpy; returns (x_hat, integer codes)."""
    x = np.asarray(x, dtype=np.float32)
    rows, width = x.shape
    g = group or width
    out = np.empty_like(x)
    codes = np.empty_like(x)
    for r in range(rows):
        for start in range(0, width, g):
            v = x[r, start : start + g]
            lo = np.float32(min(v.min(), np.float32(0)))
            hi = np.float32(max(v.max(), np.float32(0)))
            out[r, start : start + g], codes[r, start : start + g] = ref_quant_group(
                v, lo, hi, bits, symmetric
            )
    return out, codes
