"""Packing a stream of token ids into fixed-length sequences.

Documents (each already followed by EOS) are concatenated and cut every ``seq_len`` ids, so a sequence
may hold the end of one document and the start of the next, and no id is padding. The ids left after the
last full sequence are dropped: :attr:`Packer.pending` says how many, and conversion reports them as
``dropped_tokens``.
"""

from __future__ import annotations

import numpy as np

__all__ = ["Packer"]


class Packer:
    """Cuts a stream of id arrays into ``(n, seq_len)`` blocks of whole sequences."""

    def __init__(self, seq_len: int, dtype: str) -> None:
        if seq_len < 1:
            raise ValueError(f"seq_len must be at least 1, got {seq_len}")
        self.seq_len = seq_len
        self.dtype = np.dtype(dtype)
        self._carry = np.zeros(0, dtype=self.dtype)

    @property
    def pending(self) -> int:
        """Ids received but not yet part of a full sequence (dropped if the stream ends now)."""
        return len(self._carry)

    def pack(self, ids: np.ndarray) -> np.ndarray:
        """Append ``ids``; return the full sequences they complete, a C-contiguous ``(n, seq_len)`` block."""
        if ids.dtype != self.dtype:
            ids = ids.astype(self.dtype)
        stream = np.concatenate([self._carry, ids]) if len(self._carry) else ids
        full = len(stream) // self.seq_len * self.seq_len
        block = np.ascontiguousarray(stream[:full]).reshape(-1, self.seq_len)
        self._carry = stream[full:].copy()
        return block
