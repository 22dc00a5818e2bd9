"""Checking and tokenizing raw documents, in input order, in a pool of processes.

Each document is checked before it is tokenized. A document is skipped, and counted under its reason,
when it is

- ``empty``: no characters, or only whitespace;
- ``binary``: it holds a NUL character (a text file that is not text);
- ``invalid_utf8``: its bytes are not valid UTF-8 (or a JSON string escapes a lone surrogate). Such a
  document is skipped rather than repaired, so that no replacement characters enter the corpus;
- ``missing_field``: a JSONL object or dataset row without the text field (or with null in it).

Blank JSONL lines are not documents and are ignored. A JSONL line that is not a JSON object, or whose
text field is not a string, is an error naming the file and line: it means the input is not what the
options say it is.

Results are a pure function of the units, so conversion output does not depend on the number of
worker processes.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import threading
from collections import Counter, deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from converters.errors import ConversionError
from converters.sources import Unit
from converters.tokenizers import Tokenizer, load_tokenizer

__all__ = ["SKIP_REASONS", "EXAMPLES_PER_REASON", "Encoded", "UnitEncoder", "EncoderPool"]

SKIP_REASONS = ("empty", "binary", "invalid_utf8", "missing_field")
EXAMPLES_PER_REASON = 5
# A checked document: (its text, None) if kept, (None, the reason) if skipped.
_Checked = tuple[str, None] | tuple[None, str]


@dataclass
class Encoded:
    """The tokens of one unit's kept documents (each followed by EOS) and what was skipped."""

    tokens: np.ndarray
    documents: int
    input_bytes: int
    skipped: Counter[str] = field(default_factory=Counter)
    examples: dict[str, list[str]] = field(default_factory=dict)  # first few origins per skip reason


class UnitEncoder:
    """Checks the documents of a :class:`Unit` and tokenizes the ones kept."""

    def __init__(self, tokenizer: Tokenizer, text_field: str) -> None:
        self.tokenizer = tokenizer
        self.text_field = text_field

    def __call__(self, unit: Unit) -> Encoded:
        texts: list[str] = []
        skipped: Counter[str] = Counter()
        examples: dict[str, list[str]] = {}
        input_bytes = 0
        for i, payload in enumerate(unit.payloads):
            if unit.kind == "text":
                input_bytes += len(payload)
                text, reason = _check_bytes(payload)
            elif unit.kind == "jsonl":
                input_bytes += len(payload)
                line = payload.strip()
                if not line:
                    continue
                text, reason = self._check_json(line, unit, i)
            else:
                text, reason = self._check_value(payload, unit, i)
                if text is not None:
                    input_bytes += len(text.encode("utf-8"))
            if reason is None:
                assert text is not None  # kept: it has its text
                texts.append(text)
            else:
                skipped[reason] += 1
                shown = examples.setdefault(reason, [])
                if len(shown) < EXAMPLES_PER_REASON:
                    shown.append(unit.origin(i))
        return Encoded(self.tokenizer.encode_documents(texts), len(texts), input_bytes, skipped, examples)

    def _check_json(self, line: bytes, unit: Unit, i: int) -> _Checked:
        try:
            decoded = line.decode("utf-8")
        except UnicodeDecodeError:
            return None, "invalid_utf8"
        try:
            obj = json.loads(decoded)
        except json.JSONDecodeError as exc:
            raise ConversionError(f"{unit.origin(i)}: invalid JSON ({exc.msg} at column {exc.colno})") from None
        if not isinstance(obj, dict):
            raise ConversionError(f"{unit.origin(i)}: expected a JSON object, found {type(obj).__name__}")
        return self._check_value(obj.get(self.text_field), unit, i)

    def _check_value(self, value: Any, unit: Unit, i: int) -> _Checked:
        if value is None:
            return None, "missing_field"
        if not isinstance(value, str):
            raise ConversionError(
                f"{unit.origin(i)}: field {self.text_field!r} is a {type(value).__name__}, expected a string")
        if "\x00" in value:
            return None, "binary"
        if not value.isascii():
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                return None, "invalid_utf8"
        return (value, None) if value.strip() else (None, "empty")


def _check_bytes(data: bytes) -> _Checked:
    if not data:
        return None, "empty"
    if b"\x00" in data:
        return None, "binary"
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return None, "invalid_utf8"
    return (text, None) if text.strip() else (None, "empty")


_WORKER_ENCODER: UnitEncoder | None = None


def _init_worker(tokenizer: str, text_field: str) -> None:
    global _WORKER_ENCODER
    # Ctrl-C reaches every process of the terminal's group: the parent stops the conversion and ends the
    # pool; a worker that handled it too would print its own traceback.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # Pool.terminate() ends workers with SIGTERM. A Python-level handler inherited from the parent (importing
    # Composer installs one that calls sys.exit) can leave a worker blocked on the task queue's lock, and
    # terminate() then waits for it forever: workers keep the default action, which ends them at once.
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    _WORKER_ENCODER = UnitEncoder(load_tokenizer(tokenizer), text_field)


def _encode_in_worker(unit: Unit) -> Encoded:
    assert _WORKER_ENCODER is not None, "worker used before _init_worker"
    return _WORKER_ENCODER(unit)


class EncoderPool:
    """Encodes units in order: in this process when ``workers`` is 1, else in that many processes.

    Use as a context manager, entered before the process starts other threads (the shard writer's
    uploaders, the progress bar): worker processes are forked on entry, so they start in milliseconds
    whatever the main module imports, and load their own tokenizer from ``tokenizer_spec``. At most
    ``2 * workers + 2`` units are in flight, so memory stays bounded whatever the input size.
    """

    def __init__(self, *, tokenizer: Tokenizer, tokenizer_spec: str, text_field: str, workers: int) -> None:
        if workers < 1:
            raise ConversionError(f"--workers {workers}: need at least 1")
        self._encoder = UnitEncoder(tokenizer, text_field)
        self._init_args = (tokenizer_spec, text_field)
        self.workers = workers
        self._pool: Any = None

    def __enter__(self) -> EncoderPool:
        if self.workers > 1:
            methods = multiprocessing.get_all_start_methods()
            context = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
            # Workers inherit TOKENIZERS_PARALLELISM=false: one thread each (the processes are the
            # parallelism) and no warning from a HuggingFace tokenizer about being forked.
            saved = os.environ.get("TOKENIZERS_PARALLELISM")
            os.environ["TOKENIZERS_PARALLELISM"] = "false"
            # Forked workers are born with SIGTERM's default action (see _init_worker), not just given it.
            in_main = threading.current_thread() is threading.main_thread()
            previous_sigterm = signal.signal(signal.SIGTERM, signal.SIG_DFL) if in_main else None
            try:
                self._pool = context.Pool(self.workers, initializer=_init_worker, initargs=self._init_args)
            finally:
                if in_main:
                    signal.signal(signal.SIGTERM, previous_sigterm)
                if saved is None:
                    del os.environ["TOKENIZERS_PARALLELISM"]
                else:
                    os.environ["TOKENIZERS_PARALLELISM"] = saved
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._pool is not None:
            self._pool.terminate()
            self._pool.join()
            self._pool = None

    def map(self, units: Iterable[Unit]) -> Iterator[Encoded]:
        """The encoding of each unit, in input order."""
        if self._pool is None:
            yield from map(self._encoder, units)
            return
        pending: deque[Any] = deque()
        for unit in units:
            pending.append(self._pool.apply_async(_encode_in_worker, (unit,)))
            if len(pending) >= 2 * self.workers + 2:
                yield pending.popleft().get()
        while pending:
            yield pending.popleft().get()
