"""Shared pytest fixtures: real S3 storage, served by the embedded SeaweedFS server on 127.0.0.1.

Storage is never mocked: tests talk S3 to a real ``weed server -s3`` (``pike_stream.storage.EmbeddedS3``).

``s3_server`` (session)
    One :class:`~pike_stream.storage.EmbeddedS3` on free ports in a temporary folder, shared by the whole
    session and killed at its end (its data is thrown away). Started lazily: only a session that runs a
    test using it (directly or through ``s3_env``/``s3_bucket``) pays the few seconds of startup. It has
    a read-only key too: ``s3_server.read_only_settings``.
``s3_env`` (function)
    Sets ``S3_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY`` and ``AWS_DEFAULT_REGION``
    for ``s3_server`` with ``monkeypatch.setenv``, so mosaicml-streaming, Composer and boto3 in the test
    process use it; returns the ``EmbeddedS3``. Undone after the test.
``s3_bucket`` (function)
    A fresh, uniquely named, empty bucket on ``s3_server`` (with ``s3_env`` in force); returns its name.
    Deleted with its contents after the test, so buckets do not pile up over a session.
``fresh_s3_server`` (function)
    A started server of the test's own, in the test's ``tmp_path``, with a read-only key: for tests
    that stop, restart or break their server. Killed after the test if still running.
``no_leftover_processes`` (session, autouse)
    Fails the session if a ``weed`` started during it (by this process, its children, or in its
    temporary folders) or any other child process of this session is still alive at its end; kills
    them, so one broken test does not leave servers running on the machine.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from pike_stream.storage import EmbeddedS3, s3_client

__all__: list[str] = []

# Every process this session starts inherits this variable (weed too: EmbeddedS3 passes the environment
# on), which tells its weed processes from those of other sessions or programs on the machine.
_SESSION_MARK = "PIKE_STREAM_TEST_SESSION"
# Children a session may legitimately keep to its end: helpers of multiprocessing and torch.
_HELPER_CHILDREN = ("multiprocessing.resource_tracker", "multiprocessing.forkserver", "compile_worker")


def _describe(proc: psutil.Process) -> str:
    try:
        return f"pid {proc.pid}: {' '.join(proc.cmdline())[:300]}"
    except psutil.Error:
        return f"pid {proc.pid}: (gone)"


def _is_weed(proc: psutil.Process) -> bool:
    try:
        return proc.name() == "weed" or Path((proc.cmdline() or [""])[0]).name == "weed"
    except psutil.Error:
        return False


def _ours(proc: psutil.Process, mark: str, basetemp: Path) -> bool:
    """Whether weed process ``proc`` was started by this session (its mark, or data in its temp folder)."""
    try:
        if proc.environ().get(_SESSION_MARK) == mark:
            return True
        return any(arg.startswith("-dir=") and Path(arg[5:]).is_relative_to(basetemp) for arg in proc.cmdline())
    except psutil.Error:
        return False


def _alive(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


@pytest.fixture(scope="session", autouse=True)
def no_leftover_processes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    mark = uuid.uuid4().hex
    previous_mark = os.environ.get(_SESSION_MARK)
    os.environ[_SESSION_MARK] = mark
    basetemp = tmp_path_factory.getbasetemp().resolve()
    me = psutil.Process()
    before = {proc.pid for proc in psutil.process_iter()}
    yield  # session-scoped fixtures requested later (s3_server) are torn down before this
    if previous_mark is None:
        os.environ.pop(_SESSION_MARK, None)
    else:
        os.environ[_SESSION_MARK] = previous_mark

    def leftovers() -> list[psutil.Process]:
        weeds = [p for p in psutil.process_iter() if p.pid not in before and _is_weed(p) and _ours(p, mark, basetemp)]
        children = [
            p
            for p in me.children(recursive=True)
            if not _is_weed(p) and not any(helper in _describe(p) for helper in _HELPER_CHILDREN)
        ]
        return [p for p in weeds + children if _alive(p)]

    # Composer's checkpoint uploaders keep a multiprocessing manager alive as long as their Trainer object
    # lives (tests that build trainers directly may still hold one): end those first, as the CLI does.
    import gc

    from pike_stream.train.composer_compat import close_orphaned_checkpoint_uploaders

    gc.collect()
    close_orphaned_checkpoint_uploaders(set())
    deadline = time.monotonic() + 10.0  # a child may still be on its way out
    left = leftovers()
    while left and time.monotonic() < deadline:
        time.sleep(0.2)
        left = leftovers()
    if left:
        described = [_describe(p) for p in left]
        for proc in left:
            try:
                proc.kill()
            except psutil.Error:
                pass
        pytest.fail(
            f"the test session left {len(left)} process(es) running (killed now):\n" + "\n".join(described),
            pytrace=False,
        )


@pytest.fixture(scope="module")
def one_torch_thread() -> Iterator[None]:
    """torch on one intra-op thread for a module (``pytestmark = pytest.mark.usefixtures("one_torch_thread")``):
    the models and tensors of these tests are tiny, so more threads gain nothing and fight the other test
    processes for the cores."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedS3]:
    server = EmbeddedS3(tmp_path_factory.mktemp("s3"), read_only_identity=True).start()
    yield server
    server.stop(grace_s=0.0)


@pytest.fixture
def s3_env(s3_server: EmbeddedS3, monkeypatch: pytest.MonkeyPatch) -> EmbeddedS3:
    for name, value in s3_server.env().items():
        monkeypatch.setenv(name, value)
    return s3_server


@pytest.fixture
def s3_bucket(s3_env: EmbeddedS3) -> Iterator[str]:
    name = f"test-{uuid.uuid4().hex[:16]}"
    s3_env.create_bucket(name)
    yield name
    # SeaweedFS deletes a non-empty bucket (and its volumes) in one call.
    s3_client(s3_env.settings).delete_bucket(Bucket=name)


@pytest.fixture
def fresh_s3_server(tmp_path: Path) -> Iterator[EmbeddedS3]:
    server = EmbeddedS3(tmp_path / "s3", read_only_identity=True).start()
    yield server
    server.stop(grace_s=0.0)


_DIST_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "NODE_RANK", "MASTER_ADDR", "MASTER_PORT")


@pytest.fixture
def in_process_dist(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    """Composer in this process: its environment variables and process group are undone afterwards, and
    relative checkpoint folders land in ``tmp_path``."""
    import torch.distributed

    for name in _DIST_ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)
    yield
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
