"""The mixing math, pure numpy: PiKE's step, the conceptual QP, Balanced-PiKE's tilt and the static
baselines, behind one registry of strategies chosen by name.

Nothing here knows where the statistics come from or where the weights go: no torch, no I/O, no Composer.
"""

from __future__ import annotations

from pike_stream.strategies.apportion import apportion
from pike_stream.strategies.balanced import balanced_dual_weights, balanced_pike_step
from pike_stream.strategies.conceptual import conceptual_pike_weights, separable_qp_weights
from pike_stream.strategies.pike import multiplicative_update, pike_exponents, pike_step
from pike_stream.strategies.registry import STRATEGIES, Strategy, get_strategy
from pike_stream.strategies.simplex import apply_floor, check_weights, pull_toward, with_added
from pike_stream.strategies.static import (
    proportional_weights,
    random_weights,
    round_robin_weights,
    temperature_weights,
    uniform_weights,
)
from pike_stream.strategies.stats import DomainStats

__all__ = [
    "STRATEGIES",
    "DomainStats",
    "Strategy",
    "apply_floor",
    "apportion",
    "balanced_dual_weights",
    "balanced_pike_step",
    "check_weights",
    "conceptual_pike_weights",
    "get_strategy",
    "multiplicative_update",
    "pike_exponents",
    "pike_step",
    "proportional_weights",
    "pull_toward",
    "with_added",
    "random_weights",
    "round_robin_weights",
    "separable_qp_weights",
    "temperature_weights",
    "uniform_weights",
]

