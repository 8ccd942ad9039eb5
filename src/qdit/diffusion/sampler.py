"""DDPM and DDIM (eta = 0) sampling with classifier-free guidance and per-sample seeds.

Samples are channel-first: images (or latents) ``(C, H, W)`` and clips ``(C, T, H, W)`` go through the
same code, which touches only the batch dim and the channel dim 1. Sample ``i`` of a run with seed ``s`` draws all of its noise from its own generator, seeded from
``(s, i)``; its label is ``labels[i]``. So a sample does not depend on the batch it was drawn in, on
the batch size, or on the rank that drew it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from qdit.diffusion.distributed import DistContext, gather_to_main, shard
from qdit.diffusion.schedule import GaussianDiffusion
from qdit.errors import QditError
from qdit.models.adapter import get_adapter
from qdit.quant.finite import NonFiniteError, check_finite_number

ModelFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def sample_seed(seed: int, index: int) -> int:
    """A 63-bit seed for sample ``index`` of a run with ``seed`` (independent streams per sample)."""
    state = np.random.SeedSequence([seed, index]).generate_state(1, dtype=np.uint64)
    return int(state[0]) & ((1 << 63) - 1)


class SampleNoise:
    """Per-sample noise streams for a batch of sample indices."""

    def __init__(self, seed: int, indices: Sequence[int], device: torch.device | str = "cpu") -> None:
        self.generators = [torch.Generator("cpu").manual_seed(sample_seed(seed, i)) for i in indices]
        self.device = device

    def randn(self, shape: Sequence[int]) -> torch.Tensor:
        out = torch.stack([torch.randn(tuple(shape), generator=g) for g in self.generators])
        return out.to(self.device)


def guided(
    model: nn.Module | ModelFn,
    cfg_scale: float,
    null_class: int,
    in_channels: int,
    cfg_channels: int | None = None,
) -> ModelFn:
    """Classifier-free guidance as a model function: one batched call on [cond; uncond].

    The one rule for guidance: the first ``cfg_channels`` channels of the noise prediction (default:
    all ``in_channels``) are guided, ``uncond + cfg_scale * (cond - uncond)``; the other channels,
    and any learned variance channels, come from the conditional half. ``cfg_channels=3`` on a
    4-channel latent DiT is official DiT's ``forward_with_cfg`` (and so Q-DiT's FID numbers).
    """
    guided_channels = check_cfg_channels(cfg_channels, in_channels)
    if cfg_scale == 1.0:
        return model

    def fn(x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        out = model(torch.cat([x, x]), torch.cat([t, t]), torch.cat([y, torch.full_like(y, null_class)]))
        cond, uncond = out.chunk(2)
        c = guided_channels
        eps = uncond[:, :c] + cfg_scale * (cond[:, :c] - uncond[:, :c])
        return torch.cat([eps, cond[:, c:]], dim=1)

    return fn


def check_cfg_channels(value: int | None, in_channels: int | None = None, name: str = "cfg channels") -> int:
    """The guided channels: ``None`` = all ``in_channels``; else an integer in ``1..in_channels``."""
    if value is None:
        if in_channels is None:
            raise ValueError(f"{name}: the number of channels is unknown")
        return in_channels
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if in_channels is not None and value > in_channels:
        raise ValueError(f"{name} is {value}, but the model predicts noise for {in_channels} channels")
    return value


def check_cfg_scale(value: float, name: str = "cfg scale") -> float:
    """The one rule for a classifier-free guidance scale: a finite number >= 1 (1 = no guidance)."""
    v = check_finite_number(value, name)
    if v < 1.0:
        raise ValueError(f"{name} must be >= 1, got {value}")
    return v


class NonFiniteSampleError(NonFiniteError):
    """The reverse process produced NaN or Inf (a broken model): stopped instead of writing images."""


@dataclass
class SamplerConfig:
    steps: int = 50
    method: str = "ddim"  # "ddim" (eta 0) or "ddpm"
    cfg_scale: float = 1.5
    clip_denoised: bool = False
    cfg_channels: int | None = None  # guided channels (None: all; 3: official DiT's forward_with_cfg)

    def __post_init__(self) -> None:
        if self.method not in ("ddim", "ddpm"):
            raise ValueError(f"unknown sampling method {self.method!r}; use 'ddim' or 'ddpm'")
        if self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}")
        check_cfg_scale(self.cfg_scale)
        if self.cfg_channels is not None:
            check_cfg_channels(self.cfg_channels)


def reverse_step(
    model_fn: ModelFn,
    diffusion: GaussianDiffusion,
    x: torch.Tensor,
    i: int,
    labels: torch.Tensor,
    method: str,
    clip_denoised: bool,
    in_channels: int,
    z: torch.Tensor | None,
) -> torch.Tensor:
    """One step of the reverse process: ``x_t`` (``t = i``) to ``x_{t-1}``; ``z`` is the step's noise
    (DDPM only)."""
    c = in_channels
    t = torch.full((x.shape[0],), i, dtype=torch.long, device=x.device)
    out = model_fn(x, diffusion.model_timesteps(t), labels)
    eps = out[:, :c]
    x0 = diffusion.predict_x0(x, t, eps)
    if clip_denoised:
        x0 = x0.clamp(-1, 1)
    if method == "ddim":
        eps = diffusion.predict_eps(x, t, x0)
        acp_prev = diffusion._take(diffusion.alphas_cumprod_prev, t, x)
        return acp_prev.sqrt() * x0 + (1 - acp_prev).sqrt() * eps
    mean, _ = diffusion.q_posterior(x0, x, t)
    var_out = out[:, c:] if out.shape[1] > c else None
    log_var = diffusion.model_log_variance(t, var_out)
    assert z is not None
    return mean + (torch.exp(0.5 * log_var) * z if i > 0 else 0.0)


def reverse_process(
    model_fn: ModelFn,
    diffusion: GaussianDiffusion,
    shape: Sequence[int],
    labels: torch.Tensor,
    noise: SampleNoise,
    method: str = "ddim",
    clip_denoised: bool = False,
    in_channels: int | None = None,
    step_callback: Callable[[int, torch.Tensor], None] | None = None,
    check_finite: bool = False,
    backward: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> torch.Tensor:
    """Run the reverse process on an already respaced ``diffusion``; returns x_0 ``[B, *shape]`` (``shape``
    the sample shape, channels first).

    Autograd is left as it is; :func:`sample_batch` is the same without gradients. With ``check_finite``
    a non-finite latent stops the run with a :class:`NonFiniteSampleError` naming the step (instead of
    clamping NaN into black images).

    ``backward``: backpropagate through the whole process, one step at a time (the search's sensitivity
    pass). The steps run without a graph, keeping only each step's input; ``backward(x_0)`` returns the
    gradient of the caller's loss with respect to ``x_0``; then each step is run again with its graph,
    from the last to the first, and backpropagated from the gradient of its output, which gives the
    gradient of its input. The gradients are those of one backward pass through the whole graph, with
    one step's graph in memory instead of all of them; forward hooks run twice per step (first without
    a graph, then in reverse step order with one), ``step_callback`` and ``check_finite`` only in the
    first pass."""
    c = in_channels if in_channels is not None else shape[0]
    x = noise.randn(shape)
    inputs: list[tuple[int, torch.Tensor, torch.Tensor | None]] = []
    with torch.no_grad() if backward is not None else contextlib.nullcontext():
        for i in reversed(range(diffusion.num_timesteps)):
            z = noise.randn(shape) if method != "ddim" else None  # the model does not draw noise
            if backward is not None:
                inputs.append((i, x, z))
            x = reverse_step(model_fn, diffusion, x, i, labels, method, clip_denoised, c, z)
            if check_finite and not bool(torch.isfinite(x).all()):
                step = diffusion.num_timesteps - i
                raise NonFiniteSampleError(
                    f"sampling diverged: the latent holds NaN or Inf after step {step} of {diffusion.num_timesteps} "
                    "(the model produced non-finite values; its weights or quantization are broken)"
                )
            if step_callback is not None:
                step_callback(i, x)
    if backward is not None:
        grad = backward(x.detach())
        for i, x_in, z in reversed(inputs):
            x_in = x_in.detach().requires_grad_(True)
            with torch.enable_grad():
                out = reverse_step(model_fn, diffusion, x_in, i, labels, method, clip_denoised, c, z)
            out.backward(grad)
            assert x_in.grad is not None
            grad = x_in.grad
    return x


sample_batch = torch.no_grad()(reverse_process)


PRECISIONS = ("fp32", "bf16")


def precision_context(
    precision: str, device: torch.device | str = "cpu"
) -> contextlib.AbstractContextManager:
    """``fp32``: nothing; ``bf16``: autocast the model's matmuls to bfloat16 (AMX / tensor cores)."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; use one of {', '.join(PRECISIONS)}")
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=torch.bfloat16)


