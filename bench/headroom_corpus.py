"""The headroom corpus: four domains of which a good mixture is clearly not uniform.

    python bench/headroom_corpus.py OUT [--seq-len 64] [--max-mb 1.5]

Domains (``OUT/raw/<domain>/{train,val}.jsonl``, then MDS in ``OUT/mds/<domain>/{train,val}``):

- ``en``: English man pages (Debian's ``manpages``, ``manpages-dev``; real text, as ``pike-stream corpus``);
- ``code``: the Python standard library (real code, as ``pike-stream corpus``);

  both cut into passages of :data:`PASSAGE_CHARS` characters (at line ends) in a seeded random order, so the
  first samples of a split — what an evaluation reads — come from many documents, not the first one;
- ``dup``: :data:`DUP_SEQUENCES` distinct lines of the English man pages, each exactly one sample long, repeated
  :data:`DUP_REPEATS` times in the train split (the val split holds the same lines). A model memorises them
  within a few hundred samples; sampling them after that only repeats what is known.
- ``noise``: uniformly random printable ASCII characters (seeded). Its loss cannot fall below
  ``log 95 ≈ 4.55`` nats per token, which a model learns quickly; samples after that are pure noise.

Uniform weights give half of every batch to ``dup`` and ``noise``: the headroom of a better mixture.
Everything is deterministic: the same packages, interpreter and seed give the same corpus.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
from pathlib import Path

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from converters.corpus import SPLITS, build_corpus, convert_corpus  # noqa: E402

__all__ = ["DOMAINS", "DUP_REPEATS", "DUP_SEQUENCES", "build_headroom_corpus", "main"]

DOMAINS = ("en", "code", "dup", "noise")
DUP_SEQUENCES = 16
DUP_REPEATS = 400
NOISE_SEED = 1234
NOISE_DOC_CHARS = 1000
PASSAGE_CHARS = 640
PASSAGE_SEED = 99
PRINTABLE = [chr(c) for c in range(32, 127)]


def _write_jsonl(path: Path, texts: list[str], source: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.partial")
    with open(tmp, "w", encoding="utf-8") as f:
        for i, text in enumerate(texts):
            f.write(json.dumps({"text": text, "source": f"{source}:{i}"}) + "\n")
    tmp.replace(path)


def _shuffle_passages(path: Path, source: str) -> None:
    """Rewrite a JSONL split as passages of about PASSAGE_CHARS characters (cut at line ends), shuffled."""
    passages: list[str] = []
    with open(path, encoding="utf-8") as f:
        for row in f:
            piece: list[str] = []
            size = 0
            for line in json.loads(row)["text"].splitlines(keepends=True):
                piece.append(line)
                size += len(line)
                if size >= PASSAGE_CHARS:
                    passages.append("".join(piece))
                    piece, size = [], 0
            if piece:
                passages.append("".join(piece))
    random.Random(PASSAGE_SEED).shuffle(passages)
    _write_jsonl(path, passages, source)


def _dup_lines(en_train: Path, count: int, length: int) -> list[str]:
    """``count`` distinct ASCII lines of the English man pages, cut or padded to ``length`` characters."""
    lines: list[str] = []
    with open(en_train, encoding="utf-8") as f:
        for row in f:
            for line in json.loads(row)["text"].splitlines():
                line = " ".join(line.split())
                if len(line) >= length // 2 and line.isascii() and line[:length] not in lines:
                    lines.append(line[:length].ljust(length))
                if len(lines) == count:
                    return lines
    raise RuntimeError(f"{en_train} has fewer than {count} usable lines")


def build_headroom_corpus(out: str | Path, *, seq_len: int = 64, max_mb: float = 1.5) -> dict[str, object]:
    """Build the raw JSONL of all four domains and convert them to MDS under ``out/mds``."""
    out = Path(out)
    build_corpus(out, langs=("en",), max_mb_per_domain=max_mb, code=True)  # rewrites raw/en and raw/code
    raw = out / "raw"
    lines = _dup_lines(raw / "en" / "train.jsonl", DUP_SEQUENCES, seq_len - 1)
    for domain in ("en", "code"):
        for split in SPLITS:
            _shuffle_passages(raw / domain / f"{split}.jsonl", domain)
    # One dup line plus the tokenizer's end-of-document token fills exactly one sample of seq_len tokens.
    _write_jsonl(raw / "dup" / "train.jsonl", lines * DUP_REPEATS, "dup")
    _write_jsonl(raw / "dup" / "val.jsonl", lines * 4, "dup")
    rng = random.Random(NOISE_SEED)
    docs = int(max_mb * 2**20) // NOISE_DOC_CHARS
    noise = ["".join(rng.choices(PRINTABLE, k=NOISE_DOC_CHARS)) for _ in range(docs)]
    val = max(1, docs // 20)
    _write_jsonl(raw / "noise" / "val.jsonl", noise[:val], "noise")
    _write_jsonl(raw / "noise" / "train.jsonl", noise[val:], "noise")
    manifests = convert_corpus(out, seq_len=seq_len, overwrite=True)
    return {key: {"samples": m["samples"], "tokens": m["tokens"]} for key, m in manifests.items()
            if key.split("/")[1] in SPLITS}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", help="folder for raw/ and mds/")
    parser.add_argument("--seq-len", type=int, default=64)
    parser.add_argument("--max-mb", type=float, default=1.5, help="MB of text per real domain and of noise")
    args = parser.parse_args(argv)
    summary = build_headroom_corpus(args.out, seq_len=args.seq_len, max_mb=args.max_mb)
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
