"""Practical PiKE (the paper's Algorithm 1): one mirror-descent step on the mixing weights.

Every T0 steps, with fresh estimates ``G_k ≈ ‖∇L_k‖²`` and ``S_k ≈ σ_k²`` (docs/method.md, "The method"):

    w_k ← w_k · exp(ζ1·G_k − (ζ2/2b)·S_k),   w ← w / ‖w‖₁

A domain whose full gradient is large gains weight (sampling it lowers the loss fastest); a domain whose
per-sample gradients are noisy loses weight (its samples mostly add variance). One step rather than the
jump to the optimum of the conceptual QP (:mod:`pike_stream.strategies.conceptual`) keeps the mixture — and
Adam's moment estimates — from swinging.
"""

from __future__ import annotations

import numpy as np

from pike_stream.strategies.checks import check_batch_size
from pike_stream.strategies.simplex import apply_floor, check_weights, log_normalize
from pike_stream.strategies.stats import as_statistic

__all__ = ["gains", "multiplicative_update", "pike_exponents", "pike_step"]


def gains(grad_sq: np.ndarray, inner: np.ndarray | None, objective: np.ndarray | None = None) -> np.ndarray:
    """The first-order gain of one more sample of each domain: ``Σ_k c_k·⟨∇L_j, ∇L_k⟩``.

    The paper keeps only ``k = j`` (``c_j·G_j``): under low gradient conflict the cross terms are bounded
    below, and it drops them. When domains share structure they are large and positive (a sample of one
    language lowers the loss of its neighbours too), so with ``inner`` (the cross-domain estimates) the gain
    of domain j is its alignment with the gradient of the whole objective ``Σ_k c_k·L_k``: ``c_j·G_j`` plus
    ``Σ_{k≠j} c_k·inner[j, k]``. ``objective`` is c (None: all ones, PiKE's average; Balanced-PiKE's dual
    weights y). A missing cross term (NaN) counts zero; a domain without ``G`` or ``c`` has no gain (NaN).
    """
    g = as_statistic(grad_sq, "grad_sq")
    c = np.ones(g.size) if objective is None else as_statistic(objective, "objective", g.size)
    own = c * g
    if inner is None:
        return own
    cross = np.array(inner, dtype=np.float64)
    if cross.shape != (g.size, g.size):
        raise ValueError(f"inner has shape {cross.shape}, expected [{g.size}, {g.size}]")
    np.fill_diagonal(cross, 0.0)
    weighted = np.where(np.isnan(cross), 0.0, cross) * np.where(np.isnan(c), 0.0, c)[None, :]
    return own + weighted.sum(axis=1)


def pike_exponents(
    grad_sq: np.ndarray,
    variance: np.ndarray,
    batch_size: int,
    *,
    zeta1: float,
    zeta2: float,
    normalize: bool,
) -> np.ndarray:
    """The exponents ``e_k = ζ1·G_k − (ζ2/2b)·S_k`` of PiKE's step; NaN for domains missing either estimate.

    With ``normalize``, ``G`` and ``S`` are first divided by one common scale, the mean over the domains
    with estimates of ``|G_k| + S_k/b`` (≈ the mean squared norm of a b-sample gradient). Both terms then
    stay within ``[−K·ζ, K·ζ]`` whatever the model's gradient scale — multiplying every G and S by c > 0
    leaves the step unchanged — while the ratio of signal ``G_k`` to noise ``S_k/b``, which is what the
    variance term weighs, is kept. Without it ζ1 and ζ2 carry the units of the gradients.
    """
    b = check_batch_size(batch_size)
    if not (np.isfinite(zeta1) and zeta1 > 0):
        raise ValueError(f"zeta1 must be a finite number > 0, got {zeta1!r}")
    if not (np.isfinite(zeta2) and zeta2 >= 0):
        raise ValueError(f"zeta2 must be a finite number ≥ 0, got {zeta2!r}")
    g = as_statistic(grad_sq, "grad_sq")
    s = as_statistic(variance, "variance", g.size, nonnegative=True)
    missing = np.isnan(g) | np.isnan(s)
    if normalize and not np.all(missing):
        scale = float(np.mean(np.abs(g[~missing]) + s[~missing] / b))
        if scale > 0:
            g, s = g / scale, s / scale
    exponents = zeta1 * g - (zeta2 / (2 * b)) * s
    exponents[missing] = np.nan
    return exponents


