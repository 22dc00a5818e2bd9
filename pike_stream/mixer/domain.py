"""One domain's shards: its manifest, its MDS index and sample reads, through mosaicml-streaming's ``Stream``.

A domain folder (local, or remote on S3) is what ``pike-stream convert`` writes: MDS shards, ``index.json``
and ``manifest.json``. Opening it downloads (if remote) and checks both files; reading a sample needs its
shard local, which :class:`~pike_stream.mixer.shards.ShardCache` arranges through ``Stream.prepare_shard``
(download, hash check, decompression: streaming's own machinery).

A process that takes itself for the node's leader downloads ``index.json`` holding ``.index.lock`` in the
cache folder (``flock``): streaming downloads it through the fixed name ``index.json.tmp``, which two such
processes on one folder (ranks given without ``LOCAL_RANK``, runs sharing the default cache) would otherwise
overwrite and rename from under each other.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from streaming.base.format.base.reader import Reader
from streaming.base.stream import Stream
from streaming.base.world import World

from pike_stream.home import data_home
from pike_stream.streaming_compat import download_stream_file

__all__ = ["Domain", "DomainSource", "DomainDataError", "default_cache_root"]

MANIFEST_BASENAME = "manifest.json"
INDEX_BASENAME = "index.json"
INDEX_LOCK_BASENAME = ".index.lock"
_LOCK_POLL_S = 0.05


class DomainDataError(ValueError):
    """A domain's data is missing, unreadable or inconsistent (the message names the domain and file)."""


def default_cache_root() -> str:
    """Where remote domains are cached when no ``local`` folder is given: ``shards/`` in the data home
    (:func:`pike_stream.home.data_home`)."""
    return str(data_home() / "shards")


@dataclass(frozen=True)
class Domain:
    """Where one domain's shards live.

    Args:
        name: the domain's name (checkpoint state and logs are keyed by it).
        remote: ``s3://bucket/prefix`` (any URL mosaicml-streaming downloads from), or None for local data.
        local: the local folder: the data itself when ``remote`` is None, else the download cache. Defaults
            to ``shards/<name>-<hash of remote>`` in the data home (:func:`pike_stream.home.data_home`) for
            remote domains.
        split: an optional sub-folder of ``remote``/``local`` (e.g. ``"train"``).
        validate_hash: hash algorithm checked when a shard is downloaded/decompressed; ``"auto"`` picks
            ``xxh64`` (or the first hash the index carries), ``None`` skips the check.
        download_retry: attempts to download ``index.json`` and ``manifest.json`` (shard downloads are
            retried by the mixer, transient failures only, for its ``retry_seconds``).
        download_timeout: seconds per file download (connecting, and each read).
    """

    name: str
    remote: str | None = None
    local: str | None = None
    split: str | None = None
    validate_hash: str | None = "auto"
    download_retry: int = 2
    download_timeout: float = 60.0

    def resolved_local(self) -> str:
        if self.local:
            return os.path.abspath(os.path.expanduser(self.local))
        if not self.remote:
            raise DomainDataError(f"domain {self.name!r}: give `local` (a folder of shards) or `remote` (a URL)")
        digest = hashlib.sha1(self.remote.rstrip("/").encode()).hexdigest()[:16]
        return os.path.join(default_cache_root(), f"{self.name}-{digest}")

    def where(self, basename: str = "") -> str:
        """Human-readable location of a file of this domain (remote if there is one)."""
        root = self.remote or self.resolved_local()
        parts = [root.rstrip("/")] + ([self.split] if self.split else []) + ([basename] if basename else [])
        return "/".join(parts)