def default_labels(num: int, num_classes: int) -> np.ndarray:
    """Balanced labels ``i % num_classes``: every class equally often, independent of batching."""
    return (np.arange(num) % num_classes).astype(np.int64)


def iter_batches(indices: Sequence[int], batch_size: int) -> Iterator[list[int]]:
    for start in range(0, len(indices), batch_size):
        yield list(indices[start : start + batch_size])


def iter_samples(
    model: nn.Module | ModelFn,
    sample_shape: Sequence[int],
    num_classes: int,
    labels: Sequence[int] | np.ndarray,
    seed: int,
    config: SamplerConfig,
    indices: Sequence[int] | None = None,
    batch_size: int = 64,
    device: torch.device | str = "cpu",
    diffusion: GaussianDiffusion | None = None,
    grad: bool = False,
    on_step: Callable[[int], None] | None = None,
    check_finite: bool = False,
    backward: Callable[[list[int], torch.Tensor], torch.Tensor] | None = None,
) -> Iterator[tuple[list[int], torch.Tensor]]:
    """The sampling loop: yields ``(indices of the batch, x_0 of the batch)`` batch by batch, in model space.

    ``labels[k]`` is the class of sample ``indices[k]`` (default indices: all of ``labels``). ``grad``:
    the reverse process keeps autograd (the caller backpropagates each batch before the next one is
    drawn); otherwise it builds no graph. ``backward``: instead, ``backward(indices, x_0)`` returns the
    gradient of the caller's loss with respect to the batch's ``x_0``, and the batch's reverse process
    is backpropagated from it step by step, one step's graph at a time (:func:`reverse_process`), before
    the batch is yielded. (Both are the search's sensitivity pass.) ``on_step(batch size)`` is called
    after every step. ``check_finite``: see :func:`reverse_process`.
    """
    if grad and backward is not None:
        raise ValueError("give grad or backward, not both")
    labels = np.asarray(labels, dtype=np.int64)
    if indices is None:
        indices = list(range(len(labels)))
    if len(indices) != len(labels):
        raise ValueError("labels and indices must have the same length")
    base = diffusion if diffusion is not None else GaussianDiffusion.linear()
    spaced = base.respaced(config.steps)
    fn = guided(model, config.cfg_scale, num_classes, sample_shape[0], config.cfg_channels)
    pos = 0
    for chunk in iter_batches(list(indices), batch_size):
        y = torch.from_numpy(labels[pos : pos + len(chunk)]).to(device)
        pos += len(chunk)
        noise = SampleNoise(seed, chunk, device)
        cb = None
        if on_step is not None:

            def cb(i: int, x: torch.Tensor, n: int = len(chunk)) -> None:
                on_step(n)

        step_back = None
        if backward is not None:

            def step_back(x0: torch.Tensor, chunk: list[int] = chunk) -> torch.Tensor:
                return backward(chunk, x0)

        with torch.set_grad_enabled(grad):
            x0 = reverse_process(
                fn, spaced, sample_shape, y, noise, config.method, config.clip_denoised, sample_shape[0], cb,
                check_finite, step_back,
            )  # fmt: skip
        yield chunk, x0


