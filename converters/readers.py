"""Streaming readers for the files corpora ship in: JSON lines, plain or compressed, and Parquet.

Nothing here holds a whole file in memory. JSON lines come one at a time through a buffered decompressor
chosen by the file's suffix (``.gz``: gzip from the standard library; ``.zst``: zstd from the
``zstandard`` package, across frames, as ``zstd`` and ``pzstd`` write them); lines are bytes, so that
invalid UTF-8 is skipped and counted downstream exactly as for an uncompressed file. Parquet is read one
row group at a time, only the text column, in record batches (pyarrow, imported on first use).

Every failure to read (a corrupt or truncated stream, a file that is not Parquet, a missing column) is a
:class:`~converters.errors.ConversionError` naming the file.
"""

from __future__ import annotations

import gzip
import io
import zlib
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import IO, Any

from converters.errors import ConversionError

__all__ = ["compression_of", "open_stream", "iter_lines", "decompressed_size", "first_line",
           "PARQUET_MAGIC", "parquet_rows", "iter_parquet_values"]

PARQUET_MAGIC = b"PAR1"
_BUFFER = 1 << 16
_COUNT_CHUNK = 1 << 20
_ZSTD_INPUT = 1 << 13


def compression_of(path: Path) -> str | None:
    """``"gzip"`` for ``*.gz``, ``"zstd"`` for ``*.zst``, else None (read as is)."""
    name = path.name.lower()
    if name.endswith(".gz"):
        return "gzip"
    if name.endswith(".zst"):
        return "zstd"
    return None


def open_stream(path: Path) -> io.BufferedIOBase:
    """``path`` opened for buffered reading of its decompressed bytes (``readline``, ``read``)."""
    compression = compression_of(path)
    if compression == "gzip":
        return gzip.open(path, "rb")
    if compression == "zstd":
        return io.BufferedReader(_ZstdFrames(open(path, "rb")), _BUFFER)
    return open(path, "rb")


class _ZstdFrames(io.RawIOBase):
    """The decompressed bytes of a file of concatenated zstd frames, refusing a stream cut inside a frame.

    ``zstandard``'s own ``stream_reader`` ends quietly at a truncated frame, which would turn an interrupted
    download into a silently shorter corpus; here a frame that has begun must end, else ``EOFError``. The
    input is fed :data:`_ZSTD_INPUT` bytes at a time, so what is held at once is that times the
    compression ratio.
    """

    def __init__(self, raw: IO[bytes]) -> None:
        import zstandard

        self._raw = raw
        self._new = zstandard.ZstdDecompressor().decompressobj
        self._frame = self._new()
        self._started = False  # whether the current frame has been fed any bytes
        self._pending = memoryview(b"")

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        while not self._pending:
            chunk = b""
            if self._frame.eof:
                chunk = self._frame.unused_data
                self._frame, self._started = self._new(), False
            chunk = chunk or self._raw.read(_ZSTD_INPUT)
            if not chunk:
                if self._started:
                    raise EOFError("the stream ends inside a zstd frame (truncated file?)")
                return 0
            self._started = True
            self._pending = memoryview(self._frame.decompress(chunk))
        n = min(len(buffer), len(self._pending))
        buffer[:n] = self._pending[:n]
        self._pending = self._pending[n:]
        return n

    def close(self) -> None:
        if not self.closed:
            self._raw.close()
        super().close()


def _read_errors() -> tuple[type[BaseException], ...]:
    """The exceptions a corrupt or truncated compressed stream raises while it is read."""
    errors: tuple[type[BaseException], ...] = (OSError, EOFError, zlib.error)
    try:
        import zstandard
    except ImportError:
        return errors
    return (*errors, zstandard.ZstdError)


def _unreadable(path: Path, exc: BaseException) -> ConversionError:
    how = compression_of(path) or "a file"
    return ConversionError(f"{path}: cannot read it as {how} ({type(exc).__name__}: {exc})")


def iter_lines(path: Path) -> Generator[bytes, None, None]:
    """The lines of ``path`` (decompressed), each with its newline if it had one, in order."""
    try:
        with open_stream(path) as stream:
            while line := stream.readline():
                yield line
    except _read_errors() as exc:
        raise _unreadable(path, exc) from None


