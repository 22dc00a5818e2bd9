"""The data folder's lock: one process and one thread at a time starts or stops its server (re-entrant)."""

from __future__ import annotations

import contextlib
import fcntl
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from pike_stream.storage.private_files import private_dir

LOCK_FILE = "lock"

# The folder locks this process holds: a thread lock per folder, and the open flock file with its depth.
_LOCKS_GUARD = threading.Lock()
_THREAD_LOCKS: dict[Path, threading.RLock] = {}
_HELD_FLOCKS: dict[Path, tuple[IO[str], int]] = {}


@contextlib.contextmanager
def folder_lock(data_dir: Path) -> Iterator[None]:
    """Hold ``data_dir``'s lock: an ``flock`` on ``lock`` in the folder between processes, a per-folder
    RLock between threads; re-entrant within a thread."""
    with _LOCKS_GUARD:
        thread_lock = _THREAD_LOCKS.setdefault(data_dir, threading.RLock())
    with thread_lock:
        held = _HELD_FLOCKS.get(data_dir)
        if held is None:
            private_dir(data_dir)
            fd = os.open(data_dir / LOCK_FILE, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            lock_file = os.fdopen(fd, "a")  # closed below
            fcntl.flock(lock_file, fcntl.LOCK_EX)
            held = (lock_file, 0)
        _HELD_FLOCKS[data_dir] = (held[0], held[1] + 1)
        try:
            yield
        finally:
            lock_file, depth = _HELD_FLOCKS.pop(data_dir)
            if depth > 1:
                _HELD_FLOCKS[data_dir] = (lock_file, depth - 1)
            else:
                fcntl.flock(lock_file, fcntl.LOCK_UN)
                lock_file.close()
