"""Reading raw documents from a corpus in a fixed order, optionally only one part of it.

Formats (see :mod:`converters.formats` for how they are inferred from file names and checked):

- ``text``: a file, or a folder of files (recursive, hidden names skipped, sorted by relative path);
  each file is one document.
- ``jsonl``: a file, or a folder of JSON-lines files (``*.jsonl``, ``*.json``, plain or ``.gz``/``.zst``
  compressed; recursive, sorted); each non-blank line is one JSON object and one document, whose text is
  in a configurable field.
- ``parquet``: a file, or a folder of ``*.parquet`` files (recursive, sorted); each row is one document,
  whose text is in a configurable string column.
- ``hf``: a HuggingFace dataset saved with ``save_to_disk`` (needs the ``datasets`` package); each row is
  one document.

The reader only reads bytes (:mod:`converters.readers` streams compressed and Parquet files) and groups
consecutive documents into :class:`Unit` batches; checking and tokenizing them happens in
:mod:`converters.encode`, possibly in other processes.

Parts (``--part i/N``) split the input by position so that N machines can convert one corpus and the
merged result keeps the input order. For ``text`` and ``jsonl`` the files are laid end to end by their
size on disk and a document belongs to part ``floor(position * N / total)``: a text file's position is its
first byte; a line's is its first byte in an uncompressed file, and ``offset * size // decompressed_size``
in a compressed one, where ``offset`` is its first byte in the decompressed stream (so a compressed file is
split too, and only a part that shares it with another decompresses it twice, to count its bytes). For
``parquet`` (rows of the files end to end) and ``hf``, rows are split into N contiguous ranges. Every
document lands in exactly one part.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from converters.errors import ConversionError
from converters.formats import FORMATS, Layout, resolve_layout
from converters.readers import compression_of, decompressed_size, iter_lines, iter_parquet_values, parquet_rows

__all__ = ["FORMATS", "UNIT_BYTES", "UNIT_DOCS", "HF_UNIT_ROWS", "Part", "Unit", "Source", "open_source"]

# A unit (one tokenization task) closes at about this much input or this many documents: big enough to
# amortize handing it to a worker process, small enough to keep memory flat. Output does not depend on it.
UNIT_BYTES = 1 << 20
UNIT_DOCS = 8192
HF_UNIT_ROWS = 1024  # rows per unit of a dataset or a Parquet file
_COUNT_CHUNK = 1 << 22


@dataclass(frozen=True)
class Part:
    """Part ``index`` of ``count`` of an input (``--part index/count``)."""

    index: int
    count: int

    def __post_init__(self) -> None:
        if not (self.count >= 1 and 0 <= self.index < self.count):
            raise ConversionError(f"--part {self.index}/{self.count}: need 0 <= i < N")

    @classmethod
    def parse(cls, text: str | tuple[int, int] | Part | None) -> Part | None:
        """``"i/N"``, ``(i, N)``, a Part or None (the whole input)."""
        if text is None or isinstance(text, Part):
            return text
        if isinstance(text, tuple):
            return cls(int(text[0]), int(text[1]))
        try:
            i, n = text.split("/")
            return cls(int(i), int(n))
        except ValueError:
            raise ConversionError(f"--part {text!r}: expected i/N, e.g. 0/4") from None

    @property
    def folder(self) -> str:
        """The sub-folder of the output this part writes to."""
        return f"part-{self.index:05d}"

    def owns(self, offset: int, total: int) -> bool:
        """Whether the document starting at ``offset`` of ``total`` positions belongs to this part."""
        return _owner(offset, total, self.count) == self.index

    def bounds(self, total: int) -> tuple[int, int]:
        """The positions ``[lo, hi)`` whose documents belong to this part."""
        return -(-self.index * total // self.count), -(-(self.index + 1) * total // self.count)


def _owner(offset: int, total: int, count: int) -> int:
    return min(offset * count // total, count - 1) if total else 0


@dataclass(frozen=True)
class Unit:
    """Consecutive raw documents of one format, handed to one tokenization call.

    ``payloads`` are file contents (``text``), raw decompressed lines (``jsonl``, blank ones included so
    that line numbers can be derived) or column values (``parquet``, ``hf``). ``names`` gives each text
    file's path; ``path`` and ``first`` locate the JSONL file and line, or the file or dataset and row, of
    ``payloads[0]``.
    """

    kind: str
    payloads: tuple[Any, ...]
    names: tuple[str, ...] = ()
    path: str = ""
    first: int = 0

    def origin(self, i: int) -> str:
        """Where document ``i`` of this unit comes from, for messages: a path, ``path:line`` or a row."""
        if self.kind == "text":
            return self.names[i]
        if self.kind == "jsonl":
            return f"{self.path}:{self.first + i}"
        return f"{self.path} row {self.first + i}"


@dataclass(frozen=True)
class _Span:
    """The positions ``[start, end)`` of ``file`` (of ``size`` positions: bytes on disk, or rows) to read."""

    file: Path
    start: int
    end: int
    size: int

    @property
    def whole(self) -> bool:
        return self.start == 0 and self.end == self.size


class Source:
    """The documents of one input (or of one part of it), in order, as :class:`Unit` batches."""

    def __init__(self, path: Path, layout: Layout, part: Part | None, *, text_field: str) -> None:
        self.path = path
        self.layout = layout
        self.fmt = layout.fmt
        self.part = part
        self.text_field = text_field
        self._spans: list[_Span] = []
        self._rows: tuple[int, int] = (0, 0)
        self._dataset: Any = None
        if self.fmt == "hf":
            self._open_dataset()
        elif self.fmt == "parquet":
            self._plan_spans([parquet_rows(f, text_field) for f in layout.files], whole_files=False)
        else:
            self._plan_spans([f.stat().st_size for f in layout.files], whole_files=self.fmt == "text")

    @property
    def inferred(self) -> bool:
        """Whether the format was inferred from the input rather than given."""
        return self.layout.inferred

    @property
    def total_bytes(self) -> int | None:
        """Input bytes this source will read; None where that is not known in advance (compressed files,
        Parquet, ``hf``)."""
        if self.fmt not in ("text", "jsonl") or any(compression_of(s.file) for s in self._spans):
            return None
        return sum(s.end - s.start for s in self._spans)

    def __iter__(self) -> Iterator[Unit]:
        if self.fmt == "text":
            return self._text_units()
        if self.fmt == "jsonl":
            return self._jsonl_units()
        if self.fmt == "parquet":
            return self._parquet_units()
        return self._hf_units()

    # -- planning ---------------------------------------------------------------------------------

    def _plan_spans(self, sizes: list[int], *, whole_files: bool) -> None:
        """Lay the files end to end by ``sizes`` and keep the spans this part reads: whole files owned by
        their first position when ``whole_files``, else the positions within the part's bounds."""
        total = sum(sizes)
        offset = 0
        for file, size in zip(self.layout.files, sizes):
            if self.part is None:
                self._spans.append(_Span(file, 0, size, size))
            elif whole_files:
                if self.part.owns(offset, total):
                    self._spans.append(_Span(file, 0, size, size))
            else:
                lo, hi = self.part.bounds(total)
                start, end = max(lo - offset, 0), min(hi - offset, size)
                if start < end:
                    self._spans.append(_Span(file, start, end, size))
            offset += size

    def _open_dataset(self) -> None:
        try:
            import datasets
        except ImportError:
            raise ConversionError(
                "--format hf needs the `datasets` package (pip install datasets)") from None
        try:
            loaded = datasets.load_from_disk(str(self.path))
        except (FileNotFoundError, ValueError) as exc:
            raise ConversionError(f"{self.path}: not a dataset saved with save_to_disk ({exc})") from None
        if isinstance(loaded, datasets.DatasetDict):
            if len(loaded) != 1:
                raise ConversionError(
                    f"{self.path} holds the splits {sorted(loaded)}; point SOURCE at one of them, "
                    f"e.g. {self.path / str(sorted(loaded)[0])}")
            loaded = next(iter(loaded.values()))
        if self.text_field not in loaded.column_names:
            raise ConversionError(
                f"{self.path}: no column {self.text_field!r} (columns: {loaded.column_names}); "
                f"choose one with --text-field")
        self._dataset = loaded.select_columns([self.text_field])
        rows = len(loaded)
        self._rows = self.part.bounds(rows) if self.part else (0, rows)

    # -- reading ----------------------------------------------------------------------------------

    def _text_units(self) -> Iterator[Unit]:
        names: list[str] = []
        payloads: list[bytes] = []
        size = 0
        for span in self._spans:
            data = span.file.read_bytes()
            names.append(str(span.file))
            payloads.append(data)
            size += len(data)
            if size >= UNIT_BYTES or len(payloads) >= UNIT_DOCS:
                yield Unit("text", tuple(payloads), names=tuple(names))
                names, payloads, size = [], [], 0
        if payloads:
            yield Unit("text", tuple(payloads), names=tuple(names))

    def _jsonl_units(self) -> Iterator[Unit]:
        for span in self._spans:
            if compression_of(span.file) is None:
                lines = _plain_lines(span)
            else:
                lines = _compressed_lines(span)
            yield from _line_units(span.file, lines)

    def _parquet_units(self) -> Iterator[Unit]:
        for span in self._spans:
            for first, values in iter_parquet_values(span.file, self.text_field, span.start, span.end,
                                                     HF_UNIT_ROWS):
                yield Unit("parquet", tuple(values), path=str(span.file), first=first)

    def _hf_units(self) -> Iterator[Unit]:
        lo, hi = self._rows
        for start in range(lo, hi, HF_UNIT_ROWS):
            values = self._dataset[start:min(start + HF_UNIT_ROWS, hi)][self.text_field]
            yield Unit("hf", tuple(values), path=str(self.path), first=start)


