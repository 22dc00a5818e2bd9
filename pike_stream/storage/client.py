"""boto3 clients for :class:`S3Settings`, and an access check that turns botocore errors into clear ones.

Every S3 client the library makes comes from :func:`s3_client`, so timeouts, retries and addressing
style are decided here once. :func:`check_access` answers "can this key read (and write) this bucket?"
before a long job starts, with a :class:`StorageError` that names the variable or bucket to fix.
:func:`is_transient_error` says which failures are worth retrying (an unreachable or overloaded endpoint)
and which are not (a rejected key, a missing object, a bug).
"""

from __future__ import annotations

import urllib.parse
import uuid
from typing import Any

from pike_stream.storage.settings import (
    ENV_ACCESS_KEY_ID,
    ENV_ENDPOINT_URL,
    ENV_SECRET_ACCESS_KEY,
    S3Settings,
    StorageError,
)

__all__ = ["check_access", "endpoint_for_messages", "explain_client_error", "is_transient_error", "s3_client"]

_ACCESS_CHECK_PREFIX = ".pike_stream-access-check/"


def s3_client(settings: S3Settings, *, timeout_s: float = 60.0, max_attempts: int = 5,
              connect_timeout_s: float | None = None) -> Any:
    """A boto3 S3 client for ``settings`` (path-style addressing, which S3-compatible servers expect).

    ``max_attempts`` counts the first try; ``timeout_s`` bounds each read, and connecting too unless
    ``connect_timeout_s`` is given. A malformed ``S3_ENDPOINT_URL`` is a :class:`StorageError` naming it.
    """
    import boto3.session
    from botocore.config import Config

    config = Config(
        connect_timeout=timeout_s if connect_timeout_s is None else connect_timeout_s,
        read_timeout=timeout_s,
        retries={"max_attempts": max_attempts, "mode": "standard"},
        s3={"addressing_style": "path"},
    )
    try:
        return boto3.session.Session().client(
            "s3",
            endpoint_url=settings.endpoint_url,
            aws_access_key_id=settings.access_key_id,
            aws_secret_access_key=settings.secret_access_key,
            region_name=settings.region,
            config=config,
        )
    except ValueError as exc:  # botocore rejects a malformed endpoint with ValueError
        raise StorageError(
            f"{ENV_ENDPOINT_URL}={endpoint_for_messages(settings)!r} is not a valid URL: {settings.redact(str(exc))}"
        ) from exc


def endpoint_for_messages(settings: S3Settings) -> str:
    """The endpoint as messages name it: its URL without any ``user:password@``, or AWS S3 when none is set."""
    url = settings.endpoint_url
    if not url:
        return f"AWS S3 (no {ENV_ENDPOINT_URL} set)"
    parsed = urllib.parse.urlparse(url)
    if parsed.username is None and parsed.password is None:
        return url
    host = (parsed.hostname or "") + (f":{parsed.port}" if parsed.port else "")
    return parsed._replace(netloc=host).geturl()


# Error codes of a key the endpoint does not accept, besides the two named precisely below.
_REFUSED_KEY_CODES = frozenset({"InvalidToken", "ExpiredToken"})
# What a HEAD request's 403 looks like: no body, so no S3 error code to tell a wrong key from a denied read.
_BARE_FORBIDDEN_CODES = frozenset({"403", "Forbidden"})


