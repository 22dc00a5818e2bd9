"""Argument checks shared by the mixing functions: each raises ``ValueError`` naming the argument."""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["check_batch_size", "check_non_negative_int", "check_num_domains", "check_sizes", "check_step"]


def check_non_negative_int(value: Any, name: str) -> int:
    """``value`` as an ``int`` if it is a non-negative integer (``bool`` is not one)."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
    return int(value)


def check_step(step: Any) -> int:
    """A training step: a non-negative integer."""
    return check_non_negative_int(step, "step")


def check_batch_size(batch_size: Any) -> int:
    """The global batch size ``b``: a positive integer."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer (the global batch size b), got {batch_size!r}")
    return int(batch_size)


def check_num_domains(num_domains: Any) -> int:
    """K: a positive integer."""
    if isinstance(num_domains, bool) or not isinstance(num_domains, (int, np.integer)) or num_domains < 1:
        raise ValueError(f"num_domains must be a positive integer, got {num_domains!r}")
    return int(num_domains)


def check_sizes(sizes: Any) -> np.ndarray:
    """Domain sizes (samples or tokens): a non-empty 1-D float64 array, finite, ≥ 0, not all zero."""
    n = np.asarray(sizes, dtype=np.float64)
    if n.ndim != 1 or n.size == 0:
        raise ValueError(f"sizes must be a non-empty 1-D array (one entry per domain), got shape {n.shape}")
    if not np.all(np.isfinite(n)) or np.any(n < 0) or n.sum() <= 0:
        raise ValueError(f"sizes must be finite, non-negative and not all zero, got {n.tolist()}")
    return n