def open_source(path: str | os.PathLike[str], fmt: str | None = None, *, text_field: str = "text",
                part: Part | None = None) -> Source:
    """The documents of ``path`` read as ``fmt`` (one of :data:`FORMATS`; None: inferred from the input),
    or of one ``part`` of it. Raises :class:`ConversionError` when the content contradicts the format."""
    layout = resolve_layout(Path(path), fmt, text_field)
    return Source(Path(path), layout, part, text_field=text_field)


def _line_units(file: Path, lines: Iterator[tuple[int, bytes]]) -> Iterator[Unit]:
    """Group (line number, line) pairs of consecutive lines of ``file`` into units."""
    first, batch, size = 0, [], 0
    for number, line in lines:
        if not batch:
            first = number
        batch.append(line)
        size += len(line)
        if size >= UNIT_BYTES or len(batch) >= UNIT_DOCS:
            yield Unit("jsonl", tuple(batch), path=str(file), first=first)
            batch, size = [], 0
    if batch:
        yield Unit("jsonl", tuple(batch), path=str(file), first=first)


def _plain_lines(span: _Span) -> Iterator[tuple[int, bytes]]:
    """The lines of an uncompressed file that start within the span's bytes, with their line numbers."""
    with open(span.file, "rb") as f:
        pos, line_no = _seek_line(f, span.start)
        while pos < span.end:
            line = f.readline()
            if not line:
                break
            yield line_no, line
            pos += len(line)
            line_no += 1


