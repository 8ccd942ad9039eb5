"""Gaussian diffusion: the noise schedule, respacing and the training loss.

Everything is computed in float64 from the betas and cast at use, as in the DDPM/ADM formulation.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch


def linear_betas(num_timesteps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> np.ndarray:
    """Linear schedule; the end points are scaled by ``1000 / num_timesteps`` as in DDPM/DiT."""
    scale = 1000.0 / num_timesteps
    return np.linspace(scale * beta_start, scale * beta_end, num_timesteps, dtype=np.float64)


def spaced_timesteps(num_timesteps: int, steps: int) -> list[int]:
    """``steps`` evenly strided timesteps out of ``num_timesteps`` (ascending), the DDIM respacing."""
    if not 1 <= steps <= num_timesteps:
        raise ValueError(f"steps must be in [1, {num_timesteps}], got {steps}")
    if steps == num_timesteps:
        return list(range(num_timesteps))
    # evenly spaced with rounding (ADM's "space_timesteps" for a single section)
    frac = (num_timesteps - 1) / (steps - 1) if steps > 1 else 0.0
    return sorted({round(i * frac) for i in range(steps)})


class GaussianDiffusion:
    """Closed-form quantities of a discrete diffusion process over the given timesteps.

    ``timestep_map`` maps the index of a (respaced) step to the original timestep the model was
    trained on, which is what the model receives.
    """

    def __init__(self, betas: np.ndarray, timestep_map: Sequence[int] | None = None) -> None:
        betas = np.asarray(betas, dtype=np.float64)
        if betas.ndim != 1 or not ((betas > 0) & (betas <= 1)).all():
            raise ValueError("betas must be a 1-D array in (0, 1]")
        self.betas = betas
        self.num_timesteps = len(betas)
        self.timestep_map = np.asarray(
            timestep_map if timestep_map is not None else np.arange(len(betas)), dtype=np.int64
        )
        alphas = 1.0 - betas
        self.alphas_cumprod = np.cumprod(alphas)
        self.alphas_cumprod_prev = np.append(1.0, self.alphas_cumprod[:-1])
        self.sqrt_alphas_cumprod = np.sqrt(self.alphas_cumprod)
        self.sqrt_one_minus_alphas_cumprod = np.sqrt(1.0 - self.alphas_cumprod)
        self.sqrt_recip_alphas_cumprod = np.sqrt(1.0 / self.alphas_cumprod)
        self.sqrt_recipm1_alphas_cumprod = np.sqrt(1.0 / self.alphas_cumprod - 1)
        self.posterior_variance = betas * (1.0 - self.alphas_cumprod_prev) / (1.0 - self.alphas_cumprod)
        # the variance at t = 0 is 0 (log -inf): it takes the next step's, as in DDPM; a one-step process has
        # no next step, and its t = 0 variance is never used for noise, so beta_0 stands in (finite log)
        first = self.posterior_variance[1] if len(betas) > 1 else betas[0]
        self.posterior_log_variance_clipped = np.log(np.append(first, self.posterior_variance[1:]))
        self.posterior_mean_coef1 = betas * np.sqrt(self.alphas_cumprod_prev) / (1.0 - self.alphas_cumprod)
        self.posterior_mean_coef2 = (
            (1.0 - self.alphas_cumprod_prev) * np.sqrt(alphas) / (1.0 - self.alphas_cumprod)
        )

    @classmethod
    def linear(cls, num_timesteps: int = 1000) -> GaussianDiffusion:
        return cls(linear_betas(num_timesteps))

    @classmethod
    def from_scheduler_config(cls, config: dict) -> GaussianDiffusion:
        """The training process of a diffusers scheduler config (``scheduler_config.json``): its
        ``num_train_timesteps`` and betas (``linear``, ``scaled_linear``, ``squaredcos_cap_v2`` or
        ``trained_betas``). Only epsilon-prediction models are supported (what qdit's sampler expects)."""
        prediction = config.get("prediction_type", "epsilon")
        if prediction != "epsilon":
            raise ValueError(f"scheduler prediction_type {prediction!r} is not supported (only 'epsilon')")
        n = int(config.get("num_train_timesteps", 1000))
        start, end = float(config.get("beta_start", 1e-4)), float(config.get("beta_end", 0.02))
        kind = config.get("beta_schedule", "linear")
        if config.get("trained_betas") is not None:
            betas = np.asarray(config["trained_betas"], dtype=np.float64)
        elif kind == "linear":
            betas = np.linspace(start, end, n, dtype=np.float64)
        elif kind == "scaled_linear":
            betas = np.linspace(start**0.5, end**0.5, n, dtype=np.float64) ** 2
        elif kind == "squaredcos_cap_v2":
            f = [math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2 for t in np.arange(n + 1) / n]
            betas = np.array([min(1 - f[i + 1] / f[i], 0.999) for i in range(n)], dtype=np.float64)
        else:
            raise ValueError(f"scheduler beta_schedule {kind!r} is not supported")
        return cls(betas)

    def respaced(self, steps: int) -> GaussianDiffusion:
        """The process restricted to ``steps`` of the original timesteps (new betas, same marginals)."""
        use = spaced_timesteps(self.num_timesteps, steps)
        last = 1.0
        betas = []
        for t in use:
            betas.append(1.0 - self.alphas_cumprod[t] / last)
            last = self.alphas_cumprod[t]
        return GaussianDiffusion(np.array(betas), timestep_map=self.timestep_map[use])

    # --- helpers -----------------------------------------------------------------------------
    @staticmethod
    def _take(arr: np.ndarray, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        out = torch.from_numpy(arr).to(device=like.device)[t].to(like.dtype)
        return out.reshape(-1, *([1] * (like.ndim - 1)))

    def model_timesteps(self, t: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self.timestep_map).to(t.device)[t]

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        return (
            self._take(self.sqrt_alphas_cumprod, t, x0) * x0
            + self._take(self.sqrt_one_minus_alphas_cumprod, t, x0) * noise
        )

    def predict_x0(self, x_t: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        return (
            self._take(self.sqrt_recip_alphas_cumprod, t, x_t) * x_t
            - self._take(self.sqrt_recipm1_alphas_cumprod, t, x_t) * eps
        )

    def predict_eps(self, x_t: torch.Tensor, t: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
        return (self._take(self.sqrt_recip_alphas_cumprod, t, x_t) * x_t - x0) / self._take(
            self.sqrt_recipm1_alphas_cumprod, t, x_t
        )

    def q_posterior(
        self, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        mean = (
            self._take(self.posterior_mean_coef1, t, x_t) * x0
            + self._take(self.posterior_mean_coef2, t, x_t) * x_t
        )
        return mean, self._take(self.posterior_log_variance_clipped, t, x_t)

    def model_log_variance(self, t: torch.Tensor, var_out: torch.Tensor | None) -> torch.Tensor:
        """Log variance of p(x_{t-1}|x_t): learned interpolation when the model predicts it
        (``var_out`` in [-1, 1] between the posterior variance and beta), else fixed-small."""
        min_log = self._take(
            self.posterior_log_variance_clipped, t, var_out if var_out is not None else t.float()
        )
        if var_out is None:
            return min_log
        max_log = self._take(np.log(self.betas), t, var_out)
        frac = (var_out + 1) / 2
        return frac * max_log + (1 - frac) * min_log

    # --- training loss -----------------------------------------------------------------------
    def training_losses(
        self,
        model_out: torch.Tensor,
        x0: torch.Tensor,
        x_t: torch.Tensor,
        t: torch.Tensor,
        noise: torch.Tensor,
        learn_sigma: bool,
    ) -> torch.Tensor:
        """Per-sample loss: eps MSE, plus the variational bound for the learned variance
        (with the mean detached, the "hybrid" objective of improved DDPM used by DiT)."""
        c = x0.shape[1]
        eps = model_out[:, :c]
        mse = ((eps - noise) ** 2).mean(dim=tuple(range(1, x0.ndim)))
        if not learn_sigma:
            return mse
        var_out = model_out[:, c:]
        x0_pred = self.predict_x0(x_t, t, eps.detach())
        mean_pred, _ = self.q_posterior(x0_pred, x_t, t)
        log_var = self.model_log_variance(t, var_out)
        true_mean, true_log_var = self.q_posterior(x0, x_t, t)
        kl = normal_kl(true_mean, true_log_var, mean_pred, log_var).mean(dim=tuple(range(1, x0.ndim)))
        kl = kl / math.log(2.0)
        nll = -discretized_gaussian_log_likelihood(x0, mean_pred, 0.5 * log_var)
        nll = nll.mean(dim=tuple(range(1, x0.ndim))) / math.log(2.0)
        vb = torch.where(t == 0, nll, kl)
        return mse + vb * self.num_timesteps / 1000.0


def normal_kl(
    mean1: torch.Tensor, logvar1: torch.Tensor, mean2: torch.Tensor, logvar2: torch.Tensor
) -> torch.Tensor:
    return 0.5 * (
        -1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2) + (mean1 - mean2) ** 2 * torch.exp(-logvar2)
    )


def _approx_std_normal_cdf(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))


def discretized_gaussian_log_likelihood(
    x: torch.Tensor, mean: torch.Tensor, log_scale: torch.Tensor
) -> torch.Tensor:
    """Log-likelihood of data in [-1, 1] discretized to 256 bins under a Gaussian."""
    centered = x - mean
    inv_std = torch.exp(-log_scale)
    cdf_plus = _approx_std_normal_cdf(inv_std * (centered + 1.0 / 255.0))
    cdf_min = _approx_std_normal_cdf(inv_std * (centered - 1.0 / 255.0))
    log_cdf_plus = torch.log(cdf_plus.clamp(min=1e-12))
    log_one_minus_cdf_min = torch.log((1.0 - cdf_min).clamp(min=1e-12))
    cdf_delta = cdf_plus - cdf_min
    return torch.where(
        x < -0.999,
        log_cdf_plus,
        torch.where(x > 0.999, log_one_minus_cdf_min, torch.log(cdf_delta.clamp(min=1e-12))),
    )
