"""Where a domain folder is written: a local folder or an ``s3://bucket/prefix``.

Both kinds guarantee that nothing half-written looks complete:

- local: shards and ``index.json`` are written to a hidden sibling folder ``.NAME.partial`` which is
  renamed to ``NAME`` once the manifest is in it. A killed conversion leaves only that hidden folder,
  which the next conversion to the same place removes.
- S3: shards are uploaded while they are written, ``index.json`` only after every shard upload has
  finished, ``manifest.json`` last. A failed conversion deletes what it uploaded; a killed one leaves
  shards without an index, which ``--overwrite`` clears.

S3 access uses the standard settings, read from the environment by boto3 and mosaicml-streaming alike:
``S3_ENDPOINT_URL`` (unset: AWS), ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``,
``AWS_DEFAULT_REGION``. Messages name the setting at fault, never its secret value.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import urllib.parse
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

from converters.errors import ConversionError
from converters.manifest import INDEX_NAME, MANIFEST_NAME
from pike_stream.storage.client import explain_client_error, s3_client
from pike_stream.storage.settings import S3Settings, StorageError

__all__ = ["Destination", "LocalDestination", "S3Destination", "open_destination"]


class Destination(ABC):
    """A domain folder being written, or read by ``merge``."""

    url: str

    @abstractmethod
    def check(self) -> None:
        """Check the location exists and can be reached (for S3: endpoint, credentials, bucket)."""

    @abstractmethod
    def prepare(self, overwrite: bool) -> None:
        """Check the location can be written, and is empty unless ``overwrite`` (then clear it)."""

    @abstractmethod
    def writer_out(self) -> str | tuple[str, str]:
        """The ``out`` argument for streaming's ``MDSWriter``."""

    @abstractmethod
    def commit(self, manifest: dict[str, Any]) -> None:
        """Publish the manifest once shards and index are in place; the domain is then complete."""

    @abstractmethod
    def abort(self) -> None:
        """Remove what a failed conversion wrote (the caller has stopped all writing)."""

    @abstractmethod
    def child(self, name: str) -> Destination:
        """The sub-folder ``name``."""

    @abstractmethod
    def folders(self) -> list[str]:
        """Names of the immediate sub-folders."""

    @abstractmethod
    def read_json(self, name: str) -> Any | None:
        """The JSON file ``name`` in this folder, or None if absent."""

    @abstractmethod
    def write_json(self, name: str, obj: Any) -> None:
        """Write ``obj`` as the JSON file ``name`` in this folder."""

    @abstractmethod
    def remove(self, name: str) -> None:
        """Delete the file ``name`` in this folder if present."""

    @abstractmethod
    def file_url(self, name: str) -> str:
        """Path or URL of the file ``name`` in this folder."""


def open_destination(out: str | os.PathLike[str]) -> Destination:
    """A local folder, or an S3 prefix for ``s3://bucket/prefix``."""
    text = os.fspath(out)
    if text.startswith("s3://"):
        return S3Destination(text)
    if "://" in text:
        raise ConversionError(f"output {text}: only local folders and s3:// URLs are supported")
    return LocalDestination(Path(text))


class LocalDestination(Destination):
    """A local folder, written through a hidden staging sibling and renamed into place."""

    def __init__(self, path: Path) -> None:
        self.path = path.absolute()
        self.url = str(path)
        self.staging = self.path.parent / f".{self.path.name}.partial"

    def check(self) -> None:
        if not self.path.is_dir():
            raise ConversionError(f"{self.path} is not a folder")

    def prepare(self, overwrite: bool) -> None:
        if self.path.exists() and not self.path.is_dir():
            raise ConversionError(f"output {self.path} is a file, not a folder")
        if self.path.is_dir() and any(self.path.iterdir()) and not overwrite:
            raise ConversionError(f"output {self.path} is not empty; pass --overwrite to replace it")
        shutil.rmtree(self.staging, ignore_errors=True)  # left by an interrupted conversion
        self.staging.parent.mkdir(parents=True, exist_ok=True)

    def writer_out(self) -> str:
        return str(self.staging)

    def commit(self, manifest: dict[str, Any]) -> None:
        _write_json_file(self.staging / MANIFEST_NAME, manifest)
        if self.path.exists():
            shutil.rmtree(self.path)
        os.replace(self.staging, self.path)

    def abort(self) -> None:
        shutil.rmtree(self.staging, ignore_errors=True)

    def child(self, name: str) -> LocalDestination:
        return LocalDestination(self.path / name)

    def folders(self) -> list[str]:
        if not self.path.is_dir():
            raise ConversionError(f"{self.path} does not exist")
        return sorted(p.name for p in self.path.iterdir() if p.is_dir())

    def read_json(self, name: str) -> Any | None:
        file = self.path / name
        if not file.exists():
            return None
        try:
            return json.loads(file.read_text())
        except json.JSONDecodeError as exc:
            raise ConversionError(f"{file}: invalid JSON ({exc})") from None

    def write_json(self, name: str, obj: Any) -> None:
        _write_json_file(self.path / name, obj)

    def remove(self, name: str) -> None:
        (self.path / name).unlink(missing_ok=True)

    def file_url(self, name: str) -> str:
        return str(self.path / name)