def _compressed_lines(span: _Span) -> Iterator[tuple[int, bytes]]:
    """The lines of a compressed file whose position (see the module doc) is within the span, with their
    line numbers. A whole file is read once; a cut one is first decompressed to count its bytes."""
    lines = iter_lines(span.file)
    with closing(lines):
        if span.whole:
            yield from enumerate(lines, start=1)
            return
        decompressed = decompressed_size(span.file)
        offset = 0
        for line_no, line in enumerate(lines, start=1):
            position = offset * span.size // decompressed  # a line was read, so decompressed > 0
            offset += len(line)
            if position >= span.end:
                return
            if position >= span.start:
                yield line_no, line


def _seek_line(f: Any, start: int) -> tuple[int, int]:
    """Position ``f`` at the first line starting at or after byte ``start``; return (position, line no.)."""
    if start == 0:
        return 0, 1
    newlines = 0
    remaining = start
    last = b""
    while remaining:
        chunk = f.read(min(remaining, _COUNT_CHUNK))
        if not chunk:
            break
        newlines += chunk.count(b"\n")
        last = chunk[-1:]
        remaining -= len(chunk)
    if last == b"\n":
        return start, newlines + 1
    rest = f.readline()  # the line straddling ``start`` belongs to the previous part
    return start + len(rest), newlines + 2
