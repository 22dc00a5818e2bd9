"""The mixing controller: from the step, the weights in force and a probe's statistics to the next weights.

No Composer inside: :class:`~pike_stream.algorithm.PiKE` wires it into Composer's loop, and a plain PyTorch
loop uses it directly (``mixer`` a :class:`~pike_stream.mixer.PiKEStreamingMixer`, ``model`` an
``nn.Module`` or Composer model whose network ``causal_lm_per_sample_loss`` understands)::

    from pike_stream.controller import MixingController
    from pike_stream.strategies import get_strategy
    from pike_stream.probe import causal_lm_per_sample_loss, probe_domains

    controller = MixingController(get_strategy("pike"), mixer.domain_names, update_interval=10)
    mixer.set_weights(controller.initial_weights(list(mixer.domain_sizes.values())))
    for step, batch in zip(range(num_steps), mixer.dataloader()):
        probe = None
        if controller.probes_at(step):
            probe_batch = mixer.probe_batch(controller.probe_samples)   # m samples of every domain
            probe = probe_domains(model, probe_batch, len(mixer.domain_names), causal_lm_per_sample_loss)
        update = controller.next_weights(step, list(mixer.weights.values()), mixer.global_batch_size, probe)
        mixer.set_weights(update.weights)  # composes batch step + 1
        loss = causal_lm_per_sample_loss(model, batch).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

What the controller owns (and saves in its state):

* **The schedule.** Batch ``t`` is an update step when ``t ≥ warmup_steps`` and
  ``(t − warmup_steps) mod update_interval = 0``.
* **The anchor and the pull back to it.** The weights in force at the first step the controller sees (the
  run's initial mixture) are its anchor. After every strategy step the weights move a fraction ``pull`` of
  the way back to the anchor in log space (:func:`~pike_stream.strategies.pull_toward`): the mixture follows
  the *recent* statistics, and a domain that was up-weighted while it was being learned (its gradient large)
  comes back within about ``1/pull`` updates once it is learned, instead of keeping what it gained.
* **Averaging across updates.** Each probe's estimates of ``G_k``, ``S_k`` and the loss are unbiased but
  noisy; each domain's are averaged as ``x ← a·x + (1 − a)·x_fresh`` (``a = ema``; the first estimate is
  taken as it is). A domain's average moves only when it has a fresh estimate.
* **No stale estimates.** The strategy is given, for each domain, its average *only if the domain was
  estimated in this probe*; a domain without a fresh estimate is NaN for this update, so it keeps its weight
  share (:func:`~pike_stream.strategies.pike.multiplicative_update`). With a probe batch
  (:meth:`~pike_stream.mixer.PiKEStreamingMixer.probe_batch`, ``probe_samples`` per domain) every domain is
  estimated at every update whatever its weight, so this only happens when probing the training batch.
* **Gradient conflict.** The probe's cross-domain inner products are unbiased for ``⟨∇L_i, ∇L_j⟩``; they are
  averaged across updates with :data:`CONFLICT_SMOOTHING`, and the cosine of a pair is the averaged inner
  product over the square root of the two averaged ``G`` (:attr:`cosines`). A conflict is reported when a
  pair's averaged cosine stays below the threshold after at least :data:`CONFLICT_MIN_UPDATES` updates
  that saw both domains: a persisting conflict, not one noisy probe.
* **Bad numbers skip the update.** An infinite value, a NaN loss for a domain with samples, or a NaN G or S
  for a domain with more samples than there are ranks (so some rank had two and must have estimated it).
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from pike_stream.strategies import DomainStats, Strategy, apply_floor, check_weights, pull_toward, with_added

if TYPE_CHECKING:  # the controller itself needs neither torch nor Composer
    from pike_stream.probe import ProbeResult

__all__ = [
    "CONFLICT_MIN_UPDATES",
    "CONFLICT_SMOOTHING",
    "DEFAULT_CONFLICT_THRESHOLD",
    "DEFAULT_EMA",
    "DEFAULT_PROBE_SAMPLES",
    "DEFAULT_PULL",
    "DEFAULT_UPDATE_INTERVAL",
    "STATE_FORMAT",
    "STATE_VERSION",
    "MixingController",
    "WeightUpdate",
    "min_cosine",
]

log = logging.getLogger(__name__)

DEFAULT_UPDATE_INTERVAL = 10
"""T0, steps between PiKE updates, as in the headroom benchmark's sweep (``bench/results/headroom.md``). The
probe's overhead is about (probe time / step time) / T0: with 8 domains, the default probe batch and 64-sample
training batches a probe costs about 1.7 steps, so about 17% at T0 = 10 and 1.7% at T0 = 100
(``bench/results/overhead.json``; 24% and 2.4% measured end to end in Composer); with 512-sample batches a
probe costs about 0.23 steps (2.3% at T0 = 10). Raise it where the overhead matters, or take the statistics
from the training step (:data:`DEFAULT_PROBE_SAMPLES`)."""

DEFAULT_PROBE_SAMPLES = 8
"""m, samples of every domain in a probe batch (over all ranks). Each update then estimates every domain
from m samples (two halves of m/2), whatever its weight; averaging across updates (:data:`DEFAULT_EMA`)
cuts the noise further. 0 takes the statistics from the training step itself, at no extra pass
(:mod:`pike_stream.step_statistics`; a domain gets samples in proportion to its weight, so a down-weighted
one goes without estimates)."""

DEFAULT_EMA = 0.5
"""Smoothing of each domain's statistics across updates (0: each probe as it is), as in the headroom
benchmark's sweep."""

