"""The per-domain ``manifest.json``: what a domain folder holds, and a fingerprint of its content.

A manifest sits beside mosaicml-streaming's ``index.json`` and is written after it, so its presence
means the domain is complete::

    {"format": "pike_stream.domain", "version": 1, "domain": "en",
     "documents": 1200, "skipped": {"empty": 3}, "tokens": 4194304, "samples": 32768,
     "dropped_tokens": 77, "input_bytes": 4200000, "seq_len": 128, "dtype": "uint16",
     "tokenizer": {"kind": "bytes", "vocab_size": 258, "eos_id": 256, "pad_id": 257},
     "shards": ["shard.00000.mds.zst", ...], "fingerprint": "<sha256 hex>"}

``tokens`` counts the ids in samples (``samples * seq_len``); ``dropped_tokens`` the ids of the final
partial sequence, which is not written. A part of a split conversion also has
``"part": {"index": i, "count": N}``; a merged domain has ``"parts": N`` and shard names prefixed with
their part folder.

The fingerprint is the SHA-256 of (seq_len, dtype, tokenizer, each shard's uncompressed-data SHA-1 in
order). It changes whenever a sample's content or order changes and is stable otherwise: it does not
depend on the compression, on where the domain is stored or on where the tokenizer folder was.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["MANIFEST_FORMAT", "MANIFEST_VERSION", "MANIFEST_NAME", "INDEX_NAME", "fingerprint",
           "index_shards", "build_manifest", "check_manifest"]

MANIFEST_FORMAT = "pike_stream.domain"
MANIFEST_VERSION = 1
MANIFEST_NAME = "manifest.json"
INDEX_NAME = "index.json"

_REQUIRED = ("domain", "documents", "skipped", "tokens", "samples", "seq_len", "dtype", "tokenizer", "shards",
             "fingerprint")


def fingerprint(seq_len: int, dtype: str, tokenizer: Mapping[str, Any], shard_hashes: Sequence[str]) -> str:
    """SHA-256 hex of the domain's identity. The tokenizer's ``path`` is left out: moving the tokenizer
    folder does not change the data."""
    identity = {"seq_len": seq_len, "dtype": dtype,
                "tokenizer": {k: v for k, v in tokenizer.items() if k != "path"},
                "shards": list(shard_hashes)}
    return hashlib.sha256(json.dumps(identity, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def index_shards(index: Mapping[str, Any], where: str) -> tuple[list[str], list[str]]:
    """(file basenames, uncompressed-data SHA-1s) of the shards of a streaming ``index.json``."""
    names, hashes = [], []
    for shard in index.get("shards", []):
        raw = shard["raw_data"]
        stored = shard.get("zip_data") or raw
        if "sha1" not in raw.get("hashes", {}):
            raise ValueError(f"{where}: shard {stored['basename']} has no sha1 hash (write with hashes=['sha1', …])")
        names.append(stored["basename"])
        hashes.append(raw["hashes"]["sha1"])
    return names, hashes


def build_manifest(*, domain: str, index: Mapping[str, Any], seq_len: int, dtype: str,
                   tokenizer: Mapping[str, Any], documents: int, skipped: Mapping[str, int],
                   dropped_tokens: int, input_bytes: int, where: str,
                   extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The manifest of a domain whose shards ``index`` lists."""
    names, hashes = index_shards(index, where)
    samples = sum(int(shard["samples"]) for shard in index["shards"])
    manifest: dict[str, Any] = {
        "format": MANIFEST_FORMAT, "version": MANIFEST_VERSION, "domain": domain,
        "documents": documents, "skipped": dict(sorted(skipped.items())),
        "tokens": samples * seq_len, "samples": samples, "dropped_tokens": dropped_tokens,
        "input_bytes": input_bytes, "seq_len": seq_len, "dtype": dtype, "tokenizer": dict(tokenizer),
        "shards": names, "fingerprint": fingerprint(seq_len, dtype, tokenizer, hashes),
    }
    manifest.update(extra or {})
    return manifest


def check_manifest(obj: Any, where: str) -> dict[str, Any]:
    """``obj`` if it is a manifest this code understands, else a ValueError naming ``where``."""
    if not isinstance(obj, dict) or obj.get("format") != MANIFEST_FORMAT:
        raise ValueError(f"{where}: not a {MANIFEST_FORMAT} manifest")
    if obj.get("version") != MANIFEST_VERSION:
        raise ValueError(f"{where}: manifest version {obj.get('version')!r}, this code reads {MANIFEST_VERSION}")
    missing = [key for key in _REQUIRED if key not in obj]
    if missing:
        raise ValueError(f"{where}: manifest lacks {', '.join(missing)}")
    return obj