@torch.no_grad()
def generate(
    model: nn.Module | ModelFn,
    sample_shape: Sequence[int],
    num_classes: int,
    labels: Sequence[int] | np.ndarray,
    seed: int,
    config: SamplerConfig,
    indices: Sequence[int] | None = None,
    batch_size: int = 64,
    device: torch.device | str = "cpu",
    diffusion: GaussianDiffusion | None = None,
    progress: bool = False,
    progress_desc: str = "sampling",
    check_finite: bool = False,
) -> torch.Tensor:
    """Sample ``indices`` (default: all of ``labels``); returns ``[N, *sample_shape]`` in model space: images
    ``[N, C, H, W]`` for a sample shape ``(C, H, W)``, clips ``[N, C, T, H, W]`` for ``(C, T, H, W)``.

    ``labels[k]`` is the class of sample ``indices[k]``. ``check_finite``: see :func:`reverse_process`.
    """
    n_samples = len(labels) if indices is None else len(indices)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        steps = (diffusion if diffusion is not None else GaussianDiffusion.linear()).respaced(config.steps)
        bar = tqdm(
            total=n_samples * steps.num_timesteps,
            desc=progress_desc,
            unit="step",
            unit_scale=False,
            leave=False,
        )
    outs = [
        x0.cpu()
        for _, x0 in iter_samples(
            model, sample_shape, num_classes, labels, seed, config, indices, batch_size, device, diffusion,
            on_step=bar.update if bar is not None else None, check_finite=check_finite,
        )  # fmt: skip
    ]
    if bar is not None:
        bar.close()
    return torch.cat(outs) if outs else torch.empty(0, *sample_shape)


