"""Downloading one shard file, and saying what went wrong in one line: retry it, or fix which setting.

Shards of an ``s3://`` domain are fetched with the project's S3 client (:func:`pike_stream.storage.s3_client`)
making a single attempt per call: the retrying — of transient failures only, for ``retry_seconds``, and
stoppable by ``close()`` — is :class:`~pike_stream.mixer.shards.ShardCache`'s, not hidden in botocore or
streaming. :class:`S3ShardDownloader` takes the place of streaming's downloader inside its ``Stream``, so
streaming still decides which file to fetch and checks and decompresses it.
"""

from __future__ import annotations

import os
import threading
import urllib.parse
import uuid
from typing import Any

from pike_stream.storage.client import explain_client_error, is_transient_error, s3_client
from pike_stream.storage.settings import ENV_ENDPOINT_URL, S3Settings

__all__ = ["S3ShardDownloader", "describe_fetch_error"]

_CHUNK = 1 << 20


class S3ShardDownloader:
    """A mosaicml-streaming downloader (``download``/``clean_up``) for ``s3://`` URLs: one GET per call.

    The client is made on first use from the ``S3_ENDPOINT_URL``/``AWS_*`` variables then in force, with
    botocore's own retries off; the file appears under its name only once complete.
    """

    def __init__(self) -> None:
        self._client: Any = None
        self._lock = threading.Lock()

    def download(self, remote: str | None, local: str, timeout: float) -> None:
        if os.path.exists(local):
            return
        url = urllib.parse.urlparse(remote or "")
        if url.scheme != "s3" or not url.netloc:
            raise ValueError(f"not an s3:// URL: {remote!r}")
        with self._lock:
            if self._client is None:
                self._client = s3_client(S3Settings.from_env(), timeout_s=timeout, max_attempts=1)
            client = self._client
        os.makedirs(os.path.dirname(local) or ".", exist_ok=True)
        partial = f"{local}.{uuid.uuid4().hex[:8]}.part"
        try:
            body = client.get_object(Bucket=url.netloc, Key=url.path.lstrip("/"))["Body"]
            with open(partial, "wb") as out:
                for chunk in body.iter_chunks(_CHUNK):  # botocore checks the length at the end
                    out.write(chunk)
            os.replace(partial, local)
        finally:
            if os.path.exists(partial):
                os.remove(partial)

    def clean_up(self) -> None:
        """Called by streaming after a failed attempt: the next attempt makes a fresh client."""
        with self._lock:
            self._client = None


def describe_fetch_error(error: BaseException, remote: str | None) -> tuple[bool, str]:
    """``(transient, reason)`` for a failed download of ``remote``: whether retrying may help, and one line
    that names the setting to check (``S3_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``, the
    domain's ``remote``)."""
    from botocore.exceptions import BotoCoreError, ClientError

    transient = is_transient_error(error)
    url = urllib.parse.urlparse(remote or "")
    if url.scheme == "s3" and isinstance(error, (BotoCoreError, ClientError)):
        settings = S3Settings.from_env()
        key = url.path.lstrip("/")
        reason = str(explain_client_error(error, settings, url.netloc, "GetObject", key=key))
        if isinstance(error, ClientError) and "does not exist" in reason:
            reason += "; check the domain's remote and that its upload finished"
        if transient and ENV_ENDPOINT_URL not in reason:  # a 5xx or throttling: the server is in trouble
            reason += f" (check {ENV_ENDPOINT_URL}={settings.endpoint_url or '<unset>'} is up)"
        return transient, reason
    if isinstance(error, FileNotFoundError):
        return False, f"no such file ({error}); check the domain's remote/local folder"
    reason = " ".join(f"{type(error).__name__}: {error}".split())
    if transient:
        reason += f" (check {ENV_ENDPOINT_URL}={os.environ.get(ENV_ENDPOINT_URL, '<unset>')} is up)"
    return transient, reason
