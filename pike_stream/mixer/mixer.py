"""PiKEStreamingMixer: every global batch drawn from the domains with proportions that may change at any step.

The global batch at step t is a pure function of (seed, the domains' data, global batch size, the weights
in force at each step up to t) — the mixer invariants listed in the README ("The mixer"):

    counts_t, carry ← apportion(weights_t, B_t, carry)     # strategies/apportion.py: integer counts, error carried
    for each domain k:  ids_k ← order_k[consumed_k : consumed_k + counts_t[k]]     # order.py, per domain epoch
    global batch t  = concat_k [(k, id) for id in ids_k]    # domain-major
    this rank's part = global batch t [rank :: world_size]  # equal, disjoint, same union for any world size

``B_t`` is the global batch size, or, with a ramp (:class:`~pike_stream.mixer.batch_size.BatchRamp`), a
function of the samples composed before step t; either way a pure function of the state.

The composition happens when the batch is *taken* (in ``__next__``, in the training process), so weights
set after step t shape batch t+1 (zero lag) however far the shard read-ahead runs.

A *probe batch* (:meth:`PiKEStreamingMixer.probe_batch`) holds the same number of samples of every domain,
whatever the weights, for estimating per-domain gradient statistics. Each domain has a second order for it
(the same shuffle algorithm, another seed) with its own cursor ``probed_k`` in the state, so probing is
deterministic, resumes exactly and never moves the training cursors:

    probe ids_k ← probe_order_k[probed_k : probed_k + m];   probed_k += m
    global probe batch = concat_k [(k, id) for id in probe ids_k];   this rank's part = [rank :: world_size]

With ``partitions=P`` (:mod:`pike_stream.mixer.partitions`), each domain's samples are split into ``P``
ranges with their own orders and cursors; each domain's count is split over them, and node ``j`` of ``N``
(``N`` one of :func:`~pike_stream.mixer.partitions.node_counts`, every power of two up to ``P`` for a power of
two) reads only its partitions' samples, so it downloads about ``1/N`` of the corpus.

A step's cursors move only once its batch has been read: a step whose read fails (storage down past
``retry_seconds``) can be taken again and yields the batch the uninterrupted run gets. ``close()`` (or a
``with`` block) stops the shard read-ahead threads.
"""

from __future__ import annotations

import logging
import os
import weakref
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from types import TracebackType
from typing import Any, NamedTuple

import numpy as np
import torch
from streaming.base.shuffle import algos as SHUFFLE_ALGOS
from streaming.base.util import bytes_to_int
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from converters.manifest import fingerprint as manifest_fingerprint
from pike_stream.mixer.batch_size import BatchRamp, batch_size_at
from pike_stream.mixer.domain import Domain, DomainSource
from pike_stream.mixer.order import DomainOrder, domain_seed
from pike_stream.mixer.partitions import (
    PartitionedOrder,
    node_count_error,
    node_of_rank,
    partition_nodes,
    slot_capacities,
    split_counts,
)
from pike_stream.mixer.shards import ShardCache
from pike_stream.mixer.state import MixerState, MixerStateError
from pike_stream.strategies.apportion import apportion
from pike_stream.strategies.checks import check_domain_weights

__all__ = ["PROBE_SEED_SALT", "PiKEStreamingMixer", "parse_byte_size", "plan_batch", "plan_partitioned_batch",
           "rank_positions", "ranks_per_node"]

log = logging.getLogger(__name__)

PROBE_SEED_SALT = 0x9E3779B1
"""Mixed into each domain's seed for its probe order, so the probe order is independent of the training order."""

_HISTORY = 64  # states of recent steps kept so ``state_dict(num_samples)`` can name a step already passed


class _Plan(NamedTuple):
    """A global batch decided but not yet committed: what it holds and how it moves the cursors."""

    domain: np.ndarray            # [B] domain index of each sample, domain-major
    sample_id: np.ndarray         # [B] sample id within its domain
    partition: np.ndarray | None  # [B] partition of each sample (None without partitions)
    counts: np.ndarray            # [K] samples of each domain
    carry: np.ndarray             # [K] rounding carries after it
    split: np.ndarray | None      # [K, P] samples of each domain's partitions (None without partitions)


