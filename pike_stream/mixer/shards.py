"""Getting shards local before they are read, and keeping a shared shard cache within ``cache_limit``.

The mixer decides *which* samples form a batch only when the batch is taken (zero lag), but each domain's
order is fixed in advance, so the shards a domain will need next are known whatever the weights do. This
module prepares them in background threads through streaming's ``Stream.prepare_shard`` (download, hash
validation, decompression) and, past ``cache_limit``, evicts the shards of remote domains that will be needed
last: the mixer tells it, for the upcoming shards of every domain, in how many steps each is expected to be
read at the weights in force (:meth:`ShardCache.prefetch`); shards it does not expect are evicted first, least
recently used first.

Ranks on one node share the cache folder, so everything here holds across processes, through one lock
file per shard (``.<shard>.lock`` beside it, ``flock``):

* preparing a shard holds its lock exclusively; reading samples of a remote shard holds it shared
  (:meth:`ShardCache.open`), and a shard found missing then (evicted by another rank) is fetched again;
* eviction measures the shard files on disk (whoever fetched them, whenever), removes shards no one expects
  first (least recently used first: the lock file's mtime, touched by every read in every process), then the
  expected ones whose expected use is furthest, and skips any shard whose lock it cannot take at once: a
  shard being read or prepared by anyone is never removed. Every rank computes the same expectations (the
  mixer's state is the same on every rank), so it does not matter which process evicts. One process
  evicts at a time (``.pike_stream-evict.lock`` in the first remote domain's folder).

Only transient download failures (endpoint unreachable, 5xx, throttling) are retried, with backoff, for
``retry_seconds``; a rejected key, a missing object or a bug fails at once (:mod:`pike_stream.mixer.fetch`).
:meth:`ShardCache.close` stops the read-ahead threads, also while they wait to retry.
"""

from __future__ import annotations

import fcntl
import logging
import os
import threading
import time
from collections.abc import Iterator
from concurrent.futures import CancelledError, Future, ThreadPoolExecutor
from contextlib import contextmanager

from streaming.base.hashing import get_hash

from pike_stream.mixer.domain import DomainSource
from pike_stream.mixer.fetch import S3ShardDownloader, describe_fetch_error
from pike_stream.streaming_compat import set_stream_downloader

__all__ = ["READ_AHEAD_THREAD_PREFIX", "ShardCache", "ShardFetchError", "ShardIntegrityError"]

log = logging.getLogger(__name__)

READ_AHEAD_THREAD_PREFIX = "pike-readahead"
"""The name of every read-ahead thread starts with this."""
_EVICT_LOCK = ".pike_stream-evict.lock"
_VANISHED_ATTEMPTS = 5  # a shard evicted by another rank between its download and its read is fetched again


class ShardIntegrityError(ValueError):
    """A shard's bytes do not match the hash recorded in the index."""


class ShardFetchError(OSError):
    """A shard could not be downloaded or prepared (the message names the domain, shard, location and the
    setting to check). ``transient`` says whether the cause may go away by itself (it was retried)."""

    def __init__(self, message: str, *, transient: bool = False) -> None:
        super().__init__(message)
        self.transient = transient

    def __str__(self) -> str:
        return str(self.args[0])

    def __reduce__(self):  # noqa: ANN204 - keep ``transient`` through pickling
        return _rebuild_fetch_error, (str(self), self.transient)


def _rebuild_fetch_error(message: str, transient: bool) -> ShardFetchError:
    return ShardFetchError(message, transient=transient)


Key = tuple[int, int]  # (domain index, shard index)


