"""An S3 server of the library's own: SeaweedFS (``weed server -s3``) on 127.0.0.1, data in one folder.

With no S3 service configured the library still speaks the real S3 protocol — to this server — so the
default path and the tests exercise exactly what a cluster run does against a remote bucket.

The data folder holds everything the server needs and nothing else does::

    credentials.json   the generated keys (admin, optionally read-only), mode 0600
    s3-identities.json weed's -s3.config identities, written from credentials.json, mode 0600
    config/            weed's -config_dir: master.toml (one volume per new bucket), security.toml (JWT
                       signing keys) and grpc-*.pem (gRPC mutual TLS), all new at every start
    weed/              volumes, filer metadata, master state
    weed.log           weed's log (rotated once past 20 MB)
    server.json        pid (from the moment weed is spawned), ports and endpoint of the last start
    lock               serializes starts and stops across processes

Every file there is 0600 and every folder 0700 (made so at each start, also where they existed looser;
weed runs with umask 077, so its volumes and its Unix sockets in /tmp are the owner's only too).

Only the S3 port serves data, and only to the keys. The other ports weed opens on 127.0.0.1 are useless
without the files in ``config/``: the master's and the filer's HTTP APIs are off (``-disableHttp``: no
``/dir/assign``, no filer listing, upload or delete); the volume server reads, writes and deletes only
with a JWT signed by ``security.toml``'s keys (``jwt.signing.key``, ``jwt.signing.read.key``; the filer's
``jwt.filer_signing*`` keys are set too); every gRPC port requires a client certificate signed by this
start's own authority (mutual TLS). Not covered: the master's status page and the volume server's
``/status`` show the topology (volume ids and collection, that is bucket, names) to any local process,
and the owner of the folder (or root) can read everything in it.

Choices forced by SeaweedFS's defaults:

* every port — HTTP and gRPC of master, volume, filer, S3 — is chosen from free loopback ports (the
  gRPC default of port+10000 collides between servers), and the Iceberg (8181) and Lance (9101)
  listeners are off, so any number of servers coexist; a restart reuses the last ports when free;
* a new bucket is a new collection, which by default grows 7 volumes against a default limit of 8:
  ``master.toml`` grows one at a time and ``-volume.max`` is high (volumes are not preallocated);
* the master's raft election timeout is 0.3 s instead of 10 s, so a restarted master leads before the
  volume server's first heartbeat (a missed one costs 5 s more); startup takes ~3–5 s, at worst ~9 s;
* a restarted server is ready only once one stored object of each bucket reads back: S3 answers before the
  filer knows where the volumes are, and reads in between fail with InternalError;
* the environment weed sees has no ``AWS_*``/``S3_*``/``WEED_*`` variables (weed would adopt them as
  identities or settings) and ``HOME`` is the data folder (no per-user ``~/.seaweedfs`` config);
* on SIGTERM weed drains its filer's gRPC streams for a fixed 15 s, so a graceful stop takes ~16 s.
  ``stop(grace_s=0)`` kills at once: weed writes volumes and its metadata journal straight to the
  files, so every acknowledged write survives a killed process (tested); only a machine crash can
  lose what the operating system had not yet flushed;
* weed puts Unix sockets named after its ports in /tmp; :meth:`EmbeddedS3.stop` removes them.

A start that fails or is interrupted after spawning weed (an exception, Ctrl-C, SIGTERM or SIGHUP with
their default handlers) kills that weed before returning or dying; the pid is in ``server.json`` from
the spawn on, so even a starter killed with SIGKILL leaves a weed that ``pike-stream s3 stop`` finds.

The pieces live beside this module: ``ports.py`` (the eight ports), ``private_files.py`` (0600/0700),
``credentials.py`` (keys and identities), ``weed_config.py`` (``config/``), ``folder_lock.py`` (``lock``),
``state_file.py`` (``server.json``), ``weed_process.py`` (command line, pids, stopping) and
``start_signals.py`` (signals during a start).
"""

from __future__ import annotations

import contextlib
import logging
import os
import string
import subprocess
import time
from contextlib import AbstractContextManager
from pathlib import Path
from types import TracebackType
from typing import Any

import psutil

from pike_stream.storage.client import s3_client
from pike_stream.storage.credentials import load_credentials, write_identities
from pike_stream.storage.folder_lock import folder_lock
from pike_stream.storage.ports import HOST, WeedPorts
from pike_stream.storage.private_files import make_files_private, private_dir
from pike_stream.storage.settings import S3Settings, StorageError, redact
from pike_stream.storage.start_signals import Terminated, signals_blocked, signals_raise
from pike_stream.storage.state_file import STATE_FILE, forget_pid, previous_ports, read_state, write_state
from pike_stream.storage.weed_config import write_weed_config
from pike_stream.storage.weed_process import (
    LOG_FILE,
    WEED_DIR,
    is_weed_of,
    kill_unrecorded,
    pid_alive,
    reap,
    remove_local_sockets,
    rotate_log,
    stop_process,
    volume_server_up,
    weed_binary,
    weed_command,
    weed_env,
)

