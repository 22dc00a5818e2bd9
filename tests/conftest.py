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
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from pike_stream.storage import EmbeddedS3, s3_client

__all__: list[str] = []


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
