"""The exception and warning a conversion raises, so callers can tell bad input from a bug."""

from __future__ import annotations

__all__ = ["ConversionError", "SkippedDocumentsWarning"]


class ConversionError(Exception):
    """The input, the options or the output location make the conversion impossible.

    The message names the file (and line, for JSONL), the setting or the location at fault.
    """


class SkippedDocumentsWarning(UserWarning):
    """Some documents were skipped (empty, binary, invalid UTF-8, missing text field); the message names
    the first few of each kind."""