__all__ = ["EmbeddedS3", "WeedPorts", "validate_bucket_name", "weed_binary"]

log = logging.getLogger(__name__)

_BIND_ATTEMPTS = 3


def validate_bucket_name(name: str) -> str:
    """``name`` if it is a valid S3 bucket name (3–63 of a-z, 0-9, '-', '.'; alphanumeric ends)."""
    allowed = set(string.ascii_lowercase + string.digits + "-.")
    if not (3 <= len(name) <= 63):
        raise StorageError(f"bucket name {name!r} must be 3 to 63 characters long (S3 rule), got {len(name)}")
    if set(name) - allowed or not (name[0].isalnum() and name[-1].isalnum()):
        raise StorageError(
            f"bucket name {name!r} may contain only lowercase letters, digits, '-' and '.', "
            "and must start and end with a letter or digit (S3 rule)"
        )
    return name


class EmbeddedS3:
    """A SeaweedFS S3 server on 127.0.0.1 whose data lives in ``data_dir``.

    ``EmbeddedS3(dir).start()`` (or ``with EmbeddedS3(dir) as s3:``) starts it on free ports and waits
    until it serves S3; :meth:`stop` ends it. The same folder started again serves the same buckets with
    the same keys. ``read_only_identity`` adds a second key that may only read and list.
    :meth:`attach` returns a handle on a server another process started in the folder.
    """

    def __init__(
        self,
        data_dir: str | os.PathLike[str],
        *,
        read_only_identity: bool = False,
        startup_timeout_s: float = 60.0,
    ) -> None:
        self.data_dir = Path(data_dir).expanduser().resolve()
        self.read_only_identity = read_only_identity
        self.startup_timeout_s = startup_timeout_s
        self.ports: WeedPorts | None = None
        self.startup_s: float | None = None
        self._pid: int | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._credentials: dict[str, Any] | None = None
        self._log_offset = 0
        self._children_before_spawn: set[int] = set()

    # ------------------------------------------------------------------ paths and credentials

    @property
    def log_path(self) -> Path:
        """weed's log file (stdout and stderr of the server process)."""
        return self.data_dir / LOG_FILE

    @property
    def state_path(self) -> Path:
        """The file describing the last start (pid while running, ports, endpoint)."""
        return self.data_dir / STATE_FILE

    def _load_credentials(self) -> dict[str, Any]:
        """The folder's keys, generated (and saved 0600) the first time they are needed."""
        if self._credentials is not None and (not self.read_only_identity or "read_only" in self._credentials):
            return self._credentials
        self._credentials = load_credentials(self.data_dir, read_only_identity=self.read_only_identity)
        return self._credentials

    def _settings_for(self, identity: str) -> S3Settings:
        endpoint_url = self.endpoint_url
        pair = self._load_credentials()[identity]
        return S3Settings(endpoint_url, pair["access_key_id"], pair["secret_access_key"])

    @property
    def endpoint_url(self) -> str:
        """``http://127.0.0.1:<s3 port>``; only known once started or attached."""
        if self.ports is None:
            raise StorageError(f"the embedded S3 server in {self.data_dir} is not running: start() it first")
        return f"http://{HOST}:{self.ports.s3}"

    @property
    def settings(self) -> S3Settings:
        """Endpoint and admin key (read, write, create buckets)."""
        return self._settings_for("admin")

    @property
    def read_only_settings(self) -> S3Settings:
        """Endpoint and the read/list-only key; needs ``read_only_identity=True``."""
        if not self.read_only_identity:
            raise StorageError("this EmbeddedS3 was created without read_only_identity=True: it has no read-only key")
        return self._settings_for("read_only")

    def env(self) -> dict[str, str]:
        """``S3_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_DEFAULT_REGION``."""
        return self.settings.as_env()

    @property
    def pid(self) -> int | None:
        """The weed process id while running (ours or attached), else None."""
        return self._pid

    @property
    def running(self) -> bool:
        """Whether the weed process is alive."""
        if self._proc is not None:
            return self._proc.poll() is None
        return self._pid is not None and pid_alive(self._pid)

    # ------------------------------------------------------------------ locking and state

    def lock(self) -> AbstractContextManager[None]:
        """Hold the folder's lock, so one process (and one thread) at a time starts or stops its server.

        An ``flock`` on ``lock`` in the folder between processes, a per-folder RLock between threads;
        re-entrant, so :meth:`start` and :meth:`stop` may run inside a caller's ``with server.lock():``.
        """
        return folder_lock(self.data_dir)

    @classmethod
    def attach(cls, data_dir: str | os.PathLike[str], *, check_s3: bool = True) -> EmbeddedS3 | None:
        """A handle on the server running in ``data_dir`` (started by any process), or None if none is.

        Running means: ``server.json`` names a live weed process for this folder and, with ``check_s3``,
        its S3 endpoint answers with the folder's admin key.
        """
        server = cls(data_dir)
        state = read_state(server.state_path)
        if state is None:
            return None
        try:
            pid, ports = int(state["pid"]), WeedPorts(**state["ports"])
        except (TypeError, KeyError, ValueError):
            return None
        if not is_weed_of(pid, server.data_dir):
            return None
        server._pid, server.ports = pid, ports
        server.read_only_identity = bool(state.get("read_only_identity", False))
        if check_s3 and not server._answers_s3():
            return None
        return server

    # ------------------------------------------------------------------ start

    def start(self) -> EmbeddedS3:
        """Start weed on free ports and wait until S3 answers (a few seconds); returns ``self``.

        Raises :class:`StorageError` if a server already runs in the folder, or if weed exits or is not
        ready within ``startup_timeout_s`` (the message ends with the tail of ``weed.log``).
        """
        with self.lock():
            self._start()
        return self

    def _start(self) -> None:
        if self.running:
            raise StorageError(f"the embedded S3 server in {self.data_dir} is already running (pid {self._pid})")
        other = EmbeddedS3.attach(self.data_dir, check_s3=False)
        if other is not None:
            raise StorageError(
                f"an embedded S3 server already runs in {self.data_dir} (pid {other.pid}, {other.endpoint_url}); "
                "use EmbeddedS3.attach() or `pike-stream s3 stop` first"
            )
        self._prepare_files()
        previous = previous_ports(self.state_path)
        began = time.monotonic()
        with signals_raise():
            try:
                for attempt in range(_BIND_ATTEMPTS):
                    # The ports of the last start, if free, keep weed's master state (a folder per master port).
                    self.ports = previous if attempt == 0 and previous is not None and previous.all_free() else None
                    self.ports = self.ports or WeedPorts.pick_free()
                    self._spawn()
                    try:
                        self._wait_ready(began + self.startup_timeout_s)
                        break
                    except _PortTaken:
                        if attempt == _BIND_ATTEMPTS - 1:
                            raise StorageError(
                                f"weed could not bind its ports after {_BIND_ATTEMPTS} tries; see {self.log_path}"
                            ) from None
                self.startup_s = time.monotonic() - began
                self._write_state(starting=False)
            except BaseException as exc:
                # Whatever stopped the start (weed's failure, Ctrl-C, a signal, a bug): no weed may outlive it.
                pid = self._pid
                with signals_blocked(), contextlib.suppress(Exception):
                    self._stop(grace_s=0.0)
                    pid = kill_unrecorded(self._children_before_spawn, self.data_dir) or pid
                if not isinstance(exc, StorageError) and pid is not None:
                    log.warning(
                        "start of the embedded S3 server in %s interrupted (%s): killed weed (pid %s)",
                        self.data_dir,
                        type(exc).__name__ if not isinstance(exc, Terminated) else exc,
                        pid,
                    )
                raise

    def _prepare_files(self) -> None:
        private_dir(self.data_dir)
        private_dir(self.data_dir / WEED_DIR)
        config = write_weed_config(self.data_dir)
        write_identities(self.data_dir, self._load_credentials(), read_only_identity=self.read_only_identity)
        rotate_log(self.log_path)
        make_files_private(self.data_dir, config)

    def _spawn(self) -> None:
        assert self.ports is not None
        env = weed_env(self.data_dir)
        self._log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        fd = os.open(self.log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        with os.fdopen(fd, "ab") as log_file:
            log_file.write(f"--- pike_stream: starting weed on {HOST}, S3 port {self.ports.s3} ---\n".encode())
            log_file.flush()
            self._children_before_spawn = {child.pid for child in psutil.Process().children()}
            self._proc = subprocess.Popen(
                weed_command(self.data_dir, self.ports),
                cwd=self.data_dir,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # a Ctrl-C in the terminal must not kill a server meant to outlive us
                umask=0o077,  # whatever weed creates (volumes, metadata, its /tmp sockets) is the owner's only
            )
            self._pid = self._proc.pid
        # Recorded at once: if this process dies before the start completes, `stop` still finds weed.
        self._write_state(starting=True)

    def _probe_client(self) -> Any:
        """A client that fails fast, for asking whether the server answers."""
        return s3_client(self.settings, timeout_s=2.0, max_attempts=1)

    def _answers_s3(self, client: Any = None) -> bool:
        """Whether the S3 endpoint answers a signed request with the admin key."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            (client or self._probe_client()).list_buckets()
        except (BotoCoreError, ClientError):
            return False
        return True

    def _wait_ready(self, deadline: float) -> None:
        assert self._proc is not None and self.ports is not None
        client = self._probe_client()
        while True:
            code = self._proc.poll()
            if code is not None:
                tail = self.log_tail(since_start=True)
                self._stop(grace_s=0.0)
                if "address already in use" in tail:
                    raise _PortTaken()
                raise StorageError(
                    f"the embedded S3 server (weed) exited with code {code} while starting in {self.data_dir}; "
                    f"last lines of {self.log_path}:\n{tail}"
                )
            # The deadline first: a server is ready within the timeout only if a probe before it says so.
            if time.monotonic() > deadline:
                message = (
                    f"the embedded S3 server in {self.data_dir} did not answer on {self.endpoint_url} within "
                    f"{self.startup_timeout_s:g} s; last lines of {self.log_path}:\n{self.log_tail(since_start=True)}"
                )
                self._stop(grace_s=0.0)
                raise StorageError(message)
            if self._answers_s3(client) and volume_server_up(self.ports) and self._reads_stored_objects(client):
                return
            time.sleep(0.1)

    def _reads_stored_objects(self, client: Any) -> bool:
        """Whether one stored object of each bucket (its first byte) can be read. After a restart, S3 and the
        volume server can answer before the filer knows where the volumes are; a read then fails with
        InternalError for a while (seen under load), so the server is not ready yet."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            for bucket in client.list_buckets().get("Buckets", []):
                listing = client.list_objects_v2(Bucket=bucket["Name"], MaxKeys=20).get("Contents", [])
                stored = next((item["Key"] for item in listing if item.get("Size", 0) > 0), None)
                if stored is not None:
                    client.get_object(Bucket=bucket["Name"], Key=stored, Range="bytes=0-0")["Body"].read()
        except (BotoCoreError, ClientError):
            return False
        return True

    def _write_state(self, *, starting: bool) -> None:
        assert self.ports is not None and self._pid is not None
        write_state(
            self.state_path,
            pid=self._pid,
            starting=starting,
            ports=self.ports,
            endpoint_url=self.endpoint_url,
            read_only_identity=self.read_only_identity,
        )

    def log_tail(self, lines: int = 30, *, since_start: bool = False) -> str:
        """The last ``lines`` lines of weed's log (of this start only, with ``since_start``), secrets removed."""
        try:
            with open(self.log_path, "rb") as f:
                if since_start:
                    f.seek(self._log_offset)
                text = f.read().decode(errors="replace")
        except OSError:
            return "(no log)"
        keys = [pair["secret_access_key"] for pair in (self._credentials or {}).values() if isinstance(pair, dict)]
        return redact("\n".join(text.splitlines()[-lines:]), keys)

    # ------------------------------------------------------------------ buckets

    def create_bucket(self, name: str) -> None:
        """Create bucket ``name`` (no error if this server already has it)."""
        from botocore.exceptions import BotoCoreError, ClientError

        from pike_stream.storage.client import explain_client_error

        validate_bucket_name(name)
        client = s3_client(self.settings)
        try:
            client.create_bucket(Bucket=name)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                raise explain_client_error(exc, self.settings, name, "CreateBucket") from exc
        except BotoCoreError as exc:
            raise explain_client_error(exc, self.settings, name, "CreateBucket") from exc

    def list_buckets(self) -> list[str]:
        """The names of this server's buckets."""
        return sorted(bucket["Name"] for bucket in s3_client(self.settings).list_buckets().get("Buckets", []))

    # ------------------------------------------------------------------ stop

    def stop(self, grace_s: float = 20.0) -> int | None:
        """Stop the server: SIGTERM, up to ``grace_s`` seconds to exit (weed needs ~16), then SIGKILL.

        Works on a server this object started or attached to; a no-op if it is not running. Returns
        weed's exit status when this object started it (0: it shut down cleanly; -9: it was killed),
        else None. ``grace_s=0`` kills at once, which loses no acknowledged write (see the module notes).
        """
        with self.lock():
            return self._stop(grace_s)

    def _stop(self, grace_s: float) -> int | None:
        if self._pid is None:
            return None
        if self.running:
            stop_process(self._proc, self._pid, grace_s)
        reap(self._proc)
        forget_pid(self.state_path, self._pid)
        if self.ports is not None:
            remove_local_sockets(self.ports)
        status = self._proc.returncode if self._proc is not None else None
        self._pid = None
        self._proc = None
        return status

    # ------------------------------------------------------------------ context manager

    def __enter__(self) -> EmbeddedS3:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        where = self.endpoint_url if self.ports is not None else "not started"
        return f"EmbeddedS3({str(self.data_dir)!r}, {where}, pid={self._pid})"


class _PortTaken(Exception):
    """weed lost a race for one of its freshly chosen ports; start again on new ones."""