class PiKEStreamingMixer(IterableDataset):
    """Mixes per-domain MDS shards into global batches whose proportions can change at any step.

    Args:
        domains: the domains (:class:`Domain`), in a fixed order: batches' ``domain`` field indexes it.
        global_batch_size: samples per step over all ranks (divisible by ``world_size``); with a ramp, the size
            it ends at.
        seed: the shuffle seed (each domain's order is keyed by ``seed`` and its name).
        weights: initial weights ``{name: w}`` (normalised), or None for uniform.
        rank, world_size: this process's place; None reads torch.distributed (or 0 and 1 without it).
        shuffle_algo, shuffle_block_size: mosaicml-streaming's shuffle (``py1e`` keeps shard locality).
        read_ahead: upcoming shards to prepare in the background, per domain on average: ``read_ahead`` × K in
            all, the soonest expected at the weights in force (a domain at weight 0 gets none; each drawn
            domain at least its next shard).
        read_ahead_workers: threads that download/decompress shards (0: fetch only on demand).
        cache_limit: bytes (or a string like ``"10gb"``) of cached shards of remote domains to keep, on disk,
            over all processes sharing the cache folders (ranks of a node); shards in use are kept past it.
        retry_seconds: how long a shard download failing transiently (endpoint down, 5xx, throttling) is
            retried (with backoff) before it is an error; other failures (403, 404) are errors at once.
        batch_ramp: grow the global batch from ``batch_ramp.start`` to ``global_batch_size`` over the first
            ``batch_ramp.samples`` samples (Megatron-LM's ramp-up); every size must be divisible by ``world_size``.
        allow_batch_size_change: let :meth:`load_state_dict` resume a state saved with another global batch
            size or ramp: the batches from the saved step on take this mixer's sizes (logged as a warning).
        allow_domain_changes: let :meth:`load_state_dict` resume a state saved with other domains: a domain the
            state lacks is added (a new one at cursor 0; one retired earlier where it stopped) at its share of
            ``weights``; a domain of the state missing here is retired, its cursor kept in the state.
        allow_data_growth: let :meth:`load_state_dict` resume a state saved when a domain had fewer shards: its
            saved fingerprint must be that of its first shards (shards were appended, none changed). The domain
            epoch in progress keeps its order; the new samples start in the next one (logged as a warning).
        partitions: split each domain into this many partitions so that each node reads only its own
            (mosaicml-streaming's ``num_canonical_nodes``): the node count must be one of ``node_counts(P)``
            (every power of two up to ``P`` when ``P`` is a power of two). None (default): every
            rank reads from every shard. Batches depend on it, not on the node count; resuming needs the same.
        local_world_size: ranks per node (default: ``LOCAL_WORLD_SIZE`` as torchrun and Composer's launcher set
            it, else all ranks on one node). Node ``j`` holds global ranks ``j·L … j·L + L − 1``.

    Iterating yields this rank's part of each global batch, forever (each domain cycles through epochs):
    ``{"input_ids": LongTensor[b, seq_len], "domain": LongTensor[b], "sample_id": LongTensor[b]}`` with
    ``b = B_t / world_size`` (with partitions also ``"position": LongTensor[b]``, each sample's place in the
    global batch) (:attr:`batch_size` before the step). Train for a number of batches/tokens, not epochs.
    ``with PiKEStreamingMixer(...) as mixer:`` (or :meth:`close`) stops the read-ahead threads at the end.
    """

    def __init__(self, domains: Sequence[Domain], global_batch_size: int, seed: int = 0,
                 weights: Mapping[str, float] | None = None, rank: int | None = None,
                 world_size: int | None = None, *, shuffle_algo: str = "py1e", shuffle_block_size: int = 1 << 18,
                 read_ahead: int = 2, read_ahead_workers: int = 4, cache_limit: int | str | None = None,
                 retry_seconds: float = 120.0, batch_ramp: BatchRamp | None = None,
                 allow_batch_size_change: bool = False, allow_domain_changes: bool = False,
                 allow_data_growth: bool = False, partitions: int | None = None,
                 local_world_size: int | None = None) -> None:
        super().__init__()
        rank, world_size = _resolve_rank(rank, world_size)
        _check_arguments(domains, global_batch_size, rank, world_size, read_ahead, read_ahead_workers)
        if local_world_size is None:
            local_world_size = ranks_per_node(world_size)
        self.node, self.nodes, self.local_rank = node_of_rank(rank, world_size, local_world_size)
        self.partitions = _check_partitions(partitions, self.nodes, world_size, local_world_size, allow_data_growth)
        if shuffle_algo not in SHUFFLE_ALGOS:
            raise ValueError(f"shuffle_algo {shuffle_algo!r} is not one of streaming's {sorted(SHUFFLE_ALGOS)}")
        try:
            limit = parse_byte_size(cache_limit)
        except ValueError as error:
            raise ValueError(f"cache_limit: {error}") from None
        if batch_ramp is not None:
            batch_ramp.check(global_batch_size, world_size)
        self.domain_names = [d.name for d in domains]
        self.global_batch_size = int(global_batch_size)
        self.batch_ramp = batch_ramp
        self.allow_batch_size_change = bool(allow_batch_size_change)
        self.allow_domain_changes = bool(allow_domain_changes)
        self.allow_data_growth = bool(allow_data_growth)
        self.seed = int(seed)
        self.rank, self.world_size = rank, world_size
        self.read_ahead = read_ahead
        self._shuffle = {"algo": shuffle_algo, "block_size": int(shuffle_block_size)}
        initial = self._weights_array(weights) if weights is not None else np.full(len(domains), 1 / len(domains))
        self._initial_weights = initial.copy()

        self.sources = [DomainSource.open(d) for d in domains]
        seq_lens = {s.name: s.seq_len for s in self.sources}
        if len(set(seq_lens.values())) != 1:
            raise ValueError(f"domains have different seq_len: {seq_lens}; convert them with the same --seq-len")
        self.seq_len = next(iter(seq_lens.values()))
        self.orders = [DomainOrder(s.shard_sizes, domain_seed(self.seed, s.name), shuffle_algo, shuffle_block_size)
                       for s in self.sources]
        self.probe_orders = [DomainOrder(s.shard_sizes, domain_seed(self.seed, s.name) ^ PROBE_SEED_SALT,
                                         shuffle_algo, shuffle_block_size) for s in self.sources]
        self.part_orders: list[PartitionedOrder] = []
        self.probe_part_orders: list[PartitionedOrder] = []
        if self.partitions is not None:
            try:
                self.part_orders = [PartitionedOrder(s.shard_sizes, domain_seed(self.seed, s.name), self.partitions,
                                                     shuffle_algo, shuffle_block_size) for s in self.sources]
                self.probe_part_orders = [
                    PartitionedOrder(s.shard_sizes, domain_seed(self.seed, s.name) ^ PROBE_SEED_SALT, self.partitions,
                                     shuffle_algo, shuffle_block_size) for s in self.sources]
            except ValueError as error:
                small = min(self.sources, key=lambda s: s.num_samples)
                raise ValueError(f"partitions={self.partitions}: domain {small.name!r} has {small.num_samples} "
                                 f"samples ({error})") from None
        self.shards = ShardCache(self.sources, workers=read_ahead_workers, cache_limit=limit,
                                 retry_seconds=retry_seconds)
        self._finalizer = weakref.finalize(self, self.shards.close)

        k = len(domains)
        self._state = MixerState(0, np.zeros(k, np.int64), np.zeros(k, np.float64), initial, np.zeros(k, np.int64),
                                 partitions=self.partitions)
        self._history: deque[MixerState] = deque(maxlen=_HISTORY)
        ramped = "" if batch_ramp is None else (f" (ramped up from {batch_ramp.start} by {batch_ramp.increment} "
                                                f"over the first {batch_ramp.samples} samples)")
        parted = "" if self.partitions is None else (f", {self.partitions} partitions per domain (node {self.node} "
                                                     f"of {self.nodes} reads {self.partitions // self.nodes})")
        log.info("PiKEStreamingMixer: %d domains (%s), global batch %d%s, rank %d of %d%s, seq_len %d, seed %d",
                 k, ", ".join(f"{s.name}: {s.num_samples} samples in {len(s.shards)} shards" for s in self.sources),
                 self.global_batch_size, ramped, rank, world_size, parted, self.seq_len, self.seed)

    # ----------------------------------------------------------------------------------------- weights
    @property
    def weights(self) -> dict[str, float]:
        """The weights that will compose the next batch."""
        return {name: float(w) for name, w in zip(self.domain_names, self._state.weights)}

    def set_weights(self, weights: Mapping[str, float] | Sequence[float] | np.ndarray) -> None:
        """Set the proportions of the next batch onwards (normalised to sum to 1); the read-ahead follows at
        once, so a domain whose weight rises has its next shards fetched while the current step computes."""
        self._state.weights = self._weights_array(weights)
        if not self.shards.closed:
            self._read_ahead()

    @property
    def step(self) -> int:
        """Global batches composed so far."""
        return self._state.step

    @property
    def batch_size(self) -> int:
        """The global size of the next batch (``global_batch_size``, or where the ramp stands)."""
        return batch_size_at(self.global_batch_size, self.batch_ramp, self._state.samples)

    @property
    def samples(self) -> int:
        """Samples composed so far, over all domains and ranks."""
        return self._state.samples

    @property
    def domain_sizes(self) -> dict[str, int]:
        """Samples per domain (one domain epoch)."""
        return {s.name: s.num_samples for s in self.sources}

    @property
    def consumed(self) -> dict[str, int]:
        """Samples drawn from each domain so far (over all ranks)."""
        return {name: int(c) for name, c in zip(self.domain_names, self._state.consumed)}

    def _weights_array(self, weights: Mapping[str, float] | Sequence[float] | np.ndarray) -> np.ndarray:
        if not isinstance(weights, Mapping):
            values = np.asarray(weights, dtype=np.float64)
            if values.shape != (len(self.domain_names),):
                raise ValueError(f"weights must have {len(self.domain_names)} entries (one per domain "
                                 f"{self.domain_names}), got shape {values.shape}")
            weights = dict(zip(self.domain_names, values.tolist()))
        values = np.array(list(check_domain_weights(weights, self.domain_names).values()), dtype=np.float64)
        return values / values.sum()

    # ----------------------------------------------------------------------------------------- lifetime
    def close(self) -> None:
        """Stop the shard read-ahead threads (also those waiting to retry a download); reading afterwards is an
        error. Idempotent; also done when the mixer is garbage-collected."""
        self._finalizer()

    def __enter__(self) -> PiKEStreamingMixer:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.close()

    # ----------------------------------------------------------------------------------------- batches
    def compose(self, batch_size: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Decide the next global batch from the weights in force and advance the cursors.

        Returns ``(domain, sample_id)`` arrays of length :attr:`batch_size` (or ``batch_size``, to replay a
        run whose batch size changed on resume), domain-major. Reads no data.
        """
        plan = self._plan(batch_size)
        self._commit(plan)
        return plan.domain, plan.sample_id

    def _plan(self, batch_size: int | None = None) -> _Plan:
        """The next global batch and how it moves the cursors; the state is not touched."""
        state = self._state
        size = self.batch_size if batch_size is None else batch_size
        if self.partitions is None:
            domain, sample_id, counts, carry = plan_batch(self.orders, state.consumed, state.weights, state.carry, size)
            return _Plan(domain, sample_id, None, counts, carry, None)
        assert state.part_consumed is not None
        return _Plan(*plan_partitioned_batch(self.part_orders, state.part_consumed, state.weights, state.carry, size,
                                             state.samples))

    def _commit(self, plan: _Plan) -> None:
        state = self._state
        self._history.append(state.copy())
        state.consumed = state.consumed + plan.counts
        state.carry = plan.carry
        if plan.split is not None:
            assert state.part_consumed is not None
            state.part_consumed = state.part_consumed + plan.split
        state.step += 1

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        if get_worker_info() is not None:
            raise RuntimeError("PiKEStreamingMixer composes batches in the training process (so a weight change "
                               "shapes the very next batch); use mixer.dataloader(), which sets num_workers=0 — "
                               "shard downloads already run in read-ahead threads")
        while True:
            yield self.next_batch()

    def next_batch(self) -> dict[str, torch.Tensor]:
        """Compose the next global batch and read this rank's part of it.

        The cursors advance only once the part is read: if reading fails (the error says why), calling
        again retries the same step.
        """
        plan = self._plan()
        batch = self._read_part(plan.domain, plan.sample_id, plan.partition)
        self._commit(plan)
        self._read_ahead()
        return batch

    @property
    def probed(self) -> dict[str, int]:
        """Samples drawn from each domain's probe order so far (over all ranks)."""
        return {name: int(c) for name, c in zip(self.domain_names, self._state.probed)}

    def compose_probe(self, samples_per_domain: int) -> tuple[np.ndarray, np.ndarray]:
        """Decide the next global probe batch — ``samples_per_domain`` samples of every domain from its probe
        order — and advance the probe cursors; the training cursors, carries and weights are untouched.

        Returns ``(domain, sample_id)`` arrays of length ``K · samples_per_domain``, domain-major.
        """
        plan = self._plan_probe(samples_per_domain)
        self._commit_probe(plan)
        return plan.domain, plan.sample_id

    def _plan_probe(self, m: int) -> _Plan:
        if isinstance(m, bool) or not isinstance(m, (int, np.integer)) or m < 1:
            raise ValueError(f"samples_per_domain must be a positive integer, got {m!r}")
        k, state = len(self.sources), self._state
        counts = np.full(k, int(m), dtype=np.int64)
        if self.partitions is None:
            ids = [order.take(int(state.probed[d]), int(m)) for d, order in enumerate(self.probe_orders)]
            return _Plan(np.repeat(np.arange(k), m), np.concatenate(ids), None, counts, state.carry, None)
        assert state.part_probed is not None
        domain, sample_id, partition, split = _partitioned_ids(self.probe_part_orders, state.part_probed, counts,
                                                               int(state.probed.sum()))
        return _Plan(domain, sample_id, partition, counts, state.carry, split)

    def _commit_probe(self, plan: _Plan) -> None:
        state = self._state
        state.probed = state.probed + plan.counts
        if plan.split is not None:
            assert state.part_probed is not None
            state.part_probed = state.part_probed + plan.split

    def probe_batch(self, samples_per_domain: int) -> dict[str, torch.Tensor]:
        """This rank's part of the next probe batch (:meth:`compose_probe`), in the layout of a training batch.

        Every rank must call it at the same steps with the same ``samples_per_domain``: the probe cursors are
        part of the checkpoint state, so a resumed run draws the same probe batches. The probe cursors advance
        only once the part is read.
        """
        plan = self._plan_probe(samples_per_domain)
        batch = self._read_part(plan.domain, plan.sample_id, plan.partition)
        self._commit_probe(plan)
        return batch

    def _read_part(self, domain: np.ndarray, sample_id: np.ndarray,
                   partition: np.ndarray | None = None) -> dict[str, torch.Tensor]:
        """Read this rank's part of a global list of (domain, sample id): positions ``rank :: world_size``, or
        with partitions, this node's samples (:func:`rank_positions`)."""
        mine = rank_positions(len(domain), self.rank, self.world_size, partition, self.partitions or 1, self.nodes)
        domain, sample_id = domain[mine], sample_id[mine]
        if self.shards.closed:
            raise RuntimeError("this PiKEStreamingMixer is closed")
        tokens = np.empty((len(sample_id), self.seq_len), dtype=np.int64)
        for k in np.unique(domain):
            rows = np.flatnonzero(domain == k)
            shards, within = self.sources[k].locate(sample_id[rows])
            for shard in np.unique(shards):
                with self.shards.open(int(k), int(shard)):  # local, and not evicted by any rank meanwhile
                    for row, index in zip(rows[shards == shard], within[shards == shard]):
                        tokens[row] = self.sources[k].read(int(shard), int(index))
        batch = {"input_ids": torch.from_numpy(tokens), "domain": torch.from_numpy(domain.astype(np.int64)),
                 "sample_id": torch.from_numpy(sample_id.astype(np.int64))}
        if partition is not None:  # where each sample sits in the global batch (not simply rank :: world_size)
            batch["position"] = torch.from_numpy(mine.astype(np.int64))
        return batch

    def _read_ahead(self) -> None:
        """Queue the upcoming shards expected soonest at the weights in force: each drawn domain's next shard
        and all the next batch is expected to read, then the soonest others up to ``read_ahead`` × K in all (a
        domain at weight 0 gets none, a heavy one more than ``read_ahead``); and tell the cache when every
        upcoming shard is expected, for its eviction."""
        if self.read_ahead <= 0:
            return
        batch = self.batch_size
        steps, domains, shards = [], [], []
        for k, source in enumerate(self.sources):
            rate = float(self._state.weights[k]) * batch  # samples of domain k per step
            if rate <= 0:
                continue
            window = min(source.num_samples, 2 * self.read_ahead * int(source.shard_sizes.max()))
            ids, when = self._upcoming(k, window, rate)
            upcoming, _ = source.locate(ids)
            by_time = np.argsort(when, kind="stable")
            unique, first = np.unique(upcoming[by_time], return_index=True)  # each shard at its soonest
            steps.append(when[by_time[first]])
            domains.append(np.full(len(unique), k))
            shards.append(unique)
        if not steps:
            self.shards.prefetch([], {})
            return
        when, domain, shard = np.concatenate(steps), np.concatenate(domains), np.concatenate(shards)
        order = np.lexsort((shard, domain, when))  # soonest first; ties by domain, then shard
        expected = list(zip(when[order].tolist(), domain[order].tolist(), shard[order].tolist()))
        # First every drawn domain's next shard (a rarely drawn domain's next sample is not left to a
        # download when it comes) and every shard the next batch is expected to read; then the soonest others
        # up to read_ahead × K.
        first = {k: (k, s) for _, k, s in reversed(expected)}  # the soonest shard of each domain
        keys = dict.fromkeys([*first.values(), *((k, s) for t, k, s in expected if t <= 1.0)])
        for _, k, s in expected:
            if len(keys) >= self.read_ahead * len(self.sources):
                break
            keys.setdefault((k, s))
        self.shards.prefetch(list(keys), {(k, s): t for t, k, s in expected})

    def _upcoming(self, k: int, window: int, rate: float) -> tuple[np.ndarray, np.ndarray]:
        """Domain ``k``'s next samples that this rank's node reads (about ``window`` of the domain's draws ahead)
        and the step, counted from now, at which each is expected: the (p+1)-th upcoming sample of a stream
        drawn at ``r`` samples a step comes after (p+1)/r steps. The stream is the domain's order, or, with
        partitions, each partition this node owns (each drawn at ``rate / P``)."""
        state = self._state
        if self.partitions is None:
            ids = self.orders[k].take(int(state.consumed[k]), window)
            return ids, np.arange(1, len(ids) + 1) / rate
        assert state.part_consumed is not None
        order = self.part_orders[k]
        per = max(1, min(-(-window // self.partitions), int(order.sizes.max())))
        owned = partition_nodes(self.partitions, self.nodes) == self.node
        ids = order.upcoming(state.part_consumed[k], per)[owned]
        steps = np.broadcast_to(np.arange(1, per + 1) * (self.partitions / rate), ids.shape)
        return ids[ids >= 0], steps[ids >= 0]

    def dataloader(self, *, pin_memory: bool = False, num_workers: int = 0) -> DataLoader:
        """A torch DataLoader over this mixer (its ``.dataset``), yielding this rank's batches."""
        if num_workers:
            raise ValueError("num_workers must be 0: batches are composed in the training process so weight "
                             "changes take effect at the next step; shard I/O runs in read-ahead threads "
                             "(see read_ahead_workers)")
        return DataLoader(self, batch_size=None, num_workers=0, pin_memory=pin_memory)

    # ----------------------------------------------------------------------------------------- state
    def state_dict(self, num_samples: int | None = None, from_beginning: bool = True) -> dict[str, Any]:
        """The state to resume after ``num_samples`` samples (Composer's signature; None: now).

        Composer passes the samples consumed by training, which may trail what this iterator composed.
        """
        state = self._state
        if num_samples is not None and int(num_samples) != state.samples:
            found = [s for s in self._history if s.samples == int(num_samples)]
            if not found:
                known = [s.samples for s in self._history] + [state.samples]
                raise MixerStateError(f"no state after {num_samples} samples: the mixer has composed {state.samples} "
                                      f"samples and remembers the step boundaries {known[0]} … {known[-1]}"
                                      + (f" (none at {num_samples})" if known[0] <= int(num_samples) else ""))
            state = found[0]
        return state.to_dict(names=self.domain_names, fingerprints=[s.fingerprint for s in self.sources],
                             global_batch_size=self.global_batch_size, ramp=self.batch_ramp, seed=self.seed,
                             shuffle=self._shuffle)

    def load_state_dict(self, obj: dict[str, Any]) -> None:
        """Continue exactly where the mixer that saved ``obj`` stopped (any world size)."""
        grew: dict[int, int] = {}  # domain index → its shard count in the checkpoint, for a domain that grew

        def prefix_shards(k: int, fingerprint: str) -> int | None:
            n = self._prefix_shards(k, fingerprint)
            if n is not None:
                grew[k] = n
            return n

        self._state = MixerState.from_dict(obj, names=self.domain_names,
                                           fingerprints=[s.fingerprint for s in self.sources],
                                           global_batch_size=self.global_batch_size, ramp=self.batch_ramp,
                                           seed=self.seed, shuffle=self._shuffle, partitions=self.partitions,
                                           allow_batch_size_change=self.allow_batch_size_change,
                                           allow_domain_changes=self.allow_domain_changes,
                                           initial_weights=self._initial_weights,
                                           shard_sizes=[s.shard_sizes for s in self.sources],
                                           prefix_shards=prefix_shards if self.allow_data_growth else None)
        for k, source in enumerate(self.sources):
            try:
                self.orders[k].set_grown(self._state.grown[k])
                self.probe_orders[k].set_grown(self._state.probe_grown[k])
            except ValueError as error:
                raise MixerStateError(f"malformed mixer state: domains.{source.name}: {error}") from None
        self._history.clear()
        for k, shards in grew.items():
            source = self.sources[k]
            boundary = self._state.grown[k][-1][1] if self._state.grown[k] else 0
            log.warning("PiKEStreamingMixer: domain %r grew from %s to %d shards (%d samples), as "
                        "allow_data_growth permits; its new samples start at position %d of its order "
                        "(domain epoch %d)", source.name, shards, len(source.shards), source.num_samples,
                        boundary, self.orders[k].epoch_of(boundary))
        saved = list(obj.get("domains", {}))
        added = [n for n in self.domain_names if n not in saved]
        if added or len(saved) != len(self.domain_names):
            back = {n: self.consumed[n] for n in added if self.consumed[n]}
            log.warning("PiKEStreamingMixer: domains changed at step %d, as allow_domain_changes permits: added %s%s, "
                        "retired %s (its cursor kept); weights now %s", self._state.step, added or "none",
                        f" (continuing where they stopped: {back})" if back else "",
                        [n for n in saved if n not in self.domain_names] or "none",
                        {n: round(w, 4) for n, w in self.weights.items()})
        saved = (obj.get("global_batch_size"), obj.get("rampup_batch_size"))
        if saved != (self.global_batch_size, None if self.batch_ramp is None else self.batch_ramp.to_dict()):
            log.warning("PiKEStreamingMixer: the checkpoint was made with global batch %s (ramp %s); from step %d "
                        "on, batches have this run's size %d (ramp %s), as allow_batch_size_change permits",
                        saved[0], saved[1], self._state.step, self.batch_size,
                        None if self.batch_ramp is None else self.batch_ramp.to_dict())
        log.info("PiKEStreamingMixer resumed at step %d: consumed %s, weights %s", self._state.step,
                 self.consumed, {n: round(w, 4) for n, w in self.weights.items()})

    def _prefix_shards(self, k: int, fingerprint: str) -> int | None:
        """The ``n`` < all for which ``fingerprint`` is domain ``k``'s fingerprint of its first ``n`` shards."""
        source = self.sources[k]
        manifest = source.manifest
        if not {"dtype", "tokenizer"} <= set(manifest):
            return None
        hashes = [shard.file_pairs[0][0].hashes.get("sha1") for shard in source.shards]
        hashed = hashes.index(None) if None in hashes else len(hashes)  # the prefix every shard of has a sha1
        for n in range(1, min(hashed + 1, len(hashes))):
            if manifest_fingerprint(source.seq_len, manifest["dtype"], manifest["tokenizer"],
                                    hashes[:n]) == fingerprint:  # type: ignore[arg-type]
                return n
        return None


def plan_partitioned_batch(orders: Sequence[PartitionedOrder], cursors: np.ndarray, weights: np.ndarray,
                           carry: np.ndarray, batch_size: int, offset: int
                           ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """A global batch with partitions (:mod:`pike_stream.mixer.partitions`): ``(domain, sample_id, partition)``
    domain-major (and partition-major within a domain), the counts and carries it leaves, and ``split[k, p]``,
    the samples it takes from each domain's partitions. ``cursors[k, p]``: samples drawn from them so far;
    ``offset``: samples composed before the batch. Pure."""
    counts, carry = apportion(weights, batch_size, carry)
    domain, sample_id, partition, split = _partitioned_ids(orders, cursors, counts, offset)
    return domain, sample_id, partition, counts, carry, split


def _partitioned_ids(orders: Sequence[PartitionedOrder], cursors: np.ndarray, counts: np.ndarray, offset: int
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    split = split_counts(counts, cursors, slot_capacities(int(counts.sum()), offset, orders[0].partitions))
    ids = [order.take_split(cursors[k], split[k]) for k, order in enumerate(orders) if counts[k]]
    domain = np.repeat(np.arange(len(orders)), counts)
    partition = np.repeat(np.tile(np.arange(split.shape[1]), split.shape[0]), split.ravel())
    return domain, np.concatenate(ids) if ids else np.zeros(0, dtype=np.int64), partition, split


def rank_positions(length: int, rank: int, world_size: int, partition: np.ndarray | None = None,
                   partitions: int = 1, nodes: int = 1) -> np.ndarray:
    """The positions of a global batch of ``length`` that rank ``rank`` reads: ``rank :: world_size``; with
    ``partition`` (each position's, of ``partitions``), the positions of the partitions its node reads
    (:func:`~pike_stream.mixer.partitions.partition_nodes`; node ``rank // (world_size / nodes)``), taken in
    turn by the node's ``world_size / nodes`` ranks."""
    if partition is None:
        return np.arange(rank, length, world_size)
    local = world_size // nodes
    node_of = partition_nodes(partitions, nodes)
    return np.flatnonzero(node_of[partition] == rank // local)[rank % local::local]


def plan_batch(orders: Sequence[DomainOrder], consumed: np.ndarray, weights: np.ndarray, carry: np.ndarray,
               batch_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """A global batch from the domains' orders and cursors, the weights in force and the rounding carries:
    ``(domain, sample_id)`` domain-major, and the counts and carries it leaves. Pure: rank ``r`` of ``W`` reads
    positions ``r :: W`` of it. (The mixer's own step; ``bench/bench_nodes.py`` replays it from shard sizes.)"""
    counts, carry = apportion(weights, batch_size, carry)
    ids = [order.take(int(consumed[k]), int(counts[k])) for k, order in enumerate(orders)]
    return np.repeat(np.arange(len(counts)), counts), np.concatenate(ids), counts, carry


def ranks_per_node(world_size: int) -> int:
    """Ranks on this node: ``LOCAL_WORLD_SIZE`` as torchrun and Composer's launcher set it, else all of them."""
    return int(os.environ.get("LOCAL_WORLD_SIZE", world_size) or world_size)


def _resolve_rank(rank: int | None, world_size: int | None) -> tuple[int, int]:
    if rank is not None and world_size is not None:
        return int(rank), int(world_size)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        found = torch.distributed.get_rank(), torch.distributed.get_world_size()
    else:
        found = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    return (found[0] if rank is None else int(rank)), (found[1] if world_size is None else int(world_size))


def _check_partitions(partitions: int | None, nodes: int, world_size: int, local_world_size: int,
                      allow_data_growth: bool) -> int | None:
    if partitions is None:
        return None
    if isinstance(partitions, bool) or not isinstance(partitions, (int, np.integer)) or partitions < 1:
        raise ValueError(f"partitions must be a positive integer (or None), got {partitions!r}")
    message = node_count_error(int(partitions), nodes, world_size, local_world_size)
    if message:
        raise ValueError(message)
    if allow_data_growth:
        raise ValueError("allow_data_growth does not work with partitions (a grown domain would move every "
                         "partition's boundaries); use one or the other")
    return int(partitions)


def _check_arguments(domains: Sequence[Domain], global_batch_size: int, rank: int, world_size: int,
                     read_ahead: int, read_ahead_workers: int) -> None:
    if not domains:
        raise ValueError("PiKEStreamingMixer needs at least one domain")
    names = [getattr(d, "name", None) for d in domains]
    if any(not isinstance(d, Domain) for d in domains):
        raise TypeError(f"domains must be pike_stream.Domain objects, got {[type(d).__name__ for d in domains]}")
    empty = [i for i, n in enumerate(names) if not isinstance(n, str) or not n.strip()]
    if empty:
        raise ValueError(f"domain names must be non-empty strings; domain(s) at position {empty} have {names}")
    duplicates = sorted({n for n in names if isinstance(n, str) and names.count(n) > 1})
    if duplicates:
        raise ValueError(f"duplicate domain names: {duplicates}")
    if not isinstance(global_batch_size, int) or global_batch_size <= 0:
        raise ValueError(f"global_batch_size must be a positive integer, got {global_batch_size!r}")
    if world_size <= 0 or not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is not in a world of size {world_size}")
    if global_batch_size % world_size:
        raise ValueError(f"global_batch_size={global_batch_size} is not divisible by world_size={world_size}")
    if read_ahead < 0 or read_ahead_workers < 0:
        raise ValueError(f"read_ahead ({read_ahead}) and read_ahead_workers ({read_ahead_workers}) must be ≥ 0")


def parse_byte_size(value: int | str | None) -> int | None:
    """Bytes of a size given as an int, an integral float, or a string like ``"500mb"``, ``"10gb"``,
    ``"1_000_000"`` (streaming's ``bytes_to_int``); None stays None (no limit)."""
    if value is None:
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise ValueError(f"{value!r} is not a size in bytes like 1000000, 500mb or 10gb")
    try:
        size = bytes_to_int(value.replace("_", "") if isinstance(value, str) else value)
    except ValueError:
        raise ValueError(f"{value!r} is not a size in bytes like 1000000, 500mb or 10gb") from None
    if size < 0:
        raise ValueError(f"{value!r} is negative; give a size ≥ 0 bytes")
    return size