DEFAULT_PULL = 0.1
"""λ, the fraction of the log-distance to the anchor (the initial mixture) removed after every update
(:func:`~pike_stream.strategies.pull_toward`); 0 is the paper's rule, where the weights are the running sum of all
past steps. Chosen on the headroom benchmark's tuning seed (``bench/results/headroom.md``)."""

METRICS = ("euclidean", "adam")
"""The inner products the statistics can be measured in (:mod:`pike_stream.metric`): ``"euclidean"``, the
paper's (the SGD step's), or ``"adam"``, that of the Adam(W) step the optimizer takes."""

DEFAULT_METRIC = "euclidean"
"""The statistics' inner product by default (see :data:`METRICS`)."""

DEFAULT_CONFLICT_THRESHOLD = -0.2
"""Report a conflict when a pair's averaged gradient cosine (:attr:`MixingController.cosines`) stays below
this. PiKE's bound assumes low gradient conflict (cosines near zero or positive)."""

CONFLICT_SMOOTHING = 0.9
"""Averaging of the cross-domain inner products across updates (about the last 10 updates)."""

CONFLICT_MIN_UPDATES = 10
"""Updates that must have seen both domains of a pair before its cosine can count as a conflict."""

STATE_FORMAT = "pike_stream.algorithm"
STATE_VERSION = 3
_READABLE_VERSIONS = (1, 2, 3)

_STATISTICS = ("grad_sq", "variance", "loss")
_ADDED_OPTIONS = {"metric": "euclidean", "cross_terms": False}
"""Options added after version 3 of the state, with the value a state saved before them ran with."""


@dataclass(frozen=True)
class WeightUpdate:
    """What :meth:`MixingController.next_weights` decided for the next step.

    Attributes:
        weights: the weights of the next step, ``[K]`` on the simplex.
        stats: the statistics the strategy was given (averaged across updates; NaN for domains without a
            fresh estimate), or None when it got none (no probe, or the update was skipped).
        skipped: why this step's probe was not used (non-finite statistics), else None.
        min_cosine: the lowest averaged pairwise cosine among pairs seen at least
            :data:`CONFLICT_MIN_UPDATES` times, None without one.
        conflict: the two domains with that cosine, when it is below the conflict threshold, else None.
    """

    weights: np.ndarray
    stats: DomainStats | None = None
    skipped: str | None = None
    min_cosine: float | None = None
    conflict: tuple[str, str] | None = None


def min_cosine(cosine: np.ndarray | None) -> tuple[float, int, int] | None:
    """The lowest off-diagonal entry of a cosine matrix and its domains ``(value, i, j)``, ``i < j``.

    NaN entries (pairs without an estimate) are ignored; None when no pair has a value.
    """
    if cosine is None:
        return None
    c = np.asarray(cosine, dtype=np.float64)
    i, j = np.triu_indices(c.shape[0], k=1)
    values = c[i, j]
    defined = np.isfinite(values)
    if not np.any(defined):
        return None
    best = int(np.flatnonzero(defined)[np.argmin(values[defined])])
    return float(values[best]), int(i[best]), int(j[best])