def multiplicative_update(weights: np.ndarray, exponents: np.ndarray) -> np.ndarray:
    """``w_k ← w_k·exp(e_k)`` renormalised, in log space; domains with ``e_k = NaN`` keep their weight.

    Only the differences between exponents matter, so a missing estimate cannot be given a neutral exponent
    (0 is not neutral when the others are mostly positive). Instead the missing domains keep their weights
    exactly and the others share the remaining mass ``M = Σ_{present} w_k``:

        w'_k = M · softmax_{present}(log w_k + e_k)   (present k),     w'_k = w_k   (missing k)

    ``log w + e`` is normalised with log-sum-exp, so exponents of any size cannot overflow; a zero weight
    stays zero.
    """
    w = check_weights(weights)
    e = np.asarray(exponents, dtype=np.float64)
    if e.shape != w.shape:
        raise ValueError(f"exponents {e.shape} and weights {w.shape} must have the same shape")
    if np.any(np.isinf(e)):
        raise ValueError(f"exponents must be finite or NaN (missing), got {e.tolist()}")
    present = ~np.isnan(e)
    mass = float(w[present].sum())
    if mass == 0.0:
        return w
    with np.errstate(divide="ignore"):
        log_w = np.log(w[present])
    out = w.copy()
    out[present] = mass * log_normalize(log_w + e[present])
    return out


def pike_step(
    weights: np.ndarray,
    grad_sq: np.ndarray,
    variance: np.ndarray,
    batch_size: int,
    *,
    zeta1: float,
    zeta2: float,
    min_weight: float = 0.0,
    normalize: bool = True,
    inner: np.ndarray | None = None,
) -> np.ndarray:
    """One practical-PiKE update of the mixing weights (Algorithm 1).

        w_k ← w_k · exp(ζ1·G_k − (ζ2/2b)·S_k),   w ← w/‖w‖₁,   then w ← max(m, c·w)  (floor, on Δ_K)

    Args:
        weights: the weights in force, on the simplex, shape ``[K]``.
        grad_sq: ``G_k`` ≈ ‖∇L_k‖², NaN where there is no estimate.
        variance: ``S_k`` ≈ σ_k², NaN where there is no estimate.
        batch_size: the global batch size ``b``.
        zeta1: step size of the gradient term, > 0.
        zeta2: step size of the variance term, ≥ 0 (0 drops the variance term).
        min_weight: floor ``m`` applied after the step (:func:`~pike_stream.strategies.simplex.apply_floor`);
            requires ``K·m < 1``.
        normalize: rescale G and S by a common scale first (:func:`pike_exponents`).
        inner: cross-domain inner products; given, ``G_j`` becomes the gain ``Σ_k ⟨∇L_j, ∇L_k⟩``
            (:func:`gains`), the paper's rule without dropping the cross terms.

    Returns:
        The new weights, on the simplex and ≥ ``min_weight``. Domains with a NaN estimate keep their
        weight share (:func:`multiplicative_update`) up to the floor's rescaling.
    """
    w = check_weights(weights)
    exponents = pike_exponents(gains(grad_sq, inner), variance, batch_size, zeta1=zeta1, zeta2=zeta2,
                               normalize=normalize)
    if exponents.size != w.size:
        raise ValueError(f"grad_sq/variance have {exponents.size} entries, weights have {w.size}")
    return apply_floor(multiplicative_update(w, exponents), min_weight)