def decompressed_size(path: Path) -> int:
    """The number of bytes ``path`` decompresses to (one streaming pass)."""
    size = 0
    try:
        with open_stream(path) as stream:
            while chunk := stream.read(_COUNT_CHUNK):
                size += len(chunk)
    except _read_errors() as exc:
        raise _unreadable(path, exc) from None
    return size


def first_line(path: Path, limit: int) -> tuple[bytes, bool] | None:
    """The first non-blank line of ``path`` (decompressed), at most ``limit`` bytes of it, and whether it is
    whole; None if the file holds only blank lines."""
    try:
        with open_stream(path) as stream:
            while line := stream.readline(limit):
                if line.strip():
                    return line, line.endswith(b"\n") or len(line) < limit
    except _read_errors() as exc:
        raise _unreadable(path, exc) from None
    return None


# -- Parquet ------------------------------------------------------------------------------------------

def _parquet() -> Any:
    try:
        import pyarrow.parquet
    except ImportError:
        raise ConversionError("reading Parquet needs the `pyarrow` package: "
                              "pip install 'pike_stream[parquet]'") from None
    return pyarrow.parquet


def _open_parquet(path: Path, f: IO[bytes]) -> Any:
    import pyarrow

    try:
        return _parquet().ParquetFile(f)
    except (pyarrow.ArrowException, OSError) as exc:
        raise ConversionError(f"{path}: not a readable Parquet file ({exc})") from None


def _never(_: Any) -> bool:
    return False


def _check_text_column(path: Path, schema: Any, field: str) -> None:
    """Refuse a file whose ``field`` column is missing or does not hold strings."""
    import pyarrow.types as pt

    if field not in schema.names:
        raise ConversionError(f"{path}: no column {field!r} (columns: {schema.names}); choose one with --text-field")
    kind = schema.field(field).type
    value = kind.value_type if pt.is_dictionary(kind) else kind
    if not (pt.is_string(value) or pt.is_large_string(value) or getattr(pt, "is_string_view", _never)(value)):
        raise ConversionError(f"{path}: column {field!r} holds {kind}, expected strings; "
                              f"choose the text column with --text-field")


def parquet_rows(path: Path, field: str) -> int:
    """The number of rows of the Parquet file ``path``, whose ``field`` column must hold strings."""
    _parquet()
    with open(path, "rb") as f:
        parquet = _open_parquet(path, f)
        _check_text_column(path, parquet.schema_arrow, field)
        return int(parquet.metadata.num_rows)


def _row_groups(metadata: Any, start: int, end: int) -> tuple[list[int], int]:
    """The row groups holding rows ``[start, end)`` and the index of the first row of the first one."""
    groups: list[int] = []
    first = row = 0
    for group in range(metadata.num_row_groups):
        rows = metadata.row_group(group).num_rows
        if row + rows > start and row < end:
            if not groups:
                first = row
            groups.append(group)
        row += rows
    return groups, first


def iter_parquet_values(path: Path, field: str, start: int, end: int,
                        batch_rows: int) -> Iterator[tuple[int, list[Any]]]:
    """Rows ``[start, end)`` of column ``field`` of ``path``: (index of the first row, values) per batch of at
    most ``batch_rows``, reading only the row groups that hold them."""
    import pyarrow

    with open(path, "rb") as f:
        parquet = _open_parquet(path, f)
        groups, row = _row_groups(parquet.metadata, start, end)
        if not groups:
            return
        try:
            for batch in parquet.iter_batches(batch_size=batch_rows, row_groups=groups, columns=[field]):
                lo, hi = max(start - row, 0), min(end - row, batch.num_rows)
                if lo < hi:
                    yield row + lo, batch.column(0).slice(lo, hi - lo).to_pylist()
                row += batch.num_rows
                if row >= end:
                    return
        except (pyarrow.ArrowException, OSError) as exc:
            raise ConversionError(f"{path}: cannot read it from row {row} on ({exc})") from None
