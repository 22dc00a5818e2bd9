"""YAML → Composer training run: config, model, mixer, PiKE, per-domain evaluation, checkpoints, logs.

    from pike_stream.train import load_config, build_trainer
    trainer = build_trainer(load_config("yamls/quickstart.yaml", ["max_duration=20ba"]))
    trainer.fit()

Names are imported on first use, so reading a config does not import Composer.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # what __getattr__ returns, for type checkers
    from pike_stream.train.builder import build_trainer
    from pike_stream.train.cli import train
    from pike_stream.train.config import ConfigError, TrainConfig, load_config
    from pike_stream.train.records import read_batch_log, read_metrics

__all__ = ["ConfigError", "TrainConfig", "build_trainer", "load_config", "read_batch_log", "read_metrics", "train"]

_WHERE = {
    "ConfigError": "pike_stream.train.config",
    "TrainConfig": "pike_stream.train.config",
    "load_config": "pike_stream.train.config",
    "build_trainer": "pike_stream.train.builder",
    "read_batch_log": "pike_stream.train.records",
    "read_metrics": "pike_stream.train.records",
    "train": "pike_stream.train.cli",
}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(importlib.import_module(_WHERE[name]), name)
    raise AttributeError(f"module 'pike_stream.train' has no attribute {name!r}")
