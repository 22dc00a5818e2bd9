"""A checkpoint whose bytes changed is refused before Composer loads it.

``torch.load`` does not check the CRC-32 that ``torch.save`` writes for every record of its zip archive: a
checkpoint with flipped bytes (a bad disk, a bad transfer, an object damaged in the bucket) loads silently
with wrong weights or optimizer state. Composer calls the function named by its
``CHECKPOINT_VALIDATION_FUNCTION`` environment variable on every checkpoint file it loads, local or
downloaded; :func:`verify_checkpoint` is that function. It reads the file once (as ``torch.load`` then does).
Composer passes it the temporary copy it made; the error names the checkpoint the user gave or autoresume
found (its path or ``s3://`` URI) instead.
"""

from __future__ import annotations

import logging
import os
import zipfile
import zlib
from pathlib import Path

from pike_stream.train.composer_compat import CHECKPOINT_VALIDATION_VARIABLE, checkpoint_being_loaded

__all__ = ["VERIFIER", "CorruptCheckpointError", "use_checkpoint_verification",
           "verify_checkpoint"]

log = logging.getLogger(__name__)

VERIFIER = f"{__name__}.verify_checkpoint"


class CorruptCheckpointError(ValueError):
    """A checkpoint file's bytes differ from those its writer recorded: nothing of it was loaded."""

    def __init__(self, path: str, record: str) -> None:
        self.path, self.record = path, record
        super().__init__(f"checkpoint {path} is corrupt: its record {record} fails the CRC-32 check "
                         "torch.save wrote for it (bytes changed on disk, in the bucket or in transfer); nothing was "
                         "loaded or trained. Restore an intact copy, or resume from an earlier checkpoint: "
                         "load_path=<its path> autoresume=false save_overwrite=true")

    def naming(self, source: str) -> CorruptCheckpointError:
        """The same error, naming where the checkpoint was loaded from (a URI) instead of its local copy."""
        return CorruptCheckpointError(source, self.record)


def verify_checkpoint(path: str | Path, specs: list[tuple[int, int]] | None = None) -> bool:
    """Composer's checkpoint validation function: True, or :class:`CorruptCheckpointError` naming the checkpoint
    (the one Composer is loading, else ``path``) and the first record whose bytes fail their CRC-32. A file that
    is not a zip archive (a legacy or tar checkpoint) is left to the loader. ``specs`` (byte ranges Composer may
    ask about) is not needed: every record is read."""
    del specs
    path = str(path)
    if not zipfile.is_zipfile(path):
        return True
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, EOFError, zlib.error) as error:  # a damaged record header or stream
        raise CorruptCheckpointError(checkpoint_being_loaded() or path, f"({error})") from error
    if bad is not None:
        raise CorruptCheckpointError(checkpoint_being_loaded() or path, bad)
    return True


def use_checkpoint_verification() -> bool:
    """Have Composer call :func:`verify_checkpoint` on every checkpoint it loads in this process (and its
    children). A validation function the user set is kept (with a log line); returns whether ours is used."""
    current = os.environ.setdefault(CHECKPOINT_VALIDATION_VARIABLE, VERIFIER)
    if current != VERIFIER:
        log.info("%s=%s is set: checkpoints are checked by it, not by %s", CHECKPOINT_VALIDATION_VARIABLE, current,
                 VERIFIER)
        return False
    return True
