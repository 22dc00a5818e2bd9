"""The mixer with a shard cache smaller than the data, against an unlimited cache, with weights that change.

    python bench/bench_cache.py [--domains 8] [--samples 2000] [--steps 2000] [--repeats 3] [--fraction 0.25]
                                [--shuffle-block-size N] [--compute-ms 0]

Domains of random tokens on the embedded S3 server (SeaweedFS on loopback), each read by the mixer from a
fresh, empty local cache, in a fresh subprocess; the weights change every 10 steps to a random, peaked mixture
(Dirichlet 0.3), the same sequence in every arm. Arms, alternated over --repeats rounds so machine noise hits
both alike:

* unlimited: no cache limit;
* limited: ``cache_limit`` = --fraction of the data's bytes on disk (compressed and decompressed shards),
  with the mixer's read-ahead and eviction, which follow the weights;
* limited_lru: the same limit with the policy before that (kept here to compare): the next ``read_ahead``
  shards of every domain whatever its weight, least recently used shards evicted first.

Each measurement reports samples/s over the steps, the cache's bytes on disk (sampled every 10 steps: peak
and mean), and the share of those bytes held by the heavier half of the domains (by the weights in force).
With --compute-ms, every step also waits that long, as a training step on an accelerator would, while the
read-ahead threads work: the loader's own throughput (0) and a training loop's step time (> 0) are both
measured, in separate runs. The goal: the limited arm's step time within 10% of the unlimited one's, and the
heavier domains holding more of the cache.

A domain's working set is set by its shuffle: mosaicml-streaming's ``py1e`` spreads each shuffle block
(``shuffle_block_size`` samples; the default, 262,144, is larger than these domains) over its shards, so a
cache smaller than the blocks in use thrashes whatever the policy. --shuffle-block-size makes it smaller.

Writes bench/results/cache.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import statistics
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import numpy as np  # noqa: E402

from bench.bench_mixer import run_child, write_random_domain  # noqa: E402

SHARD_BYTES = 1 << 17  # small shards, so a quarter of the data is many shards


def folder_bytes(folder: str) -> int:
    total = 0
    for parent, _, files in os.walk(folder):
        for name in files:
            if not name.endswith(".lock"):
                try:
                    total += os.path.getsize(os.path.join(parent, name))
                except FileNotFoundError:  # evicted meanwhile
                    pass
    return total


def data_bytes(folder: str) -> int:
    """Compressed and decompressed bytes of every shard of a domain, from its index."""
    with open(os.path.join(folder, "index.json")) as f:
        shards = json.load(f)["shards"]
    return sum(s["raw_data"]["bytes"] + (s["zip_data"]["bytes"] if s.get("zip_data") else 0) for s in shards)


# ------------------------------------------------------------------------------------------ child side
def read_ahead_by_domain(mixer) -> None:
    """The earlier read-ahead: the next ``read_ahead`` distinct shards of every domain, nearest first; no
    expected uses, so eviction is least recently used first."""
    keys = []
    for k, (source, order) in enumerate(zip(mixer.sources, mixer.orders)):
        window = min(order.num_samples, mixer.read_ahead * int(source.shard_sizes.max()))
        upcoming, _ = source.locate(order.take(mixer.consumed[mixer.domain_names[k]], window))
        _, first = np.unique(upcoming, return_index=True)
        keys += [(k, int(s)) for s in upcoming[np.sort(first)][:mixer.read_ahead]]
    mixer.shards.prefetch(keys)


def child(spec: dict) -> dict:
    from pike_stream import Domain, PiKEStreamingMixer

    names, cache = spec["names"], spec["cache"]
    mixer = PiKEStreamingMixer([Domain(n, remote=f"{spec['remote']}/{n}", local=os.path.join(cache, n))
                                for n in names], global_batch_size=spec["batch"], seed=0,
                               cache_limit=spec["cache_limit"], shuffle_block_size=spec["shuffle_block_size"])
    fetches = [0]
    prepare_once = mixer.shards._prepare_once

    def counted(key):  # shards downloaded and decompressed (again, after an eviction)
        added = prepare_once(key)
        fetches[0] += added
        return added

    mixer.shards._prepare_once = counted  # type: ignore[method-assign]
    if spec["policy"] == "lru":
        mixer._read_ahead = lambda: read_ahead_by_domain(mixer)  # type: ignore[method-assign]
    rng = np.random.default_rng(1)
    disk, heavy_share = [], []
    loader = iter(mixer.dataloader())
    next(loader)  # construction and the first shards are not part of the measurement
    start = time.perf_counter()
    for step in range(1, spec["steps"]):
        next(loader)
        if spec["compute_ms"]:
            time.sleep(spec["compute_ms"] / 1000)  # the accelerator's step: the GIL is free meanwhile
        if step % 10 == 0:
            held = np.array([folder_bytes(os.path.join(cache, n)) for n in names], dtype=float)
            weights = np.array(list(mixer.weights.values()))
            heavy = np.argsort(weights)[len(names) // 2:]  # the heavier half of the domains, by weight in force
            heavy_share.append(float(held[heavy].sum() / max(held.sum(), 1.0)))
            disk.append(int(held.sum()))
            mixer.set_weights(rng.dirichlet(np.full(len(names), 0.3)))
    elapsed = time.perf_counter() - start
    stalled = mixer.shards.stall_seconds
    per_domain = {n: folder_bytes(os.path.join(cache, n)) for n in names}
    weights = mixer.weights
    mixer.close()
    return {"samples_per_s": (spec["steps"] - 1) * spec["batch"] / elapsed, "seconds": elapsed,
            "stall_seconds": stalled, "fetches": fetches[0],
            "peak_disk_bytes": max(disk), "mean_disk_bytes": statistics.fmean(disk),
            "heavy_half_disk_share": statistics.fmean(heavy_share),
            "final_disk_bytes": per_domain, "final_weights": weights}


def measure(spec: dict) -> dict:
    return run_child(__file__, spec, timeout=1200)


# ------------------------------------------------------------------------------------------ parent side
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--domains", type=int, default=8)
    parser.add_argument("--samples", type=int, default=2000, help="samples per domain")
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--fraction", type=float, default=0.25, help="cache limit as a fraction of the data")
    parser.add_argument("--shuffle-block-size", type=int, default=1 << 18,
                        help="the mixer's shuffle_block_size (samples): a domain's working set of shards")
    parser.add_argument("--compute-ms", type=float, default=0.0, help="simulated training compute per step")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--out", default=os.path.join(ROOT, "bench", "results", "cache.json"))
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return

    from pike_stream.storage import EmbeddedS3, s3_client

    # SIGTERM (a `kill`) exits through the `with EmbeddedS3` below, which stops the server, like Ctrl-C.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    started = time.perf_counter()
    work = tempfile.mkdtemp(prefix="pike-bench-cache-")
    names = [f"d{i}" for i in range(args.domains)]
    for i, n in enumerate(names):
        write_random_domain(os.path.join(work, "data", n), n, args.samples, args.seq_len, seed=i,
                            size_limit=SHARD_BYTES)
    total = sum(data_bytes(os.path.join(work, "data", n)) for n in names)
    limit = int(total * args.fraction)
    arms = {"unlimited": (None, "weights"), "limited": (limit, "weights"), "limited_lru": (limit, "lru")}
    runs: dict[str, list[dict]] = {arm: [] for arm in arms}
    with EmbeddedS3(os.path.join(work, "s3")) as server:
        server.create_bucket("bench-cache")
        client = s3_client(server.settings)
        for n in names:
            for f in sorted(os.listdir(os.path.join(work, "data", n))):
                client.upload_file(os.path.join(work, "data", n, f), "bench-cache", f"{n}/{f}")
        os.environ.update(server.env())
        for r in range(args.repeats):
            for arm, (cache_limit, policy) in arms.items():
                spec = {"names": names, "batch": args.batch, "steps": args.steps, "remote": "s3://bench-cache",
                        "cache": tempfile.mkdtemp(dir=work, prefix=f"{arm}-"), "cache_limit": cache_limit,
                        "shuffle_block_size": args.shuffle_block_size, "compute_ms": args.compute_ms,
                        "policy": policy}
                runs[arm].append(measure(spec))
                run = runs[arm][-1]
                print(f"round {r} {arm:11s}: {run['samples_per_s']:8.0f} samples/s, {run['fetches']} fetches, "
                      f"stalled {run['stall_seconds']:.1f} s, disk peak "
                      f"{run['peak_disk_bytes'] / 2**20:.1f} MiB of data {total / 2**20:.1f} MiB", flush=True)

    def summary(arm_runs: list[dict]) -> dict:
        return {"samples_per_s_median": statistics.median(r["samples_per_s"] for r in arm_runs),
                "peak_disk_bytes_max": max(r["peak_disk_bytes"] for r in arm_runs), "runs": arm_runs}

    report = {"command": "python bench/bench_cache.py " + " ".join(sys.argv[1:]),
              "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                          "platform": platform.platform(), "load_average_at_start": os.getloadavg()},
              "settings": vars(args) | {"child": None, "out": None, "shard_bytes": SHARD_BYTES},
              "data_bytes": total, "cache_limit_bytes": limit,
              "arms": {arm: summary(arm_runs) for arm, arm_runs in runs.items()}}
    unlimited = report["arms"]["unlimited"]["samples_per_s_median"]
    limited = report["arms"]["limited"]["samples_per_s_median"]
    report["step_time_limited_over_unlimited"] = unlimited / limited
    report["step_time_limited_lru_over_unlimited"] = (
        unlimited / report["arms"]["limited_lru"]["samples_per_s_median"])
    # Does a domain's disk follow its weight? The share of the cache held by the heavier half of the domains.
    for arm in arms:
        report["arms"][arm]["heavy_half_disk_share_median"] = statistics.median(
            r["heavy_half_disk_share"] for r in runs[arm])
    report["seconds"] = time.perf_counter() - started
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(report, f, indent=2)
    print(f"limited cache ({args.fraction:.0%} of {total / 2**20:.1f} MiB): step time ×"
          f"{report['step_time_limited_over_unlimited']:.3f} of unlimited (the earlier policy: ×"
          f"{report['step_time_limited_lru_over_unlimited']:.3f}); disk peak "
          f"{report['arms']['limited']['peak_disk_bytes_max'] / 2**20:.1f} MiB (limit {limit / 2**20:.1f}); "
          f"the heavier half of the domains holds {report['arms']['limited']['heavy_half_disk_share_median']:.0%} "
          f"of it (earlier policy: {report['arms']['limited_lru']['heavy_half_disk_share_median']:.0%}, "
          f"unlimited: {report['arms']['unlimited']['heavy_half_disk_share_median']:.0%})")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
