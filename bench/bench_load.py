"""Load: 64 domains, new random weights every step, two ranks, thousands of steps — does anything grow?

    python bench/bench_load.py [--domains 64] [--steps 2000] [--batch 128] [--warmup 200]

Two :class:`~pike_stream.PiKEStreamingMixer` objects (rank 0 and rank 1 of a world of 2) in one process
read synthetic domains (``tests/mds_data.write_domain``: small shards, so every domain cycles through many
epochs and every shard is opened, closed and reopened). Before every step both get the same weights, drawn
from a flat Dirichlet. Every ``--every`` steps the process's RSS, open file descriptors and threads are
recorded with the size of a checkpoint's mixer state (JSON bytes). After ``--warmup`` steps nothing
should grow: RSS within a few MB, descriptors and threads constant, the state a few KB whatever the steps.

Writes bench/results/load.json (the series and the summary).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import threading
import time
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

__all__ = ["run_load"]


READ_AHEAD_WORKERS = 2


def run_load(root: str, *, domains: int = 64, samples: int = 200, samples_per_shard: int = 25, steps: int = 2000,
             batch: int = 128, warmup: int = 200, every: int = 50, seed: int = 0) -> dict[str, Any]:
    """Run the load and return ``{"settings", "series", "summary"}``.

    ``series`` holds one record per ``every`` steps: ``step``, ``rss_mb``, ``fds``, ``threads``,
    ``state_bytes``. ``summary`` compares the records from ``warmup`` on: RSS growth (last minus the one at
    ``warmup``, and max minus min), the ranges of descriptors and threads, the largest state, steps per second.
    """
    import numpy as np
    import psutil

    from pike_stream import Domain, PiKEStreamingMixer
    from pike_stream.mixer.shards import READ_AHEAD_THREAD_PREFIX
    from tests.mds_data import decode_ids, write_domain

    names = [f"d{i:02d}" for i in range(domains)]
    for code, name in enumerate(names):
        folder = os.path.join(root, name)
        if not os.path.exists(os.path.join(folder, "manifest.json")):
            write_domain(folder, name, samples, code=code, samples_per_shard=samples_per_shard)
    specs = [Domain(n, local=os.path.join(root, n)) for n in names]
    mixers = [PiKEStreamingMixer(specs, batch, seed=seed, rank=r, world_size=2, read_ahead=2,
                                 read_ahead_workers=READ_AHEAD_WORKERS) for r in (0, 1)]
    rng = np.random.default_rng(seed)
    process = psutil.Process()
    at_warmup: set[int | None] = set()
    started: set[str] = set()
    series: list[dict[str, Any]] = []
    start = time.perf_counter()
    for step in range(steps + 1):
        if step % every == 0:
            state = mixers[0].state_dict()
            if state != mixers[1].state_dict():
                raise AssertionError(f"step {step}: the ranks' mixer states differ")
            threads = threading.enumerate()
            readahead = [t for t in threads if t.name.startswith(READ_AHEAD_THREAD_PREFIX)]
            if step == warmup:
                at_warmup = {t.ident for t in threads}
            elif step > warmup:
                started |= {t.name for t in threads if t.ident not in at_warmup and t not in readahead}
            series.append({"step": step, "rss_mb": process.memory_info().rss / 2**20, "fds": process.num_fds(),
                           "threads": process.num_threads(), "readahead_threads": len(readahead),
                           "state_bytes": len(json.dumps(state).encode())})
        if step == steps:
            break
        weights = rng.dirichlet(np.ones(domains))
        parts = []
        for mixer in mixers:
            mixer.set_weights(weights)
            parts.append(mixer.next_batch())
        for part in parts:  # each row is the sample the batch says it is
            code, sample = decode_ids(part["input_ids"].numpy())
            if not (np.array_equal(code, part["domain"].numpy()) and np.array_equal(sample, part["sample_id"].numpy())):
                raise AssertionError(f"step {step}: rows do not hold the samples the batch names")
    seconds = time.perf_counter() - start
    for mixer in mixers:
        mixer.shards.close()

    after = [r for r in series if r["step"] >= warmup]
    rss = [r["rss_mb"] for r in after]
    summary = {
        "rss_mb_at_warmup": after[0]["rss_mb"],
        "rss_mb_at_end": after[-1]["rss_mb"],
        "rss_growth_mb": after[-1]["rss_mb"] - after[0]["rss_mb"],
        "rss_range_mb": max(rss) - min(rss),
        "fds_range": [min(r["fds"] for r in after), max(r["fds"] for r in after)],
        "threads_range": [min(r["threads"] for r in after), max(r["threads"] for r in after)],
        # The read-ahead pools start their threads as work arrives, up to read_ahead_workers each: bounded, not
        # a leak. Any other Python thread started after warm-up would be one (by name). The process's thread
        # count (threads_range) also counts threads of whatever else runs in the process (a test runner's).
        "readahead_threads_max": max(r["readahead_threads"] for r in series),
        "readahead_threads_limit": 2 * READ_AHEAD_WORKERS,
        "threads_started_after_warmup": sorted(started),
        "state_bytes_max": max(r["state_bytes"] for r in series),
        "steps_per_s": steps / seconds,
        "samples_consumed": int(sum(mixers[0].consumed.values())),
    }
    settings = {"domains": domains, "samples_per_domain": samples, "samples_per_shard": samples_per_shard,
                "steps": steps, "global_batch": batch, "ranks": 2, "warmup": warmup, "every": every, "seed": seed}
    return {"settings": settings, "series": series, "summary": summary}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--domains", type=int, default=64)
    parser.add_argument("--samples", type=int, default=200, help="samples per domain")
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--batch", type=int, default=128, help="global batch (two ranks)")
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--every", type=int, default=50)
    parser.add_argument("--out", default=os.path.join(ROOT, "bench", "results", "load.json"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="pike-bench-load-") as work:
        result = run_load(work, domains=args.domains, samples=args.samples, steps=args.steps, batch=args.batch,
                          warmup=args.warmup, every=args.every)
    import psutil
    import streaming
    import torch
    result = {"command": "python bench/bench_load.py " + " ".join(sys.argv[1:]),
              "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                          "platform": platform.platform(), "streaming": streaming.__version__,
                          "torch": torch.__version__, "psutil": psutil.__version__},
              **result}
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)
    s = result["summary"]
    print(f"{args.steps} steps, {args.domains} domains, 2 ranks: {s['steps_per_s']:.0f} steps/s; after step "
          f"{args.warmup}: RSS {s['rss_mb_at_warmup']:.0f} → {s['rss_mb_at_end']:.0f} MB "
          f"(growth {s['rss_growth_mb']:+.1f} MB, range {s['rss_range_mb']:.1f} MB), fds {s['fds_range']}, "
          f"threads {s['threads_range']}; mixer state ≤ {s['state_bytes_max']} bytes")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
