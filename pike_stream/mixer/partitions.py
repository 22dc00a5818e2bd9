"""Node-partitioned reads: each node reads only its share of every domain's shards.

Without partitions, rank ``r`` of ``W`` takes positions ``r :: W`` of every global batch, so every shard's
samples are spread over all ranks and every node downloads the whole corpus each epoch. With ``P``
partitions (``PiKEStreamingMixer(partitions=P)``, as mosaicml-streaming's ``num_canonical_nodes``):

- each domain's samples are split into ``P`` contiguous ranges (sizes differ by at most one sample; a shard
  on a boundary is shared by two partitions); each range has its own shard-local shuffle per epoch
  (:class:`PartitionedOrder`) and its own cursor;
- the ``B`` slots of a global batch belong to partitions in turn: slot ``i`` to partition
  ``σ((offset + i) mod P)``, ``offset`` being the samples composed before the batch and ``σ`` the digit
  reversal of :func:`slot_order` (for ``P = 8``: 0 4 2 6 1 5 3 7). That fixes how many samples each partition
  gives (:func:`slot_capacities`);
- each domain's count ``c_k`` (from the weights, as without partitions) is split over the partitions by
  :func:`split_counts`: every domain's partitions advance together (each partition's cursor stays within a
  sample or two of ``1/P`` of the domain's cursor), and every partition gives exactly its slots;
- node ``j`` of ``N`` owns the contiguous block of partitions ``j·P/N … (j + 1)·P/N − 1`` (so the shards
  two of its partitions share are read once, by it). Under ``σ`` the block of slot ``i``'s partition is a
  one-to-one function of ``(offset + i) mod N``, so each node gets exactly ``B/N`` samples of every batch,
  all from its own partitions, for every ``N`` that :func:`node_counts` allows (every divisor of ``P`` when
  ``P`` is a power of two); its ranks (``LOCAL_WORLD_SIZE`` of them, global ranks ``j·L … j·L + L − 1``
  as torchrun numbers them) take turns over them. Every rank gets ``B/W`` samples.

Nothing of this depends on ``N``: the global batches are the same on any node count :func:`node_counts`
allows, and a resume on another such count is exact. With ``P = 1`` the batches are those of a mixer without partitions.

Each partition draws without replacement within its own epochs. A domain's partitions are drawn at one rate,
so where their sizes differ (by one sample, when ``P`` does not divide the domain's samples) the larger ones'
epochs take a little longer and their samples come up ``1/size`` less often; the partitions' epochs drift
apart by one sample per epoch. (Nodes read equal parts of every batch, so some such imbalance is unavoidable;
mosaicml-streaming repeats samples to pad its partitions instead.)

Pure functions and orders: no I/O.
"""

from __future__ import annotations

import functools

import numpy as np

from pike_stream.mixer.order import DomainOrder

__all__ = ["PartitionedOrder", "node_count_error", "node_counts", "node_of_rank", "partition_nodes",
           "slot_capacities", "slot_order", "split_counts"]


def partition_bounds(num_samples: int, partitions: int) -> np.ndarray:
    """``P + 1`` sample indices: partition ``p`` holds samples ``[bounds[p], bounds[p + 1])``."""
    return (np.arange(partitions + 1, dtype=np.int64) * num_samples) // partitions