def check_schedule(update_interval: Any, warmup_steps: Any, ema: Any, probe_samples: Any,
                   pull: Any = DEFAULT_PULL, metric: Any = DEFAULT_METRIC) -> None:
    """Raise ``ValueError`` naming the option unless ``update_interval ≥ 1``, ``warmup_steps ≥ 0``,
    ``probe_samples ≥ 0`` (integers), ``0 ≤ ema < 1``, ``0 ≤ pull ≤ 1`` and ``metric`` in :data:`METRICS`."""
    def integer(value: Any, minimum: int) -> bool:
        return bool(not isinstance(value, bool) and isinstance(value, (int, np.integer)) and value >= minimum)

    if not integer(update_interval, 1):
        raise ValueError(f"PiKE option 'update_interval' (T0, steps between updates) must be an integer ≥ 1, "
                         f"got {update_interval!r}")
    if not integer(warmup_steps, 0):
        raise ValueError(f"PiKE option 'warmup_steps' must be an integer ≥ 0, got {warmup_steps!r}")
    if not integer(probe_samples, 0) or probe_samples == 1:
        raise ValueError(f"PiKE option 'probe_samples' (samples of every domain per probe; 0 probes the training "
                         f"batch) must be 0 or an integer ≥ 2, got {probe_samples!r}")
    if isinstance(ema, bool) or not isinstance(ema, (int, float)) or not (math.isfinite(ema) and 0.0 <= ema < 1.0):
        raise ValueError(f"PiKE option 'ema' (smoothing of the statistics across updates) must be in [0, 1), "
                         f"got {ema!r}")
    if isinstance(pull, bool) or not isinstance(pull, (int, float)) or not (math.isfinite(pull) and 0.0 <= pull <= 1.0):
        raise ValueError(f"PiKE option 'pull' (fraction of the way back to the initial mixture at every update) "
                         f"must be in [0, 1], got {pull!r}")
    if not isinstance(metric, str) or metric not in METRICS:
        raise ValueError(f"PiKE option 'metric' (the inner product of the gradient statistics) must be one of "
                         f"{', '.join(map(repr, METRICS))}, got {metric!r}")


