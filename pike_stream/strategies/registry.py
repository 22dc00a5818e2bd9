"""Mixing strategies chosen by name: the registry a training config names one from.

A strategy turns (step, the weights in force, fresh statistics or ``None``, the global batch size) into
the weights for that step. It holds only its options — no counters, no RNG state — so the weights of a
run are a pure function of its inputs and a resumed run reproduces them::

    strategy = get_strategy("pike", zeta1=0.05, zeta2=0.05)
    w = strategy.initial_weights(sizes)                    # the weights in force at step 0
    for step in range(1, num_steps):
        stats = probe(...) if step % T0 == 0 else None     # DomainStats, or None between refreshes
        w = strategy.weights(step, w, stats, batch_size)

Static strategies never look at ``stats``; adaptive ones (``adaptive = True``) move only when given some.
Every option is keyword-only, typed and checked when the strategy is built; a wrong name or value is a
``ValueError`` that names the option. PiKE's and Balanced-PiKE's defaults (ζ1 = ζ2 = 0.1, normalize on,
min_weight 0.01) are the best of the sweep on the headroom benchmark's tuning seed
(bench/results/headroom.md, bench/bench_headroom.py): larger steps, the raw-scale rule and dropping the
variance term all scored worse there. Conceptual PiKE's constants are the paper's and carry the gradient
scale, so its defaults are only starting points.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol, runtime_checkable

import numpy as np

from pike_stream.strategies.balanced import balanced_pike_step
from pike_stream.strategies.checks import check_batch_size, check_sizes, check_step
from pike_stream.strategies.conceptual import conceptual_pike_weights
from pike_stream.strategies.pike import pike_step
from pike_stream.strategies.simplex import apply_floor, check_weights
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
    "BalancedPiKEStrategy",
    "ConceptualPiKEStrategy",
    "PiKEStrategy",
    "ProportionalStrategy",
    "RandomStrategy",
    "RoundRobinStrategy",
    "Strategy",
    "TemperatureStrategy",
    "UniformStrategy",
    "get_strategy",
]


@runtime_checkable
class Strategy(Protocol):
    """What every mixing strategy provides.

    ``name`` is its registry key; ``adaptive`` says whether it needs :class:`DomainStats`.
    ``initial_weights(sizes)`` gives the weights in force at step 0 from the samples per domain.
    ``weights(step, previous, stats, batch_size)`` gives the weights in force at ``step``, given those in
    force before it (``previous``), the statistics refreshed for it (``None`` when there was no refresh)
    and the global batch size; it is pure and returns a new array on the simplex.
    """

    name: ClassVar[str]
    adaptive: ClassVar[bool]

    def initial_weights(self, sizes: np.ndarray) -> np.ndarray: ...

    def weights(self, step: int, previous: np.ndarray, stats: DomainStats | None, batch_size: int) -> np.ndarray: ...


def _option_error(strategy: str, option: str, requirement: str, value: Any) -> ValueError:
    return ValueError(f"mixing strategy {strategy!r}: option {option!r} must be {requirement}, got {value!r}")


def _check_number(strategy: str, option: str, value: Any, *, minimum: float, strict: bool) -> None:
    """Raise unless ``value`` is a finite real number above ``minimum`` (``>`` if ``strict`` else ``≥``)."""
    requirement = f"a finite number {'>' if strict else '≥'} {minimum:g}"
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise _option_error(strategy, option, requirement, value)
    if not (np.isfinite(value) and (value > minimum if strict else value >= minimum)):
        raise _option_error(strategy, option, requirement, value)


def _check_min_weight(strategy: str, value: Any) -> None:
    """``min_weight`` ∈ [0, 1); the bound 1/K is checked when K is known (when weights are computed)."""
    _check_number(strategy, "min_weight", value, minimum=0.0, strict=False)
    if value >= 1.0:
        raise _option_error(strategy, "min_weight", "< 1/K (K = number of domains)", value)


def _check_bool(strategy: str, option: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise _option_error(strategy, option, "true or false", value)


def _check_initial(strategy: str, value: Any) -> None:
    if value not in ("uniform", "proportional"):
        raise _option_error(strategy, "initial", "one of 'uniform', 'proportional'", value)


def _check_pike_options(strategy: PiKEStrategy | BalancedPiKEStrategy) -> None:
    """The options PiKE and Balanced-PiKE share."""
    _check_number(strategy.name, "zeta1", strategy.zeta1, minimum=0.0, strict=True)
    _check_number(strategy.name, "zeta2", strategy.zeta2, minimum=0.0, strict=False)
    _check_min_weight(strategy.name, strategy.min_weight)
    _check_bool(strategy.name, "normalize", strategy.normalize)
    _check_bool(strategy.name, "cross_terms", strategy.cross_terms)
    _check_initial(strategy.name, strategy.initial)


def _previous(step: int, previous: np.ndarray, stats: DomainStats | None, batch_size: int) -> np.ndarray:
    """Check the arguments every ``weights`` call shares; return ``previous`` on the simplex."""
    check_step(step)
    check_batch_size(batch_size)
    w = check_weights(previous, "previous")
    if stats is not None and stats.num_domains != w.size:
        raise ValueError(f"stats cover {stats.num_domains} domains, previous weights {w.size}")
    return w


def _adaptive_initial(sizes: np.ndarray, initial: str, min_weight: float) -> np.ndarray:
    n = check_sizes(sizes)
    w = uniform_weights(n.size) if initial == "uniform" else proportional_weights(n)
    return apply_floor(w, min_weight)


@dataclass(frozen=True, kw_only=True)
class _FixedStrategy:
    """A static strategy whose weights never change after :meth:`initial_weights`."""

    adaptive: ClassVar[bool] = False

    def weights(self, step: int, previous: np.ndarray, stats: DomainStats | None, batch_size: int) -> np.ndarray:
        """The weights never change: ``previous`` (the initial weights) for every step."""
        return _previous(step, previous, stats, batch_size)


@dataclass(frozen=True, kw_only=True)
class UniformStrategy(_FixedStrategy):
    """The same share for every domain, ``w_k = 1/K`` (the paper's "Mix"). No options."""

    name: ClassVar[str] = "uniform"

    def initial_weights(self, sizes: np.ndarray) -> np.ndarray:
        return uniform_weights(check_sizes(sizes).size)


@dataclass(frozen=True, kw_only=True)
class ProportionalStrategy(_FixedStrategy):
    """Shares proportional to domain sizes, ``w_k = n_k/Σ n`` (plain concatenation). No options."""

    name: ClassVar[str] = "proportional"

    def initial_weights(self, sizes: np.ndarray) -> np.ndarray:
        return proportional_weights(sizes)


@dataclass(frozen=True, kw_only=True)
class TemperatureStrategy(_FixedStrategy):
    """Temperature sampling ``w_k ∝ n_k^(1/T)``.

    Options:
        temperature: ``T`` > 0; 1 is proportional, larger flattens towards uniform.
    """

    name: ClassVar[str] = "temperature"
    temperature: float = 2.0

    def __post_init__(self) -> None:
        _check_number(self.name, "temperature", self.temperature, minimum=0.0, strict=True)

    def initial_weights(self, sizes: np.ndarray) -> np.ndarray:
        return temperature_weights(sizes, self.temperature)


@dataclass(frozen=True, kw_only=True)
class RoundRobinStrategy:
    """Each step entirely from one domain, in turn: step ``t`` is domain ``t mod K``. No options."""

    name: ClassVar[str] = "round_robin"
    adaptive: ClassVar[bool] = False

    def initial_weights(self, sizes: np.ndarray) -> np.ndarray:
        return round_robin_weights(0, check_sizes(sizes).size)

    def weights(self, step: int, previous: np.ndarray, stats: DomainStats | None, batch_size: int) -> np.ndarray:
        """One-hot on domain ``step mod K``."""
        return round_robin_weights(step, _previous(step, previous, stats, batch_size).size)


@dataclass(frozen=True, kw_only=True)
class RandomStrategy:
    """Each step entirely from one domain drawn uniformly, derived from ``(seed, step)``.

    Options:
        seed: a non-negative integer.
    """

    name: ClassVar[str] = "random"
    adaptive: ClassVar[bool] = False
    seed: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.seed, bool) or not isinstance(self.seed, (int, np.integer)) or self.seed < 0:
            raise _option_error(self.name, "seed", "a non-negative integer", self.seed)

    def initial_weights(self, sizes: np.ndarray) -> np.ndarray:
        return random_weights(0, check_sizes(sizes).size, self.seed)

    def weights(self, step: int, previous: np.ndarray, stats: DomainStats | None, batch_size: int) -> np.ndarray:
        """One-hot on the domain drawn for ``(seed, step)``."""
        return random_weights(step, _previous(step, previous, stats, batch_size).size, self.seed)


