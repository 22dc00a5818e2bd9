"""The library's default storage: the user's S3 endpoint if they named one, else a persistent embedded one.

:func:`ensure_storage` is what training and conversion call before touching ``s3://``. With
``S3_ENDPOINT_URL`` set it changes nothing. Otherwise it reuses the embedded server an earlier command
left running in the user's cache folder, or starts one there, and exports its variables into
``os.environ`` so mosaicml-streaming, Composer and boto3 in this process (and its children) use it.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from pike_stream.home import data_home
from pike_stream.storage.embedded import EmbeddedS3
from pike_stream.storage.settings import ENV_ACCESS_KEY_ID, ENV_ENDPOINT_URL, S3Settings

__all__ = ["default_data_dir", "ensure_storage", "start_or_attach"]

log = logging.getLogger(__name__)

def default_data_dir() -> Path:
    """Where the default embedded server keeps its data: ``s3/`` in the data home
    (:func:`pike_stream.home.data_home`)."""
    return data_home() / "s3"


def start_or_attach(data_dir: str | os.PathLike[str]) -> tuple[EmbeddedS3, bool]:
    """The embedded server of ``data_dir``: the running one, or a newly started one (``True`` second).

    Holds the folder's lock throughout, so processes starting together (the ranks of one job) end up
    sharing one server rather than racing to start several.
    """
    server = EmbeddedS3(data_dir)
    with server.lock():
        running = EmbeddedS3.attach(data_dir)
        if running is not None:
            return running, False
        server.start()
        return server, True


def ensure_storage(data_dir: str | os.PathLike[str] | None = None) -> S3Settings:
    """Make S3 usable and return the settings in force.

    * ``S3_ENDPOINT_URL`` set: use that endpoint, start nothing.
    * ``AWS_ACCESS_KEY_ID`` set without an endpoint: the user means AWS S3 itself; start nothing.
    * otherwise: reuse or start the embedded server in ``data_dir`` (default :func:`default_data_dir`)
      and export its ``S3_ENDPOINT_URL``/``AWS_*`` variables into ``os.environ``.
    """
    settings = S3Settings.from_env()
    if settings.endpoint_url:
        log.info("using S3 endpoint %s from %s", settings.endpoint_url, ENV_ENDPOINT_URL)
        return settings
    if settings.access_key_id:
        log.info("using AWS S3 with the key in %s (no %s set)", ENV_ACCESS_KEY_ID, ENV_ENDPOINT_URL)
        return settings
    folder = Path(data_dir) if data_dir is not None else default_data_dir()
    server, started = start_or_attach(folder)
    if started:
        log.info(
            "started embedded S3 server on %s (pid %s, %.1f s), data in %s",
            server.endpoint_url,
            server.pid,
            server.startup_s,
            server.data_dir,
        )
    else:
        log.info(
            "using the embedded S3 server already running on %s (pid %s), data in %s",
            server.endpoint_url,
            server.pid,
            server.data_dir,
        )
    os.environ.update(server.env())
    return server.settings
