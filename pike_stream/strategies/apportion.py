"""Weights → integer per-batch sample counts, carrying the rounding error forward.

Rounding each step independently drifts: with 20 domains and a batch of 8, most domains would round to 0
every step and never be drawn. Instead every domain carries its rounding remainder ``r_k`` from step to
step (a largest-remainder apportionment with memory):

    x_k = w_k·B + r_k            desired share this step, including what is owed from earlier steps
    n_k = ⌊max(x_k, 0)⌋          then ±1 to the largest / smallest remainders until Σ n_k = B
    r_k ← x_k − n_k              Σ_k r_k stays 0, so the cumulative count of domain k stays within a small
                                 constant of Σ_t w_k(t)·B over any run of steps (the README's mixer
                                 invariants: fidelity)

Ties are broken by domain index, so the result is a pure function of (weights, B, carry).
"""

from __future__ import annotations

import numpy as np

__all__ = ["apportion"]


def apportion(weights: np.ndarray, total: int, carry: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Split ``total`` samples among domains by ``weights``, paying back the ``carry`` of earlier steps.

    Args:
        weights: non-negative weights on the simplex (they are re-normalised here), shape ``[K]``.
        total: samples in the batch (``B``), ≥ 0.
        carry: rounding remainders from the previous step, shape ``[K]`` (zeros at the start).

    Returns:
        ``(counts, carry)``: int64 counts with ``counts.sum() == total`` and the new remainders.
    """
    weights = np.asarray(weights, dtype=np.float64)
    carry = np.asarray(carry, dtype=np.float64)
    if weights.shape != carry.shape or weights.ndim != 1:
        raise ValueError(f"weights {weights.shape} and carry {carry.shape} must be 1-D and of equal length")
    if total < 0:
        raise ValueError(f"total must be ≥ 0, got {total}")
    weights = weights / weights.sum()

    desired = weights * total + carry
    counts = np.floor(np.maximum(desired, 0.0)).astype(np.int64)
    remainder = desired - counts
    deficit = total - int(counts.sum())
    if deficit > 0:
        # Stable sort on −remainder: the largest remainders first, lower index first among equals.
        order = np.argsort(-remainder, kind="stable")
        counts[order[:deficit]] += 1
    while deficit < 0:
        # Only possible when some desired shares are negative (a domain over-served earlier whose weight
        # is now 0): take back one sample at a time from the smallest remainder among domains that have one.
        k = int(np.argmin(np.where(counts > 0, remainder, np.inf)))
        counts[k] -= 1
        remainder[k] += 1
        deficit += 1
    return counts, desired - counts
