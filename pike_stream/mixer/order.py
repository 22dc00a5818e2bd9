"""Each domain's sample order: one mosaicml-streaming shuffle per domain epoch, walked by a cursor.

A domain's cursor is the number of samples drawn from it so far (``consumed``). Position ``p`` of the
infinite stream is sample ``order(epoch = p // N)[p % N]``: every sample appears once per domain epoch
(the README's mixer invariants: without replacement), whatever the weights did, and resuming needs nothing
but ``consumed``.
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
        self._cache: dict[int, np.ndarray] = {}

    def epoch_order(self, epoch: int) -> np.ndarray:
        """Sample ids of domain epoch ``epoch`` in the order they are drawn (the two latest are cached)."""
        order = self._cache.get(epoch)
        if order is None:
            # One canonical node: the mixer, not streaming, splits batches among ranks.
            order = get_shuffle(self.algo, self.shard_sizes.copy(), 1, self.seed, epoch, self.block_size)
            self._cache = {e: o for e, o in self._cache.items() if e in (epoch - 1, epoch + 1)}
            self._cache[epoch] = order
        return order

    def take(self, start: int, count: int) -> np.ndarray:
        """Sample ids at stream positions ``[start, start + count)``, crossing epoch boundaries as needed."""
        pieces = []
        position, end = start, start + count
        while position < end:
            epoch, offset = divmod(position, self.num_samples)
            step = min(end - position, self.num_samples - offset)
            pieces.append(self.epoch_order(epoch)[offset:offset + step])
            position += step
        return np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.int64)
