"""What a run leaves in its run folder, as JSON lines: its metrics, and (optionally) every batch it trained on.

``metrics.jsonl`` (rank 0): one record per Composer ``log_metrics`` call, ``{"step": s, "<key>": value, …}``
(Composer's ``time/…`` counters are left out: the step says it).
Composer's convention for ``s``: metrics about training batch ``s`` (0-based: the loss, ``pike/weight/…``)
are logged with ``s``; an evaluation after ``s`` batches is logged with ``s`` as well (``metrics/<domain>/…``).
``pike-stream report`` reads this file.

``batches-rank<r>.jsonl`` (:class:`BatchLog`, every rank): ``{"step", "rank", "world_size", "domain",
"sample_id"}`` for each batch a rank trained on. The global batch of a step is the rank slices interleaved
(rank r holds positions r, r + W, …), which :func:`pike_stream.train.records.read_batch_log` reassembles,
whatever the world size.

Both files describe the run as trained: when a run resumes from a checkpoint after ``k`` batches, records
the interrupted process wrote past that point are dropped first (they are about to be redone).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from composer.core import Callback, State
from composer.loggers import Logger, LoggerDestination
from composer.utils import dist

from pike_stream.train.records import BATCH_LOG_PATTERN, METRICS_FILENAME

__all__ = ["BatchLog", "JSONLinesLogger"]


def _number(value: Any) -> Any:
    """A JSON-safe scalar: tensors and numpy numbers as floats, NaN/inf as None."""
    if hasattr(value, "item") and getattr(value, "numel", lambda: 1)() == 1:
        value = value.item()
    if isinstance(value, (bool, int, str)) or value is None:
        return value
    try:
        value = float(value)
    except (TypeError, ValueError):
        return str(value)
    return value if math.isfinite(value) else None


def _truncate(path: Path, keep: Callable[[dict[str, Any]], bool]) -> int:
    """Rewrite ``path`` keeping the records ``keep`` accepts (and dropping a torn last line); return drops."""
    if not path.exists():
        return 0
    kept, dropped = [], 0
    with open(path) as f:
        for line in f:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:  # the last line of a killed process may be partial
                dropped += 1
                continue
            if keep(record):
                kept.append(line if line.endswith("\n") else line + "\n")
            else:
                dropped += 1
    if dropped:
        tmp = path.with_suffix(path.suffix + ".tmp")
        with open(tmp, "w") as f:
            f.writelines(kept)
        os.replace(tmp, path)
    return dropped


class _AppendedLines:
    """A JSON-lines file reopened for appending after a resume, one flushed line per record."""

    def __init__(self) -> None:
        self._file: Any = None

    def open(self, path: Path, keep: Callable[[dict[str, Any]], bool]) -> None:
        """Drop the records a resumed run redoes (those ``keep`` rejects), then append from there."""
        _truncate(path, keep)
        self._file = open(path, "a")

    @property
    def is_open(self) -> bool:
        return self._file is not None

    def write(self, record: dict[str, Any]) -> None:
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


class JSONLinesLogger(LoggerDestination):
    """Appends every metric logged on rank 0 to ``<folder>/metrics.jsonl`` (one flushed line per call).

    With ``upload`` (a function given the file's path, e.g. one that copies it beside a remote
    ``save_folder``'s checkpoints), the file is uploaded at every checkpoint and at the end of training, so a
    run resumed elsewhere (another node, a fresh clone) can fetch the metrics that go with its checkpoint.
    """

    def __init__(self, folder: str | os.PathLike[str], upload: Callable[[Path], None] | None = None) -> None:
        self.path = Path(folder) / METRICS_FILENAME
        self.upload = upload
        self._lines = _AppendedLines()

    def fit_start(self, state: State, logger: Logger) -> None:
        if dist.get_global_rank() != 0:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        resumed = int(state.timestamp.batch)
        # Keep what happened before the checkpoint: training records of earlier batches, and the evaluation
        # run at the checkpoint's step (it ran before the checkpoint was written and is not repeated).
        self._lines.open(self.path, lambda r: r.get("step", 0) < resumed
                         or (r.get("step") == resumed and all(k == "step" or k.startswith("metrics/") for k in r)))

    def log_metrics(self, metrics: dict[str, Any], step: int | None = None) -> None:
        values = {key: _number(value) for key, value in metrics.items() if not key.startswith("time/")}
        if self._lines.is_open and values:
            self._lines.write({"step": step, **values})

    def batch_checkpoint(self, state: State, logger: Logger) -> None:
        self._upload()

    def fit_end(self, state: State, logger: Logger) -> None:
        self._upload()

    def _upload(self) -> None:
        if self.upload is not None and self._lines.is_open and self.path.exists():
            self.upload(self.path)

    def close(self, state: State, logger: Logger) -> None:
        self._lines.close()


class BatchLog(Callback):
    """Writes which samples each rank trains on: ``<folder>/batches-rank<r>.jsonl``, one line per batch.

    It reads the batch and writes its own file, nothing else; an audit of the mixture (and the resume
    tests' evidence that a resumed run trains on exactly the batches of an uninterrupted one).
    """

    def __init__(self, folder: str | os.PathLike[str]) -> None:
        self.folder = Path(folder)
        self._lines = _AppendedLines()

    def fit_start(self, state: State, logger: Logger) -> None:
        rank, world = dist.get_global_rank(), dist.get_world_size()
        self.folder.mkdir(parents=True, exist_ok=True)
        resumed = int(state.timestamp.batch)
        if rank == 0:  # ranks of an earlier, larger world that this run does not have
            for path in self.folder.glob(BATCH_LOG_PATTERN.format(rank="*")):
                if int(path.stem.rsplit("rank", 1)[1]) >= world:
                    _truncate(path, lambda r: r["step"] < resumed)
        self._lines.open(self.folder / BATCH_LOG_PATTERN.format(rank=rank), lambda r: r["step"] < resumed)

    def after_dataloader(self, state: State, logger: Logger) -> None:
        batch = state.batch
        record = {"step": int(state.timestamp.batch), "rank": dist.get_global_rank(),
                  "world_size": dist.get_world_size(), "domain": batch["domain"].tolist(),
                  "sample_id": batch["sample_id"].tolist()}
        if "position" in batch:  # partitions: the rank's samples are not simply positions rank :: world_size
            record["position"] = batch["position"].tolist()
        self._lines.write(record)

    def close(self, state: State, logger: Logger) -> None:
        self._lines.close()
