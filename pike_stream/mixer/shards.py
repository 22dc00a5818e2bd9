"""Getting shards local before they are read: read-ahead threads, a per-shard file lock, cache eviction.

The mixer decides *which* samples form a batch only when the batch is taken (zero lag), but each domain's
order is fixed in advance, so the shards a domain will need next are known whatever the weights do. This
module prepares them in background threads through streaming's ``Stream.prepare_shard`` (download, hash
validation, decompression) and evicts least-recently-used shards of remote domains past ``cache_limit``.
"""

from __future__ import annotations

import fcntl
import logging
import os
import threading
import time
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor

from streaming.base.hashing import get_hash

from pike_stream.mixer.domain import DomainSource

__all__ = ["ShardCache", "ShardFetchError", "ShardIntegrityError"]

log = logging.getLogger(__name__)


class ShardIntegrityError(ValueError):
    """A shard's bytes do not match the hash recorded in the index."""


class ShardFetchError(OSError):
    """A shard could not be downloaded or prepared (the message names the domain, shard and location)."""


class ShardCache:
    """Makes shards local on demand (``ensure``) and ahead of time (``prefetch``).

    Args:
        sources: the opened domains, indexed like the mixer's domains.
        workers: read-ahead threads (downloads are I/O bound; 0 disables read-ahead).
        cache_limit: bytes of local shard files of *remote* domains to keep; least recently used shards
            outside the read-ahead window are evicted past it. None keeps everything.
        retry_seconds: how long to keep retrying (with backoff, a warning each time) a remote shard whose
            download fails, e.g. while the storage service restarts; then the error is raised.
    """

    def __init__(self, sources: list[DomainSource], workers: int = 4, cache_limit: int | None = None,
                 retry_seconds: float = 120.0) -> None:
        self.sources = sources
        self.cache_limit = cache_limit
        self.retry_seconds = retry_seconds
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="pike-readahead") if workers > 0 else None
        self._lock = threading.Lock()
        self._pending: dict[tuple[int, int], Future] = {}
        self._ready: OrderedDict[tuple[int, int], int] = OrderedDict()  # (domain, shard) → bytes, LRU order
        self.stall_seconds = 0.0  # time the reader waited for shards that were not local yet

    def ensure(self, domain: int, shard: int) -> None:
        """Block until the shard is local."""
        key = (domain, shard)
        with self._lock:
            if key in self._ready:
                self._ready.move_to_end(key)
                return
            future = self._pending.get(key)
        start = time.perf_counter()
        if future is not None:
            future.result()
        else:
            self._prepare(key)
        self.stall_seconds += time.perf_counter() - start

    def prefetch(self, keys: list[tuple[int, int]]) -> None:
        """Start preparing these shards in the background (in order); protect them from eviction."""
        if self._pool is None:
            return
        with self._lock:
            for key in keys:
                if key in self._ready:
                    self._ready.move_to_end(key)
                elif key not in self._pending:
                    self._pending[key] = self._pool.submit(self._prepare, key)
        self._evict(protected=set(keys))

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def _prepare(self, key: tuple[int, int]) -> None:
        """Make one shard local, retrying a remote that does not answer with backoff for ``retry_seconds``."""
        try:
            delay, deadline = 0.5, time.monotonic() + self.retry_seconds
            while True:
                try:
                    size = self._prepare_once(key)
                    break
                except ShardFetchError as error:
                    if not self.sources[key[0]].domain.remote or time.monotonic() + delay > deadline:
                        raise
                    log.warning("%s; retrying in %.1f s", error, delay)
                    time.sleep(delay)
                    delay = min(delay * 2, 10.0)
        finally:
            with self._lock:
                self._pending.pop(key, None)
        with self._lock:
            self._ready[key] = size

    def _prepare_once(self, key: tuple[int, int]) -> int:
        domain, shard = key
        source = self.sources[domain]
        reader = source.shards[shard]
        basename = reader.file_pairs[0][0].basename
        try:
            lock_path = os.path.join(source.stream.local, source.stream.split, f".{basename}.lock")
            os.makedirs(os.path.dirname(lock_path), exist_ok=True)
            # Ranks on one node share the cache folder: one prepares a shard while the others wait for it.
            with open(lock_path, "w") as lock_file:
                fcntl.flock(lock_file, fcntl.LOCK_EX)
                try:
                    source.stream.prepare_shard(reader)
                except ValueError as error:
                    if "Checksum failure" in str(error):
                        raise self._integrity_error(source, shard) from error
                    raise
                finally:
                    fcntl.flock(lock_file, fcntl.LOCK_UN)
        except ShardIntegrityError:
            raise
        except Exception as error:  # noqa: BLE001 - name the domain and shard in any fetch failure
            raise ShardFetchError(f"domain {source.name!r}: cannot fetch shard {basename} from "
                                  f"{source.domain.where()}: {type(error).__name__}: {error}") from error
        return reader.get_persistent_size(source.stream.safe_keep_zip)

    def _integrity_error(self, source: DomainSource, shard: int) -> ShardIntegrityError:
        reader = source.shards[shard]
        raw, zipped = reader.file_pairs[0]
        info = zipped or raw
        path = os.path.join(source.stream.local, source.stream.split, info.basename)
        algo = source.stream.validate_hash
        with open(path, "rb") as f:
            actual = get_hash(algo, f.read())
        if source.domain.remote:
            os.remove(path)  # a cached copy: drop it so the next attempt downloads it again
        return ShardIntegrityError(
            f"domain {source.name!r}: shard {info.basename} is corrupt: {algo} expected "
            f"{info.hashes[algo]}, got {actual} (file {path}, from {source.domain.where(info.basename)})")

    def _evict(self, protected: set[tuple[int, int]]) -> None:
        if self.cache_limit is None:
            return
        with self._lock:
            remote_keys = [key for key in self._ready if self.sources[key[0]].domain.remote]
            used = sum(self._ready[key] for key in remote_keys)
            for key in remote_keys:  # least recently used first
                if used <= self.cache_limit:
                    break
                if key in protected:
                    continue
                used -= self._ready.pop(key)
                self.sources[key[0]].shards[key[1]].evict()
                log.debug("evicted shard %s of domain %r", key[1], self.sources[key[0]].name)
