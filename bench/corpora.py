"""The benchmark corpora of PiKE's convergence benchmarks (``bench/bench_headroom.py``, ``bench/bench_corpora.py``).

    python bench/corpora.py headroom OUT      [--seq-len 64] [--max-mb 1.5]
    python bench/corpora.py multilingual OUT  [--seq-len 64] [--max-mb 1.5]
    python bench/corpora.py unequal OUT       [--seq-len 64] [--max-mb 1.5]

Each writes ``OUT/raw/<domain>/{train,val}.jsonl`` and MDS shards in ``OUT/mds/<domain>/{train,val}``.
Real text and code are cut into passages of :data:`PASSAGE_CHARS` characters (at line ends) in a seeded
random order, so the first samples of a split — what an evaluation reads — come from many documents, not
the first one.

**multilingual**: man pages in en, de, fr, es, ru and Python code, ``--max-mb`` each (as ``pike-stream
corpus``): domains of equal size, similar difficulty.

**unequal**: domains that differ in size and difficulty: English man pages and Python code at ``--max-mb``,
Russian man pages at a fifth of it (two bytes a character: harder per byte) and French at a tenth (the small
domain repeats many times over a run).

**headroom**: four domains of which a good mixture is clearly not uniform:

- ``en``: English man pages (Debian's ``manpages``, ``manpages-dev``; real text, as ``pike-stream corpus``);
- ``code``: the Python standard library (real code, as ``pike-stream corpus``);
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

__all__ = ["CORPORA", "DUP_REPEATS", "DUP_SEQUENCES", "build_headroom_corpus", "build_multilingual_corpus",
           "build_unequal_corpus", "main"]

CORPORA = {"headroom": ("en", "code", "dup", "noise"), "multilingual": ("en", "de", "fr", "es", "ru", "code"),
           "unequal": ("en", "code", "ru", "fr")}
UNEQUAL_FRACTIONS = {"ru": 0.2, "fr": 0.1}
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
    return _converted(out, seq_len)


def _converted(out: Path, seq_len: int) -> dict[str, object]:
    manifests = convert_corpus(out, seq_len=seq_len, overwrite=True)
    return {key: {"samples": m["samples"], "tokens": m["tokens"]} for key, m in manifests.items()}


def build_multilingual_corpus(out: str | Path, *, seq_len: int = 64, max_mb: float = 1.5) -> dict[str, object]:
    """Man pages in five languages and Python code, ``max_mb`` each, as shuffled passages; converted to MDS."""
    out = Path(out)
    build_corpus(out, langs=("en", "de", "fr", "es", "ru"), max_mb_per_domain=max_mb, code=True)
    for domain in CORPORA["multilingual"]:
        for split in SPLITS:
            _shuffle_passages(out / "raw" / domain / f"{split}.jsonl", domain)
    return _converted(out, seq_len)


def _truncate(path: Path, max_bytes: int) -> None:
    """Keep the first passages of a JSONL split that fit in ``max_bytes`` of text."""
    kept, size = [], 0
    with open(path, encoding="utf-8") as f:
        for row in f:
            text = json.loads(row)["text"]
            size += len(text.encode("utf-8"))
            if size > max_bytes:
                break
            kept.append(text)
    _write_jsonl(path, kept, path.parent.name)


def build_unequal_corpus(out: str | Path, *, seq_len: int = 64, max_mb: float = 1.5) -> dict[str, object]:
    """en and code at ``max_mb``, ru and fr at the fractions of :data:`UNEQUAL_FRACTIONS`; converted to MDS."""
    out = Path(out)
    build_corpus(out, langs=("en", "ru", "fr"), max_mb_per_domain=max_mb, code=True)
    for domain in CORPORA["unequal"]:
        for split in SPLITS:
            path = out / "raw" / domain / f"{split}.jsonl"
            _shuffle_passages(path, domain)
            if domain in UNEQUAL_FRACTIONS:
                _truncate(path, int(max_mb * UNEQUAL_FRACTIONS[domain] * 2**20 * (1 if split == "train" else 0.05)))
    return _converted(out, seq_len)


BUILDERS = {"headroom": build_headroom_corpus, "multilingual": build_multilingual_corpus,
            "unequal": build_unequal_corpus}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("corpus", choices=sorted(BUILDERS))
    parser.add_argument("out", help="folder for raw/ and mds/")
    parser.add_argument("--seq-len", type=int, default=64)
    parser.add_argument("--max-mb", type=float, default=1.5, help="MB of text per full-size domain")
    args = parser.parse_args(argv)
    summary = BUILDERS[args.corpus](args.out, seq_len=args.seq_len, max_mb=args.max_mb)
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
