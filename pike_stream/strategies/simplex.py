"""Operations on the probability simplex Δ_K = {w ∈ ℝ^K : w ≥ 0, Σ_k w_k = 1}.

Every strategy hands out weights on Δ_K; these helpers check them, normalise log-weights without
overflow, and put a floor under them. The floor is the Kullback–Leibler projection onto
{w ∈ Δ_K : w ≥ m}, the projection that matches PiKE's multiplicative (mirror-descent) step: domains
above the floor keep their ratios, domains below it sit exactly on it.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["SIMPLEX_ATOL", "apply_floor", "check_weights", "log_normalize", "pull_toward", "with_added"]

SIMPLEX_ATOL = 1e-6
"""How far from 1 the sum of a weight vector handed to a strategy may be (float drift, JSON round trips)."""


def check_weights(weights: np.ndarray | Sequence[float], name: str = "weights",
                  num_domains: int | None = None) -> np.ndarray:
    """Return ``weights`` as a float64 vector on Δ_K, or raise ``ValueError`` naming ``name``.

    The vector must be 1-D, finite, non-negative and sum to 1 within :data:`SIMPLEX_ATOL`; it is divided by
    its sum so that small drift does not accumulate. ``num_domains``, when given, is the required length.
    """
    w = np.array(weights, dtype=np.float64)
    if w.ndim != 1 or w.size == 0:
        raise ValueError(f"{name} must be a non-empty 1-D array, got shape {w.shape}")
    if num_domains is not None and w.size != num_domains:
        raise ValueError(f"{name} has {w.size} entries, expected one per domain ({num_domains})")
    if not np.all(np.isfinite(w)) or np.any(w < 0):
        raise ValueError(f"{name} must be finite and non-negative, got {w.tolist()}")
    total = float(w.sum())
    if abs(total - 1.0) > SIMPLEX_ATOL:
        raise ValueError(f"{name} must sum to 1 (within {SIMPLEX_ATOL}), got sum {total!r}")
    return w / total


def log_normalize(log_weights: np.ndarray) -> np.ndarray:
    """Softmax: ``w_k = exp(a_k − logsumexp(a))`` for log-weights ``a`` (entries may be ``−inf``: weight 0).

    Subtracting the maximum before exponentiating keeps every exponent ≤ 0, so arbitrarily large log-weights
    cannot overflow. At least one entry must be finite.
    """
    a = np.asarray(log_weights, dtype=np.float64)
    if np.any(np.isnan(a)) or np.any(a == np.inf):
        raise ValueError(f"log-weights must be finite or -inf, got {a.tolist()}")
    top = a.max()
    if top == -np.inf:
        raise ValueError("log-weights are all -inf: no domain has positive weight")
    unnormalized = np.exp(a - top)
    return unnormalized / unnormalized.sum()


def apply_floor(weights: np.ndarray, min_weight: float) -> np.ndarray:
    """Normalise ``weights`` to Δ_K and lift every domain to at least ``min_weight``, staying on Δ_K.

    Implements the KL projection onto {w ∈ Δ_K : w ≥ m}:

        w'_k = max(m, c·w_k),   c > 0 the unique scale with Σ_k w'_k = 1

    found exactly by water-filling: with ``v`` sorted in decreasing order and ``S_j = v_1 + … + v_j``, the
    top ``j`` domains stay free and the rest sit on the floor, where ``j`` is the largest index whose
    breakpoint ``t_j = m/v_j`` has ``t_j·S_{j−1} + (K−j+1)·m ≤ 1``; then ``c = (1 − (K−j)·m)/S_j``.
    Weights already ≥ m come back unchanged (c = 1). Requires ``0 ≤ m`` and ``K·m < 1``.

    Args:
        weights: non-negative weights with a positive sum, shape ``[K]``.
        min_weight: the floor ``m``.
    """
    w = np.asarray(weights, dtype=np.float64)
    if w.ndim != 1 or w.size == 0 or not np.all(np.isfinite(w)) or np.any(w < 0) or w.sum() <= 0:
        raise ValueError(f"weights must be a finite, non-negative 1-D array with a positive sum, got {w.tolist()}")
    num_domains = w.size
    if not (np.isfinite(min_weight) and 0.0 <= min_weight and num_domains * min_weight < 1.0):
        raise ValueError(
            f"min_weight must satisfy 0 <= min_weight < 1/K = {1.0 / num_domains:.6g} for K={num_domains} domains, "
            f"got {min_weight!r}"
        )
    w = w / w.sum()
    if min_weight == 0.0 or np.all(w >= min_weight):
        return w

    v = np.sort(w[w > 0])[::-1]  # a zero weight has no breakpoint: it always ends on the floor
    prefix = np.concatenate(([0.0], np.cumsum(v)))  # prefix[j] = S_j
    j = np.arange(1, v.size + 1)
    at_breakpoint = (min_weight / v) * prefix[:-1] + (num_domains - j + 1) * min_weight
    free = int(np.flatnonzero(at_breakpoint <= 1.0)[-1]) + 1  # j = 1 always qualifies: K·m < 1
    scale = (1.0 - (num_domains - free) * min_weight) / prefix[free]
    return np.maximum(min_weight, scale * w)


def pull_toward(weights: np.ndarray, anchor: np.ndarray, pull: float, present: np.ndarray | None = None) -> np.ndarray:
    """Move ``weights`` a fraction ``pull`` of the way back to ``anchor`` in log space (a geometric mix):

        w'_k ∝ w_k^(1−λ) · a_k^λ   over the ``present`` domains, which keep their total mass;  w'_k = w_k elsewhere

    Applied after every multiplicative step ``log w ← log w + e``, it turns the running *sum* of the exponents
    into a discounted one: with constant exponents the log-weights settle at ``log a + (1−λ)/λ · e`` (up to a
    constant) instead of drifting without bound, and once a domain's exponent falls back (its loss is learned)
    its weight returns toward the anchor within about 1/λ updates — as fast as it left, not as slowly.
    λ = 0 returns ``weights``; λ = 1 returns the anchor (on the present domains).

    Both vectors are on Δ_K; a weight ≥ m in both stays ≥ m (the geometric mix sums to at most 1 before
    renormalising). A zero anchor weight pins that domain at zero for any λ > 0.

    Args:
        weights: the weights after the step, shape ``[K]``.
        anchor: the weights to return to, shape ``[K]``.
        pull: λ in ``[0, 1]``.
        present: mask of the domains to move (default: all); the others keep their weights exactly.
    """
    w = check_weights(weights)
    a = check_weights(anchor, "anchor", w.size)
    if isinstance(pull, bool) or not (np.isfinite(pull) and 0.0 <= pull <= 1.0):
        raise ValueError(f"pull must be a number in [0, 1], got {pull!r}")
    mask = np.ones(w.size, dtype=bool) if present is None else np.asarray(present, dtype=bool)
    if mask.shape != w.shape:
        raise ValueError(f"present has shape {mask.shape}, weights {w.shape}")
    mass = float(w[mask].sum())
    if pull == 0.0 or mass == 0.0:
        return w
    with np.errstate(divide="ignore"):
        log_mix = (1.0 - pull) * np.log(w[mask]) + pull * np.log(a[mask])
    if np.all(log_mix == -np.inf):  # the anchor and the weights share no domain: keep the weights
        return w
    out = w.copy()
    out[mask] = mass * log_normalize(log_mix)
    return out


def with_added(weights: np.ndarray, added: np.ndarray, share: np.ndarray) -> np.ndarray:
    """A mixture after domains were added: each added domain (``added`` true) takes its ``share`` of the
    normalised ``share`` vector, and the others keep their proportions of ``weights`` in the rest (an equal
    split of it if their weights are all 0; ``share`` itself if no domain continues)."""
    share = np.asarray(share, dtype=np.float64) / np.sum(share)
    added = np.asarray(added, dtype=bool)
    kept = np.where(added, 0.0, np.asarray(weights, dtype=np.float64))
    out = np.where(added, share, 0.0)
    rest = 1.0 - out.sum()
    if kept.sum() > 0:
        out = out + kept / kept.sum() * rest
    elif (~added).any():
        out[~added] = rest / (~added).sum()
    else:
        out = share
    return out / out.sum()
