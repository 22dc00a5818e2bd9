"""``server.json``: the pid (from the moment weed is spawned), ports and endpoint of a folder's last start."""

from __future__ import annotations

import contextlib
import json
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from pike_stream.storage.ports import WeedPorts
from pike_stream.storage.private_files import write_private

STATE_FILE = "server.json"
STATE_VERSION = 1


def read_state(path: Path) -> dict[str, Any] | None:
    """The state in ``path``, or None if there is none (or it is unreadable, or of another version)."""
    try:
        state = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return state if isinstance(state, dict) and state.get("version") == STATE_VERSION else None


def write_state(
    path: Path, *, pid: int, starting: bool, ports: WeedPorts, endpoint_url: str, read_only_identity: bool
) -> None:
    """Record a start (0600): weed's pid, whether it is still starting, its ports and S3 endpoint."""
    state = {
        "version": STATE_VERSION,
        "pid": pid,
        "starting": starting,
        "ports": asdict(ports),
        "endpoint_url": endpoint_url,
        "read_only_identity": read_only_identity,
        "started_at": time.time(),
    }
    write_private(path, json.dumps(state, indent=2) + "\n")


def forget_pid(path: Path, pid: int) -> None:
    """Record that weed ``pid`` is gone, if the state still names it."""
    state = read_state(path)
    if state is not None and state.get("pid") == pid:
        # Keep the ports: the next start reuses them if free, and with them weed's master state.
        state["pid"] = None
        write_private(path, json.dumps(state, indent=2) + "\n")


def previous_ports(path: Path) -> WeedPorts | None:
    """The ports of the last start recorded in ``path``, if any."""
    state = read_state(path)
    with contextlib.suppress(KeyError, TypeError):
        return WeedPorts(**state["ports"]) if state else None
    return None
