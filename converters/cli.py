"""``pike-stream convert SOURCE OUT …``: the command line of :func:`converters.conversion.convert`, and of
:func:`converters.distributed.convert_on_ray` with ``--ray-parts N``."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from converters.errors import ConversionError
from converters.sources import FORMATS

__all__ = ["build_parser", "main"]

INTERRUPTED_STATUS = 130  # a shell's status for a command ended by SIGINT (128 + 2)


def build_parser() -> argparse.ArgumentParser:
    """The ``pike-stream convert`` argument parser."""
    parser = argparse.ArgumentParser(
        prog="pike-stream convert",
        description="Convert a corpus into one domain of tokenized, packed MDS shards with a manifest.json. "
                    "Every document is followed by EOS; the final partial sequence is dropped.")
    parser.add_argument("source", metavar="SOURCE",
                        help="a file or folder (text, jsonl, parquet) or a saved dataset (hf)")
    parser.add_argument("out", metavar="OUT", help="the domain folder to write: a local folder or s3://bucket/prefix")
    parser.add_argument("--domain", required=True, help="the domain's name")
    parser.add_argument("--seq-len", type=int, required=True, help="tokens per sample")
    parser.add_argument("--format", dest="fmt", choices=FORMATS, default=None,
                        help="text: one document per file; jsonl: one per line of *.jsonl/*.json files, "
                             ".gz and .zst decompressed; parquet: one per row of *.parquet files; hf: one per "
                             "row of a save_to_disk dataset. Default: inferred from SOURCE's file names "
                             "(a folder must hold one format), said in one line on stderr. A format the "
                             "content contradicts is an error")
    parser.add_argument("--text-field", default="text", help="JSON field / Parquet or dataset column with the text")
    parser.add_argument("--tokenizer", default="bytes",
                        help="`bytes` (UTF-8 bytes, EOS 256, PAD 257) or a local HuggingFace tokenizer folder")
    parser.add_argument("--workers", type=int, default=1,
                        help="tokenizing processes (default: 1). Pays off with a HuggingFace tokenizer; the byte "
                             "tokenizer is cheaper than handing work to another process")
    parser.add_argument("--part", metavar="i/N",
                        help="convert part i of N of the input into OUT/part-0000i (join with pike-stream merge)")
    parser.add_argument("--ray-parts", type=int, metavar="N", default=None,
                        help="convert the N parts as tasks on a Ray cluster, then merge them into OUT (needs "
                             "pip install 'pike_stream[ray]'; not with --part). On several machines OUT must be "
                             "s3:// and SOURCE at the same path on each; the AWS_*/S3_* settings go to the tasks")
    parser.add_argument("--ray-address", metavar="ADDR", default=None,
                        help="the Ray cluster for --ray-parts (ray.init's address, e.g. auto or "
                             "ray://head:10001); default: RAY_ADDRESS if set, else a local cluster on this machine")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty OUT")
    parser.add_argument("--size-limit", type=float, metavar="MB", default=None,
                        help="shard size limit in MB, uncompressed (default: 8)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run ``pike-stream convert``; 0 on success, 1 on a conversion error (printed to stderr), 130 on Ctrl-C."""
    args = build_parser().parse_args(argv)
    if args.ray_parts is not None and args.part is not None:
        print("pike-stream convert: error: --ray-parts N converts all N parts itself: not with --part i/N",
              file=sys.stderr)
        return 1
    if args.ray_address is not None and args.ray_parts is None:
        print("pike-stream convert: error: --ray-address needs --ray-parts N", file=sys.stderr)
        return 1
    from converters.conversion import DEFAULT_SIZE_LIMIT_MB, convert  # imports streaming (and torch): after --help

    options: dict[str, Any] = dict(
        domain=args.domain, seq_len=args.seq_len, fmt=args.fmt, text_field=args.text_field, tokenizer=args.tokenizer,
        workers=args.workers, overwrite=args.overwrite, size_limit=args.size_limit or DEFAULT_SIZE_LIMIT_MB)
    try:
        if args.ray_parts is not None:
            from converters.distributed import convert_on_ray

            convert_on_ray(args.source, args.out, parts=args.ray_parts, address=args.ray_address, **options)
        else:
            convert(args.source, args.out, part=args.part, **options)
    except ConversionError as exc:
        print(f"pike-stream convert: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        if args.ray_parts is not None:
            print(f"pike-stream convert: interrupted; the unfinished parts were cancelled and removed, finished "
                  f"ones are left in {args.out}: rerun the same command with --overwrite to convert it",
                  file=sys.stderr)
        else:
            print(f"pike-stream convert: interrupted; the partial output was removed, nothing half-written is "
                  f"left at {args.out}: rerun the same command to convert it", file=sys.stderr)
        return INTERRUPTED_STATUS
    return 0
