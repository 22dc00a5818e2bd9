"""Reading raw documents from a corpus in a fixed order, optionally only one part of it.

Three formats:

- ``text``: a file, or a folder of files (recursive, hidden names skipped, sorted by relative path);
  each file is one document.
- ``jsonl``: a file, or a folder of ``*.jsonl`` files (recursive, sorted); each non-blank line is one
  JSON object and one document, whose text is in a configurable field.
- ``hf``: a HuggingFace dataset saved with ``save_to_disk`` (needs the ``datasets`` package); each row is
  one document.

The reader only reads bytes and groups consecutive documents into :class:`Unit` batches; checking and
tokenizing them happens in :mod:`converters.encode`, possibly in other processes.

Parts (``--part i/N``) split the input by position so that N machines can convert one corpus and the
merged result keeps the input order: for ``text`` and ``jsonl`` the files are laid end to end and
a document belongs to part ``floor(offset * N / total_bytes)`` where ``offset`` is the position of its
first byte; for ``hf`` rows are split into N contiguous ranges. Every document lands in exactly one part.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from converters.errors import ConversionError

__all__ = ["FORMATS", "UNIT_BYTES", "UNIT_DOCS", "HF_UNIT_ROWS", "Part", "Unit", "Source", "open_source"]

FORMATS = ("text", "jsonl", "hf")

# A unit (one tokenization task) closes at about this much input or this many documents: big enough to
# amortize handing it to a worker process, small enough to keep memory flat. Output does not depend on it.
UNIT_BYTES = 1 << 20
UNIT_DOCS = 8192
HF_UNIT_ROWS = 1024
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

    ``payloads`` are file contents (``text``), raw lines (``jsonl``, blank ones included so that line
    numbers can be derived) or field values (``hf``). ``names`` gives each text file's path; ``path`` and
    ``first`` locate the JSONL file and line, or the dataset and row, of ``payloads[0]``.
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


class Source:
    """The documents of one input (or of one part of it), in order, as :class:`Unit` batches."""

    def __init__(self, path: Path, fmt: str, part: Part | None, *, text_field: str) -> None:
        self.path = path
        self.fmt = fmt
        self.part = part
        self.text_field = text_field
        self._files: list[tuple[Path, int, int]] = []  # (file, first byte of this part, end byte)
        self._rows: tuple[int, int] = (0, 0)
        self._dataset: Any = None
        if fmt == "hf":
            self._open_dataset()
        else:
            self._plan_files()

    @property
    def total_bytes(self) -> int | None:
        """Input bytes this source will read (None for ``hf``, where it is not known in advance)."""
        if self.fmt == "hf":
            return None
        return sum(end - start for _, start, end in self._files)

    def __iter__(self) -> Iterator[Unit]:
        if self.fmt == "text":
            return self._text_units()
        if self.fmt == "jsonl":
            return self._jsonl_units()
        return self._hf_units()

    # -- planning ---------------------------------------------------------------------------------

    def _plan_files(self) -> None:
        files = _list_files(self.path, suffix=".jsonl" if self.fmt == "jsonl" else None)
        if not files:
            kind = "*.jsonl files" if self.fmt == "jsonl" else "files"
            raise ConversionError(f"no input: {self.path} holds no {kind}")
        sizes = [f.stat().st_size for f in files]
        total = sum(sizes)
        offset = 0
        for file, size in zip(files, sizes):
            if self.part is None:
                self._files.append((file, 0, size))
            elif self.fmt == "text":
                if self.part.owns(offset, total):
                    self._files.append((file, 0, size))
            else:
                lo, hi = self.part.bounds(total)
                start, end = max(lo - offset, 0), min(hi - offset, size)
                if start < end:
                    self._files.append((file, start, end))
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
                    f"e.g. {self.path / sorted(loaded)[0]}")
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
        for file, _, _ in self._files:
            data = file.read_bytes()
            names.append(str(file))
            payloads.append(data)
            size += len(data)
            if size >= UNIT_BYTES or len(payloads) >= UNIT_DOCS:
                yield Unit("text", tuple(payloads), names=tuple(names))
                names, payloads, size = [], [], 0
        if payloads:
            yield Unit("text", tuple(payloads), names=tuple(names))

    def _jsonl_units(self) -> Iterator[Unit]:
        for file, start, end in self._files:
            with open(file, "rb") as f:
                pos, line_no = _seek_line(f, start)
                first, lines, size = line_no, [], 0
                while pos < end:
                    line = f.readline()
                    if not line:
                        break
                    lines.append(line)
                    pos += len(line)
                    size += len(line)
                    if size >= UNIT_BYTES or len(lines) >= UNIT_DOCS:
                        yield Unit("jsonl", tuple(lines), path=str(file), first=first)
                        first, lines, size = first + len(lines), [], 0
                if lines:
                    yield Unit("jsonl", tuple(lines), path=str(file), first=first)

    def _hf_units(self) -> Iterator[Unit]:
        lo, hi = self._rows
        for start in range(lo, hi, HF_UNIT_ROWS):
            values = self._dataset[start:min(start + HF_UNIT_ROWS, hi)][self.text_field]
            yield Unit("hf", tuple(values), path=str(self.path), first=start)


def open_source(path: str | os.PathLike[str], fmt: str, *, text_field: str = "text",
                part: Part | None = None) -> Source:
    """The documents of ``path`` read as ``fmt`` (one of :data:`FORMATS`), or of one ``part`` of it."""
    if fmt not in FORMATS:
        raise ConversionError(f"--format {fmt!r}: expected one of {', '.join(FORMATS)}")
    return Source(Path(path), fmt, part, text_field=text_field)


def _list_files(path: Path, *, suffix: str | None) -> list[Path]:
    """``path`` itself if a file, else the regular, non-hidden files under it sorted by relative path."""
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise ConversionError(f"input {path} does not exist")
    found: list[tuple[str, Path]] = []
    for root, dirs, names in os.walk(path):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        for name in names:
            file = Path(root, name)
            if name.startswith(".") or not file.is_file() or (suffix and not name.endswith(suffix)):
                continue
            found.append((file.relative_to(path).as_posix(), file))
    return [file for _, file in sorted(found)]


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