def is_clip_shape(shape: Sequence[int]) -> bool:
    """Whether a sample shape is a clip's ``(C, T, H, W)`` (else an image's or latent's ``(C, H, W)``)."""
    if len(shape) not in (3, 4):
        raise ValueError(f"a sample shape is (C, H, W) or (C, T, H, W), got {tuple(shape)}")
    return len(shape) == 4


def to_uint8_nhwc(x: torch.Tensor) -> np.ndarray:
    """Model-space samples in [-1, 1], channels first, to uint8 channels last: images ``[N, C, H, W]`` to
    ``[N, H, W, C]`` (the ADM convention), clips ``[N, C, T, H, W]`` to ``[N, T, H, W, C]``."""
    return ((x.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).movedim(1, -1).numpy()


def model_image_shape(model: nn.Module) -> tuple[int, ...]:
    """The sample shape of a model (from its adapter): ``(C, H, W)`` of the images/latents it denoises, or
    ``(C, T, H, W)`` of its clips."""
    shape = get_adapter(model).image_shape(model)
    if shape is None:
        raise ValueError(
            f"qdit's model adapters do not know the sample shape of a {type(model).__name__}; pass it explicitly"
        )
    return shape


def sample_images(
    model: nn.Module,
    num: int,
    seed: int = 0,
    config: SamplerConfig | None = None,
    labels: Sequence[int] | np.ndarray | None = None,
    batch_size: int = 64,
    progress: bool = False,
    ctx: object | None = None,
    decode: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> tuple[np.ndarray, np.ndarray] | None:
    """Sample ``num`` images or clips, sharded over ``torch.distributed`` ranks when ``ctx`` is active.

    ``decode`` maps the model's samples (latents) to images in [-1, 1] (a VAE, see the model adapter's
    ``decoder``); without it the samples are the images.

    Returns uint8 samples and int64 labels on the main rank (``None`` on the others): images
    ``[N, H, W, C]``, or clips ``[N, T, H, W, C]`` for a model whose adapter's sample shape is
    ``(C, T, H, W)`` (see :func:`to_uint8_nhwc`). The result is identical whatever the number of ranks or
    the batch size. A non-finite latent raises :class:`NonFiniteSampleError` (samples are never made from
    NaN).
    """
    ctx = ctx if isinstance(ctx, DistContext) else DistContext()
    config = config or SamplerConfig()
    adapter = get_adapter(model)
    try:
        shape, num_classes = adapter.sampling_geometry(model)
    except QditError as exc:
        raise ValueError(str(exc)) from None
    if config.cfg_scale != 1.0 and not adapter.has_null_class(model):
        raise ValueError(f"this {type(model).__name__} has no null class label; sample with a cfg scale of 1")
    schedule = adapter.noise_schedule(model)
    diffusion = GaussianDiffusion.from_scheduler_config(schedule) if schedule else None
    all_labels = default_labels(num, num_classes) if labels is None else np.asarray(labels, dtype=np.int64)
    if len(all_labels) != num:
        raise ValueError(f"got {len(all_labels)} labels for {num} samples")
    if num and (all_labels.min() < 0 or all_labels.max() >= num_classes):
        raise ValueError(f"labels must be in [0, {num_classes - 1}]")
    mine = shard(list(range(num)), ctx.rank, ctx.world_size)
    x = generate(
        adapter.model_fn(model), shape, num_classes, all_labels[mine], seed, config, indices=mine,
        batch_size=batch_size, device=ctx.device, diffusion=diffusion, progress=progress and ctx.is_main,
        check_finite=True,
    )  # fmt: skip
    if decode is not None:
        x = decode(x) if len(x) else x
    parts = gather_to_main((mine, to_uint8_nhwc(x)), ctx)
    if parts is None:
        return None
    # a rank's empty share is not decoded, so its shape may be the latents': take a non-empty one's
    arrays = [arr for _, arr in parts if len(arr)] or [parts[0][1]]  # type: ignore[index]
    out = np.zeros((num, *arrays[0].shape[1:]), dtype=np.uint8)
    for idx, arr in parts:  # type: ignore[misc]
        out[idx] = arr
    return out, all_labels
