"""The data folder's S3 keys (``credentials.json``) and weed's identities made from them (``s3-identities.json``)."""

from __future__ import annotations

import json
import secrets
import string
from pathlib import Path
from typing import Any

from pike_stream.storage.private_files import private_dir, write_private
from pike_stream.storage.settings import StorageError

CREDENTIALS_FILE = "credentials.json"
CREDENTIALS_VERSION = 1
IDENTITIES_FILE = "s3-identities.json"

_ADMIN_ACTIONS = ["Admin", "Read", "List", "Tagging", "Write"]
_READ_ONLY_ACTIONS = ["Read", "List"]
_KEY_ALPHABET = string.ascii_uppercase + string.digits


def new_key_pair() -> dict[str, str]:
    """A new access key id (``PIKE`` and 16 of A-Z, 0-9) and secret."""
    access = "PIKE" + "".join(secrets.choice(_KEY_ALPHABET) for _ in range(16))
    return {"access_key_id": access, "secret_access_key": secrets.token_urlsafe(30)}


def load_credentials(data_dir: Path, *, read_only_identity: bool) -> dict[str, Any]:
    """The folder's keys, generated (and saved 0600) the first time they are needed: ``admin`` always,
    ``read_only`` once ``read_only_identity`` asks for it."""
    path = data_dir / CREDENTIALS_FILE
    credentials: dict[str, Any] = {}
    if path.exists():
        try:
            credentials = json.loads(path.read_text())
            if not isinstance(credentials, dict) or credentials.get("version") != CREDENTIALS_VERSION:
                raise ValueError(f"expected an object with version {CREDENTIALS_VERSION}")
            if "admin" not in credentials:
                raise ValueError("no 'admin' key pair")
        except ValueError as exc:
            raise StorageError(
                f"{path} is not a valid credentials file ({exc}); delete it to generate new keys"
            ) from exc
    changed = not credentials
    credentials.setdefault("version", CREDENTIALS_VERSION)
    credentials.setdefault("admin", new_key_pair())
    if read_only_identity and "read_only" not in credentials:
        credentials["read_only"] = new_key_pair()
        changed = True
    if changed:
        private_dir(data_dir)
        write_private(path, json.dumps(credentials, indent=2) + "\n")
    return credentials


def write_identities(data_dir: Path, credentials: dict[str, Any], *, read_only_identity: bool) -> None:
    """weed's ``-s3.config`` (0600): the admin key with every action, the read-only key (if asked for) with
    Read and List."""

    def identity(name: str, pair: dict[str, str], actions: list[str]) -> dict[str, Any]:
        keys = {"accessKey": pair["access_key_id"], "secretKey": pair["secret_access_key"]}
        return {"name": name, "credentials": [keys], "actions": actions}

    identities = [identity("pike_stream_admin", credentials["admin"], _ADMIN_ACTIONS)]
    if read_only_identity:
        identities.append(identity("pike_stream_read_only", credentials["read_only"], _READ_ONLY_ACTIONS))
    write_private(data_dir / IDENTITIES_FILE, json.dumps({"identities": identities}, indent=2) + "\n")
