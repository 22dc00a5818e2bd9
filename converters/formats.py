"""Which format a corpus is in: inferred from its file names when ``--format`` is not given, and checked
against the content either way, before anything is written.

Formats (``--format``):

- ``text``: every file is one document.
- ``jsonl``: JSON lines, one object and document per line, in ``*.jsonl`` or ``*.json`` files, plain or
  compressed (``.gz``, ``.zst``; the suffix decides).
- ``parquet``: ``*.parquet`` files, one document per row.
- ``hf``: a dataset saved with ``datasets``' ``save_to_disk`` (a folder with ``dataset_info.json`` and
  ``state.json``, or ``dataset_dict.json``).

Inference: a saved dataset is ``hf``; a file is labelled by its name (``jsonl``, ``jsonl.gz``,
``jsonl.zst``, ``parquet``, anything else ``text``); a folder's files (recursive, hidden names skipped)
must all carry one label, else it is an error naming two files of different labels.

Checks: a JSON-lines file must start with a JSON object (its first non-blank line), a Parquet file with
Parquet's magic bytes; ``--format text`` is refused on a JSON-lines file whose first line is an object
holding the text field and on a Parquet file, and every format but ``hf`` on a saved dataset. Each
refusal is one line naming the file and the format.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from converters.errors import ConversionError
from converters.readers import PARQUET_MAGIC, first_line

__all__ = ["FORMATS", "Layout", "file_label", "resolve_layout", "list_files", "is_saved_dataset"]

FORMATS = ("text", "jsonl", "parquet", "hf")

_JSONL_NAMES = (".jsonl", ".json")
_COMPRESSED = (".gz", ".zst")
_FIRST_LINE_LIMIT = 1 << 20  # a longer first line is judged by its first character only
_DATASET_FILES = (("dataset_info.json", "state.json"), ("dataset_dict.json",))
_NO_FILES = {"text": "files", "jsonl": "JSON-lines files (*.jsonl, *.json, also .gz or .zst)",
             "parquet": "*.parquet files"}


@dataclass(frozen=True)
class Layout:
    """What a source holds: its format, the files to read in order (none for ``hf``), the label of those
    files (e.g. ``jsonl.zst``; the format when labels differ) and whether the format was inferred."""

    fmt: str
    files: tuple[Path, ...]
    label: str
    inferred: bool

    def describe(self) -> str:
        """E.g. ``jsonl.zst (3 files)``, for the line that says what was inferred."""
        if self.fmt == "hf":
            return "hf (a dataset saved with save_to_disk)"
        count = len(self.files)
        return f"{self.label} ({count} file{'' if count == 1 else 's'})"


def file_label(path: Path) -> str:
    """The format a file's name announces: ``jsonl``, ``jsonl.gz``, ``jsonl.zst``, ``parquet`` or ``text``."""
    name = path.name.lower()
    for compressed in ("", *_COMPRESSED):
        if name.endswith(tuple(base + compressed for base in _JSONL_NAMES)):
            return "jsonl" + compressed
    return "parquet" if name.endswith(".parquet") else "text"


def _format_of(label: str) -> str:
    return label.split(".", 1)[0]


def is_saved_dataset(path: Path) -> bool:
    """Whether ``path`` is a folder written by ``Dataset.save_to_disk`` or ``DatasetDict.save_to_disk``."""
    return path.is_dir() and any(all((path / name).is_file() for name in names) for names in _DATASET_FILES)


def list_files(path: Path) -> list[Path]:
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
            if not name.startswith(".") and file.is_file():
                found.append((file.relative_to(path).as_posix(), file))
    return [file for _, file in sorted(found)]


def resolve_layout(path: Path, fmt: str | None, text_field: str) -> Layout:
    """The layout of ``path`` read as ``fmt`` (None: inferred), after checking the content agrees."""
    if fmt is not None and fmt not in FORMATS:
        raise ConversionError(f"--format {fmt!r}: expected one of {', '.join(FORMATS)}")
    if not path.exists():
        raise ConversionError(f"input {path} does not exist")
    layout = _infer(path) if fmt is None else _select(path, fmt)
    _check_content(layout, text_field)
    return layout


