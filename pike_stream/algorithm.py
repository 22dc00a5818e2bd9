"""PiKE as a Composer algorithm: every few steps, probe the batch, step the mixing weights, set them on the mixer.

Two layers, as Composer splits its own algorithms into a pure function and a thin ``Algorithm``:

* :class:`MixingController` decides the weights of every step from the step number, the weights in force
  and (on update steps) a probe's statistics: the update schedule, smoothing of the statistics across
  updates, the checks that skip an update on bad numbers, and the strategy call. No Composer inside.
* :class:`PiKE` wires it into Composer's training loop: it finds the mixer, probes ``state.model`` on the
  incoming batch, hands the weights to the mixer, logs, and saves the controller's state in checkpoints.

Where :class:`PiKE` runs in Composer's loop (see ``composer/core/event.py``), for batch ``t`` (0-based,
``state.timestamp.batch``)::

    # <FIT_START>            find the PiKEStreamingMixer in state.train_dataloader.dataset; on a fresh run
    #                        set the initial weights (they compose batch 0); a resumed run keeps the weights
    #                        restored with the mixer's checkpoint state
    for t in range(num_batches):
        # <BEFORE_DATALOADER>
        batch = next(dataloader)      # the mixer composes batch t with the weights in force
        # <AFTER_DATALOADER>     log the weights of batch t; on an update step, probe batch t with
        #                        state.model (before training sees it; gradients, modes, buffers and RNG
        #                        are restored afterwards); compute the weights of batch t+1 and
        #                        mixer.set_weights(...) — zero lag: they compose the very next batch
        # <BATCH_START> … forward, loss, backward, optimizer.step() … <BATCH_END>
        # <BATCH_CHECKPOINT>     Composer saves PiKE.state_dict() with the mixer's state (which holds the
        #                        weights of batch t+1), so a resumed run continues with the same decisions

Update steps (adaptive strategies): batch ``t`` is probed when ``t ≥ warmup_steps`` and
``(t − warmup_steps) mod update_interval = 0``; batches ``0 … warmup_steps`` use the initial weights.
Non-adaptive strategies never probe: round-robin and random set new weights every step, the static ones
keep their initial weights.

The same controller drives a plain PyTorch loop (``model`` an ``nn.Module`` or Composer model whose
network ``causal_lm_per_sample_loss`` understands, ``mixer`` a :class:`~pike_stream.mixer.PiKEStreamingMixer`)::

    from pike_stream.algorithm import MixingController
    from pike_stream.mixing import get_strategy
    from pike_stream.probe import causal_lm_per_sample_loss, probe_domains

    controller = MixingController(get_strategy("pike"), mixer.domain_names, update_interval=100)
    mixer.set_weights(controller.initial_weights(list(mixer.domain_sizes.values())))
    for step, batch in zip(range(num_steps), mixer.dataloader()):
        probe = None
        if controller.probes_at(step):
            probe = probe_domains(model, batch, len(mixer.domain_names), causal_lm_per_sample_loss)
        update = controller.next_weights(step, list(mixer.weights.values()), mixer.global_batch_size, probe)
        mixer.set_weights(update.weights)  # composes batch step + 1
        loss = causal_lm_per_sample_loss(model, batch).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from composer.core import Algorithm, DataSpec, Event, State
from composer.core.precision import get_precision_context
from composer.loggers import Logger
from composer.utils import dist
from torch.utils.data import DataLoader

from pike_stream.mixer import PiKEStreamingMixer
from pike_stream.mixing import DomainStats, Strategy, check_weights, get_strategy
from pike_stream.probe import ProbeResult, causal_lm_per_sample_loss, probe_domains

__all__ = [
    "DEFAULT_CONFLICT_THRESHOLD",
    "DEFAULT_UPDATE_INTERVAL",
    "STATE_FORMAT",
    "STATE_VERSION",
    "MixingController",
    "PiKE",
    "WeightUpdate",
    "find_mixer",
    "min_cosine",
]

log = logging.getLogger(__name__)

DEFAULT_UPDATE_INTERVAL = 25
"""T0, steps between PiKE updates: the largest interval that beat uniform weights in the benchmark's sweep
(bench/results/convergence.md: 1,000 steps, 0.45M-parameter GPT-2, six domains; T0 = 10 scored best, 25
next, 50 and longer intervals with proportionally larger steps lost to uniform weights). Shorter is better
there but costs more: the training-time overhead is about (probe time / step time) / T0, and a probe is one
extra forward and backward pass of the batch in 2K pieces (two halves per domain), 1.3, 2.1 and 5.7 training
steps for K = 2, 8 and 32 domains on a small GPT-2 on CPU (bench/results/overhead.json). At T0 = 25 that is
about 5%, 8% and 23% there; T0 = 200 keeps it within about 1% for K ≤ 8. Raise it for many domains or long
runs."""

DEFAULT_CONFLICT_THRESHOLD = -0.2
"""Warn when the lowest pairwise cosine between domain gradients falls below this. PiKE's bound assumes low
gradient conflict (cosines near zero or positive). The probe's cosines are those of noisy mini-batch
gradients, pulled towards zero, and its 256-bucket sketch alone errs by about 1/√256 ≈ 0.06, so only a
clearly negative value is taken for a real conflict."""

CONFLICT_WARNING_EVERY = 50
"""At most one gradient-conflict warning per this many updates (the first conflict always warns)."""

STATE_FORMAT = "pike_stream.algorithm"
STATE_VERSION = 1

_STATISTICS = ("grad_sq", "variance", "loss")


@dataclass(frozen=True)
class WeightUpdate:
    """What :meth:`MixingController.next_weights` decided for the next step.

    Attributes:
        weights: the weights of the next step, ``[K]`` on the simplex.
        stats: the statistics the strategy was given (smoothed across updates, last estimates carried for
            domains without a fresh one), or None when it got none (no probe, or the update was skipped).
        skipped: why this step's probe was not used (non-finite statistics), else None.
        min_cosine: the lowest pairwise cosine between domain gradients in the probe, None without one.
        conflict: the two domains with that cosine, when it is below the conflict threshold, else None.
    """

    weights: np.ndarray
    stats: DomainStats | None = None
    skipped: str | None = None
    min_cosine: float | None = None
    conflict: tuple[str, str] | None = None


def min_cosine(cosine: np.ndarray | None) -> tuple[float, int, int] | None:
    """The lowest off-diagonal entry of a cosine matrix and its domains ``(value, i, j)``, ``i < j``.

    NaN entries (domains without an estimate) are ignored; None when no pair has a value.
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


