"""Balanced-PiKE: PiKE on the tilted objective ``(1/τ)·log Σ_k exp(τ·L_k)``.

τ → 0 is the average loss, τ → ∞ the worst domain's loss. For fixed θ the tilted objective's gradient is
``Σ_k y_k ∇L_k`` with dual weights ``y ∝ softmax(τ·L)``: PiKE then lowers ``F = Σ_k y_k L_k`` instead of
``Σ_k L_k``. Which of PiKE's two terms the weights enter follows from the bound on one step, with the
training loss itself left *unweighted* (the mixer changes which samples are drawn, not how they count):

* descent: a step on a batch with ``b_k`` samples of domain k lowers F by about
  ``η·Σ_k (b_k/b)·y_k·‖∇L_k‖²`` (low conflict), so the gradient term is ``y_k·G_k`` — one factor of y;
* noise: the step's gradient noise is that of the unweighted batch, ``Σ_k b_k σ_k²/b²``, and it raises F
  through F's curvature, a common factor; so the variance term is ``S_k``, with no y.

Scaling both by ``y_k²`` (as if each sample's loss were multiplied by ``y_k``) would describe a different
training loss than the one being minimised. Here ``y = K·softmax(τ·L)`` (mean 1), so equal losses — and
τ → 0 — give plain PiKE exactly, with or without ``normalize``, and high-loss domains get ``y_k > 1``.
"""

from __future__ import annotations

import numpy as np

from pike_stream.strategies.pike import gains, pike_step
from pike_stream.strategies.simplex import log_normalize
from pike_stream.strategies.stats import as_statistic

__all__ = ["balanced_dual_weights", "balanced_pike_step"]


def balanced_dual_weights(losses: np.ndarray, tau: float) -> np.ndarray:
    """The tilt's dual weights ``y_k = K'·exp(τ·L_k) / Σ_j exp(τ·L_j)`` (log-sum-exp; NaN loss → NaN y_k).

    ``K'`` is the number of domains with a loss, so the ``y_k`` average 1 over them. Domains with a NaN loss
    are left out of the softmax and get ``y_k = NaN``, which makes their PiKE exponent missing (they keep
    their weight share).
    """
    if not (np.isfinite(tau) and tau > 0):
        raise ValueError(f"tau must be a finite number > 0, got {tau!r}")
    losses = as_statistic(losses, "loss")
    present = ~np.isnan(losses)
    y = np.full(losses.size, np.nan)
    if np.any(present):
        y[present] = np.count_nonzero(present) * log_normalize(tau * losses[present])
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
    inner: np.ndarray | None = None,
) -> np.ndarray:
    """One Balanced-PiKE update: :func:`~pike_stream.strategies.pike.pike_step` with ``y_k·G_k`` and ``S_k``.

        y = K·softmax(τ·L),   w_k ← w_k · exp(ζ1·y_k·G_k − (ζ2/2b)·S_k),   w ← w/‖w‖₁,   floor

    Arguments are those of ``pike_step`` plus ``losses`` (mean loss per domain, NaN = none) and ``tau`` > 0.
    With ``inner`` the gradient term is the alignment with the gradient of ``Σ_k y_k·L_k``,
    ``Σ_k y_k·⟨∇L_j, ∇L_k⟩`` (:func:`~pike_stream.strategies.pike.gains`).
    """
    y = balanced_dual_weights(losses, tau)
    g = as_statistic(grad_sq, "grad_sq", y.size)
    s = as_statistic(variance, "variance", y.size, nonnegative=True)
    return pike_step(
        weights,
        gains(g, inner, y),
        np.where(np.isnan(y), np.nan, s),
        batch_size,
        zeta1=zeta1,
        zeta2=zeta2,
        min_weight=min_weight,
        normalize=normalize,
    )