def _infer(path: Path) -> Layout:
    """The layout the names under ``path`` announce; a folder mixing labels is an error."""
    if is_saved_dataset(path):
        return Layout("hf", (), "hf", True)
    if path.is_dir() and (path / "index.json").is_file() and any(path.glob("*.mds*")):
        raise ConversionError(f"{path} already holds MDS shards (index.json): it is a domain to train from, "
                              f"not a corpus to convert; name it in train_loader.domains")
    files = list_files(path)
    if not files:
        raise ConversionError(f"no input: {path} holds no files")
    labels = [file_label(f) for f in files]
    for file, label in zip(files, labels):
        if label != labels[0]:
            raise ConversionError(
                f"{path} mixes formats: {files[0]} is {labels[0]}, {file} is {label}; convert each format "
                f"on its own, or pass --format (jsonl and parquet read only their own files, text every file)")
    return Layout(_format_of(labels[0]), tuple(files), labels[0], True)


def _select(path: Path, fmt: str) -> Layout:
    """The files of ``path`` that ``--format fmt`` reads (a file given itself is read whatever its name)."""
    if fmt == "hf":
        return Layout("hf", (), "hf", False)
    if is_saved_dataset(path):
        raise ConversionError(f"{path} is a dataset saved with save_to_disk, not {fmt}: "
                              f"pass --format hf, or leave --format out to infer it")
    files = list_files(path)
    if path.is_dir() and fmt != "text":
        files = [f for f in files if _format_of(file_label(f)) == fmt]
    if not files:
        raise ConversionError(f"no input: {path} holds no {_NO_FILES[fmt]}")
    labels = {file_label(f) for f in files}
    label = labels.pop() if len(labels) == 1 else fmt
    return Layout(fmt, tuple(files), label if _format_of(label) == fmt else fmt, False)


def _how(layout: Layout, file: Path) -> str:
    """How ``file`` came to be read as it is, for messages: the option, or the inference from its name."""
    if layout.inferred:
        return f"read as {file_label(file)} (inferred from its name)"
    return f"--format {layout.fmt}"


def _check_content(layout: Layout, text_field: str) -> None:
    """Refuse files whose first bytes contradict the format they are about to be read as."""
    for file in layout.files:
        if layout.fmt == "jsonl":
            _check_jsonl(file, _how(layout, file))
        elif layout.fmt == "parquet":
            _check_parquet(file, _how(layout, file))
        elif file_label(file) != "text":
            _check_not_data(file, text_field)


def _first_object(file: Path) -> tuple[dict | None, str]:
    """The first non-blank line of ``file`` as a JSON object (None if it is not one) and why not.

    A first line longer than the limit is taken for an object when it starts like one."""
    found = first_line(file, _FIRST_LINE_LIMIT)
    if found is None:
        return {}, ""
    line, whole = found
    if not whole:
        return ({} if line.lstrip().startswith(b"{") else None), "a long line that does not start with {"
    try:
        value = json.loads(line.decode("utf-8", "replace"))
    except json.JSONDecodeError as exc:
        return None, f"{exc.msg} at column {exc.colno}"
    if not isinstance(value, dict):
        return None, f"found a JSON {type(value).__name__}"
    return value, ""


def _check_jsonl(file: Path, how: str) -> None:
    obj, why = _first_object(file)
    if obj is None:
        raise ConversionError(f"{file}: {how}, but its first line is not a JSON object ({why}); "
                              f"pass --format text to read each file as one document")


def _check_parquet(file: Path, how: str) -> None:
    with open(file, "rb") as f:
        magic = f.read(len(PARQUET_MAGIC))
    if magic != PARQUET_MAGIC:
        raise ConversionError(f"{file}: {how}, but it is not a Parquet file (it does not start with PAR1)")


def _check_not_data(file: Path, text_field: str) -> None:
    """Under ``--format text``: refuse a file whose content is the format its name announces."""
    label = file_label(file)
    if label == "parquet":
        with open(file, "rb") as f:
            if f.read(len(PARQUET_MAGIC)) == PARQUET_MAGIC:
                raise ConversionError(f"{file}: --format text would read this Parquet file as one document; "
                                      f"pass --format parquet, or leave --format out to infer it")
        return
    try:
        obj, _ = _first_object(file)
    except ConversionError:
        return  # not readable as its name says (e.g. not gzip at all): text is a fair reading
    if obj and text_field in obj:
        raise ConversionError(f"{file}: --format text would read this {label} file as one document, but its "
                              f"first line is a JSON object with {text_field!r}; pass --format jsonl, or leave "
                              f"--format out to infer it")
