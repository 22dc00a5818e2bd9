"""Synthetic domains for mixer tests: MDS shards whose tokens say which (domain, sample) they are.

Sample ``i`` of a domain with code ``c`` holds ``tokens = [c, i % 1000, i // 1000, 0, …]``, so a test can
check that what the mixer read is the sample it says it read. Written with mosaicml-streaming's MDSWriter in
the layout ``pike-stream convert`` produces (zstd, hashes, ``manifest.json`` with the converters' fingerprint
beside ``index.json``): the first ``n`` samples of a domain are the same whatever its size, so a domain written
again with more samples (a multiple of ``samples_per_shard`` before) has the old shards as a prefix.
"""

from __future__ import annotations

import json
import os

import numpy as np
from streaming import MDSWriter

from converters.manifest import fingerprint, index_shards

__all__ = ["write_domain", "write_domains", "decode_ids"]


def write_domains(root: str, sizes: dict[str, int]) -> str:
    """``root/<name>`` for each domain of ``sizes`` (name → samples), coded by its position; returns ``root``."""
    for code, (name, n) in enumerate(sizes.items()):
        write_domain(os.path.join(root, name), name, n, code=code)
    return root


def write_domain(out: str, name: str, num_samples: int, *, code: int = 0, seq_len: int = 16,
                 samples_per_shard: int = 25) -> str:
    """Write a synthetic domain folder and return it."""
    row_bytes = seq_len * 2 + 8  # payload + per-sample offset bookkeeping
    columns = {"tokens": f"ndarray:uint16:{seq_len}"}
    with MDSWriter(out=out, columns=columns, compression="zstd", hashes=["sha1", "xxh64"],
                   size_limit=row_bytes * samples_per_shard) as writer:
        for i in range(num_samples):
            tokens = np.zeros(seq_len, dtype=np.uint16)
            tokens[:3] = (code, i % 1000, i // 1000)
            writer.write({"tokens": tokens})
    with open(os.path.join(out, "index.json")) as f:
        index = json.load(f)
    shards, hashes = index_shards(index, out)
    tokenizer = {"kind": "synthetic"}
    manifest = {"format": "pike_stream.domain", "version": 1, "domain": name, "documents": num_samples,
                "tokens": num_samples * seq_len, "samples": num_samples, "seq_len": seq_len, "dtype": "uint16",
                "tokenizer": tokenizer, "shards": shards,
                "fingerprint": fingerprint(seq_len, "uint16", tokenizer, hashes)}
    with open(os.path.join(out, "manifest.json"), "w") as f:
        json.dump(manifest, f)
    return out


def decode_ids(input_ids) -> tuple[np.ndarray, np.ndarray]:
    """(domain code, sample id) of each row written by :func:`write_domain`."""
    arr = np.asarray(input_ids)
    return arr[:, 0], arr[:, 1] + 1000 * arr[:, 2]
