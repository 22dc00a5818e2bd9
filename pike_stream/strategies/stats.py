"""Per-domain gradient statistics, the only input the adaptive strategies take from training.

Where the numbers come from (a probe over the training batch, all-reduced across ranks) is not this
package's concern; it only fixes their meaning and checks them. NaN marks a domain without an estimate
this time (fewer than two of its samples were in the batch); infinities are always an error.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["DomainStats", "as_statistic"]


def as_statistic(
    values: np.ndarray, name: str, num_domains: int | None = None, *, nonnegative: bool = False
) -> np.ndarray:
    """Return ``values`` as a read-only float64 vector of per-domain estimates, or raise ``ValueError`` naming ``name``.

    Entries must be finite or NaN (missing); with ``nonnegative`` the finite ones must be ≥ 0.
    ``num_domains``, when given, is the required length.
    """
    v = np.array(values, dtype=np.float64)
    if v.ndim != 1 or v.size == 0:
        raise ValueError(f"{name} must be a non-empty 1-D array (one entry per domain), got shape {v.shape}")
    if num_domains is not None and v.size != num_domains:
        raise ValueError(f"{name} has {v.size} entries, expected one per domain ({num_domains})")
    if np.any(np.isinf(v)):
        raise ValueError(f"{name} must be finite or NaN (missing), got {v.tolist()}")
    if nonnegative and np.any(v[~np.isnan(v)] < 0):
        raise ValueError(f"{name} must be ≥ 0 where present, got {v.tolist()}")
    v.setflags(write=False)
    return v


@dataclass(frozen=True, eq=False)
class DomainStats:
    """One refresh of the per-domain statistics, in the mixer's domain order (all arrays have length K).

    Attributes:
        grad_sq: ``G_k``, an estimate of ‖∇L_k‖² (unbiased, so it may come out slightly negative); NaN = none.
        variance: ``S_k``, an estimate of σ_k², the per-sample gradient variance of domain k (≥ 0); NaN = none.
        loss: the mean loss of domain k's samples (Balanced-PiKE's tilt, logging); NaN = none.
        inner: ``[K, K]`` estimates of ``⟨∇L_i, ∇L_j⟩`` between domains (symmetric; NaN = none; the diagonal
            is not used), or None; what ``cross_terms`` adds to ``G`` (:func:`~pike_stream.strategies.pike.gains`).
    """

    grad_sq: np.ndarray
    variance: np.ndarray
    loss: np.ndarray
    inner: np.ndarray | None = None

    def __post_init__(self) -> None:
        grad_sq = as_statistic(self.grad_sq, "grad_sq")
        num_domains = grad_sq.size
        object.__setattr__(self, "grad_sq", grad_sq)
        object.__setattr__(self, "variance", as_statistic(self.variance, "variance", num_domains, nonnegative=True))
        object.__setattr__(self, "loss", as_statistic(self.loss, "loss", num_domains))
        if self.inner is not None:
            inner = np.array(self.inner, dtype=np.float64)
            if inner.shape != (num_domains, num_domains) or np.any(np.isinf(inner)):
                raise ValueError(f"inner must be a [{num_domains}, {num_domains}] matrix of finite values or NaN, "
                                 f"got shape {inner.shape}")
            inner.setflags(write=False)
            object.__setattr__(self, "inner", inner)

    @property
    def num_domains(self) -> int:
        """K, the number of domains."""
        return int(self.grad_sq.size)
