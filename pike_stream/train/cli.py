"""``pike-stream train CONFIG.yaml [key=value …]`` (also ``composer -n N -m pike_stream.train CONFIG.yaml``).

Reads and checks the config, builds the Composer ``Trainer``, trains, and on rank 0 prints the learned
weights and per-domain validation losses with the paths of the report's plots.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from composer.utils import dist

from pike_stream.mixer import DomainDataError, MixerStateError, ShardFetchError, ShardIntegrityError
from pike_stream.storage import StorageError
from pike_stream.train.config import ConfigError, TrainConfig, load_config
from pike_stream.train.records import METRICS_FILENAME

__all__ = ["main", "train"]

log = logging.getLogger("pike_stream.train")

# Errors whose message says what to fix: printed without a traceback.
_USER_ERRORS = (ConfigError, DomainDataError, MixerStateError, ShardFetchError, ShardIntegrityError, StorageError)


def train(cfg: TrainConfig) -> None:
    """Train the run ``cfg`` describes to its ``max_duration`` (resuming if configured), then report."""
    from pike_stream.report import write_report
    from pike_stream.train.builder import build_trainer, forget_local_checkpoint_copy

    trainer = build_trainer(cfg)
    try:
        done, target = int(trainer.state.timestamp.batch), cfg.batches(cfg.max_duration, "max_duration")
        if done >= target:
            # A rerun of a finished run (autoresume found its last checkpoint): report it, do not fail.
            if dist.get_global_rank() == 0:
                print(f"the run already trained {done} of max_duration={cfg.max_duration} steps (checkpoints in "
                      f"{cfg.save_folder}); nothing to train. Raise max_duration to continue it.", flush=True)
        else:
            trainer.fit()
    finally:
        trainer.close()
        forget_local_checkpoint_copy(cfg, dist.get_global_rank())
    if dist.get_global_rank() == 0:
        if not os.path.exists(os.path.join(cfg.resolved_run_folder, METRICS_FILENAME)):
            print(f"no metrics in the run folder {cfg.resolved_run_folder} (the run was trained elsewhere, and its "
                  f"save_folder holds none): no report", flush=True)
            return
        summary, paths = write_report(cfg.resolved_run_folder)
        print(f"\n{summary.table()}\n\nweights: {paths['weights']}\nlosses:  {paths['losses']}\n"
              f"report:  {paths['report']}", flush=True)


def _configure_logging() -> None:
    rank = dist.get_global_rank() if dist.is_initialized() else None
    prefix = f"rank{rank}" if rank is not None else "pike-stream"
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(f"%(asctime)s {prefix} %(name)s: %(message)s", "%H:%M:%S"))
    root = logging.getLogger("pike_stream")
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
    root.propagate = False


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="pike-stream train",
        description="Train a causal LM on several domains mixed by PiKE, from a YAML config.",
        epilog="Overrides use dotted keys and YAML values: max_duration=20ba algorithms.pike.zeta1=0.5")
    parser.add_argument("config", help="the YAML config (see yamls/)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="settings that replace the config's")
    args = parser.parse_args(argv)
    _configure_logging()
    try:
        train(load_config(args.config, args.overrides))
    except _USER_ERRORS as error:
        print(f"pike-stream train: error: {error}", file=sys.stderr, flush=True)
        return 2
    return 0
