"""The places pike_stream reaches into Composer's private attributes, kept here with their reasons.

Each is guarded: on a Composer version without the attribute, the function does nothing (the behaviour
then is Composer's own), and ``tests/test_composer_compat.py`` checks that Composer 0.32 still has them.
:data:`CHECKPOINT_VALIDATION_VARIABLE` is read by a private function of Composer's checkpoint loader; a
Composer without it would not call the check (``tests/test_checkpoint_check.py`` checks that it does).
:func:`checkpoint_being_loaded` reads the ``path`` argument of Composer's ``load_checkpoint`` from its stack frame
and formats it with Composer's private ``_format_path_with_rank_zero``; without them it returns None or the
unformatted path, and the check names Composer's copy (``tests/test_checkpoint_check.py`` checks it does not).
"""

from __future__ import annotations

import gc
import logging
import sys
from typing import Any

__all__ = ["CHECKPOINT_VALIDATION_VARIABLE", "SYMLINK_RETRY_SECONDS", "check_latest_symlink_often",
           "check_saver_latest_symlink_often", "checkpoint_being_loaded", "checkpoint_uploaders",
           "close_checkpoint_uploader", "close_orphaned_checkpoint_uploaders"]

log = logging.getLogger(__name__)

SYMLINK_RETRY_SECONDS = 2.0
CHECKPOINT_VALIDATION_VARIABLE = "CHECKPOINT_VALIDATION_FUNCTION"
"""The environment variable in which Composer's checkpoint loader looks for ``module.function`` to call on every
checkpoint file before loading it (``composer.utils.checkpoint._get_checkpoint_validation_function``)."""


def checkpoint_being_loaded() -> str | None:
    """The checkpoint (path or URI, formatted for rank 0) that Composer's ``load_checkpoint`` is loading, or None
    when called from outside it.

    Composer hands its checkpoint validation function only the copy it downloaded to a temporary folder
    (``…/rank0_checkpoint``), whichever trainer built it (``pike-stream train``, llm-foundry's). The path the user
    named is ``load_checkpoint``'s ``path`` argument, read here from its frame on the call stack.
    """
    frame = sys._getframe(1)
    while frame is not None:
        if frame.f_code.co_name == "load_checkpoint" and frame.f_globals.get("__name__") == "composer.utils.checkpoint":
            path = frame.f_locals.get("path")
            if not isinstance(path, str):
                return None
            try:  # a {rank} in the path: every rank of an unsharded checkpoint loads rank 0's file
                from composer.utils.checkpoint import _format_path_with_rank_zero
                return _format_path_with_rank_zero(path)
            except (ImportError, KeyError, IndexError, ValueError):
                return path
        frame = frame.f_back
    return None


def check_latest_symlink_often(trainer: Any) -> bool:
    """Upload the ``latest`` pointer of a remote checkpoint as soon as the checkpoint itself is there.

    Composer uploads ``latest-rank0.pt.symlink`` (what autoresume reads) only after it has seen the
    checkpoint's upload finish, checking every 30 s: a crash in that window resumes from an older
    checkpoint, and every run's end waits for the last check. The setting is a private attribute of
    Composer's ``CheckpointSaver`` (meant for exactly this, in tests). Returns whether it was set.
    """
    return check_saver_latest_symlink_often(getattr(trainer, "_checkpoint_saver", None))


def check_saver_latest_symlink_often(saver: Any) -> bool:
    """:func:`check_latest_symlink_often` for a ``CheckpointSaver`` callback itself (e.g. found in
    ``state.callbacks`` by an algorithm of a trainer built elsewhere, such as llm-foundry's)."""
    if saver is None or not hasattr(saver, "_symlink_upload_wait_before_next_try_in_seconds"):
        return False
    saver._symlink_upload_wait_before_next_try_in_seconds = SYMLINK_RETRY_SECONDS
    return True


def _shut_down(uploader: Any) -> None:
    for name in ("upload_executor", "check_remote_files_exist_executor"):
        executor = getattr(uploader, name, None)
        if executor is not None:
            executor.shutdown(wait=False, cancel_futures=True)
    manager = getattr(getattr(uploader, "is_remote_upload_failed", None), "_manager", None)
    if manager is not None:
        manager.shutdown()


def close_checkpoint_uploader(trainer: Any) -> bool:
    """After ``trainer.close()``: end the multiprocessing manager of its checkpoint uploader, which Composer
    leaves running as long as the trainer object lives. Returns whether there was one."""
    uploader = getattr(getattr(trainer, "_checkpoint_saver", None), "remote_uploader", None)
    if uploader is None:
        return False
    _shut_down(uploader)
    return True


def _live(cls: type) -> list[Any]:
    """The objects of ``cls`` (or a subclass) alive now. ``type(obj)``, not ``isinstance``: ``isinstance`` reads
    ``obj.__class__``, which on torch's deprecated ``torch.distributed.reduce_op`` prints a FutureWarning."""
    return [obj for obj in gc.get_objects() if issubclass(type(obj), cls)]


def checkpoint_uploaders() -> set[int]:
    """The ids of the Composer ``RemoteUploader`` objects alive now (taken before a ``Trainer`` is built)."""
    try:
        from composer.utils.remote_uploader import RemoteUploader
    except ImportError:
        return set()
    return {id(obj) for obj in _live(RemoteUploader)}


def close_orphaned_checkpoint_uploaders(existing: set[int]) -> int:
    """Shut down the processes of the Composer ``RemoteUploader``s made since ``existing`` was taken.

    A ``Trainer`` with a remote ``save_folder`` starts a ``RemoteUploader`` (two process pools and a
    multiprocessing manager) while it is constructed. When the construction then fails (e.g. autoresume
    refuses the checkpoint), nothing can call ``trainer.close()``, and while the exception's traceback holds
    the half-built trainer the manager's server process lives on. Called after such a failure, with
    :func:`checkpoint_uploaders` taken before it (other trainers' uploaders are left alone); returns how many
    uploaders it closed.
    """
    try:
        from composer.utils.remote_uploader import RemoteUploader
    except ImportError:  # a Composer without it: nothing of it can be running
        return 0
    closed = 0
    for obj in _live(RemoteUploader):
        if id(obj) in existing:
            continue
        _shut_down(obj)
        closed += 1
    return closed
