"""Where the S3 data lives and with which key: the four standard variables, in one typed object.

mosaicml-streaming reads ``S3_ENDPOINT_URL`` and boto3 reads the ``AWS_*`` variables; Composer's
``S3ObjectStore`` reads both. Carrying them as an :class:`S3Settings` lets the library check them,
export them (:meth:`S3Settings.as_env`) and print them without ever printing the secret.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

__all__ = [
    "ENV_ACCESS_KEY_ID",
    "ENV_ENDPOINT_URL",
    "ENV_REGION",
    "ENV_SECRET_ACCESS_KEY",
    "S3_ENV_VARS",
    "S3Settings",
    "StorageError",
    "redact",
]

ENV_ENDPOINT_URL = "S3_ENDPOINT_URL"
ENV_ACCESS_KEY_ID = "AWS_ACCESS_KEY_ID"
ENV_SECRET_ACCESS_KEY = "AWS_SECRET_ACCESS_KEY"
ENV_REGION = "AWS_DEFAULT_REGION"
S3_ENV_VARS = (ENV_ENDPOINT_URL, ENV_ACCESS_KEY_ID, ENV_SECRET_ACCESS_KEY, ENV_REGION)

DEFAULT_REGION = "us-east-1"
_MASK = "***"
# ``secret…=value`` / ``secret…: value`` in free text (command lines, configs, exception reprs).
_SECRET_ASSIGNMENT = re.compile(r"""(?i)(secret[\w-]*["']?\s*[=:]\s*["']?)([^\s"',}]+)""")


class StorageError(Exception):
    """The S3 endpoint, its credentials, a bucket or the embedded server is not usable as configured.

    The message names the variable, bucket or file at fault and never contains a secret key.
    """


@dataclass(frozen=True, repr=False)
class S3Settings:
    """An S3 endpoint and the key to use with it.

    ``endpoint_url`` None means AWS itself; ``access_key_id``/``secret_access_key`` None leave boto3 to
    find credentials its usual way (profile, instance role).
    """

    endpoint_url: str | None = None
    access_key_id: str | None = None
    secret_access_key: str | None = None
    region: str = DEFAULT_REGION

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> S3Settings:
        """The settings in ``environ`` (default: ``os.environ``); empty variables count as unset."""
        env = os.environ if environ is None else environ

        def get(name: str) -> str | None:
            value = env.get(name, "").strip()
            return value or None

        return cls(
            endpoint_url=get(ENV_ENDPOINT_URL),
            access_key_id=get(ENV_ACCESS_KEY_ID),
            secret_access_key=get(ENV_SECRET_ACCESS_KEY),
            region=get(ENV_REGION) or DEFAULT_REGION,
        )

    def as_env(self) -> dict[str, str]:
        """The variables that make streaming, Composer and boto3 use these settings (unset fields omitted)."""
        values = {
            ENV_ENDPOINT_URL: self.endpoint_url,
            ENV_ACCESS_KEY_ID: self.access_key_id,
            ENV_SECRET_ACCESS_KEY: self.secret_access_key,
            ENV_REGION: self.region,
        }
        return {name: value for name, value in values.items() if value}

    def redact(self, text: str) -> str:
        """``text`` with this secret key (and any ``secret…=value``) replaced by ``***``."""
        return redact(text, [self.secret_access_key] if self.secret_access_key else [])

    def __repr__(self) -> str:
        secret = _MASK if self.secret_access_key else None
        return (
            f"S3Settings(endpoint_url={self.endpoint_url!r}, access_key_id={self.access_key_id!r}, "
            f"secret_access_key={secret!r}, region={self.region!r})"
        )

    __str__ = __repr__


def redact(text: str, secrets: Iterable[str] | None = None) -> str:
    """``text`` with secrets replaced by ``***``, for messages and logs.

    Removes every occurrence of each value in ``secrets`` (default: the current
    ``AWS_SECRET_ACCESS_KEY``), then any ``secret…=value`` or ``secret…: value`` assignment, so a
    command line or a config dump quoted in an error does not leak a key either.
    """
    if secrets is None:
        current = os.environ.get(ENV_SECRET_ACCESS_KEY, "")
        secrets = [current] if current else []
    # Longest first, so a secret that contains another is masked whole.
    for secret in sorted({s for s in secrets if s}, key=len, reverse=True):
        text = text.replace(secret, _MASK)
    return _SECRET_ASSIGNMENT.sub(lambda m: m.group(1) + _MASK, text)