def explain_client_error(exc: BaseException, settings: S3Settings, bucket: str, operation: str,
                         key: str | None = None, *, url: str | None = None) -> StorageError:
    """A :class:`StorageError` for a botocore exception raised by ``operation`` on ``bucket`` (object ``key``).

    Unreachable endpoint → names ``S3_ENDPOINT_URL`` and the URL; a rejected key → names
    ``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY`` (the secret itself is never shown); a missing bucket →
    names the bucket; a missing object → names ``s3://bucket/key``; AccessDenied on a write → says the key
    is read-only for that bucket. ``url``: the ``s3://`` location being accessed, for the messages (default:
    the bucket, or the object).
    """
    from botocore.exceptions import (
        ClientError,
        ConnectTimeoutError,
        EndpointConnectionError,
        NoCredentialsError,
        PartialCredentialsError,
        ReadTimeoutError,
    )

    endpoint = endpoint_for_messages(settings)
    key_id = settings.access_key_id or "(from the boto3 credential chain)"
    where = url or (f"s3://{bucket}/{key}" if key is not None else f"s3://{bucket}")
    if isinstance(exc, (EndpointConnectionError, ConnectTimeoutError)):
        return StorageError(
            f"cannot reach the S3 endpoint {endpoint} for {where}: check {ENV_ENDPOINT_URL} "
            f"(is the server running and the URL right?); {settings.redact(str(exc))}"
        )
    if isinstance(exc, ReadTimeoutError):
        return StorageError(f"the S3 endpoint {endpoint} ({ENV_ENDPOINT_URL}) did not answer {operation} in time")
    if isinstance(exc, (NoCredentialsError, PartialCredentialsError)):
        return StorageError(
            f"no S3 credentials found for {endpoint}: set {ENV_ACCESS_KEY_ID} and {ENV_SECRET_ACCESS_KEY}"
        )
    if not isinstance(exc, ClientError):
        return StorageError(f"{operation} on bucket {bucket!r} at {endpoint} failed: {settings.redact(str(exc))}")

    error = exc.response.get("Error", {})
    code = str(error.get("Code", ""))
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    message = settings.redact(str(error.get("Message", "")))
    if code == "SignatureDoesNotMatch":
        return StorageError(
            f"the S3 endpoint {endpoint} rejected the secret key for access key id {key_id!r}: "
            f"check {ENV_SECRET_ACCESS_KEY} (and that {ENV_ACCESS_KEY_ID} is the key it belongs to)"
        )
    if code in ("InvalidAccessKeyId", "InvalidClientTokenId"):
        return StorageError(
            f"the S3 endpoint {endpoint} does not know access key id {key_id!r}: "
            f"check {ENV_ACCESS_KEY_ID} and {ENV_SECRET_ACCESS_KEY}"
        )
    if code in _REFUSED_KEY_CODES:
        return StorageError(
            f"the S3 endpoint {endpoint} refused the credentials of access key id {key_id!r} for {where} ({code}): "
            f"check {ENV_ACCESS_KEY_ID} and {ENV_SECRET_ACCESS_KEY}"
        )
    if code == "NoSuchBucket" or (code in ("404", "NotFound") and operation == "HeadBucket"):
        return StorageError(f"bucket {bucket!r} does not exist at {endpoint}: create it or fix the s3:// URL")
    if key is not None and (code in ("NoSuchKey", "NotFound") or (code == "404" and operation != "HeadBucket")):
        return StorageError(f"object s3://{bucket}/{key} does not exist at {endpoint} ({operation}: {code})")
    if code in ("AccessDenied", "403", "Forbidden"):
        if operation in ("PutObject", "DeleteObject", "CreateBucket"):
            return StorageError(
                f"access key id {key_id!r} is read-only for bucket {bucket!r} at {endpoint} "
                f"({operation} was denied): use a key with write access in "
                f"{ENV_ACCESS_KEY_ID}/{ENV_SECRET_ACCESS_KEY}"
            )
        if code in _BARE_FORBIDDEN_CODES:
            return StorageError(
                f"the S3 endpoint {endpoint} refused the credentials of access key id {key_id!r} for {where} "
                f"({operation}: {code}): check {ENV_ACCESS_KEY_ID} and {ENV_SECRET_ACCESS_KEY}, "
                f"and the bucket's policy"
            )
        return StorageError(
            f"access key id {key_id!r} may not read bucket {bucket!r} at {endpoint} ({operation} was denied): "
            f"check {ENV_ACCESS_KEY_ID}/{ENV_SECRET_ACCESS_KEY} and the bucket's policy"
        )
    return StorageError(
        f"{operation} on bucket {bucket!r} at {endpoint} failed: {code or status} {message}".rstrip()
    )


# Error codes of S3 (and S3-compatible servers) that say "try again later".
_TRANSIENT_CODES = frozenset({
    "SlowDown", "Throttling", "ThrottlingException", "RequestLimitExceeded", "TooManyRequests",
    "RequestTimeout", "RequestTimeoutException", "InternalError", "ServiceUnavailable", "503", "500", "502", "504",
})


def is_transient_error(exc: BaseException) -> bool:
    """Whether ``exc`` may go away by itself, so retrying the request later makes sense.

    Transient: the endpoint cannot be reached or dropped the connection (a restarting server), a timeout,
    a truncated body, an HTTP 5xx, 429 or a throttling code (``SlowDown``). Not transient: a rejected key
    (403), a missing bucket or object (404, ``NoSuchKey``), missing credentials, and anything else
    (a bug, a full disk), which retrying would only delay.
    """
    from botocore.exceptions import (
        ClientError,
        ConnectionClosedError,
        IncompleteReadError,
        NoCredentialsError,
        ReadTimeoutError,
        ResponseStreamingError,
    )
    from botocore.exceptions import ConnectionError as BotoConnectionError

    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0
        return str(error.get("Code", "")) in _TRANSIENT_CODES or status >= 500 or status == 429
    if isinstance(exc, NoCredentialsError):
        return False
    if isinstance(exc, (BotoConnectionError, ConnectionClosedError, ReadTimeoutError, IncompleteReadError,
                        ResponseStreamingError)):
        return True
    return isinstance(exc, (ConnectionError, TimeoutError))


def check_access(settings: S3Settings, bucket: str, write: bool = False) -> None:
    """Raise a clear :class:`StorageError` unless ``settings`` can list ``bucket`` (and write to it).

    The write check puts and deletes one empty object under ``.pike_stream-access-check/``. Retries are
    kept short so a wrong endpoint fails in seconds, not minutes.
    """
    from botocore.exceptions import BotoCoreError, ClientError

    client = s3_client(settings, timeout_s=10.0, max_attempts=2)
    operation = "ListObjectsV2"
    try:
        client.list_objects_v2(Bucket=bucket, MaxKeys=1)
        if write:
            key = f"{_ACCESS_CHECK_PREFIX}{uuid.uuid4().hex}"
            operation = "PutObject"
            client.put_object(Bucket=bucket, Key=key, Body=b"")
            operation = "DeleteObject"
            client.delete_object(Bucket=bucket, Key=key)
    except (BotoCoreError, ClientError) as exc:
        raise explain_client_error(exc, settings, bucket, operation) from exc
