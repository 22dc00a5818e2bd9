"""The private Composer attributes behind pike_stream.train.composer_compat still exist and do what it needs."""

from __future__ import annotations

import time

import psutil

from pike_stream.train.composer_compat import (
    SYMLINK_RETRY_SECONDS,
    check_latest_symlink_often,
    checkpoint_uploaders,
    close_orphaned_checkpoint_uploaders,
)


def _children() -> set[int]:
    """Child processes, less multiprocessing's resource tracker (started once, shared, ends with us)."""
    out = set()
    for p in psutil.Process().children(recursive=True):
        try:
            if p.is_running() and "resource_tracker" not in " ".join(p.cmdline()):
                out.add(p.pid)
        except psutil.Error:
            pass
    return out


def test_an_orphaned_remote_uploader_leaves_no_process(s3_env) -> None:
    from composer.utils.remote_uploader import RemoteUploader

    before, existing = _children(), checkpoint_uploaders()
    other = RemoteUploader(remote_folder="s3://other/checkpoints")  # another trainer's: left alone
    existing |= {id(other)}
    held = [RemoteUploader(remote_folder="s3://orphan/checkpoints")]  # as a failed Trainer's traceback holds it
    assert len(_children() - before) >= 2, "Composer's uploader no longer starts a process: the workaround may go"
    assert close_orphaned_checkpoint_uploaders(existing) == 1
    assert not other.upload_executor._shutdown_thread
    other_manager = other.is_remote_upload_failed._manager
    other_manager.shutdown()
    del held
    deadline = time.monotonic() + 10
    while _children() - before and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _children() - before


def test_the_latest_pointer_check_interval_is_still_settable(tmp_path) -> None:
    from composer.callbacks import CheckpointSaver

    class Holder:
        _checkpoint_saver = CheckpointSaver(folder=str(tmp_path))

    assert check_latest_symlink_often(Holder())
    assert Holder._checkpoint_saver._symlink_upload_wait_before_next_try_in_seconds == SYMLINK_RETRY_SECONDS
    assert not check_latest_symlink_often(object())


def test_looking_for_uploaders_prints_no_warning_of_torch_deprecated_objects() -> None:
    """Every run looks for live uploaders; ``isinstance`` over ``gc.get_objects()`` would touch
    ``torch.distributed.reduce_op``, whose deprecation FutureWarning then printed at every run."""
    import warnings

    import torch.distributed  # noqa: F401  (the module that holds the deprecated object)

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        checkpoint_uploaders()
        close_orphaned_checkpoint_uploaders(checkpoint_uploaders())
