"""Activation-weight channel balancing: per-input-channel factors ``s_j`` (pure tensor math).

A linear ``y = x W^T`` is rewritten as ``y = (x / s) (W * s)^T`` (``W * s`` scales column ``j`` of ``W``
by ``s_j``), which is the same function in floating point. Quantizing ``x / s`` and ``W * s`` instead
of ``x`` and ``W`` moves range from the channels where the activations are large to the weights (or
back), so that neither operand has a few channels that dominate its quantization range. In a DiT the
op before a block linear (adaLN-modulated LayerNorm, GELU, attention) cannot always absorb ``1 / s``,
so :class:`qdit.nn.QuantLinear` divides its input by ``s`` at run time, before quantizing it.

* :func:`smooth_factors`: SmoothQuant (Xiao et al., 2023), ``s_j = max|X_j|^alpha / max|W_:,j|^(1-alpha)``.
* :func:`csb_factors`: PTQ4DiT's Channel-wise Salience Balancing (Wu et al., NeurIPS 2024) with a
  Spearman-guided weighting of timesteps; see its docstring for what is and is not the paper's.
"""

from __future__ import annotations

import torch


def _safe(s: torch.Tensor) -> torch.Tensor:
    """Factors with every undefined, zero or non-finite entry replaced by 1, and at least 1e-5."""
    s = torch.where(torch.isfinite(s) & (s > 0), s, torch.ones_like(s))
    return s.clamp(min=1e-5)


def smooth_factors(act_absmax: torch.Tensor, w_absmax: torch.Tensor, alpha: float) -> torch.Tensor:
    """SmoothQuant factors ``s_j = max|X_j|^alpha / max|W_j|^(1 - alpha)`` (1 where undefined)."""
    return _safe(act_absmax.float().pow(alpha) / w_absmax.float().pow(1.0 - alpha))


def spearman(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Spearman's rank correlation of each row of ``a`` ``[..., C]`` with ``b`` ``[C]`` (average ranks
    for ties; 0 where a row or ``b`` is constant)."""

    def ranks(x: torch.Tensor) -> torch.Tensor:
        rows = x.double().reshape(-1, x.shape[-1])
        out = torch.empty_like(rows)
        for i, row in enumerate(rows):
            _, inverse, counts = torch.unique(row, sorted=True, return_inverse=True, return_counts=True)
            start = counts.cumsum(0) - counts
            out[i] = (start + (counts - 1) / 2.0).to(out.dtype)[inverse]  # ties share their mean rank
        return out.reshape(x.shape)

    ra = ranks(a)
    rb = ranks(b.expand_as(a))
    ra = ra - ra.mean(-1, keepdim=True)
    rb = rb - rb.mean(-1, keepdim=True)
    den = (ra.square().sum(-1) * rb.square().sum(-1)).sqrt()
    rho = (ra * rb).sum(-1) / den
    return torch.where(den > 0, rho, torch.zeros_like(rho)).float()


def csb_weights(step_absmax: torch.Tensor, w_absmax: torch.Tensor) -> torch.Tensor:
    """Weights ``eta_t`` (summing to 1) of the activation salience of each calibration step ``t``:
    ``eta_t = (1 - rho_t) / sum_u (1 - rho_u)``, ``rho_t`` Spearman's correlation between that step's
    per-channel activation maxima ``step_absmax[t]`` and the weight's ``w_absmax`` (uniform when every
    ``rho_t`` is 1)."""
    rho = spearman(step_absmax.float(), w_absmax.float())
    eta = (1.0 - rho).clamp(min=0.0)
    total = eta.sum()
    if not torch.isfinite(total) or total <= 0:
        return torch.full_like(eta, 1.0 / eta.numel())
    return eta / total


def csb_factors(step_absmax: torch.Tensor, w_absmax: torch.Tensor) -> torch.Tensor:
    """PTQ4DiT-style Channel-wise Salience Balancing factors ``s_j = sqrt(S(X_j) / max|W_:,j|)``.

    ``step_absmax`` ``[T, C]``: the activation maxima ``max|X_j|`` of each calibration step (one row per
    call of the layer during calibration: one denoising timestep of one calibration batch, see
    :class:`qdit.quant.stats.LayerStats`); ``w_absmax`` ``[C]``: ``max|W_:,j|``. Dividing the activations by
    ``s`` and multiplying the weight columns by ``s`` gives both the balanced salience
    ``sqrt(S(X_j) max|W_:,j|)``.

    What is the paper's: salience as the per-channel absolute maximum of activations and of weights, the
    balanced salience as their geometric mean (so ``s_j = sqrt(S(X_j) / S(W_j))``), and the idea of its
    Spearman's-rho-guided Salience Calibration: aggregate the per-timestep activation salience with
    weights that grow as the rank correlation ``rho_t`` between activation and weight salience at
    timestep ``t`` falls (where the two are complementary, balancing pays most).

    What is not: the weighting is ``eta_t = (1 - rho_t) / sum (1 - rho_u)`` (:func:`csb_weights`), our
    choice of a decreasing, non-negative function of ``rho_t``, not a transcription of the paper's
    formula; a "timestep" is one calibration call (calibration batches of the same timestep are separate
    rows); the factors are applied at run time (``x / s`` inside the quantized linear) instead of being
    re-parametrized offline into adaLN / the preceding linear; and PTQ4DiT's block reconstruction
    (BRECQ-style rounding optimization) is not done.
    """
    step_absmax = step_absmax.float().reshape(-1, step_absmax.shape[-1])
    eta = csb_weights(step_absmax, w_absmax)
    salience = (eta.unsqueeze(-1) * step_absmax).sum(0)
    return _safe((salience / w_absmax.float()).sqrt())
