"""Per-domain gradient statistics taken from the training step itself: no extra forward or backward pass.

On an update step the training batch is cut into *domain-grouped microbatches*: for every domain k with
``n ≥ 2`` samples on this rank, its half A (the first ``⌊n/2⌋`` samples in batch order) and then its half B,
each in microbatches of at most the trainer's microbatch size; a domain with one sample gets a microbatch of
its own (trained on, not estimated). The trainer accumulates the gradients of these microbatches as it does
for any split of the batch, so the step's total gradient — and the training run — is the same (up to the
order of floating-point sums). Between microbatches the accumulated gradient is read, and the difference
across a half is that half's contribution::

    contribution(half) = (n_half / b_local) · g_half        # Composer scales each microbatch loss by its share

so ``g_half`` (the mean-loss gradient of the half) is recovered exactly, and the same unbiased estimates as
:func:`~pike_stream.probe.probe_domains` follow (``G = ⟨g_A, g_B⟩``, ``S = ‖g_A − g_B‖²/(1/n_A + 1/n_B)``, a
count sketch of the summed gradient for the cross-domain inner products): the estimator is the probe's on the
training batch, at the cost of reading the gradients a few times per update and of smaller microbatches on
update steps. A domain with fewer than two samples has no estimate (NaN), never a stale one.

Memory: two gradient-sized buffers during an update step (the gradient at the start of the current half, and
half A's contribution until half B is done), released after the step.

Data parallelism (DDP): each rank estimates from its own samples and the per-domain sums are all-reduced, as in
the probe. The differences need each rank's *local* gradients, so on an update step DDP's gradient
synchronisation is deferred (``no_sync``) for every microbatch and the gradients are averaged over ranks after
the last one (one all-reduce per parameter, as Composer's ``forced_sync`` does); other steps are untouched.

The pieces: :func:`plan_microbatches` (pure: which rows go in which microbatch), :class:`DomainGroupedBatch`
and :func:`split_batch` (the trainer's ``split_batch``, following the plan on update steps only) and
:class:`StepStatistics` (reads the gradients after each microbatch and reduces them).
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from pike_stream.gradient_sums import (
    NUM_SUMS,
    ProbeResult,
    all_reduce_sums,
    chunk_elements,
    combine_sums,
    reduce_pair,
    rows_of,
    trainable_parameters,
    unwrap_ddp,
)
from pike_stream.metric import ParamScale

__all__ = ["DomainGroupedBatch", "Microbatch", "StepStatistics", "plan_microbatches", "split_batch"]


@dataclass(frozen=True)
class Microbatch:
    """One microbatch of a domain-grouped step.

    Attributes:
        rows: indices into the step's (per-rank) batch.
        domain: the domain all its samples belong to.
        half: 0 (half A), 1 (half B), or -1 (a domain with a single sample: trained, not estimated).
        closes_half: the last microbatch of its half (the half's gradient is read after it).
    """

    rows: torch.Tensor
    domain: int
    half: int
    closes_half: bool


def plan_microbatches(domains: torch.Tensor, num_domains: int, microbatch_size: int) -> list[Microbatch]:
    """The domain-grouped microbatches of a batch whose samples belong to ``domains`` (``[b]`` indices).

    Every row appears in exactly one microbatch; domains come in index order, half A before half B, and the
    domains with a single sample at the end.
    """
    if microbatch_size < 1:
        raise ValueError(f"microbatch_size must be at least 1, got {microbatch_size}")
    plan: list[Microbatch] = []
    singles: list[Microbatch] = []
    for k in range(num_domains):
        rows = torch.nonzero(domains.cpu() == k).flatten()
        n = rows.numel()
        if n == 0:
            continue
        if n == 1:
            singles.append(Microbatch(rows, k, -1, True))
            continue
        for half, part in enumerate((rows[: n // 2], rows[n // 2:])):
            chunks = part.split(microbatch_size)
            plan.extend(Microbatch(c, k, half, i == len(chunks) - 1) for i, c in enumerate(chunks))
    return plan + singles  # single samples last: every half's gradient is a difference of consecutive reads


class DomainGroupedBatch(dict):
    """A training batch (its usual dict) marked to be split into domain-grouped microbatches.

    :class:`~pike_stream.algorithm.PiKE` marks the batches of update steps; :func:`split_batch` follows
    ``plan``. The microbatches are plain dicts: the model sees the batch's usual keys only.
    """

    def __init__(self, batch: Mapping[str, Any], plan: Sequence[Microbatch]) -> None:
        super().__init__(batch)
        self.plan = list(plan)


def split_batch(batch: Any, microbatch_size: int | float) -> Sequence[Any]:
    """Composer's ``DataSpec.split_batch`` for a mixer's batches: the plan of a :class:`DomainGroupedBatch`,
    else Composer's default split. (The plan was made for the trainer's microbatch size.)
    """
    from composer.core.data_spec import default_split_batch

    if not isinstance(batch, DomainGroupedBatch):
        return default_split_batch(batch, microbatch_size)
    size = batch["domain"].shape[0]
    return [rows_of(batch, mb.rows, size) for mb in batch.plan]


class StepStatistics:
    """Reads the accumulated gradient after each domain-grouped microbatch of one step and reduces it.

    The caller (:class:`~pike_stream.algorithm.PiKE`) calls, for microbatch ``j`` of ``plan``:
    :meth:`before_forward` (checks that the trainer follows the plan; defers DDP's gradient sync),
    :meth:`after_loss` with the microbatch's mean loss, :meth:`after_backward`; then :meth:`result` once.

    Args:
        model: the trained model (``state.model``; a DDP wrapper is handled as the module docstring says).
        plan: the step's microbatches (:func:`plan_microbatches` of this rank's batch).
        num_domains: K.
        batch_size: samples of this rank's batch (Composer scales each microbatch loss by its share of them).
        sketch_dim: buckets of the count sketch (0: no cross-domain inner products).
        seed: the sketch's hash seed, the same on every rank.
        grad_scale: the loss scale of mixed-precision training (gradients are divided by it), 1 otherwise.
        metric: one entry per trainable parameter of ``model``: Adam's inner product
            (:func:`~pike_stream.metric.adam_metric`); None: the Euclidean one.
    """

    def __init__(self, model: torch.nn.Module, plan: Sequence[Microbatch], num_domains: int, batch_size: int, *,
                 sketch_dim: int, seed: int, grad_scale: float = 1.0,
                 metric: Sequence[ParamScale | None] | None = None) -> None:
        self.model = model
        self.plan = list(plan)
        self.batch_size = batch_size
        self.sketch_dim = sketch_dim
        self.seed = seed
        self.grad_scale = float(grad_scale)
        self.metric = metric
        self.params = trainable_parameters(unwrap_ddp(model), None)
        self.chunk = chunk_elements(self.params)
        device = self.params[0].device
        self.sums = torch.zeros(num_domains, NUM_SUMS, dtype=torch.float64, device=device)
        self.sketches = torch.zeros(num_domains, sketch_dim, dtype=torch.float32, device=device)
        self.index = 0  # the microbatch being trained
        self._start: list[torch.Tensor] | None = None  # accumulated gradient when the current half began
        self._half_a: list[torch.Tensor] | None = None  # half A's mean gradient, until half B is read
        self._deferred = False  # DDP's sync was deferred for some microbatch: average the gradients at the end
        self._no_sync: contextlib.AbstractContextManager | None = None

    @property
    def done(self) -> bool:
        return self.index >= len(self.plan)

    def before_forward(self, microbatch: Mapping[str, Any]) -> None:
        """Check that ``microbatch`` is the plan's next one; defer DDP's gradient sync for it."""
        if self.done:
            raise RuntimeError(f"PiKE: the trainer ran more microbatches than the {len(self.plan)} of the "
                               f"domain-grouped plan")
        expected = self.plan[self.index]
        domains = microbatch.get("domain") if isinstance(microbatch, Mapping) else None
        if (not isinstance(domains, torch.Tensor) or domains.numel() != expected.rows.numel()
                or bool((domains != expected.domain).any())):
            raise RuntimeError(
                "PiKE: probe_samples=0 takes the statistics from the training step, which needs the batch split "
                "into domain-grouped microbatches, but the trainer split it otherwise; give the Trainer the "
                "mixer's DataSpec: DataSpec(mixer.dataloader(), split_batch=pike_stream.step_statistics.split_batch)"
                " (pike_stream.PiKE.data_spec(mixer) builds it)")
        if self.index == 0:
            self._start = self._snapshot()  # normally zeros: the trainer zeroed the gradients before the step
        if isinstance(self.model, torch.nn.parallel.DistributedDataParallel) and self.model.require_backward_grad_sync:
            self._no_sync = self.model.no_sync()
            self._no_sync.__enter__()
            self._deferred = True

    def after_loss(self, loss: Any) -> None:
        """Add the microbatch's mean loss (a tensor, or Composer's loss dict with ``total``) to its domain's."""
        if isinstance(loss, Mapping):
            loss = loss["total"]
        if isinstance(loss, (tuple, list)):
            loss = sum(item.mean() for item in loss)
        mb = self.plan[self.index]
        self.sums[mb.domain, 3] += loss.detach().to(self.sums).mean() * mb.rows.numel()

    def after_backward(self) -> None:
        """Read the gradient at the end of a half; after the last microbatch, average DDP's gradients."""
        if self._no_sync is not None:
            self._no_sync.__exit__(None, None, None)
            self._no_sync = None
        mb = self.plan[self.index]
        self.index += 1
        self.sums[mb.domain, 4] += mb.rows.numel()
        if mb.half >= 0 and mb.closes_half:
            self._read_half(mb)
        if self.done:
            self._start = self._half_a = None
            if self._deferred:
                self._average_gradients_over_ranks()

    def result(self) -> ProbeResult:
        """The step's statistics, combined over ranks (every rank must call it, once, after the last microbatch)."""
        if not self.done:
            raise RuntimeError(f"PiKE: the step's statistics were asked for after {self.index} of the "
                               f"{len(self.plan)} planned microbatches")
        sums, sketches = all_reduce_sums(self.sums, self.sketches)
        return combine_sums(sums, sketches)

    # ------------------------------------------------------------------------------------------ internals
    def _snapshot(self) -> list[torch.Tensor]:
        """A float32 copy of the accumulated gradient (zeros where a parameter has none yet)."""
        return [torch.zeros_like(p, dtype=torch.float32) if p.grad is None else p.grad.detach().float().clone()
                for p in self.params]

    def _take_difference(self) -> list[torch.Tensor]:
        """Turn ``_start`` into the accumulated gradient minus ``_start``, in place, and hand it over."""
        delta = self._start
        assert delta is not None, "a half ends before it started"
        for d, p in zip(delta, self.params):
            d.neg_()
            if p.grad is not None:
                d.add_(p.grad.detach().float())
        self._start = None
        return delta

    def _read_half(self, mb: Microbatch) -> None:
        """At the end of a half: its mean-loss gradient; at the end of half B, the domain's sums."""
        scale = self.batch_size / (self._half_size(mb) * self.grad_scale)  # contribution → mean-loss gradient
        gradient = self._take_difference()
        for g in gradient:
            g.mul_(scale)
        if mb.half == 0:
            self._half_a = gradient
            self._start = self._snapshot()
            return
        n = self._domain_size(mb.domain)
        n_a = n // 2
        assert self._half_a is not None, "half B ends before half A"
        dot, diff_sq = reduce_pair(self._half_a, gradient, n_a, n - n_a, self.sketches[mb.domain], self.seed,
                                   self.chunk, self.metric)
        self._half_a = None
        for g, p in zip(gradient, self.params):  # the next half starts here: reuse the buffer
            g.zero_() if p.grad is None else g.copy_(p.grad.detach())
        self._start = gradient
        if not (torch.isfinite(dot) and torch.isfinite(diff_sq)):
            return  # an overflowed (mixed-precision) step: no estimate for this domain
        self.sums[mb.domain, 0] += dot
        self.sums[mb.domain, 1] += diff_sq / (1.0 / n_a + 1.0 / (n - n_a))
        self.sums[mb.domain, 2] += 1.0
        self.sums[mb.domain, 5] += n

    def _half_size(self, mb: Microbatch) -> int:
        return sum(m.rows.numel() for m in self.plan if m.domain == mb.domain and m.half == mb.half)

    def _domain_size(self, domain: int) -> int:
        return sum(m.rows.numel() for m in self.plan if m.domain == domain)

    def _average_gradients_over_ranks(self) -> None:
        """What DDP would have done at the last microbatch: the gradients averaged over all ranks."""
        world = dist.get_world_size()
        for p in self.params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)
            p.grad.div_(world)
