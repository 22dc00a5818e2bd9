"""Converter throughput: the same corpus slice converted with --workers 1 and --workers 2, in one run.

Builds (or reuses) a slice of the benchmark corpus — Debian man pages in a few languages plus Python
standard-library code — as a folder of JSONL files and converts it to a local folder several times per
worker count, with two tokenizers:

- ``bytes``, the built-in byte-level tokenizer (almost free: the single shard writer sets the pace);
- ``bpe-8k``, a byte-level BPE tokenizer with 8192 ids trained on the input with HuggingFace
  ``tokenizers`` and loaded as a local tokenizer folder (tokenizing sets the pace; this is the case
  worker processes are for). Beside it, in the same run, the ``tokenizers`` library alone encodes the same
  texts from memory (``library_alone``): the most one worker could reach.

It checks that every run of a case produced the same fingerprint and writes MB/s (input MB over
wall-clock seconds, best of the repeats, worker start-up included) and the workers-2 / workers-1 ratio
to ``bench/results/convert.json`` with the machine's description and the exact command.

    python bench/bench_convert.py [--work runs/bench_convert] [--langs en,de] [--mb-per-domain 3]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

from converters import convert
from converters.corpus import build_corpus

__all__ = ["main"]

REPO = Path(__file__).resolve().parents[1]


def _versions() -> dict[str, str]:
    names = ["numpy", "mosaicml-streaming", "zstandard", "tqdm", "transformers", "tokenizers"]
    found = {}
    for name in names:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "not installed"
    return found


def _machine(load_before: float) -> dict[str, Any]:
    return {"cpu_count": os.cpu_count(), "usable_cpus": len(os.sched_getaffinity(0)),
            "load_average_1m_before": round(load_before, 2), "load_average_1m_after": round(os.getloadavg()[0], 2),
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(), "python": platform.python_version(),
            "versions": _versions()}


def _prepare_input(work: Path, langs: tuple[str, ...], mb_per_domain: float, cache: Path | None) -> Path:
    """A folder of one JSONL file per domain (the corpus' train splits)."""
    corpus = work / "corpus"
    build_corpus(corpus, langs=langs, max_mb_per_domain=mb_per_domain, code=True, cache=cache)
    folder = work / "input"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    for train in sorted((corpus / "raw").glob("*/train.jsonl")):
        shutil.copyfile(train, folder / f"{train.parent.name}.jsonl")
    return folder


def _train_bpe(source: Path, folder: Path, vocab_size: int) -> Path:
    """A byte-level BPE tokenizer trained on the input's texts, saved as a local tokenizer folder."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    def texts() -> Any:
        for file in sorted(source.glob("*.jsonl")):
            with open(file, encoding="utf-8") as f:
                for line in f:
                    yield json.loads(line)["text"]

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts(), trainer=trainer)
    PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>").save_pretrained(str(folder))
    return folder


def _measure(source: Path, out: Path, *, tokenizer: str, workers: int, seq_len: int, repeats: int,
             input_bytes: int) -> tuple[dict[str, Any], dict[str, Any]]:
    seconds = []
    fingerprints = set()
    for _ in range(repeats):
        start = time.perf_counter()
        manifest = convert(source, out, domain="bench", seq_len=seq_len, fmt="jsonl", tokenizer=tokenizer,
                           workers=workers, overwrite=True, progress=False)
        seconds.append(time.perf_counter() - start)
        fingerprints.add(manifest["fingerprint"])
    if len(fingerprints) != 1:
        raise SystemExit(f"repeated conversions disagree: fingerprints {sorted(fingerprints)}")
    best = min(seconds)
    return {"workers": workers, "seconds": [round(s, 3) for s in seconds], "best_s": round(best, 3),
            "mb_per_s": round(input_bytes / 2**20 / best, 2), "tokens_per_s": round(manifest["tokens"] / best)}, \
        manifest


def _library_alone(source: Path, tokenizer: str, repeats: int, input_bytes: int) -> dict[str, Any]:
    """The tokenizers library by itself on the same documents, already in memory: ``encode_batch_fast`` of every
    text (what the converter's workers call), best of ``repeats``. It bounds what one converter worker can do."""
    from transformers import AutoTokenizer

    texts = [json.loads(line)["text"] for file in sorted(source.glob("*.jsonl"))
             for line in file.read_text(encoding="utf-8").splitlines() if line.strip()]
    backend = AutoTokenizer.from_pretrained(tokenizer, local_files_only=True).backend_tokenizer
    encode = getattr(backend, "encode_batch_fast", backend.encode_batch)
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        encode(texts, add_special_tokens=False)
        seconds.append(time.perf_counter() - start)
    best = min(seconds)
    return {"seconds": [round(s, 3) for s in seconds], "best_s": round(best, 3),
            "mb_per_s": round(input_bytes / 2**20 / best, 2)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work", default=str(REPO / "runs" / "bench_convert"), help="scratch folder")
    parser.add_argument("--cache", help="downloaded Debian packages (default WORK/corpus/cache)")
    parser.add_argument("--langs", default="en,de", help="man-page languages of the input")
    parser.add_argument("--mb-per-domain", type=float, default=3.0)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--workers", default="1,2", help="worker counts to compare, comma-separated")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--one-thread", action="store_true",
                        help="with workers=1, tokenize on one thread too (TOKENIZERS_PARALLELISM=false), so the "
                             "worker counts compare one thread with N processes: how the pipeline scales")
    parser.add_argument("--out", default=str(REPO / "bench" / "results" / "convert.json"))
    args = parser.parse_args(argv)
    if args.one_thread:
        os.environ["TOKENIZERS_PARALLELISM"] = "false"  # read by tokenizers at each batch encode

    load_before = os.getloadavg()[0]
    work = Path(args.work)
    langs = tuple(lang for lang in args.langs.split(",") if lang)
    source = _prepare_input(work, langs, args.mb_per_domain, Path(args.cache) if args.cache else None)
    input_bytes = sum(f.stat().st_size for f in source.glob("*.jsonl"))

    tokenizers = {"bytes": "bytes", "bpe-8k": str(_train_bpe(source, work / "bpe-8k", 8192))}
    worker_counts = [int(w) for w in args.workers.split(",")]
    cases = []
    for name, tokenizer in tokenizers.items():
        results = []
        for workers in worker_counts:
            result, manifest = _measure(source, work / "out", tokenizer=tokenizer, workers=workers,
                                        seq_len=args.seq_len, repeats=args.repeats, input_bytes=input_bytes)
            results.append({**result, "fingerprint": manifest["fingerprint"]})
            print(f"{name} workers={workers}: best {result['best_s']:.2f} s = {result['mb_per_s']} MB/s "
                  f"(runs: {', '.join(f'{s:.2f}' for s in result['seconds'])})", file=sys.stderr)
        if len({r.pop("fingerprint") for r in results}) != 1:
            raise SystemExit(f"{name}: the worker counts gave different output")
        case = {"tokenizer": name, "samples": manifest["samples"], "tokens": manifest["tokens"],
                "shards": len(manifest["shards"]), "fingerprint": manifest["fingerprint"], "results": results}
        case["ratio"] = {f"workers{r['workers']}_over_workers{results[0]['workers']}":
                         round(r["mb_per_s"] / results[0]["mb_per_s"], 3) for r in results[1:]}
        if tokenizer != "bytes":
            case["library_alone"] = _library_alone(source, tokenizer, args.repeats, input_bytes)
            case["ratio"]["workers1_over_library_alone"] = round(
                next(r["mb_per_s"] for r in results if r["workers"] == 1) / case["library_alone"]["mb_per_s"], 3)
            print(f"{name}: the tokenizers library alone {case['library_alone']['mb_per_s']} MB/s", file=sys.stderr)
        cases.append(case)

    report = {
        "benchmark": "convert",
        "command": " ".join(["python", "bench/bench_convert.py", *map(shlex.quote, sys.argv[1:] if argv is None
                                                                                  else argv)]),
        "machine": _machine(load_before),
        "input": {"files": sorted(f.name for f in source.glob("*.jsonl")), "bytes": input_bytes,
                  "documents": manifest["documents"], "langs": list(langs), "mb_per_domain": args.mb_per_domain},
        "options": {"seq_len": args.seq_len, "format": "jsonl", "output": "local folder", "repeats": args.repeats,
                    "timing": "wall clock of convert(), best of repeats, worker start-up included",
                    "threads": ("with workers=1 the tokenizer runs in this process on one thread "
                                "(TOKENIZERS_PARALLELISM=false); worker processes run one thread each")
                    if args.one_thread else
                    ("with workers=1 a HuggingFace tokenizer runs in this process on the tokenizers "
                     "library's own thread pool (all cores); worker processes run one thread each")},
        "cases": cases,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=1) + "\n")
    for case in cases:
        print(case["tokenizer"], json.dumps([{k: r[k] for k in ("workers", "best_s", "mb_per_s")}
                                             for r in case["results"]]), case["ratio"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
