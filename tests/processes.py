"""The embedded server's processes as the storage tests see them (psutil): the weed processes serving a data
folder, and the TCP ports a process listens on."""

from __future__ import annotations

from pathlib import Path

import psutil

__all__ = ["listening_ports", "weed_pids"]


def weed_pids(data_dir: Path) -> list[int]:
    """The live (not zombie) weed processes serving ``data_dir``."""
    pids = []
    for proc in psutil.process_iter(["cmdline", "status"]):
        args, status = proc.info["cmdline"] or [], proc.info["status"]
        if (status != psutil.STATUS_ZOMBIE and args and Path(args[0]).name == "weed"
                and f"-dir={data_dir / 'weed'}" in args):
            pids.append(proc.pid)
    return pids


def listening_ports(pid: int) -> set[int]:
    """The TCP ports process ``pid`` listens on."""
    return {c.laddr.port for c in psutil.Process(pid).net_connections(kind="tcp") if c.status == psutil.CONN_LISTEN}
