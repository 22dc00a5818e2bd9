"""Corpus → tokenized, packed MDS shards with a per-domain manifest; stands alone from training.

    convert(source, out, domain=…, seq_len=…)   one domain folder (local or s3://)   converters.conversion
    merge_parts(out)                            join the parts of a --part i/N run   converters.merge
    pike-stream corpus build|convert            the benchmark corpus                 converters.corpus

Names are imported on first use, so that tokenizing worker processes, which import this package, do not
pay for importing mosaicml-streaming (and torch).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # what __getattr__ returns, for type checkers
    from converters.conversion import convert
    from converters.errors import ConversionError, SkippedDocumentsWarning
    from converters.merge import merge_parts

__all__ = ["convert", "merge_parts", "ConversionError", "SkippedDocumentsWarning"]

_HOMES = {"convert": "converters.conversion", "merge_parts": "converters.merge",
          "ConversionError": "converters.errors", "SkippedDocumentsWarning": "converters.errors"}


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module 'converters' has no attribute {name!r}")
    return getattr(importlib.import_module(_HOMES[name]), name)
