"""S3 storage: the endpoint and key from the standard variables, and an embedded S3 server by default.

    ensure_storage()        the user's S3_ENDPOINT_URL if set, else a persistent embedded SeaweedFS
                            server (started once, reused by later commands), exported into os.environ
    S3Settings.from_env()   endpoint, key, secret, region as one object that never prints the secret
    check_access(s, bucket, write=True)   fail early, naming the variable or bucket to fix
    EmbeddedS3(folder)      a SeaweedFS S3 server on 127.0.0.1 with its own keys (tests, `pike-stream s3`)
"""

from __future__ import annotations

from pike_stream.storage.client import check_access, s3_client
from pike_stream.storage.default import default_data_dir, ensure_storage
from pike_stream.storage.embedded import EmbeddedS3
from pike_stream.storage.settings import S3Settings, StorageError, redact

__all__ = [
    "EmbeddedS3",
    "S3Settings",
    "StorageError",
    "check_access",
    "default_data_dir",
    "ensure_storage",
    "redact",
    "s3_client",
]
