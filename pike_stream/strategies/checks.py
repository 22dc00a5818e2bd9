"""Argument checks shared by the mixing functions: each raises ``ValueError`` naming the argument."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

__all__ = ["check_batch_size", "check_domain_weights", "check_non_negative_int", "check_num_domains", "check_sizes",
           "check_step"]


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


def check_domain_weights(weights: Any, names: Sequence[str] | None = None, *, key: str = "weights") -> dict[str, float]:
    """Mixture weights ``{domain: weight}``: finite real numbers ≥ 0 with a positive sum, not normalised.

    With ``names``, the mapping must name exactly those domains and the result follows their order. The one check
    of the mixer's weights, PiKE's ``initial_weights`` and a config's ``train_loader.weights``: ``ValueError``
    messages start with ``key`` (the argument, option or config key at fault).
    """
    if not isinstance(weights, Mapping) or not weights:
        raise ValueError(f"{key}: must be a mapping {{domain: weight}} naming at least one domain, got {weights!r}")
    values = {str(name): value for name, value in weights.items()}
    if names is not None:
        names = list(names)
        unknown = sorted(set(values) - set(names))
        missing = [n for n in names if n not in values]
        if unknown or missing:
            raise ValueError(f"{key}: must name exactly the domains {names}"
                             + (f"; unknown: {unknown}" if unknown else "")
                             + (f"; missing: {missing}" if missing else ""))
        values = {n: values[n] for n in names}
    bad = {n: w for n, w in values.items()
           if isinstance(w, bool) or not isinstance(w, (int, float, np.integer, np.floating))
           or not math.isfinite(w) or w < 0}
    if bad:
        raise ValueError(f"{key}: must be finite and ≥ 0, got {bad}")
    if sum(values.values()) <= 0:
        raise ValueError(f"{key}: are all zero ({values}); give at least one domain a weight > 0")
    return {n: float(w) for n, w in values.items()}