class ShardCache:
    """Makes shards local on demand (:meth:`open`, :meth:`ensure`) and ahead of time (:meth:`prefetch`).

    Args:
        sources: the opened domains, indexed like the mixer's domains.
        workers: read-ahead threads (downloads are I/O bound; 0 disables read-ahead).
        cache_limit: bytes of local shard files of *remote* domains to keep, counted on disk over all the
            processes that share the folders; least recently used shards that no one is reading, and that
            are outside this process's read-ahead window, are removed past it. None keeps everything.
        retry_seconds: how long to keep retrying (with backoff, a warning each time) a remote shard whose
            download fails transiently, e.g. while the storage service restarts; then the error is raised.
    """

    def __init__(self, sources: list[DomainSource], workers: int = 4, cache_limit: int | None = None,
                 retry_seconds: float = 120.0) -> None:
        self.sources = sources
        self.cache_limit = cache_limit
        self.retry_seconds = retry_seconds
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix=READ_AHEAD_THREAD_PREFIX) if workers > 0 else None
        self._closed = threading.Event()
        self._lock = threading.Lock()
        self._pending: dict[Key, Future] = {}
        self._window: set[Key] = set()  # this process's read-ahead window (kept from eviction)
        self._next_use: dict[Key, float] = {}  # steps until a shard is expected to be read (the mixer's estimate)
        self._using: dict[Key, int] = {}  # shards being read by this process (kept from eviction)
        self.stall_seconds = 0.0  # time the reader waited for shards that were not local yet
        for source in sources:
            if source.domain.remote:
                source.stream.download_retry = 1  # one attempt per call: retrying is decided in _prepare
                if source.domain.remote.startswith("s3://"):
                    set_stream_downloader(source.stream, S3ShardDownloader())
        self._evict()  # shards already on disk count too

    # ------------------------------------------------------------------------------------- reading
    @contextmanager
    def open(self, domain: int, shard: int) -> Iterator[None]:
        """Inside the block the shard is local and, for a remote domain, no process evicts it."""
        key = (domain, shard)
        source = self.sources[domain]
        if not source.domain.remote:
            self.ensure(domain, shard)
            yield
            return
        with self._lock:
            self._using[key] = self._using.get(key, 0) + 1
        try:
            fetched = False
            for _ in range(_VANISHED_ATTEMPTS):
                with self._shard_lock(key, fcntl.LOCK_SH) as fd:
                    if self._is_local(key):
                        os.utime(fd)  # recency, for every process's eviction
                        if fetched:  # make room now that no process can evict this shard
                            self._evict()
                        yield
                        return
                # Not evicting between the download and the lock above: waiting for the eviction lock there
                # left the new shard unlocked while another process evicted (and so removed it again).
                self.ensure(domain, shard, evict=False)
                fetched = True
            raise ShardFetchError(f"domain {source.name!r}: shard {self._basename(key)} was removed from the cache "
                                  f"{_VANISHED_ATTEMPTS} times between its download and its read (by another "
                                  f"process sharing {self._folder(domain)}): raise cache_limit")
        finally:
            with self._lock:
                self._using[key] -= 1
                if not self._using[key]:
                    del self._using[key]

    def ensure(self, domain: int, shard: int, *, evict: bool = True) -> None:
        """Block until the shard is local (it may be evicted again by then unless read through :meth:`open`);
        ``evict=False``: do not make room in the cache afterwards (the caller does, holding the shard)."""
        key = (domain, shard)
        self._check_open(key)
        if self._is_local(key):
            return
        with self._lock:
            future = self._pending.get(key)
        start = time.perf_counter()
        try:
            if future is not None:
                try:
                    future.result()
                except CancelledError:
                    self._check_open(key)
                    raise
            else:
                self._prepare(key, evict=evict)
        finally:
            self.stall_seconds += time.perf_counter() - start

    def prefetch(self, keys: list[Key], next_use: dict[Key, float] | None = None) -> None:
        """Start preparing these shards in the background (in order); keep them from eviction. ``next_use``:
        for upcoming shards (these and others), in how many steps each is expected to be read; eviction
        removes unexpected shards first, then the ones expected last."""
        with self._lock:
            self._window = set(keys)
            self._next_use = dict(next_use or {})
            if self._pool is None or self._closed.is_set():
                return
            for key in keys:
                if key not in self._pending and not self._is_local(key):
                    self._pending[key] = self._pool.submit(self._prepare, key)

    def close(self) -> None:
        """Stop the read-ahead threads (a thread waiting to retry stops at once; a download in flight ends
        at its timeout) and refuse further reads. Idempotent."""
        self._closed.set()
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    # ------------------------------------------------------------------------------------- preparing
    def _check_open(self, key: Key) -> None:
        if self._closed.is_set():
            raise RuntimeError(f"the shard cache is closed (reading shard {self._basename(key)} of domain "
                               f"{self.sources[key[0]].name!r})")

    def _prepare(self, key: Key, *, evict: bool = True) -> None:
        """Make one shard local, retrying transient failures of a remote with backoff for ``retry_seconds``;
        then, if files were added and ``evict``, make room in the cache."""
        remote = self.sources[key[0]].domain.remote
        try:
            delay, deadline = 0.5, time.monotonic() + self.retry_seconds
            while True:
                self._check_open(key)
                try:
                    fetched = self._prepare_once(key)
                    break
                except ShardFetchError as error:
                    if not (remote and error.transient):
                        raise
                    if time.monotonic() + delay > deadline:
                        raise ShardFetchError(f"{error}; still failing after {self.retry_seconds:g} s of retries "
                                              f"(retry_seconds)", transient=True) from error
                    log.warning("%s; retrying in %.1f s", error, delay)
                    if self._closed.wait(delay):
                        self._check_open(key)
                    delay = min(delay * 2, 10.0)
        finally:
            with self._lock:
                self._pending.pop(key, None)
        if fetched and evict:
            self._evict()

    def _prepare_once(self, key: Key) -> bool:
        """One attempt; True if files were added to the cache."""
        domain, shard = key
        source = self.sources[domain]
        reader = source.shards[shard]
        raw, zipped = reader.file_pairs[0]
        try:
            with self._shard_lock(key, fcntl.LOCK_EX) as fd:
                try:
                    added = source.stream.prepare_shard(reader)
                except ValueError as error:
                    if "Checksum failure" in str(error):
                        raise self._integrity_error(source, shard) from error
                    raise
                os.utime(fd)
                return added > 0
        except ShardIntegrityError:
            raise
        except Exception as error:  # noqa: BLE001 - name the domain, shard and setting in any fetch failure
            if source.domain.remote:
                transient, reason = describe_fetch_error(error, source.domain.where((zipped or raw).basename))
            else:
                names = " nor ".join(sorted({raw.basename, (zipped or raw).basename}))
                transient, reason = False, (f"neither {names} is in the domain's local folder {self._folder(domain)}"
                                            if not any(os.path.exists(os.path.join(self._folder(domain), n))
                                                       for n in (raw.basename, (zipped or raw).basename))
                                            else f"{type(error).__name__}: {error}")
            raise ShardFetchError(f"domain {source.name!r}: cannot fetch shard {raw.basename} from "
                                  f"{source.domain.where()}: {reason}", transient=transient) from error

    def _integrity_error(self, source: DomainSource, shard: int) -> ShardIntegrityError:
        reader = source.shards[shard]
        raw, zipped = reader.file_pairs[0]
        info = zipped or raw
        path = os.path.join(source.stream.local, source.stream.split, info.basename)
        algo = source.stream.validate_hash
        assert algo is not None  # streaming checks (and fails) a shard's hash only when it has an algorithm
        with open(path, "rb") as f:
            actual = get_hash(algo, f.read())
        if source.domain.remote:
            os.remove(path)  # a cached copy: drop it so the next attempt downloads it again
        return ShardIntegrityError(
            f"domain {source.name!r}: shard {info.basename} is corrupt: {algo} expected "
            f"{info.hashes[algo]}, got {actual} (file {path}, from {source.domain.where(info.basename)})")

    # ------------------------------------------------------------------------------------- files and locks
    def _folder(self, domain: int) -> str:
        stream = self.sources[domain].stream
        return os.path.join(stream.local, stream.split)

    def _basename(self, key: Key) -> str:
        return self.sources[key[0]].shards[key[1]].file_pairs[0][0].basename

    def _is_local(self, key: Key) -> bool:
        folder = self._folder(key[0])
        return all(os.path.isfile(os.path.join(folder, raw.basename))
                   for raw, _ in self.sources[key[0]].shards[key[1]].file_pairs)

    @contextmanager
    def _shard_lock(self, key: Key, mode: int) -> Iterator[int]:
        folder = self._folder(key[0])
        os.makedirs(folder, exist_ok=True)
        fd = os.open(os.path.join(folder, f".{self._basename(key)}.lock"), os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, mode)
            yield fd
        finally:
            os.close(fd)  # releases the lock

    # ------------------------------------------------------------------------------------- eviction
    def _evict(self) -> None:
        """Remove unlocked, unprotected shards of remote domains until the files on disk fit ``cache_limit``:
        those not expected soon first (no expected use, least recently used first; then the furthest use)."""
        remote = [k for k, s in enumerate(self.sources) if s.domain.remote]
        if self.cache_limit is None or not remote:
            return
        folder = min(self._folder(k) for k in remote)
        os.makedirs(folder, exist_ok=True)
        fd = os.open(os.path.join(folder, _EVICT_LOCK), os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            with self._lock:
                protected = set(self._pending) | self._window | set(self._using)
                next_use = self._next_use
            cached = self._on_disk(remote)
            used = sum(size for _, _, size in cached)
            far = float("inf")
            order = sorted(cached, key=lambda c: (-next_use.get(c[1], far), c[0]))
            for _, key, size in order:  # unexpected (least recently used first), then the furthest expected
                if used <= self.cache_limit:
                    break
                if key not in protected and self._remove(key):
                    used -= size
        finally:
            os.close(fd)

    def _on_disk(self, domains: list[int]) -> list[tuple[float, Key, int]]:
        """(last use, key, bytes) of every shard of ``domains`` with files in the cache."""
        cached = []
        for k in domains:
            try:
                with os.scandir(self._folder(k)) as entries:
                    stats = {e.name: e.stat() for e in entries if e.is_file()}
            except FileNotFoundError:
                continue
            for s, reader in enumerate(self.sources[k].shards):
                names = [n for raw, zipped in reader.file_pairs for n in (raw.basename, zipped and zipped.basename)
                         if n and n in stats]
                if names:
                    lock = stats.get(f".{reader.file_pairs[0][0].basename}.lock")
                    used = lock.st_mtime if lock else max(stats[n].st_mtime for n in names)
                    cached.append((used, (k, s), sum(stats[n].st_size for n in names)))
        return cached

    def _remove(self, key: Key) -> bool:
        """Remove a shard's files unless someone holds its lock (reading or preparing it)."""
        try:
            with self._shard_lock(key, fcntl.LOCK_EX | fcntl.LOCK_NB):
                folder = self._folder(key[0])
                for raw, zipped in self.sources[key[0]].shards[key[1]].file_pairs:
                    for info in (raw, zipped):
                        if info is not None:
                            try:
                                os.remove(os.path.join(folder, info.basename))
                            except FileNotFoundError:
                                pass
        except BlockingIOError:
            return False
        log.debug("evicted shard %s of domain %r", key[1], self.sources[key[0]].name)
        return True
