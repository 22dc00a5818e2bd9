"""Reading a run folder's JSON-lines records (written by :mod:`pike_stream.train.logs`); no Composer needed.

``metrics.jsonl``: ``{"step": s, "<metric>": value, …}`` per logging call (rank 0).
``batches-rank<r>.jsonl``: ``{"step", "rank", "world_size", "domain", "sample_id"}`` per batch and rank (with
partitions also ``"position"``, each sample's place in the global batch).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["BATCH_LOG_PATTERN", "METRICS_FILENAME", "read_batch_log", "read_metrics"]

METRICS_FILENAME = "metrics.jsonl"
BATCH_LOG_PATTERN = "batches-rank{rank}.jsonl"


def read_metrics(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The records of a ``metrics.jsonl`` (a folder means its ``metrics.jsonl``), in the order written."""
    path = Path(path)
    if path.is_dir():
        path = path / METRICS_FILENAME
    if not path.exists():
        raise FileNotFoundError(f"no metrics file at {path}: is this a run folder of `pike-stream train`?")
    records = []
    with open(path) as f:
        for number, line in enumerate(f, 1):
            if line.strip():
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError as error:
                    raise ValueError(f"{path}:{number}: not a JSON record: {error}") from error
    return records


def read_batch_log(folder: str | os.PathLike[str]) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """``{step: (domain, sample_id)}`` of the global batches in a run folder's batch logs.

    Each step's rank slices are interleaved back into the global batch (rank r's at positions r :: W, or, with
    partitions, at the positions it logged); a step some rank did not log is an error naming it.
    """
    slices: dict[int, dict[int, Mapping[str, Any]]] = {}
    paths = sorted(Path(folder).glob(BATCH_LOG_PATTERN.format(rank="*")))
    if not paths:
        raise FileNotFoundError(f"no {BATCH_LOG_PATTERN.format(rank='*')} in {folder}: was batch_log on?")
    for path in paths:
        with open(path) as f:
            for line in f:
                record = json.loads(line)
                slices.setdefault(record["step"], {})[record["rank"]] = record
    batches = {}
    for step, by_rank in sorted(slices.items()):
        world = next(iter(by_rank.values()))["world_size"]
        if sorted(by_rank) != list(range(world)):
            raise ValueError(f"step {step}: batch log has ranks {sorted(by_rank)} of a world of {world}")
        size = sum(len(r["domain"]) for r in by_rank.values())
        domain, sample = np.empty(size, np.int64), np.empty(size, np.int64)
        for rank, record in by_rank.items():
            where = record.get("position", slice(rank, None, world))
            domain[where], sample[where] = record["domain"], record["sample_id"]
        batches[step] = (domain, sample)
    return batches
