"""Each domain's sample order: one mosaicml-streaming shuffle per domain epoch, walked by a cursor.

A domain's cursor is the number of samples drawn from it so far (``consumed``). Position ``p`` of the
infinite stream is sample ``order(epoch = p // N)[p % N]``: every sample appears once per domain epoch
(the README's mixer invariants: without replacement), whatever the weights did, and resuming needs nothing
but ``consumed``.

A domain whose data grew (new shards appended, the old ones unchanged) is continued through *segments*: the
stream up to position ``until`` walks epochs of the first ``shards`` shards only, and from there (always an
epoch boundary) epochs of every shard, numbered on. The new samples thus start in the domain epoch after the
one in progress, which keeps its order.
"""

from __future__ import annotations

import zlib

import numpy as np
from streaming.base.shuffle import get_shuffle

__all__ = ["DomainOrder", "domain_seed"]


def domain_seed(seed: int, name: str) -> int:
    """The shuffle seed of one domain: keyed by its name, so adding a domain leaves the others' orders alone."""
    return (seed * 1_000_003 + zlib.crc32(name.encode())) % (1 << 31)


class DomainOrder:
    """The per-epoch shuffled order of one domain's samples (streaming's ``get_shuffle``, shard-local).

    Args:
        shard_sizes: samples per shard.
        seed: this domain's seed (:func:`domain_seed`).
        algo: a streaming shuffle algorithm (``py1e`` keeps shard locality; ``naive`` is a full shuffle).
        block_size: streaming's shuffle block size.
    """

    def __init__(self, shard_sizes: np.ndarray, seed: int, algo: str = "py1e", block_size: int = 1 << 18) -> None:
        self.shard_sizes = np.asarray(shard_sizes, dtype=np.int64)
        self.num_samples = int(self.shard_sizes.sum())
        self.seed = seed
        self.algo = algo
        self.block_size = block_size
        self.grown: list[tuple[int, int]] = []  # (shards, until): earlier sizes, see set_grown
        self._cache: dict[tuple[int, int], np.ndarray] = {}

    def set_grown(self, grown: list[tuple[int, int]]) -> None:
        """Walk the first ``shards`` shards up to stream position ``until``, for each ``(shards, until)`` in turn
        (``until`` increasing, each an epoch boundary of its segment), then every shard."""
        position = 0
        for shards, until in grown:
            size = int(self.shard_sizes[:shards].sum())
            if not 0 < shards < len(self.shard_sizes) or until <= position or (until - position) % size:
                raise ValueError(f"segment ({shards} shards until position {until}) does not end an epoch after "
                                 f"position {position} of a domain of {len(self.shard_sizes)} shards")
            position = until
        self.grown = [(int(n), int(u)) for n, u in grown]
        self._cache.clear()

    def _segment(self, position: int) -> tuple[int, int, int, int]:
        """(shards, samples per epoch, first position, first epoch) of the segment holding ``position``, and
        the position where it ends (-1: never)."""
        start, epoch = 0, 0
        for shards, until in self.grown:
            size = int(self.shard_sizes[:shards].sum())
            if position < until:
                return shards, size, start, epoch
            epoch += (until - start) // size
            start = until
        return len(self.shard_sizes), self.num_samples, start, epoch

    def epoch_order(self, epoch: int, shards: int | None = None) -> np.ndarray:
        """Sample ids of domain epoch ``epoch`` over the first ``shards`` shards (default all), in the order
        they are drawn (the two latest are cached)."""
        shards = len(self.shard_sizes) if shards is None else shards
        order = self._cache.get((shards, epoch))
        if order is None:
            # One canonical node: the mixer, not streaming, splits batches among ranks.
            order = get_shuffle(self.algo, self.shard_sizes[:shards].copy(), 1, self.seed, epoch, self.block_size)
            self._cache = {key: o for key, o in self._cache.items() if key[1] in (epoch - 1, epoch + 1)}
            self._cache[(shards, epoch)] = order
        return order

    def epoch_of(self, position: int) -> int:
        """The domain epoch that stream position ``position`` falls in."""
        _, size, start, epoch = self._segment(position)
        return epoch + (position - start) // size

    def take(self, start: int, count: int) -> np.ndarray:
        """Sample ids at stream positions ``[start, start + count)``, crossing epoch boundaries as needed."""
        pieces = []
        position, end = start, start + count
        while position < end:
            shards, size, first, first_epoch = self._segment(position)
            epoch, offset = divmod(position - first, size)
            step = min(end - position, size - offset)
            pieces.append(self.epoch_order(first_epoch + epoch, shards)[offset:offset + step])
            position += step
        return np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.int64)