def _check_schedule(update_interval: Any, warmup_steps: Any, ema: Any) -> None:
    """Raise ``ValueError`` naming the option unless ``update_interval ≥ 1``, ``warmup_steps ≥ 0`` (integers)
    and ``0 ≤ ema < 1``."""
    if isinstance(update_interval, bool) or not isinstance(update_interval, (int, np.integer)) or update_interval < 1:
        raise ValueError(f"PiKE option 'update_interval' (T0, steps between updates) must be an integer ≥ 1, "
                         f"got {update_interval!r}")
    if isinstance(warmup_steps, bool) or not isinstance(warmup_steps, (int, np.integer)) or warmup_steps < 0:
        raise ValueError(f"PiKE option 'warmup_steps' must be an integer ≥ 0, got {warmup_steps!r}")
    if isinstance(ema, bool) or not isinstance(ema, (int, float)) or not (math.isfinite(ema) and 0.0 <= ema < 1.0):
        raise ValueError(f"PiKE option 'ema' (smoothing of the statistics across updates) must be in [0, 1), "
                         f"got {ema!r}")


class MixingController:
    """Turns the step, the weights in force and a probe's statistics into the weights of the next step.

    It knows nothing about where statistics come from or where weights go (no Composer); both
    :class:`PiKE` and a plain training loop use it (see the module docstring).

    Statistics across updates: with ``ema = a``, each domain's G, S and loss are smoothed as
    ``x ← a·x + (1 − a)·x_fresh`` (the first estimate is taken as it is). A domain without a fresh estimate
    (fewer than two of its samples on every rank, so the probe returns NaN) keeps its last estimate: it is
    carried into the update, so a domain whose weight fell too low to be probed is still moved by what was
    last known of it — back up if that was favourable, else it stays on the strategy's ``min_weight`` floor
    until a batch holds enough of its samples again. A domain never estimated stays NaN, and the strategy
    keeps its weight share.

    Bad statistics skip the update: an infinite value, a NaN loss for a domain with samples, or a NaN G or S
    for a domain with more samples than there are ranks (so some rank had two and must have estimated it).
    The weights then stay as they are, nothing is smoothed in, a warning is logged and
    :attr:`skipped_updates` counts it.

    Args:
        strategy: the mixing strategy (:func:`~pike_stream.mixing.get_strategy`).
        domain_names: the domains, in the mixer's order (statistics and weights are in this order).
        update_interval: T0, steps between updates (adaptive strategies).
        warmup_steps: steps before the first update (batches ``0 … warmup_steps`` keep the initial weights).
        ema: smoothing of the statistics across updates, in ``[0, 1)``; 0 uses each probe as it is.
        conflict_threshold: report the two domains whose gradient cosine is lowest when it falls below this;
            None never does.
    """

    def __init__(self, strategy: Strategy, domain_names: Sequence[str], *,
                 update_interval: int = DEFAULT_UPDATE_INTERVAL, warmup_steps: int = 0, ema: float = 0.0,
                 conflict_threshold: float | None = DEFAULT_CONFLICT_THRESHOLD) -> None:
        _check_schedule(update_interval, warmup_steps, ema)
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
        self.conflict_threshold = conflict_threshold
        self.updates = 0
        self.skipped_updates = 0
        self._estimates = np.full((len(_STATISTICS), len(names)), np.nan)  # rows: grad_sq, variance, loss

    @property
    def num_domains(self) -> int:
        return len(self.domain_names)

    @property
    def estimates(self) -> DomainStats:
        """The current (smoothed, carried) statistics; NaN for domains never estimated."""
        return DomainStats(*self._estimates)

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
            step: the step just composed (0-based), whose batch ``probe`` measured.
            weights: the weights in force at ``step`` (those that composed its batch).
            batch_size: the global batch size.
            probe: the statistics of batch ``step`` (:func:`~pike_stream.probe.probe_domains`), or None.
            world_size: the number of data-parallel ranks the probe averaged over.
        """
        current = check_weights(weights, "weights", self.num_domains)
        if probe is None or not self.strategy.adaptive:
            return WeightUpdate(self.strategy.weights(step + 1, current, None, batch_size))
        cosine = min_cosine(probe.cosine)
        conflict = None
        if cosine is not None and self.conflict_threshold is not None and cosine[0] < self.conflict_threshold:
            conflict = (self.domain_names[cosine[1]], self.domain_names[cosine[2]])
        lowest = None if cosine is None else cosine[0]
        problem = self._bad_statistics(probe, world_size)
        if problem is not None:
            self.skipped_updates += 1
            log.warning("PiKE: update at step %d skipped, weights unchanged (%d skipped so far): %s", step,
                        self.skipped_updates, problem)
            return WeightUpdate(current, None, problem, lowest, conflict)
        fresh = np.stack([np.asarray(getattr(probe, name), dtype=np.float64) for name in _STATISTICS])
        old = self._estimates
        smoothed = np.where(np.isnan(old), fresh, self.ema * old + (1.0 - self.ema) * fresh)
        self._estimates = np.where(np.isnan(fresh), old, smoothed)
        stats = self.estimates
        new = self.strategy.weights(step + 1, current, stats, batch_size)
        self.updates += 1
        return WeightUpdate(new, stats, None, lowest, conflict)

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
        return "; ".join(problems) or None

    def state_dict(self) -> dict[str, Any]:
        """Everything a resumed run needs to make the same decisions: small, versioned, keyed by domain."""
        return {
            "format": STATE_FORMAT,
            "version": STATE_VERSION,
            "strategy": self.strategy.name,
            "updates": self.updates,
            "skipped_updates": self.skipped_updates,
            "domains": {name: {stat: float(self._estimates[row, k]) for row, stat in enumerate(_STATISTICS)}
                        for k, name in enumerate(self.domain_names)},
        }

    def load_state_dict(self, obj: Mapping[str, Any]) -> None:
        """Continue from a :meth:`state_dict`; refuses another format, version or set of domains.

        A state without domains (saved before the mixer was known) restores the counters only.
        """
        if not isinstance(obj, Mapping) or obj.get("format") != STATE_FORMAT:
            found = obj.get("format") if isinstance(obj, Mapping) else type(obj).__name__
            raise ValueError(f"not a PiKE state (expected format {STATE_FORMAT!r}, got {found!r})")
        if obj.get("version") != STATE_VERSION:
            raise ValueError(f"PiKE state version {obj.get('version')!r} is not supported (this pike_stream "
                             f"reads version {STATE_VERSION})")
        saved = obj["domains"]
        if saved and set(saved) != set(self.domain_names):
            raise ValueError(f"the saved PiKE state covers domains {sorted(saved)}, this run has "
                             f"{sorted(self.domain_names)}")
        if obj["strategy"] != self.strategy.name:
            log.warning("PiKE: the checkpoint was made with mixing strategy %r; continuing with %r",
                        obj["strategy"], self.strategy.name)
        self._estimates = np.array([[saved[name][stat] if saved else np.nan for name in self.domain_names]
                                    for stat in _STATISTICS], dtype=np.float64)
        self.updates = int(obj["updates"])
        self.skipped_updates = int(obj["skipped_updates"])


def find_mixer(dataloader: Any) -> PiKEStreamingMixer:
    """The :class:`PiKEStreamingMixer` behind a training dataloader (``DataLoader.dataset``, or a ``DataSpec``'s).

    Raises:
        ValueError: there is none; the message says what was found.
    """
    loader = dataloader.dataloader if isinstance(dataloader, DataSpec) else dataloader
    if isinstance(loader, PiKEStreamingMixer):
        raise ValueError("the train dataloader is a PiKEStreamingMixer itself; pass mixer.dataloader() so that "
                         "Composer saves and restores the mixer's state with checkpoints")
    dataset = getattr(loader, "dataset", None) if isinstance(loader, DataLoader) else None
    if not isinstance(dataset, PiKEStreamingMixer):
        found = (f"a {type(loader).__name__} over a {type(dataset).__name__}" if isinstance(loader, DataLoader)
                 else f"a {type(loader).__name__}")
        raise ValueError(f"PiKE needs the train dataloader to be a PiKEStreamingMixer's dataloader() "
                         f"(mixer.dataloader()); found {found}")
    return dataset


class PiKE(Algorithm):
    """Adaptive data mixing (PiKE, arXiv 2502.06244) for a :class:`~pike_stream.mixer.PiKEStreamingMixer`.

    Hooks ``FIT_START`` and ``AFTER_DATALOADER`` (the module docstring places them in the training loop).

    Args:
        strategy: the mixing strategy's name (:data:`~pike_stream.mixing.STRATEGIES`): ``"pike"``,
            ``"balanced_pike"``, ``"conceptual_pike"`` adapt; the others are the static baselines.
        update_interval: T0, steps between updates.
        warmup_steps: steps with the initial weights before the first update.
        initial_weights: ``{domain: weight}`` for step 0 (normalised); None: the strategy's own (uniform or
            proportional to domain sizes, see its ``initial`` option).
        ema: smoothing of the statistics across updates, in ``[0, 1)``; 0 is off.
        per_sample_loss: ``(model, batch) -> Tensor[b]``, the differentiable loss of each sample; default
            :func:`~pike_stream.probe.causal_lm_per_sample_loss`.
        sketch_dim: buckets of the gradient sketch behind the domain cosines (0: no cosines).
        conflict_threshold: log a warning naming the two domains when their gradient cosine falls below
            this (at most once per :data:`CONFLICT_WARNING_EVERY` updates); None: never.
        **options: the strategy's options (``zeta1``, ``zeta2``, ``tau``, ``min_weight``, ``normalize``,
            ``initial``, ``temperature``, ``seed``, …; see :mod:`pike_stream.mixing.strategies`).

    Raises:
        ValueError: an option is out of range or unknown (the message names it).

    Metrics (Composer's ``logger.log_metrics``, at step ``t``): ``pike/weight/<domain>`` — the mixture of
    batch ``t``, every step; on update steps ``pike/grad_sq/<domain>``, ``pike/variance/<domain>``,
    ``pike/loss/<domain>`` (the statistics the strategy used), ``pike/min_cosine``, ``pike/probe_seconds``,
    ``pike/updates`` and ``pike/skipped_updates``.
    """

    def __init__(self, *, strategy: str = "pike", update_interval: int = DEFAULT_UPDATE_INTERVAL,
                 warmup_steps: int = 0, initial_weights: Mapping[str, float] | None = None, ema: float = 0.0,
                 per_sample_loss: Callable[[torch.nn.Module, dict], torch.Tensor] | None = None,
                 sketch_dim: int = 256, conflict_threshold: float | None = DEFAULT_CONFLICT_THRESHOLD,
                 **options: Any) -> None:
        super().__init__()
        self.strategy = get_strategy(strategy, **options)
        _check_schedule(update_interval, warmup_steps, ema)
        if isinstance(sketch_dim, bool) or not isinstance(sketch_dim, int) or sketch_dim < 0:
            raise ValueError(f"PiKE option 'sketch_dim' must be an integer ≥ 0, got {sketch_dim!r}")
        if conflict_threshold is not None and (
                isinstance(conflict_threshold, bool) or not isinstance(conflict_threshold, (int, float))
                or not -1.0 <= conflict_threshold <= 1.0):
            raise ValueError(f"PiKE option 'conflict_threshold' must be a cosine in [-1, 1] or None, "
                             f"got {conflict_threshold!r}")
        if per_sample_loss is not None and not callable(per_sample_loss):
            raise ValueError(f"PiKE option 'per_sample_loss' must be callable (model, batch) -> Tensor[b], "
                             f"got {type(per_sample_loss).__name__}")
        self.initial_weights = _checked_initial_weights(initial_weights)
        self.update_interval = int(update_interval)
        self.warmup_steps = int(warmup_steps)
        self.ema = float(ema)
        self.per_sample_loss = per_sample_loss or causal_lm_per_sample_loss
        self.sketch_dim = sketch_dim
        self.conflict_threshold = conflict_threshold
        self.mixer: PiKEStreamingMixer | None = None
        self.controller: MixingController | None = None
        self._pending_state: Mapping[str, Any] | None = None
        self._last_conflict_warning: int | None = None  # the update count at the last warning (logging only)

    def __repr__(self) -> str:
        return (f"PiKE(strategy={self.strategy!r}, update_interval={self.update_interval}, "
                f"warmup_steps={self.warmup_steps}, ema={self.ema})")

    def match(self, event: Event, state: State) -> bool:
        return event in (Event.FIT_START, Event.AFTER_DATALOADER)

    def apply(self, event: Event, state: State, logger: Logger) -> None:
        if event == Event.FIT_START:
            self._fit_start(state)
        else:
            self._after_dataloader(state, logger)

    # ------------------------------------------------------------------------------------------ events
    def _fit_start(self, state: State) -> None:
        """Find the mixer, build the controller (with the state of a checkpoint or of an earlier ``fit()``) and
        set step 0's weights."""
        mixer = self.mixer = find_mixer(state.train_dataloader)
        previous = self.controller.state_dict() if self.controller is not None else self._pending_state
        self.controller = MixingController(self.strategy, mixer.domain_names, update_interval=self.update_interval,
                                           warmup_steps=self.warmup_steps, ema=self.ema,
                                           conflict_threshold=self.conflict_threshold)
        if previous is not None:
            self.controller.load_state_dict(previous)
            self._pending_state = None
        strategy_initial = self.controller.initial_weights(list(mixer.domain_sizes.values()))  # checks min_weight
        self._warn_if_floor_is_unprobed(mixer)
        step = int(state.timestamp.batch)
        if step > 0:
            if mixer.step != step:
                log.warning("PiKE: resuming at batch %d but the mixer is at step %d (its state was not restored "
                            "from the checkpoint?); keeping the mixer's weights %s", step, mixer.step, mixer.weights)
            return
        mixer.set_weights(strategy_initial if self.initial_weights is None else self._initial_weights_for(mixer))

    def _initial_weights_for(self, mixer: PiKEStreamingMixer) -> dict[str, float]:
        """The ``initial_weights`` option, checked to name exactly the mixer's domains."""
        weights, names = self.initial_weights or {}, mixer.domain_names
        unknown = sorted(set(weights) - set(names))
        missing = [n for n in names if n not in weights]
        if unknown or missing:
            raise ValueError(f"PiKE option 'initial_weights' must name exactly the mixer's domains {names}"
                             + (f"; unknown: {unknown}" if unknown else "")
                             + (f"; missing: {missing}" if missing else ""))
        return weights

    def _warn_if_floor_is_unprobed(self, mixer: PiKEStreamingMixer) -> None:
        """Warn when a domain held at the strategy's ``min_weight`` would get too few samples to be probed."""
        floor = getattr(self.strategy, "min_weight", 0.0) if self.strategy.adaptive else 0.0
        samples, ranks = floor * mixer.global_batch_size, dist.get_world_size()
        if 0 < samples <= ranks:
            log.warning("PiKE: a domain on the min_weight floor (%g) gets about %.2f samples of a global batch of "
                        "%d, too few for the probe to estimate it reliably (it needs two on one rank; more than %d "
                        "guarantee that); its last estimate is carried until it gets more", floor, samples,
                        mixer.global_batch_size, ranks)

    def _after_dataloader(self, state: State, logger: Logger) -> None:
        """Log batch t's mixture; on an update step probe batch t; set the weights of batch t+1."""
        mixer, controller = self.mixer, self.controller
        if mixer is None or controller is None:
            raise RuntimeError("PiKE: AFTER_DATALOADER before FIT_START (the algorithm was not started with fit())")
        step = int(state.timestamp.batch)
        current = np.array(list(mixer.weights.values()))
        metrics: dict[str, float] = {f"pike/weight/{n}": float(w) for n, w in zip(mixer.domain_names, current)}
        probe = None
        if controller.probes_at(step):
            state.batch = state.device.batch_to_device(state.batch)
            start = time.perf_counter()
            with get_precision_context(state.precision, state.precision_config):
                probe = probe_domains(state.model, state.batch, len(mixer.domain_names), self.per_sample_loss,
                                      sketch_dim=self.sketch_dim, seed=step)
            metrics["pike/probe_seconds"] = time.perf_counter() - start
        update = controller.next_weights(step, current, mixer.global_batch_size, probe,
                                         world_size=dist.get_world_size())
        if not np.array_equal(update.weights, current):
            mixer.set_weights(update.weights)
        if probe is not None:
            metrics.update(_probe_metrics(update, mixer.domain_names))
            metrics["pike/updates"] = controller.updates
            metrics["pike/skipped_updates"] = controller.skipped_updates
            self._warn_conflict(step, update)
        logger.log_metrics(metrics)

    def _warn_conflict(self, step: int, update: WeightUpdate) -> None:
        if update.conflict is None or update.min_cosine is None:
            return
        probes = self.controller.updates + self.controller.skipped_updates if self.controller else 0
        if self._last_conflict_warning is not None and probes - self._last_conflict_warning < CONFLICT_WARNING_EVERY:
            return
        self._last_conflict_warning = probes
        first, second = update.conflict
        log.warning("PiKE: gradients of domains %r and %r conflict at step %d (cosine %.3f < %.3f); PiKE assumes "
                    "low gradient conflict, so its weights may not lower the total loss", first, second, step,
                    update.min_cosine, self.conflict_threshold)

    # ------------------------------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """The controller's state (:meth:`MixingController.state_dict`); Composer saves it in checkpoints."""
        if self.controller is not None:
            return self.controller.state_dict()
        if self._pending_state is not None:
            return dict(self._pending_state)
        return {"format": STATE_FORMAT, "version": STATE_VERSION, "strategy": self.strategy.name, "updates": 0,
                "skipped_updates": 0, "domains": {}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a checkpoint's state; applied when the mixer is known (at FIT_START), or now if it is."""
        if self.controller is not None:
            self.controller.load_state_dict(state)
        else:
            self._pending_state = state


def _probe_metrics(update: WeightUpdate, names: Sequence[str]) -> dict[str, float]:
    """The statistics the strategy used and the lowest cosine, as metrics (NaN values left out)."""
    metrics: dict[str, float] = {}
    if update.stats is not None:
        for stat in _STATISTICS:
            for name, value in zip(names, getattr(update.stats, stat)):
                if math.isfinite(value):
                    metrics[f"pike/{stat}/{name}"] = float(value)
    if update.min_cosine is not None:
        metrics["pike/min_cosine"] = update.min_cosine
    return metrics


def _checked_initial_weights(weights: Mapping[str, float] | None) -> dict[str, float] | None:
    """``initial_weights`` checked to be ``{name: finite weight ≥ 0}`` with a positive sum (names: at FIT_START)."""
    if weights is None:
        return None
    if not isinstance(weights, Mapping) or not weights:
        raise ValueError(f"PiKE option 'initial_weights' must be a mapping {{domain: weight}}, got {weights!r}")
    bad = {k: v for k, v in weights.items() if isinstance(v, bool) or not isinstance(v, (int, float))
           or not math.isfinite(v) or v < 0}
    if bad or sum(weights.values()) <= 0:
        raise ValueError(f"PiKE option 'initial_weights' must hold finite weights ≥ 0 with a positive sum, "
                         f"got {dict(weights)}")
    return {str(k): float(v) for k, v in weights.items()}