class MixingController:
    """Turns the step, the weights in force and a probe's statistics into the weights of the next step.

    It knows nothing about where statistics come from or where weights go (see the module docstring).

    Args:
        strategy: the mixing strategy (:func:`~pike_stream.strategies.get_strategy`).
        domain_names: the domains, in the mixer's order (statistics and weights are in this order).
        update_interval: T0, steps between updates (adaptive strategies).
        warmup_steps: steps before the first update (batches ``0 … warmup_steps`` keep the initial weights).
        ema: averaging of the statistics across updates, in ``[0, 1)``; 0 uses each probe as it is.
        probe_samples: m, samples of every domain in a probe batch; 0: the training batch's. The
            controller only carries the number for its caller (who draws the probe batch).
        pull: λ in ``[0, 1]``, how far the weights return to the anchor after every update; 0: never.
        metric: the inner product the caller measures the statistics in (:data:`METRICS`); like
            ``probe_samples``, the controller only carries it (in :attr:`options`).
        conflict_threshold: report the two domains whose averaged gradient cosine is lowest when it stays
            below this; None never does.
        allow_changes: let :meth:`load_state_dict` continue a state saved with other :attr:`options` (the
            differences are logged); by default such a resume is refused, since the weights would not be
            those of the run that was interrupted.
    """

    def __init__(self, strategy: Strategy, domain_names: Sequence[str], *,
                 update_interval: int = DEFAULT_UPDATE_INTERVAL, warmup_steps: int = 0, ema: float = DEFAULT_EMA,
                 probe_samples: int = DEFAULT_PROBE_SAMPLES, pull: float = DEFAULT_PULL,
                 metric: str = DEFAULT_METRIC,
                 conflict_threshold: float | None = DEFAULT_CONFLICT_THRESHOLD, allow_changes: bool = False) -> None:
        check_schedule(update_interval, warmup_steps, ema, probe_samples, pull, metric)
        if not isinstance(strategy, Strategy):
            raise TypeError(f"strategy must be a mixing strategy (get_strategy(name)), got {type(strategy).__name__}")
        names = list(domain_names)
        if not names or len(set(names)) != len(names):
            raise ValueError(f"domain_names must be distinct and non-empty, got {names}")
        self.strategy = strategy
        self.domain_names = names
        self.update_interval = int(update_interval)
        self.warmup_steps = int(warmup_steps)
        self.ema = float(ema)
        self.probe_samples = int(probe_samples)
        self.pull = float(pull)
        self.metric = str(metric)
        self.conflict_threshold = conflict_threshold
        self.allow_changes = bool(allow_changes)
        self.anchor: np.ndarray | None = None  # the weights of the first step seen (see the module docstring)
        self.updates = 0
        self.skipped_updates = 0
        k = len(names)
        self._estimates = np.full((len(_STATISTICS), k), np.nan)  # rows: grad_sq, variance, loss
        self._inner = np.full((k, k), np.nan)       # averaged ⟨∇L_i, ∇L_j⟩ (diagonal: averaged G)
        self._pair_updates = np.zeros((k, k), np.int64)  # updates that saw both domains of a pair

    @property
    def options(self) -> dict[str, Any]:
        """Everything that decides the weights besides the statistics: the strategy with its options and the
        schedule. Saved in the state; a resume with other options is refused unless ``allow_changes``."""
        strategy = {f.name: getattr(self.strategy, f.name) for f in dataclasses.fields(self.strategy)}  # type: ignore[arg-type]
        return {"strategy": self.strategy.name, **strategy, "update_interval": self.update_interval,
                "warmup_steps": self.warmup_steps, "ema": self.ema, "pull": self.pull,
                "probe_samples": self.probe_samples, "metric": self.metric}

    @property
    def num_domains(self) -> int:
        return len(self.domain_names)

    @property
    def estimates(self) -> DomainStats:
        """Each domain's statistics averaged across updates (NaN for domains never estimated)."""
        return DomainStats(*self._estimates)

    @property
    def cosines(self) -> np.ndarray:
        """``[K, K]`` averaged gradient cosines: averaged ``⟨∇L_i, ∇L_j⟩ / √(Ḡ_i·Ḡ_j)``.

        NaN where a pair was never seen, where an averaged ``G`` is not positive (no usable norm), or where
        the ratio lies outside [−1, 1]: true inner products obey Cauchy–Schwarz, so such a ratio means the
        averaged norms are too small next to the estimates' noise to define a cosine (e.g. a domain of pure
        noise, whose mean gradient is about zero).
        """
        g = np.diag(self._inner).copy()
        with np.errstate(invalid="ignore", divide="ignore"):
            norms = np.sqrt(np.where(g > 0, g, np.nan))
            ratio = self._inner / np.outer(norms, norms)
        cosine = np.where(np.abs(ratio) <= 1.0 + 1e-9, np.clip(ratio, -1.0, 1.0), np.nan)
        np.fill_diagonal(cosine, np.where(g > 0, 1.0, np.nan))
        return cosine

    def initial_weights(self, sizes: Sequence[float] | np.ndarray) -> np.ndarray:
        """The strategy's weights of step 0 for domains of ``sizes`` samples (in the controller's order)."""
        sizes = np.asarray(sizes, dtype=np.float64)
        if sizes.shape != (self.num_domains,):
            raise ValueError(f"sizes has shape {sizes.shape}; expected one entry per domain {self.domain_names}")
        return self.strategy.initial_weights(sizes)

    def probes_at(self, step: int) -> bool:
        """Whether batch ``step`` is probed: adaptive strategy, ``step ≥ warmup_steps`` and on the interval."""
        return (self.strategy.adaptive and step >= self.warmup_steps
                and (step - self.warmup_steps) % self.update_interval == 0)

    def next_weights(self, step: int, weights: Sequence[float] | np.ndarray, batch_size: int,
                     probe: ProbeResult | None = None, *, world_size: int = 1) -> WeightUpdate:
        """The weights of step ``step + 1``, given those of step ``step`` and, on an update step, its probe.

        Args:
            step: the step just composed (0-based).
            weights: the weights in force at ``step`` (those that composed its batch).
            batch_size: the global (training) batch size.
            probe: the statistics measured at ``step`` (:func:`~pike_stream.probe.probe_domains`), or None.
            world_size: the number of data-parallel ranks the probe averaged over.
        """
        current = check_weights(weights, "weights", self.num_domains)
        if self.anchor is None:
            self.anchor = current
        if probe is None or not self.strategy.adaptive:
            return WeightUpdate(self.strategy.weights(step + 1, current, None, batch_size))
        problem = self._bad_statistics(probe, world_size)
        if problem is not None:
            self.skipped_updates += 1
            log.warning("PiKE: update at step %d skipped, weights unchanged (%d skipped so far): %s", step,
                        self.skipped_updates, problem)
            return WeightUpdate(current, None, problem, *self._conflict())
        fresh = np.stack([np.asarray(getattr(probe, name), dtype=np.float64) for name in _STATISTICS])
        self._estimates = self._average(self._estimates, fresh, self.ema)
        if probe.inner is not None:
            inner = np.asarray(probe.inner, dtype=np.float64)
            self._inner = self._average(self._inner, inner, CONFLICT_SMOOTHING)
            self._pair_updates += np.isfinite(inner)
        # The strategy sees the averages of the domains estimated now, and NaN (keep your share) for the rest.
        # Cross terms (strategy option cross_terms) are the conflict measure's averages (over about 10 updates:
        # sketched estimates are noisier than G).
        stats = DomainStats(*np.where(np.isnan(fresh), np.nan, self._estimates),
                            inner=self._inner if probe.inner is not None else None)
        new = self.strategy.weights(step + 1, current, stats, batch_size)
        if self.pull > 0:
            present = ~(np.isnan(stats.grad_sq) | np.isnan(stats.variance))
            new = apply_floor(pull_toward(new, self.anchor, self.pull, present=present),
                              getattr(self.strategy, "min_weight", 0.0))
        self.updates += 1
        return WeightUpdate(new, stats, None, *self._conflict())

    @staticmethod
    def _average(old: np.ndarray, fresh: np.ndarray, smoothing: float) -> np.ndarray:
        """``a·old + (1 − a)·fresh`` where both exist, ``fresh`` where ``old`` is NaN, ``old`` where ``fresh`` is."""
        mixed = np.where(np.isnan(old), fresh, smoothing * old + (1.0 - smoothing) * fresh)
        return np.where(np.isnan(fresh), old, mixed)

    def _conflict(self) -> tuple[float | None, tuple[str, str] | None]:
        """The lowest averaged cosine over pairs seen often enough, and the pair when it is below threshold."""
        cosine = self.cosines
        cosine[self._pair_updates < CONFLICT_MIN_UPDATES] = np.nan
        lowest = min_cosine(cosine)
        if lowest is None:
            return None, None
        value, i, j = lowest
        conflict = None
        if self.conflict_threshold is not None and value < self.conflict_threshold:
            conflict = (self.domain_names[i], self.domain_names[j])
        return value, conflict

    def _bad_statistics(self, probe: ProbeResult, world_size: int) -> str | None:
        """Why ``probe`` must not be used (named by domain), or None when it can be."""
        counts = np.asarray(probe.counts)
        if counts.shape != (self.num_domains,):
            raise ValueError(f"the probe covers {counts.size} domains; the controller has {self.num_domains} "
                             f"({self.domain_names})")
        problems = []
        for name in _STATISTICS:
            values = np.asarray(getattr(probe, name), dtype=np.float64)
            expected = counts > 0 if name == "loss" else counts > world_size
            bad = np.isinf(values) | (np.isnan(values) & expected)
            if np.any(bad):
                problems.append(f"{name} is non-finite for "
                                + ", ".join(f"{self.domain_names[k]} ({values[k]})" for k in np.flatnonzero(bad)))
        if probe.inner is not None and np.any(np.isinf(probe.inner)):
            problems.append("a cross-domain inner product is infinite")
        return "; ".join(problems) or None

    def state_dict(self) -> dict[str, Any]:
        """Everything a resumed run needs to make the same decisions: small, versioned, keyed by domain."""
        names = self.domain_names
        return {
            "format": STATE_FORMAT,
            "version": STATE_VERSION,
            "strategy": self.strategy.name,
            "updates": self.updates,
            "skipped_updates": self.skipped_updates,
            "domains": {name: {stat: float(self._estimates[row, k]) for row, stat in enumerate(_STATISTICS)}
                        for k, name in enumerate(names)},
            "inner": {a: {b: float(self._inner[i, j]) for j, b in enumerate(names)} for i, a in enumerate(names)},
            "pair_updates": {a: {b: int(self._pair_updates[i, j]) for j, b in enumerate(names)}
                             for i, a in enumerate(names)},
            "options": self.options,
            "anchor": None if self.anchor is None else {name: float(self.anchor[k]) for k, name in enumerate(names)},
        }

    def _check_options(self, obj: Mapping[str, Any]) -> None:
        """Refuse (or, with ``allow_changes``, log) a state saved with other :attr:`options`."""
        saved = obj.get("options")
        if saved is None:  # a state before version 3 records only the strategy's name
            saved, current = {"strategy": obj.get("strategy")}, {"strategy": self.strategy.name}
        else:  # options added since version 3, as states saved before them ran
            current = self.options
            saved = {**{k: v for k, v in _ADDED_OPTIONS.items() if k in current}, **saved}
        changed = [f"{key} {saved.get(key, '(unset)')!r} → {current.get(key, '(unset)')!r}"
                   for key in sorted(set(saved) | set(current)) if saved.get(key) != current.get(key)]
        if not changed:
            return
        if not self.allow_changes:
            raise ValueError(f"the checkpoint's PiKE options differ from this run's ({'; '.join(changed)}): the "
                             f"resumed weights would not be those of the interrupted run; restore the options, or "
                             f"set allow_changes (config: algorithms.pike.allow_changes: true) to continue with "
                             f"the new ones")
        log.warning("PiKE: continuing after update %s with changed options (allow_changes): %s",
                    obj.get("updates"), "; ".join(changed))

    def load_state_dict(self, obj: Mapping[str, Any], *, allow_domain_changes: bool = False) -> None:
        """Continue from a :meth:`state_dict`; refuses another format, version or set of domains (unless
        ``allow_domain_changes``), and other :attr:`options` unless ``allow_changes``.

        With ``allow_domain_changes`` (the mixer's option of that name), a domain the state lacks starts with
        no estimates and no inner products, and takes an equal share (1/K) of the pull's anchor; the other
        domains keep theirs in proportion; a domain the state has and this run lacks is dropped.

        A state without domains (saved before the mixer was known) restores the counters only; a version-1
        state (before cross-domain inner products were kept) starts them afresh; a state before version 3
        (no anchor) takes the weights in force at the first step after the resume as its anchor.
        """
        if not isinstance(obj, Mapping) or obj.get("format") != STATE_FORMAT:
            found = obj.get("format") if isinstance(obj, Mapping) else type(obj).__name__
            raise ValueError(f"not a PiKE state (expected format {STATE_FORMAT!r}, got {found!r})")
        if obj.get("version") not in _READABLE_VERSIONS:
            raise ValueError(f"PiKE state version {obj.get('version')!r} is not supported (this pike_stream "
                             f"reads versions {', '.join(map(str, _READABLE_VERSIONS))})")
        missing = [key for key in ("strategy", "updates", "skipped_updates", "domains") if key not in obj]
        if missing:
            raise ValueError(f"malformed PiKE state: field {missing[0]!r} is missing")
        saved = obj["domains"]
        names = self.domain_names
        if saved and set(saved) != set(names) and not allow_domain_changes:
            raise ValueError(f"the saved PiKE state covers domains {sorted(saved)}, this run has {sorted(names)} "
                             f"(the mixer's allow_domain_changes lets a resume add or retire domains)")
        self._check_options(obj)
        self._estimates = np.array([[saved[name][stat] if name in (saved or {}) else np.nan for name in names]
                                    for stat in _STATISTICS], dtype=np.float64)
        inner, pairs = obj.get("inner") or {}, obj.get("pair_updates") or {}
        self._inner = np.array([[inner[a][b] if a in inner and b in inner[a] else np.nan for b in names]
                                for a in names], dtype=np.float64)
        self._pair_updates = np.array([[pairs[a][b] if a in pairs and b in pairs[a] else 0 for b in names]
                                       for a in names], dtype=np.int64)
        anchor = obj.get("anchor")
        if anchor is not None and set(anchor) != set(names):
            if not allow_domain_changes:
                raise ValueError(f"the saved PiKE anchor covers domains {sorted(anchor)}, this run has "
                                 f"{sorted(names)}")
            values = with_added(np.array([float(anchor.get(name, 0.0)) for name in names]),
                                np.array([name not in anchor for name in names]), np.ones(len(names)))
            anchor = {name: float(v) for name, v in zip(names, values)}
        self.anchor = None if anchor is None else check_weights([anchor[name] for name in names], "the saved anchor")
        self.updates = int(obj["updates"])
        self.skipped_updates = int(obj["skipped_updates"])
