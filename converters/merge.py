"""``pike-stream merge OUT``: join the parts of a ``--part i/N`` conversion into one domain.

Each part ``OUT/part-0000i`` is a complete domain folder. Merging writes ``OUT/index.json`` with
mosaicml-streaming's ``merge_index`` (its shard entries point into the part folders by relative path, so
``StreamingDataset(local=OUT)`` or ``remote=OUT`` reads all parts as one domain, part 0 first) and then
``OUT/manifest.json``, whose counts are the parts' sums and whose fingerprint covers every shard in part
order. All N parts must be complete and agree on domain, seq_len, dtype and tokenizer. Converting a part
again withdraws the merged index and manifest, so a stale merge never describes changed parts.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections import Counter
from typing import Any

from streaming.base.util import merge_index

from converters.errors import ConversionError
from converters.manifest import INDEX_NAME, MANIFEST_NAME, build_manifest, check_manifest
from converters.output import S3Destination, open_destination

__all__ = ["merge_parts", "main"]

_PART_FOLDER = re.compile(r"part-(\d{5})")
_MUST_AGREE = ("domain", "seq_len", "dtype", "tokenizer")


def merge_parts(out: str | os.PathLike[str], *, progress: bool = True) -> dict[str, Any]:
    """Merge the part folders of ``out`` (local or ``s3://``) into one domain; return its manifest."""
    dest = open_destination(out)
    dest.check()
    indices = {name: int(match[1]) for name in dest.folders() if (match := _PART_FOLDER.fullmatch(name))}
    if not indices:
        raise ConversionError(f"{dest.url} holds no part-NNNNN folders; convert with --part i/N first")
    parts = []
    for name, index in indices.items():
        child = dest.child(name)
        where = child.file_url(MANIFEST_NAME)
        manifest = child.read_json(MANIFEST_NAME)
        if manifest is None:
            raise ConversionError(f"{child.url} has no {MANIFEST_NAME}: that part is incomplete "
                                  f"(interrupted or still running)")
        try:
            check_manifest(manifest, where)
        except ValueError as exc:
            raise ConversionError(str(exc)) from None
        if "part" not in manifest or index != manifest["part"]["index"]:
            raise ConversionError(f"{where}: not the manifest of {name} of a --part conversion")
        parts.append((child, manifest))

    count = parts[0][1]["part"]["count"]
    for child, manifest in parts:
        if manifest["part"]["count"] != count:
            raise ConversionError(f"{child.url} is part of {manifest['part']['count']} but "
                                  f"{parts[0][0].url} is part of {count}: parts of different conversions")
        for key in _MUST_AGREE:
            if manifest[key] != parts[0][1][key]:
                raise ConversionError(f"{child.url} has {key}={manifest[key]!r} but {parts[0][0].url} has "
                                      f"{parts[0][1][key]!r}: parts of different conversions")
    missing = sorted(set(range(count)) - {manifest["part"]["index"] for _, manifest in parts})
    if missing:
        raise ConversionError(f"{dest.url}: part(s) {', '.join(f'{i}/{count}' for i in missing)} missing")

    # Withdraw a previous merge first, so that no stale manifest describes a half-written index.
    dest.remove(MANIFEST_NAME)
    dest.remove(INDEX_NAME)
    # keep_local=False makes merge_index delete its `out` folder afterwards: right for the temporary
    # folder it uses with a remote `out`, fatal for a local one.
    merge_index([child.file_url(INDEX_NAME) for child, _ in parts], dest.url,
                keep_local=not isinstance(dest, S3Destination))
    index = dest.read_json(INDEX_NAME)
    if index is None:
        raise ConversionError(f"merging the part indexes did not produce {dest.file_url(INDEX_NAME)}")
    skipped: Counter[str] = Counter()
    for _, manifest in parts:
        skipped.update(manifest["skipped"])
    first = parts[0][1]
    merged = build_manifest(
        domain=first["domain"], index=index, seq_len=first["seq_len"], dtype=first["dtype"],
        tokenizer=first["tokenizer"], documents=sum(m["documents"] for _, m in parts), skipped=skipped,
        dropped_tokens=sum(m.get("dropped_tokens", 0) for _, m in parts),
        input_bytes=sum(m.get("input_bytes", 0) for _, m in parts), where=dest.url, extra={"parts": count})
    dest.write_json(MANIFEST_NAME, merged)
    if progress:
        print(f"merged {count} part(s) of domain {merged['domain']}: {merged['documents']:,} documents, "
              f"{merged['samples']:,} samples, {len(merged['shards'])} shard(s) → {dest.url}", file=sys.stderr)
    return merged


def main(argv: list[str] | None = None) -> int:
    """``pike-stream merge OUT``."""
    parser = argparse.ArgumentParser(
        prog="pike-stream merge",
        description="Join the part-NNNNN folders of a --part i/N conversion into one domain: writes OUT/index.json "
                    "(streaming's merge_index) and then OUT/manifest.json.")
    parser.add_argument("out", metavar="OUT", help="the folder or s3:// prefix holding part-NNNNN folders")
    args = parser.parse_args(argv)
    try:
        merge_parts(args.out)
    except ConversionError as exc:
        print(f"pike-stream merge: error: {exc}", file=sys.stderr)
        return 1
    return 0
