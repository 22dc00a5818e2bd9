"""``pike-stream train CONFIG.yaml [key=value …]`` (also ``composer -n N -m pike_stream.train CONFIG.yaml``).

Reads and checks the config, builds the Composer ``Trainer``, trains, and on rank 0 prints the learned
weights and per-domain validation losses with the paths of the report's plots.

A mistake the user can fix (the config, the storage, the data) is one line on stderr and exit status 2; the
config is read before Composer and torch are imported, so a config mistake is answered at once. Ctrl-C is one
line and exit status 130: during training it names the step reached and how the run resumes.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import logging.handlers
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any

from pike_stream.storage import StorageError
from pike_stream.train.config import ConfigError, TrainConfig, load_config
from pike_stream.train.records import METRICS_FILENAME

__all__ = ["TrainingInterrupted", "main", "train"]

log = logging.getLogger("pike_stream.train")

INTERRUPTED_STATUS = 130  # a shell's status for a command ended by SIGINT (128 + 2)


class TrainingInterrupted(Exception):
    """Training was stopped by Ctrl-C (SIGINT); the message says which step it reached and how to resume."""


def _user_errors() -> tuple[type[BaseException], ...]:
    """Errors whose message says what to fix: printed as one line, without a traceback."""
    from pike_stream.mixer import DomainDataError, MixerStateError, ShardFetchError, ShardIntegrityError
    from pike_stream.train.checkpoint_check import CorruptCheckpointError

    return (ConfigError, CorruptCheckpointError, DomainDataError, MixerStateError, ShardFetchError,
            ShardIntegrityError, StorageError)


def _resume_hint(cfg: TrainConfig) -> str:
    if not cfg.save_folder:
        return "no save_folder is set, so the run starts over when rerun"
    where = cfg.save_folder.format(run_name=cfg.run_name)
    if cfg.autoresume:
        return f"rerun the same command to resume from the last checkpoint in {where}"
    return f"checkpoints are in {where}: rerun with autoresume=true to resume from the last one"


def train(cfg: TrainConfig) -> None:
    """Train the run ``cfg`` describes to its ``max_duration`` (resuming if configured), then report.

    Raises :class:`TrainingInterrupted` (after closing the trainer) if Ctrl-C stops training.
    """
    from pike_stream.train.preflight import check_domains, check_run_folder, prepare_storage

    with _held_logs():  # before Composer and torch are imported: these mistakes are answered in seconds
        check_run_folder(cfg)
        prepare_storage(cfg)
        check_domains(cfg)

    from composer.utils import dist

    from pike_stream.report import write_report
    from pike_stream.train.builder import build_trainer
    from pike_stream.train.composer_compat import close_checkpoint_uploader

    trainer = build_trainer(cfg, preflight=False)
    interrupted = False
    try:
        done, target = int(trainer.state.timestamp.batch), cfg.batches(cfg.max_duration, "max_duration")
        if done >= target:
            # A rerun of a finished run (autoresume found its last checkpoint): report it, do not fail.
            if dist.get_global_rank() == 0:
                print(f"the run already trained {done} of max_duration={cfg.max_duration} steps (checkpoints in "
                      f"{cfg.save_folder}); nothing to train. Raise max_duration to continue it.", flush=True)
        else:
            if _fit_interruptibly(trainer.fit):
                step = int(trainer.state.timestamp.batch)
                interrupted = True
                _drop_interrupted_uploads(trainer)
                raise TrainingInterrupted(f"interrupted at step {step} of {target}; {_resume_hint(cfg)}") from None
    finally:
        try:
            trainer.close()
        except (KeyboardInterrupt, SystemExit) as stop:
            if not (interrupted and _is_interrupt(stop)):
                raise
        close_checkpoint_uploader(trainer)
    if dist.get_global_rank() == 0:
        if not os.path.exists(os.path.join(cfg.resolved_run_folder, METRICS_FILENAME)):
            print(f"no metrics in the run folder {cfg.resolved_run_folder} (the run was trained elsewhere, and its "
                  f"save_folder holds none): no report", flush=True)
            return
        summary, paths = write_report(cfg.resolved_run_folder)
        print(f"\n{summary.table()}\n\nweights: {paths['weights']}\nlosses:  {paths['losses']}\n"
              f"report:  {paths['report']}", flush=True)


def _fit_interruptibly(fit: Callable[[], Any]) -> bool:
    """Run ``fit``; True if Ctrl-C stopped it, False if it finished (any other error is raised).

    Composer turns SIGINT into ``sys.exit(130)`` (composer.core.engine), raised wherever the main thread is.
    Inside some library code that exception does not come out as itself: raised within a ``torch.vmap`` (which
    transformers uses to build attention masks), it trips an internal assert, and a ``RuntimeError`` comes out
    instead. So whatever ends ``fit`` after a SIGINT arrived is the interruption, and the finalizers of the code
    it broke off (the unraisable errors Python prints as "Exception ignored in …") are logged at debug level
    instead of printed: Ctrl-C stays one line.
    """
    interrupted = threading.Event()
    previous_handler = signal.getsignal(signal.SIGINT)
    previous_hook = sys.unraisablehook

    def note(signum: int, frame: Any) -> None:
        interrupted.set()
        if callable(previous_handler):
            previous_handler(signum, frame)
        elif previous_handler != signal.SIG_IGN:
            raise KeyboardInterrupt

    def hook(unraisable: Any) -> None:
        if not interrupted.is_set():
            previous_hook(unraisable)
            return
        log.debug("after Ctrl-C: %s in %r", unraisable.exc_value, unraisable.object)

    in_main_thread = threading.current_thread() is threading.main_thread()
    if in_main_thread:
        signal.signal(signal.SIGINT, note)
    sys.unraisablehook = hook
    try:
        fit()
    except BaseException as stop:
        if not (_is_interrupt(stop) or interrupted.is_set()):
            raise
        return True
    finally:
        if in_main_thread:
            signal.signal(signal.SIGINT, previous_handler)
        sys.unraisablehook = previous_hook
    return False


def _is_interrupt(stop: BaseException) -> bool:
    return isinstance(stop, KeyboardInterrupt) or (isinstance(stop, SystemExit) and stop.code == INTERRUPTED_STATUS)


def _drop_interrupted_uploads(trainer: Any) -> None:
    """Forget the checkpoint uploads that Ctrl-C stopped, so that closing the trainer does not fail on them.

    Ctrl-C reaches the whole process group, so Composer's upload processes (a remote ``save_folder``) stop
    too, and their futures hold ``SystemExit(130)``, which closing the trainer (and Composer's atexit hook)
    would raise again. A checkpoint whose upload stopped has no ``latest`` pointer in the bucket: the rerun
    resumes from the one before. Private Composer attributes, left alone where a version lacks them.
    """
    uploader = getattr(getattr(trainer, "_checkpoint_saver", None), "remote_uploader", None)
    futures = getattr(uploader, "futures", None)
    if uploader is not None and isinstance(futures, list):
        uploader.futures = [f for f in futures if not f.cancelled() and f.exception() is None]  # waits for each


@contextlib.contextmanager
def _held_logs() -> Iterator[None]:
    """Hold the log records of the block; show them if it succeeds, drop them if it raises (its error is
    then the one line the user sees, not the last of several)."""
    root = logging.getLogger("pike_stream")
    handlers = root.handlers[:]
    held = logging.handlers.MemoryHandler(capacity=1 << 20, flushLevel=logging.CRITICAL + 1)
    root.handlers[:] = [held]
    try:
        yield
    except BaseException:
        held.buffer.clear()
        raise
    finally:
        root.handlers[:] = handlers
        for handler in handlers or ([logging.lastResort] if root.propagate is False and logging.lastResort else []):
            for record in held.buffer:
                if record.levelno >= handler.level:
                    handler.handle(record)
        held.buffer.clear()


def _configure_logging() -> None:
    # Composer's launcher tells each rank its number in RANK (read without importing Composer).
    several = int(os.environ.get("WORLD_SIZE", "1") or 1) > 1
    prefix = f"rank{os.environ.get('RANK', '0')}" if several else "pike-stream"
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
    try:
        try:
            cfg = load_config(args.config, args.overrides)  # no Composer, no torch yet: a mistake is quick
        except ConfigError as error:
            return _error(error)
        _configure_logging()
        try:
            train(cfg)
        except TrainingInterrupted as stop:
            print(f"pike-stream train: {stop}", file=sys.stderr, flush=True)
            return INTERRUPTED_STATUS
        except (ConfigError, StorageError) as error:  # the preflight's: no import needed to tell them
            return _error(error)
        except _user_errors() as error:
            return _error(error)
    except (KeyboardInterrupt, SystemExit) as stop:  # SystemExit(130): Composer's SIGINT handler
        if isinstance(stop, SystemExit) and stop.code != INTERRUPTED_STATUS:
            raise
        print("pike-stream train: interrupted before training started; nothing was trained or saved, rerun the "
              "command to start", file=sys.stderr, flush=True)
        return INTERRUPTED_STATUS
    return 0


def _error(error: BaseException) -> int:
    print(f"pike-stream train: error: {' '.join(str(error).split())}", file=sys.stderr, flush=True)
    return 2