@dataclass(frozen=True, kw_only=True)
class PiKEStrategy:
    """Practical PiKE: a multiplicative step on every statistics refresh (:func:`.pike.pike_step`).

    Options (defaults from the benchmark's sweep, see the module docstring):
        zeta1: step size of the gradient term ``ζ1`` > 0.
        zeta2: step size of the variance term ``ζ2`` ≥ 0.
        min_weight: floor on every domain's weight, ``0 ≤ m < 1/K``: bounds how far a domain can fall, so a
            multiplicative step can bring it back within a few updates. (It does not keep statistics coming:
            at ``m·b < 2`` a domain gets under two samples a batch. The probe batch does that.)
        normalize: divide G and S by a common scale first, so ζ1, ζ2 do not depend on the gradient scale.
        initial: the weights at step 0, ``"uniform"`` or ``"proportional"`` (to sizes), floored.
        cross_terms: add the cross-domain inner products to each domain's gradient term, so that a domain is
            credited for lowering the other domains' losses too (:func:`.pike.gains`); the paper drops them.
    """

    name: ClassVar[str] = "pike"
    adaptive: ClassVar[bool] = True
    zeta1: float = 0.1
    zeta2: float = 0.1
    min_weight: float = 0.01
    normalize: bool = True
    initial: str = "uniform"
    cross_terms: bool = False

    def __post_init__(self) -> None:
        _check_pike_options(self)

    def initial_weights(self, sizes: np.ndarray) -> np.ndarray:
        return _adaptive_initial(sizes, self.initial, self.min_weight)

    def weights(self, step: int, previous: np.ndarray, stats: DomainStats | None, batch_size: int) -> np.ndarray:
        """``previous`` without ``stats``; with them, one step (:meth:`update`) from ``previous``."""
        w = _previous(step, previous, stats, batch_size)
        return w if stats is None else self.update(w, stats, batch_size)

    def update(self, w: np.ndarray, stats: DomainStats, batch_size: int) -> np.ndarray:
        """One PiKE step from ``w``."""
        return pike_step(w, stats.grad_sq, stats.variance, batch_size, zeta1=self.zeta1, zeta2=self.zeta2,
                         min_weight=self.min_weight, normalize=self.normalize, inner=self._inner(stats))

    def _inner(self, stats: DomainStats) -> np.ndarray | None:
        """The cross-domain inner products the step uses: those of ``stats`` with ``cross_terms``, else none."""
        if not self.cross_terms:
            return None
        if stats.inner is None:
            raise ValueError(f"{self.name} option 'cross_terms' needs the cross-domain inner products (the probe's "
                             f"sketch: sketch_dim > 0)")
        return stats.inner


