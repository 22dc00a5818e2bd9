"""PiKE as a Composer algorithm: every few steps, probe every domain, step the mixing weights, set them on the mixer.

Two layers, as Composer splits its own algorithms into a pure function and a thin ``Algorithm``:

* :class:`~pike_stream.controller.MixingController` (no Composer inside) decides the weights of every step
  from the step number, the weights in force and (on update steps) a probe's statistics.
* :class:`PiKE` wires it into Composer's training loop: it finds the mixer, draws a probe batch from it,
  probes ``state.model`` on it, hands the weights to the mixer, logs, and saves the controller's state in
  checkpoints.

Where :class:`PiKE` runs in Composer's loop (see ``composer/core/event.py``), for batch ``t`` (0-based,
``state.timestamp.batch``)::

    # <FIT_START>            find the PiKEStreamingMixer in state.train_dataloader.dataset; on a fresh run
    #                        set the initial weights (they compose batch 0); a resumed run keeps the weights
    #                        restored with the mixer's checkpoint state
    for t in range(num_batches):
        # <BEFORE_DATALOADER>
        batch = next(dataloader)      # the mixer composes batch t with the weights in force
        # <AFTER_DATALOADER>     log the weights of batch t; on an update step draw a probe batch of
        #                        probe_samples samples of every domain (the mixer's probe orders: its state
        #                        holds their cursors, the training cursors do not move) and probe it with
        #                        state.model (gradients, modes, buffers and RNG are restored afterwards);
        #                        compute the weights of batch t+1 and mixer.set_weights(...) — zero lag:
        #                        they compose the very next batch
        # <BATCH_START> … forward, loss, backward, optimizer.step() … <BATCH_END>
        # <BATCH_CHECKPOINT>     Composer saves PiKE.state_dict() with the mixer's state (which holds the
        #                        weights of batch t+1 and the probe cursors), so a resumed run continues with
        #                        the same decisions

Update steps (adaptive strategies): batch ``t`` is probed when ``t ≥ warmup_steps`` and
``(t − warmup_steps) mod update_interval = 0``; batches ``0 … warmup_steps`` use the initial weights.
With ``probe_samples: 0`` the statistics come from training batch ``t`` itself, without an extra pass
(:mod:`pike_stream.step_statistics`; each domain then gets samples in proportion to its weight)::

        # <AFTER_DATALOADER>     log the weights of batch t; mark the batch for domain-grouped microbatches
        # <BEFORE_FORWARD>, <AFTER_LOSS>, <AFTER_BACKWARD>   for every microbatch: check it follows the plan,
        #                        add its loss, read the accumulated gradient at the end of each domain half
        # <AFTER_TRAIN_BATCH>    all-reduce the statistics; compute the weights of batch t+1 and set them,
        #                        before batch t+1 is drawn (zero lag) and before BATCH_CHECKPOINT

The Trainer must split such a batch as marked: give it :meth:`PiKE.data_spec` of the mixer (``pike-stream
train`` does). Non-adaptive strategies never probe: round-robin and random set new weights every step, the
static ones keep their initial weights.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from composer.core import Algorithm, DataSpec, Event, State
from composer.core.precision import Precision, get_precision_context
from composer.loggers import Logger
from composer.utils import dist
from torch.utils.data import DataLoader

from pike_stream.controller import (
    DEFAULT_CONFLICT_THRESHOLD,
    DEFAULT_EMA,
    DEFAULT_METRIC,
    DEFAULT_PROBE_SAMPLES,
    DEFAULT_PULL,
    DEFAULT_UPDATE_INTERVAL,
    STATE_FORMAT,
    STATE_VERSION,
    MixingController,
    WeightUpdate,
    check_schedule,
)
from pike_stream.gradient_sums import trainable_parameters, unwrap_ddp
from pike_stream.metric import ParamScale, adam_metric
from pike_stream.mixer import PiKEStreamingMixer
from pike_stream.probe import causal_lm_per_sample_loss, probe_domains
from pike_stream.step_statistics import DomainGroupedBatch, StepStatistics, plan_microbatches, split_batch
from pike_stream.strategies import get_strategy
from pike_stream.strategies.checks import check_domain_weights

__all__ = ["PiKE", "find_mixer"]

log = logging.getLogger(__name__)

CONFLICT_WARNING_EVERY = 50
"""At most one gradient-conflict warning per this many updates (the first conflict always warns)."""

COSINE_METRICS_MAX_DOMAINS = 8
"""Per-pair cosines are logged (``pike/cosine/<a>|<b>``) only up to this many domains (K² metrics)."""

_STATISTICS = ("grad_sq", "variance", "loss")
_STEP_STATISTICS_EVENTS = (Event.BEFORE_FORWARD, Event.AFTER_LOSS, Event.AFTER_BACKWARD, Event.AFTER_TRAIN_BATCH)
_INITIAL_WEIGHTS = "PiKE option 'initial_weights'"


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


def _refuse_sharded_training(state: Any) -> None:
    """PiKE's probe differentiates the model as one module per rank and all-reduces scalars (DDP's layout):
    with FSDP or tensor parallelism each rank holds a shard of the parameters, so the per-domain statistics
    would be those of a shard. Refused rather than computed wrong."""
    for name, what in (("fsdp_config", "FSDP"), ("tp_config", "tensor parallelism")):
        if getattr(state, name, None) is not None:
            raise ValueError(f"PiKE does not support {what} ({name} is set): its probe needs every rank to hold "
                             f"the whole model; train with DDP (remove {name} / parallelism_config)")


class PiKE(Algorithm):
    """Adaptive data mixing (PiKE, arXiv 2502.06244) for a :class:`~pike_stream.mixer.PiKEStreamingMixer`.

    Hooks ``FIT_START`` and ``AFTER_DATALOADER`` (the module docstring places them in the training loop).

    Args:
        strategy: the mixing strategy's name (:data:`~pike_stream.strategies.STRATEGIES`): ``"pike"``,
            ``"balanced_pike"``, ``"conceptual_pike"`` adapt; the others are the static baselines.
        update_interval: T0, steps between updates.
        warmup_steps: steps with the initial weights before the first update.
        probe_samples: m, samples of every domain in the probe batch of an update, over all ranks (rounded up
            to a multiple of the world size, and at least two per rank); each rank probes its share and the
            statistics are averaged with one all-reduce. 0 takes them from the training step itself (no extra
            pass; needs :meth:`data_spec` and a fixed ``device_train_microbatch_size``).
        initial_weights: ``{domain: weight}`` for step 0 (normalised); None: the strategy's own (uniform or
            proportional to domain sizes, see its ``initial`` option).
        ema: averaging of the statistics across updates, in ``[0, 1)``; 0 is off.
        pull: after every update, move the weights this fraction of the way back (in log space) to the
            mixture of the run's first step, in ``[0, 1]``; 0 is the paper's rule
            (:data:`~pike_stream.controller.DEFAULT_PULL`).
        metric: the inner product of the statistics: ``"euclidean"`` (the paper's) or ``"adam"`` (that of the
            Adam(W) step, read from the optimizer's state; :mod:`pike_stream.metric`). With ``"adam"`` an
            update before the optimizer's first step is skipped (the weights stay).
        allow_changes: resume a checkpoint saved with other PiKE options (strategy, its options, schedule),
            logging what changed; by default such a resume is refused (the weights would differ from the
            interrupted run's).
        per_sample_loss: ``(model, batch) -> Tensor[b]``, the differentiable loss of each sample; default
            :func:`~pike_stream.probe.causal_lm_per_sample_loss`.
        sketch_dim: buckets of the gradient sketch behind the domain cosines (0: no cosines).
        conflict_threshold: log a warning naming the two domains when their averaged gradient cosine stays
            below this (at most once per :data:`CONFLICT_WARNING_EVERY` updates); None: never.
        **options: the strategy's options (``zeta1``, ``zeta2``, ``tau``, ``min_weight``, ``normalize``,
            ``initial``, ``temperature``, ``seed``, …; see :mod:`pike_stream.strategies.registry`).

    Raises:
        ValueError: an option is out of range or unknown (the message names it).

    Metrics (Composer's ``logger.log_metrics``, at step ``t``): ``pike/weight/<domain>`` — the mixture of
    batch ``t``, and ``pike/batch_size``, its global size, every step; on update steps
    ``pike/grad_sq/<domain>``, ``pike/variance/<domain>``,
    ``pike/loss/<domain>`` (the averaged statistics the strategy used), ``pike/min_cosine`` (the lowest
    averaged pairwise cosine, once pairs have been seen :data:`~pike_stream.controller.CONFLICT_MIN_UPDATES`
    times), ``pike/cosine/<a>|<b>`` (every pair's averaged cosine, up to
    :data:`COSINE_METRICS_MAX_DOMAINS` domains), ``pike/probe_seconds``, ``pike/updates`` and
    ``pike/skipped_updates``.
    """

    def __init__(self, *, strategy: str = "pike", update_interval: int = DEFAULT_UPDATE_INTERVAL,
                 warmup_steps: int = 0, probe_samples: int = DEFAULT_PROBE_SAMPLES,
                 initial_weights: Mapping[str, float] | None = None, ema: float = DEFAULT_EMA,
                 pull: float = DEFAULT_PULL, metric: str = DEFAULT_METRIC, allow_changes: bool = False,
                 per_sample_loss: Callable[[torch.nn.Module, dict], torch.Tensor] | None = None,
                 sketch_dim: int = 256, conflict_threshold: float | None = DEFAULT_CONFLICT_THRESHOLD,
                 **options: Any) -> None:
        super().__init__()
        self.strategy = get_strategy(strategy, **options)
        check_schedule(update_interval, warmup_steps, ema, probe_samples, pull, metric)
        if isinstance(sketch_dim, bool) or not isinstance(sketch_dim, int) or sketch_dim < 0:
            raise ValueError(f"PiKE option 'sketch_dim' must be an integer ≥ 0, got {sketch_dim!r}")
        if getattr(self.strategy, "cross_terms", False) and sketch_dim == 0:
            raise ValueError("PiKE option 'cross_terms' needs the gradient sketch: set sketch_dim > 0")
        if conflict_threshold is not None and (
                isinstance(conflict_threshold, bool) or not isinstance(conflict_threshold, (int, float))
                or not -1.0 <= conflict_threshold <= 1.0):
            raise ValueError(f"PiKE option 'conflict_threshold' must be a cosine in [-1, 1] or None, "
                             f"got {conflict_threshold!r}")
        if per_sample_loss is not None and not callable(per_sample_loss):
            raise ValueError(f"PiKE option 'per_sample_loss' must be callable (model, batch) -> Tensor[b], "
                             f"got {type(per_sample_loss).__name__}")
        self.initial_weights = (None if initial_weights is None
                                else check_domain_weights(initial_weights, key=_INITIAL_WEIGHTS))
        self.update_interval = int(update_interval)
        self.warmup_steps = int(warmup_steps)
        self.probe_samples = int(probe_samples)
        self.ema = float(ema)
        self.pull = float(pull)
        self.metric = metric
        if not isinstance(allow_changes, bool):
            raise ValueError(f"PiKE option 'allow_changes' must be true or false, got {allow_changes!r}")
        self.allow_changes = allow_changes
        self.per_sample_loss = per_sample_loss or causal_lm_per_sample_loss
        self.sketch_dim = sketch_dim
        self.conflict_threshold = conflict_threshold
        self.mixer: PiKEStreamingMixer | None = None
        self.controller: MixingController | None = None
        self._pending_state: Mapping[str, Any] | None = None
        self._last_conflict_warning: int | None = None  # the update count at the last warning (logging only)
        self._step_statistics: StepStatistics | None = None  # probe_samples=0: the update step being measured
        self._step_seconds = 0.0  # time spent reading its gradients so far

    def __repr__(self) -> str:
        return (f"PiKE(strategy={self.strategy!r}, update_interval={self.update_interval}, "
                f"warmup_steps={self.warmup_steps}, probe_samples={self.probe_samples}, ema={self.ema}, "
                f"pull={self.pull}, metric={self.metric!r})")

    @staticmethod
    def data_spec(mixer: PiKEStreamingMixer) -> DataSpec:
        """The Trainer's ``train_dataloader`` for ``mixer``: its dataloader, with the ``split_batch`` that makes
        the domain-grouped microbatches of ``probe_samples: 0`` (:mod:`pike_stream.step_statistics`); other
        steps are split as Composer's default does."""
        return DataSpec(mixer.dataloader(), split_batch=split_batch)

    def match(self, event: Event, state: State) -> bool:
        if event in (Event.FIT_START, Event.AFTER_DATALOADER):
            return True
        return self._step_statistics is not None and event in _STEP_STATISTICS_EVENTS

    def apply(self, event: Event, state: State, logger: Logger) -> None:
        if event == Event.FIT_START:
            self._fit_start(state)
        elif event == Event.AFTER_DATALOADER:
            self._after_dataloader(state, logger)
        else:
            self._measure_step(event, state, logger)

    # ------------------------------------------------------------------------------------------ events
    def _fit_start(self, state: State) -> None:
        """Find the mixer, build the controller (with the state of a checkpoint or of an earlier ``fit()``) and
        set step 0's weights."""
        _refuse_sharded_training(state)
        mixer = self.mixer = find_mixer(state.train_dataloader)
        previous = self.controller.state_dict() if self.controller is not None else self._pending_state
        self.controller = MixingController(self.strategy, mixer.domain_names, update_interval=self.update_interval,
                                           warmup_steps=self.warmup_steps, ema=self.ema,
                                           probe_samples=self.probe_samples, pull=self.pull,
                                           metric=self.metric, conflict_threshold=self.conflict_threshold,
                                           allow_changes=self.allow_changes)
        if previous is not None:
            self.controller.load_state_dict(previous, allow_domain_changes=mixer.allow_domain_changes)
            self._pending_state = None
        strategy_initial = self.controller.initial_weights(list(mixer.domain_sizes.values()))  # checks min_weight
        if self.strategy.adaptive and self.probe_samples == 0 and state.auto_microbatching:
            raise ValueError("PiKE option 'probe_samples: 0' (statistics from the training step) needs a fixed "
                             "device_train_microbatch_size, not 'auto': the step's microbatches are grouped by domain")
        self._step_statistics = None
        self._warn_if_probe_is_thin(mixer)
        step = int(state.timestamp.batch)
        if step > 0:
            if mixer.step != step:
                raise RuntimeError(f"PiKE: resuming at batch {step} but the mixer is at step {mixer.step}: its state "
                                   f"was not restored from the checkpoint (is the mixer the train dataloader Composer "
                                   f"checkpoints?), so the batches would repeat or skip; refusing to train")
            return
        mixer.set_weights(strategy_initial if self.initial_weights is None else self._initial_weights_for(mixer))

    def _initial_weights_for(self, mixer: PiKEStreamingMixer) -> dict[str, float]:
        """The ``initial_weights`` option, checked to name exactly the mixer's domains."""
        return check_domain_weights(self.initial_weights, mixer.domain_names, key=_INITIAL_WEIGHTS)

    def _probe_size(self) -> int:
        """Samples of every domain in a probe batch over all ranks: ``probe_samples`` rounded up to a multiple
        of the world size, and at least two per rank, so that every rank can estimate every domain."""
        ranks = dist.get_world_size()
        return max(2 * ranks, -(-self.probe_samples // ranks) * ranks)

    def _warn_if_probe_is_thin(self, mixer: PiKEStreamingMixer) -> None:
        """Say how every domain is probed, and warn when probing the training batch cannot estimate one."""
        if not self.strategy.adaptive:
            return
        ranks = dist.get_world_size()
        if self.probe_samples:
            if self._probe_size() != self.probe_samples:
                log.info("PiKE: probe_samples=%d over %d ranks: probing %d samples of every domain (at least two "
                         "on every rank)", self.probe_samples, ranks, self._probe_size())
            return
        floor = getattr(self.strategy, "min_weight", 0.0)
        samples = floor * mixer.batch_size  # the smallest batch of a ramp
        if samples <= 2 * ranks:
            log.warning("PiKE: probe_samples=0 takes statistics from the training batch, where a domain at the "
                        "min_weight floor (%g) gets about %.2f of %d samples: too few to estimate it, so its weight "
                        "stays until it gets more; a probe batch (probe_samples ≥ 2) estimates every domain at every "
                        "update",
                        floor, samples, mixer.batch_size)

    def _after_dataloader(self, state: State, logger: Logger) -> None:
        """Log batch t's mixture; on an update step measure every domain (a probe batch now, or the training
        step's microbatches until AFTER_TRAIN_BATCH); set the weights of batch t+1."""
        mixer, controller = self.mixer, self.controller
        if mixer is None or controller is None:
            raise RuntimeError("PiKE: AFTER_DATALOADER before FIT_START (the algorithm was not started with fit())")
        step = int(state.timestamp.batch)
        current = np.array(list(mixer.weights.values()))
        metrics: dict[str, float] = {f"pike/weight/{n}": float(w) for n, w in zip(mixer.domain_names, current)}
        metrics["pike/batch_size"] = float(len(state.batch["domain"]) * dist.get_world_size())
        probe = None
        if controller.probes_at(step):
            scales = self._adam_scales(state, step)
            measurable = self.metric == "euclidean" or scales is not None  # else: no second moments yet, skip
            if measurable and not self.probe_samples:
                self._group_by_domain(state, scales)
                logger.log_metrics(metrics)
                return
            if measurable:
                start = time.perf_counter()
                batch = state.device.batch_to_device(mixer.probe_batch(self._probe_size()))
                with get_precision_context(state.precision, state.precision_config):
                    probe = probe_domains(state.model, batch, len(mixer.domain_names), self.per_sample_loss,
                                          sketch_dim=self.sketch_dim, seed=step, metric=scales)
                metrics["pike/probe_seconds"] = time.perf_counter() - start
        self._update(step, current, probe, metrics, logger)

    def _adam_scales(self, state: State, step: int) -> list[ParamScale | None] | None:
        """Adam's preconditioner for ``metric: adam`` (None for the Euclidean metric, and before the optimizer's
        first step, when the update is skipped)."""
        if self.metric == "euclidean":
            return None
        params = trainable_parameters(unwrap_ddp(state.model), None)
        scales = adam_metric(state.optimizers, params)
        if scales is None:
            log.info("PiKE: metric adam: the optimizer has no second moments before its first step; the update "
                     "at step %d is skipped (weights unchanged)", step)
        return scales

    def _group_by_domain(self, state: State, scales: list[ParamScale | None] | None) -> None:
        """Mark the batch of an update step for domain-grouped microbatches and start measuring them."""
        assert self.mixer is not None and state.device_train_microbatch_size is not None
        domains = state.batch["domain"]
        plan = plan_microbatches(domains, len(self.mixer.domain_names), int(state.device_train_microbatch_size))
        state.batch = DomainGroupedBatch(state.batch, plan)
        scaler = state.scaler
        grad_scale = (float(scaler.get_scale()) if state.precision == Precision.AMP_FP16 and scaler is not None
                      and scaler.is_enabled() else 1.0)
        self._step_statistics = StepStatistics(state.model, plan, len(self.mixer.domain_names), domains.shape[0],
                                               sketch_dim=self.sketch_dim, seed=int(state.timestamp.batch),
                                               grad_scale=grad_scale, metric=scales)
        self._step_seconds = 0.0

    def _measure_step(self, event: Event, state: State, logger: Logger) -> None:
        """probe_samples=0: follow the update step's microbatches; after the last one, update the weights."""
        measured, mixer = self._step_statistics, self.mixer
        assert measured is not None and mixer is not None
        start = time.perf_counter()
        if event == Event.BEFORE_FORWARD:
            measured.before_forward(state.batch)
        elif event == Event.AFTER_LOSS:
            measured.after_loss(state.loss)
        elif event == Event.AFTER_BACKWARD:
            measured.after_backward()
        else:
            self._step_statistics = None
            probe = measured.result()
            metrics = {"pike/probe_seconds": self._step_seconds + time.perf_counter() - start}
            current = np.array(list(mixer.weights.values()))
            self._update(int(state.timestamp.batch), current, probe, metrics, logger)
            return
        self._step_seconds += time.perf_counter() - start

    def _update(self, step: int, current: np.ndarray, probe: Any, metrics: dict[str, float], logger: Logger) -> None:
        """Set the weights of batch ``step + 1`` from the controller; log them with the statistics."""
        mixer, controller = self.mixer, self.controller
        assert mixer is not None and controller is not None
        update = controller.next_weights(step, current, mixer.batch_size, probe,
                                         world_size=dist.get_world_size())
        if not np.array_equal(update.weights, current):
            mixer.set_weights(update.weights)
        if probe is not None:
            metrics.update(_probe_metrics(update, mixer.domain_names))
            if len(mixer.domain_names) <= COSINE_METRICS_MAX_DOMAINS:
                metrics.update(_cosine_metrics(controller.cosines, mixer.domain_names))
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
        log.warning("PiKE: gradients of domains %r and %r conflict at step %d (averaged cosine %.3f < %.3f over "
                    "the recent updates); PiKE assumes low gradient conflict, so its weights may not lower the "
                    "total loss", first, second, step, update.min_cosine, self.conflict_threshold)

    # ------------------------------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """The controller's state (:meth:`MixingController.state_dict`); Composer saves it in checkpoints."""
        if self.controller is not None:
            return self.controller.state_dict()
        if self._pending_state is not None:
            return dict(self._pending_state)
        return {"format": STATE_FORMAT, "version": STATE_VERSION, "strategy": self.strategy.name, "updates": 0,
                "skipped_updates": 0, "domains": {}, "inner": {}, "pair_updates": {}, "anchor": None}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a checkpoint's state; applied when the mixer is known (at FIT_START), or now if it is."""
        if self.controller is not None:
            allow = self.mixer is not None and self.mixer.allow_domain_changes
            self.controller.load_state_dict(state, allow_domain_changes=allow)
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


def _cosine_metrics(cosine: np.ndarray, names: Sequence[str]) -> dict[str, float]:
    """Every pair's averaged cosine as ``pike/cosine/<a>|<b>`` (pairs without one left out)."""
    return {f"pike/cosine/{names[i]}|{names[j]}": float(cosine[i, j])
            for i in range(len(names)) for j in range(i + 1, len(names)) if math.isfinite(cosine[i, j])}