@dataclass
class DomainSource:
    """An opened domain: its manifest, shard readers and the sample-id → (shard, index) mapping."""

    domain: Domain
    stream: Stream
    shards: list[Reader]
    manifest: dict[str, Any]
    shard_bounds: np.ndarray = field(repr=False)  # [num_shards + 1] cumulative sample counts

    @property
    def name(self) -> str:
        return self.domain.name

    @property
    def num_samples(self) -> int:
        return int(self.shard_bounds[-1])

    @property
    def shard_sizes(self) -> np.ndarray:
        return np.diff(self.shard_bounds)

    @property
    def seq_len(self) -> int:
        return int(self.manifest["seq_len"])

    @property
    def fingerprint(self) -> str:
        return str(self.manifest["fingerprint"])

    def locate(self, sample_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Map domain sample ids to (shard index, index inside the shard)."""
        shard = np.searchsorted(self.shard_bounds, sample_ids, side="right") - 1
        return shard, sample_ids - self.shard_bounds[shard]

    def read(self, shard: int, index: int) -> np.ndarray:
        """The ``tokens`` of one sample; its shard must already be local (``ShardCache.open``)."""
        return self.shards[shard].get_item(int(index))["tokens"]

    @classmethod
    def open(cls, domain: Domain, world: World | None = None) -> DomainSource:
        """Fetch and check ``manifest.json`` and ``index.json``; read no shard."""
        local = domain.resolved_local()
        stream = Stream(remote=domain.remote, local=local, split=domain.split,
                        download_retry=domain.download_retry, download_timeout=domain.download_timeout,
                        validate_hash=None if domain.validate_hash == "auto" else domain.validate_hash)
        stream.apply_default({"split": None, "download_retry": domain.download_retry,
                              "download_timeout": domain.download_timeout, "validate_hash": None,
                              "keep_zip": False})
        manifest = _load_manifest(domain, stream)
        world = world or World.detect()
        downloads = domain.remote and world.is_local_leader  # others wait for the leader's index.json
        with _index_lock(domain, os.path.join(stream.local, stream.split)) if downloads else nullcontext():
            try:
                shards = stream.get_shards(world, allow_unsafe_types=False)
            except FileNotFoundError as error:
                raise DomainDataError(f"domain {domain.name!r}: no {INDEX_BASENAME} at "
                                      f"{domain.where(INDEX_BASENAME)} ({error})") from error
            except RuntimeError as error:  # streaming: "No `remote` provided, but local file … does not exist"
                raise DomainDataError(f"domain {domain.name!r}: no {INDEX_BASENAME} at "
                                      f"{domain.where(INDEX_BASENAME)}") from error
            except (ValueError, KeyError) as error:
                raise DomainDataError(f"domain {domain.name!r}: unreadable {INDEX_BASENAME} at "
                                      f"{domain.where(INDEX_BASENAME)}: {error}") from error
        if not shards:
            raise DomainDataError(f"domain {domain.name!r}: {domain.where(INDEX_BASENAME)} lists no shards")
        if domain.validate_hash == "auto":
            stream.validate_hash = _pick_hash(shards)
        sizes = np.array([shard.samples for shard in shards], dtype=np.int64)
        source = cls(domain, stream, shards, manifest, np.concatenate([[0], np.cumsum(sizes)]))
        _check_manifest_matches_index(source)
        # No ``stream.set_up_local``: it deletes files it finds in a transient state, which in a cache folder
        # shared by ranks may be a shard another rank is decompressing. ShardCache checks shards when used.
        return source


@contextmanager
def _index_lock(domain: Domain, folder: str) -> Iterator[None]:
    """Hold ``.index.lock`` in ``folder`` exclusively; wait for it at most the domain's download time
    (``download_timeout`` × ``download_retry``), then fail naming the domain and the lock file."""
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, INDEX_LOCK_BASENAME)
    timeout = domain.download_timeout * max(1, domain.download_retry)
    deadline = time.monotonic() + timeout
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise DomainDataError(
                        f"domain {domain.name!r}: another process held {path} for over {timeout:g}s while "
                        f"downloading {INDEX_BASENAME}; end it or raise the domain's download_timeout") from None
                time.sleep(_LOCK_POLL_S)
        yield
    finally:
        os.close(fd)  # releases the lock


def _pick_hash(shards: list[Reader]) -> str | None:
    available = set()
    for raw, zipped in shards[0].file_pairs:
        available.update((zipped or raw).hashes)
    for preferred in ("xxh64", "xxh3_64", "sha1", "md5"):
        if preferred in available:
            return preferred
    return next(iter(sorted(available)), None)


_REQUIRED_MANIFEST_KEYS = ("seq_len", "samples", "fingerprint")


def _load_manifest(domain: Domain, stream: Stream) -> dict[str, Any]:
    local_dir = os.path.join(stream.local, stream.split)
    path = os.path.join(local_dir, MANIFEST_BASENAME)
    if domain.remote:
        # The manifest is small: fetch it on every open so a changed remote is noticed (index.json is cached
        # by streaming; a mismatch between the two is reported below).
        os.makedirs(local_dir, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".manifest.", dir=local_dir)
        os.close(fd)
        os.remove(tmp)
        try:
            download_stream_file(stream, MANIFEST_BASENAME, os.path.basename(tmp))
        except FileNotFoundError as error:
            raise DomainDataError(f"domain {domain.name!r}: no {MANIFEST_BASENAME} at "
                                  f"{domain.where(MANIFEST_BASENAME)}; convert the domain with "
                                  f"`pike-stream convert` (it writes the manifest after the index)") from error
        except Exception as error:  # noqa: BLE001 - any download failure gets the domain and URL attached
            raise DomainDataError(f"domain {domain.name!r}: cannot download {domain.where(MANIFEST_BASENAME)} "
                                  f"(S3_ENDPOINT_URL={os.environ.get('S3_ENDPOINT_URL', '<unset>')}): "
                                  f"{type(error).__name__}: {error}") from error
        os.replace(tmp, path)
    if not os.path.isfile(path):
        raise DomainDataError(f"domain {domain.name!r}: no {MANIFEST_BASENAME} at {domain.where(MANIFEST_BASENAME)}; "
                              f"convert the domain with `pike-stream convert` (it writes the manifest)")
    try:
        with open(path) as f:
            manifest = json.load(f)
    except (OSError, json.JSONDecodeError) as error:
        raise DomainDataError(f"domain {domain.name!r}: unreadable {MANIFEST_BASENAME} at {path}: {error}") from error
    missing = [key for key in _REQUIRED_MANIFEST_KEYS if key not in manifest]
    if missing:
        raise DomainDataError(f"domain {domain.name!r}: {domain.where(MANIFEST_BASENAME)} lacks {missing}")
    return manifest


def _check_manifest_matches_index(source: DomainSource) -> None:
    manifest, name = source.manifest, source.name
    if int(manifest["samples"]) != source.num_samples:
        raise DomainDataError(
            f"domain {name!r}: {MANIFEST_BASENAME} says {manifest['samples']} samples but {INDEX_BASENAME} holds "
            f"{source.num_samples} ({source.domain.where()}); the two files are from different conversions")
    listed = manifest.get("shards")
    if listed is not None:
        pairs = [shard.file_pairs[0] for shard in source.shards]
        names_in_index = [{raw.basename, zipped.basename if zipped else raw.basename} for raw, zipped in pairs]
        if len(listed) != len(pairs) or any(s not in names for s, names in zip(listed, names_in_index)):
            raise DomainDataError(f"domain {name!r}: the shards in {MANIFEST_BASENAME} and {INDEX_BASENAME} differ "
                                  f"({source.domain.where()}); the two files are from different conversions")
    columns = getattr(source.shards[0], "column_names", None)
    if columns is not None and "tokens" not in columns:
        raise DomainDataError(f"domain {name!r}: shards have columns {columns}, expected a `tokens` column")