@dataclass(frozen=True, kw_only=True)
class BalancedPiKEStrategy(PiKEStrategy):
    """Balanced-PiKE: PiKE on the tilted objective (:func:`~pike_stream.strategies.balanced.balanced_pike_step`).

    Options: those of :class:`PiKEStrategy` plus ``tau`` > 0, the tilt (τ → 0: plain PiKE; large τ: the
    highest-loss domain dominates; the paper recommends 1–3).
    """

    name: ClassVar[str] = "balanced_pike"
    tau: float = 1.0

    def __post_init__(self) -> None:
        _check_number(self.name, "tau", self.tau, minimum=0.0, strict=True)
        super().__post_init__()

    def update(self, w: np.ndarray, stats: DomainStats, batch_size: int) -> np.ndarray:
        """One Balanced-PiKE step from ``w``."""
        return balanced_pike_step(w, stats.grad_sq, stats.variance, stats.loss, batch_size, tau=self.tau,
                                  zeta1=self.zeta1, zeta2=self.zeta2, min_weight=self.min_weight,
                                  normalize=self.normalize, inner=self._inner(stats))


@dataclass(frozen=True, kw_only=True)
class ConceptualPiKEStrategy:
    """Conceptual PiKE: on every refresh, jump to the optimum of the bound's QP
    (:func:`~pike_stream.strategies.conceptual.conceptual_pike_weights`).

    Domains without estimates keep their weight; the others share the rest by the QP. The constants are the
    paper's: the weights depend on the gradient scale through them (no normalisation).

    Options (starting points, see the module docstring):
        lr: the step size η > 0.
        smoothness: the smoothness constant L > 0.
        beta: β > 0.
        gamma: γ ≥ 0.
        min_weight: floor on every domain's weight, ``0 ≤ m < 1/K`` (0: the QP's optimum itself, which
            often leaves domains at 0 and then without statistics).
        initial: the weights at step 0, ``"uniform"`` or ``"proportional"``.
    """

    name: ClassVar[str] = "conceptual_pike"
    adaptive: ClassVar[bool] = True
    lr: float = 1e-3
    smoothness: float = 1.0
    beta: float = 1.0
    gamma: float = 1.0
    min_weight: float = 0.0
    initial: str = "uniform"

    def __post_init__(self) -> None:
        _check_number(self.name, "lr", self.lr, minimum=0.0, strict=True)
        _check_number(self.name, "smoothness", self.smoothness, minimum=0.0, strict=True)
        _check_number(self.name, "beta", self.beta, minimum=0.0, strict=True)
        _check_number(self.name, "gamma", self.gamma, minimum=0.0, strict=False)
        _check_min_weight(self.name, self.min_weight)
        _check_initial(self.name, self.initial)

    def initial_weights(self, sizes: np.ndarray) -> np.ndarray:
        return _adaptive_initial(sizes, self.initial, self.min_weight)

    def weights(self, step: int, previous: np.ndarray, stats: DomainStats | None, batch_size: int) -> np.ndarray:
        """``previous`` without ``stats``; with them, the QP optimum over the domains with estimates."""
        w = _previous(step, previous, stats, batch_size)
        if stats is None:
            return w
        present = ~(np.isnan(stats.grad_sq) | np.isnan(stats.variance))
        mass = float(w[present].sum())
        if mass > 0:
            w[present] = conceptual_pike_weights(
                stats.grad_sq[present],
                stats.variance[present],
                batch_size,
                lr=self.lr,
                smoothness=self.smoothness,
                beta=self.beta,
                gamma=self.gamma,
                total=mass,
            )
        return apply_floor(w, self.min_weight)


STRATEGIES: dict[str, type] = {
    cls.name: cls
    for cls in (
        UniformStrategy,
        ProportionalStrategy,
        TemperatureStrategy,
        RoundRobinStrategy,
        RandomStrategy,
        PiKEStrategy,
        BalancedPiKEStrategy,
        ConceptualPiKEStrategy,
    )
}
"""Strategy classes by name; each is built with keyword options only."""


def get_strategy(name: str, **options: Any) -> Strategy:
    """Build the strategy registered as ``name`` with ``options``.

    Raises:
        ValueError: ``name`` is not registered (the message lists the names), an option is not one the
            strategy takes (the message lists those it takes), or an option's value is out of range (the
            message names the option).
    """
    if name not in STRATEGIES:
        raise ValueError(f"unknown mixing strategy {name!r}; valid strategies: {', '.join(sorted(STRATEGIES))}")
    cls = STRATEGIES[name]
    valid = [field.name for field in dataclasses.fields(cls)]
    unknown = sorted(set(options) - set(valid))
    if unknown:
        takes = f"valid options: {', '.join(valid)}" if valid else "it takes no options"
        raise ValueError(f"mixing strategy {name!r} has no option {', '.join(map(repr, unknown))}; {takes}")
    return cls(**options)
