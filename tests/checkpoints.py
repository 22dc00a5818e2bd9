"""Damage done to checkpoints by the tests that check it is found."""

from __future__ import annotations

import io
import zipfile

__all__ = ["flip_a_tensor_byte"]


def flip_a_tensor_byte(data: bytes) -> bytes:
    """``data`` (a torch.save archive) with one byte of its largest tensor record inverted: still a valid zip,
    and ``torch.load`` would load it without a word."""
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        record = max((i for i in archive.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
    start = record.header_offset + 30 + len(record.filename.encode()) + len(record.extra)
    damaged = bytearray(data)
    damaged[start + record.file_size // 2] ^= 0xFF
    return bytes(damaged)
