"""Conceptual PiKE: the mixture that minimises the paper's bound on one SGD step's expected loss change.

Under low gradient conflict the bound is separable in the domains (docs/method.md, "The method"), so the best
mixture solves a separable quadratic program on the simplex:

    min_{w ∈ Δ_K}  Σ_k λ_k·w_k + ½·κ_k·w_k²,   λ_k = −ηβ·‖∇L_k‖² + (Lη²/2b)·σ_k²,   κ_k = Lη²γ·‖∇L_k‖²

Its KKT conditions (multiplier μ for Σ w = 1, ν_k ≥ 0 for w_k ≥ 0) give ``w_k* = max(0, −(μ + λ_k)/κ_k)``.
Practical PiKE (:mod:`pike_stream.strategies.pike`) only steps towards this point; jumping to it each refresh
is the "conceptual" algorithm, kept as a baseline and as a check on the practical one.
"""

from __future__ import annotations

import numpy as np

from pike_stream.strategies.checks import check_batch_size
from pike_stream.strategies.stats import as_statistic

__all__ = ["conceptual_pike_weights", "separable_qp_weights"]


def separable_qp_weights(linear: np.ndarray, quadratic: np.ndarray, total: float = 1.0) -> np.ndarray:
    """Exact minimiser of ``Σ_k λ_k·w_k + ½·κ_k·w_k²`` over ``{w ≥ 0, Σ_k w_k = total}``, with ``κ_k ≥ 0``.

    Domains with ``κ_k > 0`` get ``w_k = max(0, −(μ + λ_k)/κ_k)``. The function ``h(μ) = Σ_k w_k(μ)`` is
    piecewise linear and non-increasing with breakpoints at ``μ = −λ_k``; sorting λ finds the piece where
    ``h(μ) = total`` and solves it in closed form, ``μ = −(total + Σ_active λ_k/κ_k) / Σ_active 1/κ_k``.

    Domains with ``κ_k = 0`` are linear: stationarity ``λ_k + μ = ν_k ≥ 0`` forces ``μ ≥ −min λ_lin``.
    So if the quadratic domains' μ is at least ``−min λ_lin`` the linear domains get nothing; otherwise
    ``μ = −min λ_lin``, the quadratic domains take ``h(μ)``, and the rest of ``total`` goes to the linear
    domain with the smallest λ — all or nothing. Linear domains tied at that λ make the optimum non-unique;
    they split the rest equally (the symmetric choice). With no quadratic domain this is the linear
    program's vertex: everything on the smallest λ.

    Args:
        linear: ``λ``, finite, shape ``[K]``.
        quadratic: ``κ``, finite and ≥ 0, shape ``[K]``.
        total: the mass to distribute, > 0.
    """
    lam = np.asarray(linear, dtype=np.float64)
    kappa = np.asarray(quadratic, dtype=np.float64)
    if lam.ndim != 1 or lam.size == 0 or kappa.shape != lam.shape:
        raise ValueError(f"linear {lam.shape} and quadratic {kappa.shape} must be non-empty 1-D arrays of equal length")
    if not np.all(np.isfinite(lam)):
        raise ValueError(f"linear coefficients must be finite, got {lam.tolist()}")
    if not np.all(np.isfinite(kappa)) or np.any(kappa < 0):
        raise ValueError(f"quadratic coefficients must be finite and ≥ 0, got {kappa.tolist()}")
    if not (np.isfinite(total) and total > 0):
        raise ValueError(f"total must be a finite number > 0, got {total!r}")

    quad = kappa > 0
    # Only differences of λ matter (μ absorbs a shift); shifting by the quadratic domains' minimum keeps every
    # λ/κ of an active domain below `total`, so the closed form suffers no cancellation.
    lam = lam - (lam[quad].min() if np.any(quad) else lam.min())
    w = np.zeros_like(lam)

    mu = -np.inf
    if np.any(quad):
        order = np.argsort(lam[quad], kind="stable")
        lam_q, kappa_q = lam[quad][order], kappa[quad][order]
        inv = np.concatenate(([0.0], np.cumsum(1.0 / kappa_q)))  # inv[j] = Σ_{i<j} 1/κ_i
        ratio = np.concatenate(([0.0], np.cumsum(lam_q / kappa_q)))  # ratio[j] = Σ_{i<j} λ_i/κ_i
        h_at_breakpoints = lam_q * inv[:-1] - ratio[:-1]  # h(−λ_j), non-decreasing in j, h(−λ_1) = 0
        active = int(np.count_nonzero(h_at_breakpoints < total))
        mu = -(total + ratio[active]) / inv[active]

    if np.any(~quad):
        lam_lin_min = lam[~quad].min()
        if mu < -lam_lin_min:
            mu = -lam_lin_min
            if np.any(quad):
                w[quad] = np.maximum(0.0, -(mu + lam[quad]) / kappa[quad])
            rest = max(total - float(w[quad].sum()), 0.0)
            ties = ~quad & (lam == lam_lin_min)
            w[ties] = rest / np.count_nonzero(ties)
            return w

    w[quad] = np.maximum(0.0, -(mu + lam[quad]) / kappa[quad])
    return w * (total / w.sum())


def conceptual_pike_weights(
    grad_sq: np.ndarray,
    variance: np.ndarray,
    batch_size: int,
    *,
    lr: float,
    smoothness: float,
    beta: float,
    gamma: float,
    total: float = 1.0,
) -> np.ndarray:
    """The conceptual-PiKE mixture: :func:`separable_qp_weights` with the paper's coefficients

        λ_k = −ηβ·G_k + (Lη²/2b)·S_k,   κ_k = Lη²γ·G_k,   G_k = max(ĝ_k, 0)

    where ``ĝ_k`` is the (unbiased, so possibly negative) estimate of ‖∇L_k‖²: a squared norm is never
    negative, and clipping keeps the program convex.

    Args:
        grad_sq: estimates of ‖∇L_k‖², finite (no missing domains: select the present ones first).
        variance: estimates of σ_k², finite and ≥ 0.
        batch_size: the global batch size ``b``.
        lr: the step size η, > 0.
        smoothness: the smoothness constant L, > 0.
        beta: β > 0, the bound's descent coefficient (low-conflict constant).
        gamma: γ ≥ 0, the bound's coefficient of the batch-composition term (0 makes the program linear).
        total: the mass to distribute (< 1 when some domains keep their weights aside).
    """
    batch_size = check_batch_size(batch_size)
    for name, value, lower, strict in (
        ("lr", lr, 0.0, True),
        ("smoothness", smoothness, 0.0, True),
        ("beta", beta, 0.0, True),
        ("gamma", gamma, 0.0, False),
    ):
        if not (np.isfinite(value) and (value > lower if strict else value >= lower)):
            raise ValueError(f"{name} must be a finite number {'>' if strict else '≥'} {lower:g}, got {value!r}")
    g = as_statistic(grad_sq, "grad_sq")
    s = as_statistic(variance, "variance", g.size, nonnegative=True)
    if np.any(np.isnan(g)) or np.any(np.isnan(s)):
        raise ValueError("grad_sq and variance must have an estimate (no NaN) for every domain passed")
    g = np.maximum(g, 0.0)
    linear = -lr * beta * g + (smoothness * lr**2 / (2 * batch_size)) * s
    quadratic = smoothness * lr**2 * gamma * g
    return separable_qp_weights(linear, quadratic, total)
