"""The places pike_stream reaches into mosaicml-streaming's private attributes, kept here with their reasons.

Each fails loudly, naming the attribute and the version, on a mosaicml-streaming without it (rather than
silently doing something else); ``tests/test_streaming_compat.py`` checks that the installed version has
them and that they still do what is relied on. (Composer's are in :mod:`pike_stream.train.composer_compat`.)

- ``Stream._download_file``: the mixer fetches a domain's ``manifest.json`` beside streaming's
  ``index.json``, with the same storage back-ends, retries and settings streaming uses for the index.
- ``Stream._downloader``: the mixer's shard cache fetches ``s3://`` shards with its own downloader (one GET
  per attempt, retries decided by the cache: :class:`pike_stream.mixer.fetch.S3ShardDownloader`).
- ``MDSWriter._write_index``, ``.executor``, ``.event`` and ``.exception_callback``: the converter's writer
  uploads ``index.json`` only after every shard upload has finished, and stays quiet about uploads cancelled
  by an interrupted conversion (:class:`converters.conversion.TokenWriter`).
- ``MDSWriter._reset_cache``, ``.new_samples``, ``.new_shard_size``, ``.extra_bytes_per_shard``,
  ``.extra_bytes_per_sample``, ``.size_limit``, ``.config_data``, ``.flush_shard``, ``.encode_joint_shard``,
  ``.cancel_future_jobs`` and ``.remote``: the same writer takes rows a block at a time and builds each shard from
  the blocks with numpy (byte for byte streaming's shard), so that writing is not a Python call per sample.
- ``MDSWriter._name_next_shard``, ``._process_file``, ``.shards``, ``.get_config`` and ``.cloud_writer``: it
  hashes, compresses and writes each full shard on a thread while the next one fills, as streaming's
  ``flush_shard`` does in place.
"""

from __future__ import annotations

from importlib import metadata
from typing import Any

__all__ = [
    "MDS_WRITER_INTERNALS",
    "StreamingCompatError",
    "download_stream_file",
    "require_writer_internals",
    "set_stream_downloader",
]

MDS_WRITER_INTERNALS = ("_write_index", "executor", "event", "exception_callback", "cancel_future_jobs", "remote",
                        "_reset_cache", "new_samples", "new_shard_size", "extra_bytes_per_shard",
                        "extra_bytes_per_sample", "size_limit", "config_data", "flush_shard", "encode_joint_shard",
                        "_name_next_shard", "_process_file", "shards", "get_config", "cloud_writer")


class StreamingCompatError(RuntimeError):
    """The installed mosaicml-streaming lacks a private attribute pike_stream relies on."""


def _version() -> str:
    try:
        return metadata.version("mosaicml-streaming")
    except metadata.PackageNotFoundError:
        return "unknown"


def _missing(what: str) -> StreamingCompatError:
    return StreamingCompatError(f"mosaicml-streaming {_version()} has no {what}, which pike_stream relies on "
                                f"(see pike_stream/streaming_compat.py); install the version in constraints.txt")


def download_stream_file(stream: Any, remote_basename: str, local_basename: str) -> None:
    """Download ``remote_basename`` of a streaming ``Stream`` (its remote and split) to ``local_basename`` in
    its local folder, as streaming downloads ``index.json``. Raises ``FileNotFoundError`` if it is absent."""
    download = getattr(stream, "_download_file", None)
    if download is None:
        raise _missing("Stream._download_file")
    download(remote_basename, local_basename)


def set_stream_downloader(stream: Any, downloader: Any) -> None:
    """Make a streaming ``Stream`` download its files with ``downloader`` (``download(remote, local, timeout)``
    and ``clean_up()``, called as streaming calls its own) instead of the one streaming chose for its remote."""
    if not hasattr(stream, "_downloader"):
        raise _missing("Stream._downloader")
    stream._downloader = downloader


def require_writer_internals(writer: Any) -> None:
    """Check that a streaming ``MDSWriter`` has what :class:`converters.conversion.TokenWriter` overrides and
    uses, before any sample is written."""
    for name in MDS_WRITER_INTERNALS:
        if not hasattr(writer, name):
            raise _missing(f"MDSWriter.{name}")