def _write_json_file(path: Path, obj: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1, sort_keys=True) + "\n")
    os.replace(tmp, path)


class S3Destination(Destination):
    """An ``s3://bucket/prefix`` on the endpoint the environment names."""

    def __init__(self, url: str) -> None:
        parsed = urllib.parse.urlparse(url)
        if not parsed.netloc:
            raise ConversionError(f"output {url}: expected s3://bucket/prefix")
        self.bucket = parsed.netloc
        self.key = parsed.path.strip("/")
        self.url = f"s3://{self.bucket}/{self.key}" if self.key else f"s3://{self.bucket}"
        self._client: Any = None
        self._local: str | None = None

    @property
    def client(self) -> Any:
        if self._client is None:
            self._client = _s3_client()
        return self._client

    def _object(self, name: str) -> str:
        return f"{self.key}/{name}" if self.key else name

    def check(self) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self.client.head_bucket(Bucket=self.bucket)
        except (BotoCoreError, ClientError) as exc:
            raise _explain(exc, self.url, self.bucket, "HeadBucket") from None

    def prepare(self, overwrite: bool) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        self.check()
        try:
            listed = self.client.list_objects_v2(Bucket=self.bucket, Prefix=self._object(""), MaxKeys=1)
        except (BotoCoreError, ClientError) as exc:
            raise _explain(exc, self.url, self.bucket, "ListObjectsV2") from None
        if listed.get("KeyCount", 0):
            if not overwrite:
                raise ConversionError(f"output {self.url} is not empty; pass --overwrite to replace it")
            self._delete_all()

    def writer_out(self) -> tuple[str, str]:
        self._local = tempfile.mkdtemp(prefix="pike-convert-")
        return self._local, self.url

    def commit(self, manifest: dict[str, Any]) -> None:
        self.write_json(MANIFEST_NAME, manifest)
        self._drop_local()

    def abort(self) -> None:
        self._drop_local()
        try:
            self._delete_all()
        except Exception as exc:  # the original failure matters more than this clean-up
            print(f"warning: could not remove the partial upload at {self.url}: {exc}", file=sys.stderr)

    def _drop_local(self) -> None:
        if self._local:
            shutil.rmtree(self._local, ignore_errors=True)
            self._local = None

    def _delete_all(self) -> None:
        """Delete every object under the prefix, the index and manifest first."""
        for name in (MANIFEST_NAME, INDEX_NAME):
            self.client.delete_object(Bucket=self.bucket, Key=self._object(name))
        paginator = self.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=self._object("")):
            keys = [{"Key": obj["Key"]} for obj in page.get("Contents", [])]
            if keys:
                self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": keys, "Quiet": True})

    def child(self, name: str) -> S3Destination:
        child = S3Destination(f"{self.url}/{name}")
        child._client = self._client
        return child

    def folders(self) -> list[str]:
        prefix = self._object("")
        names: list[str] = []
        paginator = self.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix, Delimiter="/"):
            names += [p["Prefix"][len(prefix):].rstrip("/") for p in page.get("CommonPrefixes", [])]
        return sorted(names)

    def read_json(self, name: str) -> Any | None:
        try:
            body = self.client.get_object(Bucket=self.bucket, Key=self._object(name))["Body"].read()
        except self.client.exceptions.NoSuchKey:
            return None
        try:
            return json.loads(body)
        except json.JSONDecodeError as exc:
            raise ConversionError(f"{self.file_url(name)}: invalid JSON ({exc})") from None

    def write_json(self, name: str, obj: Any) -> None:
        body = (json.dumps(obj, indent=1, sort_keys=True) + "\n").encode()
        self.client.put_object(Bucket=self.bucket, Key=self._object(name), Body=body,
                               ContentType="application/json")

    def remove(self, name: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=self._object(name))

    def file_url(self, name: str) -> str:
        return f"{self.url}/{name}"


def _s3_client() -> Any:
    """The library's S3 client for the environment's settings, with the conversion's timeouts."""
    try:
        return s3_client(S3Settings.from_env(), timeout_s=60.0, connect_timeout_s=10.0, max_attempts=3)
    except StorageError as exc:
        raise ConversionError(str(exc)) from None


def _explain(exc: Exception, url: str, bucket: str, operation: str) -> ConversionError:
    """The library's message for an S3 failure, naming the setting to fix, as a :class:`ConversionError`."""
    return ConversionError(str(explain_client_error(exc, S3Settings.from_env(), bucket, operation, url=url)))
