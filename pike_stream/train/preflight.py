"""The checks of a run that need neither Composer nor torch: its run folder and its storage.

:func:`pike_stream.train.builder.build_trainer` runs :func:`check_run_folder` and :func:`prepare_storage`
first; ``pike-stream train`` runs them, and :func:`check_domains`, before it imports Composer, so a wrong
endpoint, key, bucket, domain location or a reused run name is answered in seconds.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict
from typing import Any
from urllib.parse import urlparse

from pike_stream.storage import S3Settings, check_access, ensure_storage, s3_client
from pike_stream.storage.client import explain_client_error
from pike_stream.train.config import ConfigError, DomainConfig, TrainConfig

__all__ = ["CONFIG_FILENAME", "check_domains", "check_run_folder", "prepare_storage"]

MANIFEST_NAME = "manifest.json"  # what `pike-stream convert` writes last: a domain without it is not complete

log = logging.getLogger(__name__)


def _s3_buckets(cfg: TrainConfig) -> tuple[set[str], str | None]:
    """Buckets the domains are read from, and the bucket checkpoints are written to (if on S3)."""
    domains = cfg.train_loader.domains + (cfg.eval_loader.domains if cfg.eval_loader else [])
    read = {urlparse(d.remote).netloc for d in domains if d.remote and d.remote.startswith("s3://")}
    if cfg.load_path and cfg.load_path.startswith("s3://"):
        read.add(urlparse(cfg.load_path).netloc)
    save = urlparse(cfg.save_folder).netloc if cfg.save_folder and cfg.save_folder.startswith("s3://") else None
    return read, save


def prepare_storage(cfg: TrainConfig) -> None:
    """Make every ``s3://`` location of the run usable, or fail naming the bucket and what to fix.

    With ``S3_ENDPOINT_URL`` unset and any ``s3://`` location in the config, the embedded S3 server is
    started (or the running one reused) first. A local ``save_folder`` is created and checked writable.
    """
    read, save = _s3_buckets(cfg)
    if read or save:
        settings = ensure_storage()
        if int(os.environ.get("LOCAL_RANK", "0")) == 0:  # Composer's launcher sets it
            for bucket in sorted(read - {save}):
                check_access(settings, bucket)
            if save:
                check_access(settings, save, write=True)
        log.info("S3 endpoint: %s", S3Settings.from_env().endpoint_url or "AWS S3")
    folder = cfg.save_folder
    if folder and "://" not in folder:
        folder = folder.format(run_name=cfg.run_name)
        try:
            os.makedirs(folder, exist_ok=True)
        except OSError as error:
            raise ConfigError(f"save_folder: cannot create {folder}: {error.strerror}") from error
        if not os.access(folder, os.W_OK):
            raise ConfigError(f"save_folder: {folder} is not writable")


def _domain_entries(cfg: TrainConfig) -> list[tuple[str, DomainConfig]]:
    entries = [(f"train_loader.domains.{i}", d) for i, d in enumerate(cfg.train_loader.domains)]
    if cfg.eval_loader is not None:
        entries += [(f"eval_loader.domains.{i}", d) for i, d in enumerate(cfg.eval_loader.domains)]
    return entries


def check_domains(cfg: TrainConfig) -> None:
    """Every domain's ``manifest.json`` is where the config says (``remote``/``split`` on S3, or ``local``),
    or a :class:`ConfigError` naming the domain, the key and the place looked at.

    Only existence is checked here (one request per domain), after :func:`prepare_storage`; the mixer
    checks the contents."""
    if int(os.environ.get("LOCAL_RANK", "0")) != 0:
        return
    settings = None
    for key, domain in _domain_entries(cfg):
        split = [domain.split] if domain.split else []
        if domain.remote and domain.remote.startswith("s3://"):
            where = urlparse(domain.remote)
            bucket = where.netloc
            object_key = "/".join([p for p in where.path.strip("/").split("/") if p] + split + [MANIFEST_NAME])
            settings = settings or S3Settings.from_env()
            try:
                s3_client(settings, timeout_s=10.0, max_attempts=2).head_object(Bucket=bucket, Key=object_key)
            except Exception as error:  # noqa: BLE001 - classified below
                code = str(getattr(error, "response", {}).get("Error", {}).get("Code", ""))
                if code in ("404", "NoSuchKey", "NotFound"):
                    raise ConfigError(
                        f"{key} ({domain.name!r}): no domain at s3://{bucket}/{object_key.rsplit('/', 1)[0]} "
                        f"(its {MANIFEST_NAME} is missing): fix `remote`/`split`, or convert the domain there "
                        f"with `pike-stream convert`") from None
                raise explain_client_error(error, settings, bucket, "HeadObject", object_key) from error
        elif not domain.remote and domain.local:
            folder = os.path.join(os.path.expanduser(domain.local), *split)
            if not os.path.exists(os.path.join(folder, MANIFEST_NAME)):
                state = "has no " + MANIFEST_NAME if os.path.isdir(folder) else "does not exist"
                raise ConfigError(f"{key} ({domain.name!r}): the folder {folder} {state}: fix `local`/`split`, "
                                  f"or convert the domain there with `pike-stream convert`")


CONFIG_FILENAME = "config.json"

# The settings that decide what a run computes: a run folder (and the checkpoints of its run_name) holding a
# run trained with other values of these is another run. Everything else may change between reruns: how
# long (max_duration), what is evaluated and logged, where data and checkpoints live, I/O and microbatching.
_RUN_SETTINGS = ("run_name", "seed", "max_seq_len", "global_train_batch_size", "rampup_batch_size", "model",
                 "optimizer", "scheduler", "train_loader.domains", "train_loader.weights",
                 "train_loader.shuffle_algo", "algorithms", "precision")
# What ``train_loader.allow_batch_size_change: true`` and ``allow_domain_changes: true`` let a rerun change.
_BATCH_SETTINGS = ("global_train_batch_size", "rampup_batch_size")
_DOMAIN_SETTINGS = ("train_loader.domains", "train_loader.weights")


_ABSENT = object()


def _settings(saved: dict[str, Any]) -> dict[str, Any]:
    """The run-deciding settings of a config (as ``asdict``/JSON), by dotted key; domains by name and split."""
    flat: dict[str, Any] = {}

    def walk(value: Any, key: str) -> None:
        if isinstance(value, dict) and value:
            for name, item in value.items():
                walk(item, f"{key}.{name}")
        else:
            flat[key] = value

    for key in _RUN_SETTINGS:
        node: Any = saved
        for part in key.split("."):
            node = node.get(part, _ABSENT) if isinstance(node, dict) else _ABSENT
        if node is _ABSENT:
            continue  # a setting this config.json predates
        if key == "train_loader.domains" and isinstance(node, list):
            node = [f"{d.get('name')}" + (f"/{d['split']}" if d.get("split") else "") for d in node
                    if isinstance(d, dict)]
        walk(node, key)
    return flat


def _lookup(flat: dict[str, Any], key: str) -> Any:
    """``flat[key]``, or the value of its nearest parent that is a leaf (``algorithms.pike: null`` for
    ``algorithms.pike.strategy``), or ``_ABSENT``."""
    parts = key.split(".")
    for end in range(len(parts), 0, -1):
        prefix = ".".join(parts[:end])
        if prefix in flat:
            return flat[prefix]
    return _ABSENT


def check_run_folder(cfg: TrainConfig) -> None:
    """Refuse to reuse a run folder whose ``config.json`` describes another run, naming the settings that differ.

    Reusing a ``run_name`` after changing how the run trains (the learning rate, the model, the batch, the
    mixing, …) would resume or overwrite the earlier run with settings it was not trained with. Allowed: a
    folder without ``config.json``, settings that do not change the run (``max_duration``, evaluation,
    logging, locations), the batch size with ``train_loader.allow_batch_size_change: true``, the domains with
    ``train_loader.allow_domain_changes: true``, and any change
    with ``save_overwrite: true``.
    """
    path = os.path.join(cfg.resolved_run_folder, CONFIG_FILENAME)
    if cfg.save_overwrite or not os.path.exists(path):
        return
    try:
        with open(path) as f:
            saved = json.load(f)
    except (OSError, ValueError):
        return  # unreadable: nothing to compare with; it is rewritten when this run is built
    if not isinstance(saved, dict):
        return
    before, now = _settings(saved), _settings(json.loads(json.dumps(asdict(cfg))))
    changed = {}
    for key in [*now, *(k for k in before if k not in now)]:
        old, new = _lookup(before, key), _lookup(now, key)
        if cfg.train_loader.allow_batch_size_change and key.split(".")[0] in _BATCH_SETTINGS:
            continue
        if cfg.train_loader.allow_domain_changes and key.startswith(_DOMAIN_SETTINGS):
            continue
        if old is not _ABSENT and new is not _ABSENT and old != new:  # absent: a setting one version lacks
            changed[key] = (old, new)
    if changed:
        shown = ", ".join(f"{key} ({old!r} → {new!r})" for key, (old, new) in list(changed.items())[:4])
        more = f" and {len(changed) - 4} more" if len(changed) > 4 else ""
        raise ConfigError(
            f"run_name {cfg.run_name!r}: the run folder {cfg.resolved_run_folder} holds a run trained with other "
            f"settings: {shown}{more} (see {path}); give a new run_name (e.g. run_name={cfg.run_name}-2) to start "
            f"another run, or save_overwrite=true to go on with the new settings")
