"""Balanced-PiKE: PiKE on the tilted objective ``(1/τ)·log Σ_k exp(τ·L_k)``.

τ → 0 is the average loss, τ → ∞ the worst domain's loss. For fixed θ the tilted objective's gradient is
``Σ_k y_k ∇L_k`` with dual weights ``y = τ·softmax(τ·L)`` (the paper's scaling), so PiKE runs on the
re-weighted domains ``y_k·L_k``: their squared gradient norms are ``y_k²·‖∇L_k‖²`` and their per-sample
variances ``y_k²·σ_k²``. High-loss domains get a larger ``y_k`` and so a larger say in the step.

Limit τ → 0: ``softmax(τ·L)`` tends to uniform, so ``y_k² → τ²/K²``, the same factor for every domain.
With ``normalize=True`` the PiKE step ignores a common factor on G and S
(:func:`~pike_stream.mixing.pike.pike_exponents`), so Balanced-PiKE tends to plain PiKE. With
``normalize=False`` the factor shrinks every exponent to 0 instead (the weights stop moving); matching
plain PiKE there needs ζ1 and ζ2 multiplied by ``K²/τ²``.
"""

from __future__ import annotations

import numpy as np

from pike_stream.mixing.pike import pike_step
from pike_stream.mixing.simplex import log_normalize
from pike_stream.mixing.stats import as_statistic

__all__ = ["balanced_dual_weights", "balanced_pike_step"]


def balanced_dual_weights(losses: np.ndarray, tau: float) -> np.ndarray:
    """The tilt's dual weights ``y_k = τ·exp(τ·L_k) / Σ_j exp(τ·L_j)`` (log-sum-exp; NaN loss → NaN y_k).

    Domains with a NaN loss are left out of the softmax and get ``y_k = NaN``, which makes their PiKE
    exponent missing (they keep their weight share). ``Σ_k y_k = τ`` over the domains with a loss.
    """
    if not (np.isfinite(tau) and tau > 0):
        raise ValueError(f"tau must be a finite number > 0, got {tau!r}")
    losses = as_statistic(losses, "loss")
    present = ~np.isnan(losses)
    y = np.full(losses.size, np.nan)
    if np.any(present):
        y[present] = tau * log_normalize(tau * losses[present])
    return y


def balanced_pike_step(
    weights: np.ndarray,
    grad_sq: np.ndarray,
    variance: np.ndarray,
    losses: np.ndarray,
    batch_size: int,
    *,
    tau: float,
    zeta1: float,
    zeta2: float,
    min_weight: float = 0.0,
    normalize: bool = True,
) -> np.ndarray:
    """One Balanced-PiKE update: :func:`~pike_stream.mixing.pike.pike_step` with ``y_k²·G_k`` and ``y_k²·S_k``.

        y = τ·softmax(τ·L),   w_k ← w_k · exp(ζ1·y_k²·G_k − (ζ2/2b)·y_k²·S_k),   w ← w/‖w‖₁,   floor

    Arguments are those of ``pike_step`` plus ``losses`` (mean loss per domain, NaN = none) and ``tau`` > 0.
    """
    y = balanced_dual_weights(losses, tau)
    g = as_statistic(grad_sq, "grad_sq", y.size)
    s = as_statistic(variance, "variance", y.size, nonnegative=True)
    return pike_step(
        weights,
        y**2 * g,
        y**2 * s,
        batch_size,
        zeta1=zeta1,
        zeta2=zeta2,
        min_weight=min_weight,
        normalize=normalize,
    )
