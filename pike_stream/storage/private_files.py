"""Owner-only files and folders: files written 0600 (atomically), folders made 0700, looser modes tightened."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from pike_stream.storage.settings import StorageError


def write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` readable by the owner only (created 0600, then renamed into place)."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


def chmod_private(path: Path, mode: int) -> None:
    """Set ``path``'s mode to ``mode`` (0600/0700), or fail naming the file."""
    try:
        if stat.S_IMODE(path.stat().st_mode) != mode:
            os.chmod(path, mode)
    except OSError as exc:
        raise StorageError(f"cannot make {path} private (mode {mode:04o}): {exc.strerror or exc}") from exc


def private_dir(path: Path) -> Path:
    """``path``, created if missing, with mode 0700 (also if it existed with a looser mode)."""
    try:
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError as exc:
        raise StorageError(f"cannot create the folder {path}: {exc.strerror or exc}") from exc
    chmod_private(path, 0o700)
    return path


def make_files_private(*folders: Path) -> None:
    """Make every file directly in ``folders`` 0600 (symlinks aside): files of earlier versions or made by
    hand may not stay readable by others."""
    for folder in folders:
        for path in folder.iterdir():
            if path.is_file() and not path.is_symlink():
                chmod_private(path, 0o600)