class PartitionedOrder:
    """One domain's ``P`` partitions, each a :class:`DomainOrder` over its piece of the domain's shards.

    Partition ``p``'s order walks its sample range's pieces of shards (a shard cut by a partition boundary
    is two pieces) with streaming's shard-local shuffle, seeded by the domain's seed and ``p`` (partition 0
    keeps the domain's seed: one partition is the unpartitioned order).
    """

    def __init__(self, shard_sizes: np.ndarray, seed: int, partitions: int, algo: str = "py1e",
                 block_size: int = 1 << 18) -> None:
        shard_sizes = np.asarray(shard_sizes, dtype=np.int64)
        self.num_samples = int(shard_sizes.sum())
        if not 1 <= partitions <= self.num_samples:
            raise ValueError(f"{partitions} partitions of a domain of {self.num_samples} samples: each partition "
                             f"needs at least one sample")
        self.bounds = partition_bounds(self.num_samples, partitions)
        shard_starts = np.concatenate([[0], np.cumsum(shard_sizes)])
        self.parts: list[DomainOrder] = []
        for p in range(partitions):
            lo, hi = int(self.bounds[p]), int(self.bounds[p + 1])
            cuts = np.unique(np.clip(shard_starts, lo, hi))  # shard boundaries inside [lo, hi], and lo, hi
            self.parts.append(DomainOrder(np.diff(cuts), (seed + p * 7919) % (1 << 31), algo, block_size))
        self.sizes = np.diff(self.bounds)
        self._epochs: tuple[int, ...] | None = None  # the partitions' epochs that ``_flat`` holds
        self._flat = np.zeros(0, dtype=np.int64)

    @property
    def partitions(self) -> int:
        return len(self.parts)

    def take(self, partition: int, start: int, count: int) -> np.ndarray:
        """Domain sample ids at positions ``[start, start + count)`` of partition ``partition``'s stream."""
        return self.parts[partition].take(start, count) + self.bounds[partition]

    def epoch_of(self, partition: int, position: int) -> int:
        return position // int(self.sizes[partition])

    def upcoming(self, cursors: np.ndarray, count: int) -> np.ndarray:
        """``[P, count]``: the domain sample ids at positions ``cursors[p] …`` of each partition, up to the end of
        the epoch each partition is in (-1 past it). One array operation for all partitions (the read-ahead
        asks at every step), from the epochs' orders laid end to end and rebuilt when an epoch changes."""
        cursors = np.asarray(cursors, dtype=np.int64)
        flat = self._flat_at(cursors)
        offset = cursors % self.sizes
        index = (self.bounds[:-1] + offset)[:, None] + np.arange(count)[None, :]
        inside = (offset[:, None] + np.arange(count)[None, :]) < self.sizes[:, None]
        return np.where(inside, flat[np.minimum(index, len(flat) - 1)], -1)

    def take_split(self, cursors: np.ndarray, counts: np.ndarray) -> np.ndarray:
        """The next ``counts[p]`` sample ids of every partition from ``cursors[p]``, partition after partition:
        ``concat_p take(p, cursors[p], counts[p])``, in one array operation unless one crosses an epoch end."""
        cursors, counts = np.asarray(cursors, dtype=np.int64), np.asarray(counts, dtype=np.int64)
        used = np.flatnonzero(counts)
        offset = cursors[used] % self.sizes[used]
        if np.any(offset + counts[used] > self.sizes[used]):
            return np.concatenate([self.take(int(p), int(cursors[p]), int(counts[p])) for p in used])
        flat, n = self._flat_at(cursors), counts[used]
        starts = np.repeat(self.bounds[used] + offset - (np.cumsum(n) - n), n)
        return flat[starts + np.arange(int(n.sum()))]

    def _flat_at(self, cursors: np.ndarray) -> np.ndarray:
        """The epoch orders the partitions are in at ``cursors``, end to end (partition ``p`` from ``bounds[p]``)."""
        epochs = tuple((cursors // self.sizes).tolist())
        if epochs != self._epochs:
            self._flat = np.concatenate([self.parts[p].epoch_order(e) + self.bounds[p] for p, e in enumerate(epochs)])
            self._epochs = epochs
        return self._flat


def _factors(n: int) -> list[int]:
    """The prime factors of ``n``, smallest first, with repeats."""
    out, f = [], 2
    while f * f <= n:
        while n % f == 0:
            out.append(f)
            n //= f
        f += 1
    return out + ([n] if n > 1 else [])


@functools.lru_cache(maxsize=16)
def _slot_order(partitions: int) -> np.ndarray:
    order = slot_order(partitions)
    order.flags.writeable = False
    return order


def slot_order(partitions: int) -> np.ndarray:
    """``σ``: the partition of each residue ``r`` of the slot sequence, the mixed-radix digit reversal of ``r``
    over ``P``'s prime factors (smallest first). The leading digits of ``σ(r)``, which name its block of
    ``P/N`` partitions, are the trailing digits of ``r``, i.e. ``r mod N``, for each ``N`` of
    :func:`node_counts`."""
    radices = _factors(partitions)
    order = np.zeros(partitions, dtype=np.int64)
    for r in range(partitions):
        rest, value = r, 0
        for radix in radices:  # r's digits, least significant first, become σ(r)'s, most significant first
            value = value * radix + rest % radix
            rest //= radix
        order[r] = value
    return order


def node_counts(partitions: int) -> list[int]:
    """The node counts whose nodes each get exactly ``B/N`` of every batch: the products of the smallest
    prime factors of ``P`` (1, 2, 4, … for a power of two; 1, 2, 4, 12 for 12)."""
    counts = [1]
    for radix in _factors(partitions):
        counts.append(counts[-1] * radix)
    return counts


def node_count_error(partitions: int, nodes: int, ranks: int, local: int) -> str | None:
    """Why ``partitions`` cannot be split over ``nodes`` nodes of ``local`` ranks each (``ranks`` in all),
    or None when it can."""
    if nodes in node_counts(partitions):
        return None
    return (f"partitions={partitions} cannot be split evenly over this run's {nodes} nodes ({ranks} ranks, {local} "
            f"per node): with {partitions} partitions the node count must be one of {node_counts(partitions)} (a "
            f"power of two, e.g. 64, allows every power-of-two node count up to it)")


def partition_nodes(partitions: int, nodes: int) -> np.ndarray:
    """The node that reads each partition: node ``j`` reads the block ``j·P/N … (j + 1)·P/N − 1``."""
    return np.arange(partitions) // (partitions // nodes)


def slot_capacities(batch_size: int, offset: int, partitions: int) -> np.ndarray:
    """Samples each partition gives to a batch of ``batch_size`` whose first slot is ``offset``:
    ``#{i < batch_size : σ((offset + i) mod P) = p}``."""
    residues = np.full(partitions, batch_size // partitions, dtype=np.int64)
    residues[(offset + np.arange(batch_size % partitions)) % partitions] += 1
    counts = np.zeros(partitions, dtype=np.int64)
    counts[_slot_order(partitions)] = residues
    return counts


def split_counts(counts: np.ndarray, cursors: np.ndarray, capacities: np.ndarray) -> np.ndarray:
    """How many samples each domain takes from each partition in one batch: ``n[k, p]``.

    Rows sum to ``counts`` (each domain's count from the weights), columns to ``capacities``
    (:func:`slot_capacities`; both sum to the batch size). Each sample goes, one at a time, to the (domain,
    partition) furthest behind its equal share, ``(consumed_k + c_k) / P − cursor[k, p]`` less what this batch
    already gave it, among the domains with samples left and partitions with slots left. Ties go to the lower
    domain, then partition. Pure and deterministic (the same on every rank and on resume).

    Args:
        counts: ``[K]`` samples of each domain in this batch.
        cursors: ``[K, P]`` samples drawn so far from each domain's partitions.
        capacities: ``[P]`` slots of each partition in this batch.
    """
    counts = np.asarray(counts, dtype=np.int64)
    cursors = np.asarray(cursors, dtype=np.int64)
    k, p = cursors.shape
    if int(counts.sum()) != int(capacities.sum()):
        raise ValueError(f"{int(counts.sum())} samples to place in {int(capacities.sum())} slots")
    behind = (cursors.sum(axis=1) + counts)[:, None] / p - cursors  # [K, P]
    # The greedy, unit by unit, is this: every cell's j-th unit has priority behind − j; go through all units in
    # order of priority (ties: lower domain, then partition) and take each whose domain and partition have room.
    # (A cell's units come in order; once its domain or partition is full, its later units are refused too.)
    capacities = np.asarray(capacities, dtype=np.int64)
    rows, cols = np.nonzero((counts[:, None] > 0) & (capacities[None, :] > 0))
    units = np.minimum(counts[rows], capacities[cols])
    cell = np.repeat(np.arange(len(rows)), units)
    j = np.arange(int(units.sum())) - np.repeat(np.cumsum(units) - units, units)
    row, col = rows[cell], cols[cell]
    order = np.lexsort((col, row, -(behind[row, col] - j)))
    taken = np.zeros((k, p), dtype=np.int64)
    row_left, col_left = counts.tolist(), capacities.tolist()
    placed, total = 0, int(counts.sum())
    for d, q in zip(row[order].tolist(), col[order].tolist()):
        if row_left[d] and col_left[q]:
            taken[d, q] += 1
            row_left[d] -= 1
            col_left[q] -= 1
            placed += 1
            if placed == total:
                break
    return taken


def node_of_rank(rank: int, world_size: int, local_world_size: int) -> tuple[int, int, int]:
    """``(node, nodes, local rank)`` of global rank ``rank``: ranks ``j·L … j·L + L − 1`` are node ``j``'s."""
    if local_world_size <= 0 or world_size % local_world_size:
        raise ValueError(f"world_size {world_size} is not a multiple of local_world_size {local_world_size} "
                         f"(the ranks per node)")
    return rank // local_world_size, world_size // local_world_size, rank % local_world_size
