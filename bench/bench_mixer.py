"""Mixer throughput vs mosaicml-streaming's own multi-stream loader, on the same shards, in one run.

    python bench/bench_mixer.py [--domains 8] [--samples 4000] [--seq-len 256] [--batch 64] [--steps 300]

Measures, each in a fresh subprocess (so shared memory, caches and peak RSS are per measurement), with
the two loaders alternated over --repeats rounds so machine noise hits both alike:

* warm: shards already local. PiKEStreamingMixer (weights changing every 10 steps; also with 64 partitions) vs
  ``StreamingDataset(streams=[…], batching_method="stratified")`` with static proportions, DataLoader with
  num_workers 0 and 2;
* cold: shards on the embedded S3 server (SeaweedFS on loopback), empty local cache;
* 20 domains: time from construction to the first batch, and peak RSS.

Writes bench/results/mixer.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import numpy as np  # noqa: E402


def write_random_domain(out: str, name: str, samples: int, seq_len: int, seed: int,
                        size_limit: int = 1 << 20) -> None:
    """Random uint16 tokens in the layout `pike-stream convert` writes (zstd shards, index, manifest)."""
    import hashlib

    from streaming import MDSWriter

    rng = np.random.default_rng(seed)
    with MDSWriter(out=out, columns={"tokens": f"ndarray:uint16:{seq_len}"}, compression="zstd",
                   hashes=["sha1", "xxh64"], size_limit=size_limit) as writer:
        for _ in range(samples):
            writer.write({"tokens": rng.integers(0, 258, seq_len, dtype=np.uint16)})
    index = json.load(open(os.path.join(out, "index.json")))
    manifest = {"format": "pike_stream.domain", "version": 1, "domain": name, "samples": samples,
                "seq_len": seq_len, "dtype": "uint16", "tokenizer": {"kind": "random"},
                "shards": [s["zip_data"]["basename"] for s in index["shards"]],
                "fingerprint": hashlib.sha256(json.dumps(index, sort_keys=True).encode()).hexdigest()}
    json.dump(manifest, open(os.path.join(out, "manifest.json"), "w"))


# ------------------------------------------------------------------------------------------ child side
def child(spec: dict) -> dict:
    """One measurement: build a loader, take ``steps`` batches, report timings and peak RSS."""
    import resource

    import psutil
    import streaming  # noqa: F401 - imports are not part of construction time or memory
    import torch  # noqa: F401

    import pike_stream.mixer  # noqa: F401

    rss_before = psutil.Process().memory_info().rss
    start = time.perf_counter()
    names, batch, steps = spec["names"], spec["batch"], spec["steps"]
    if spec["loader"] == "mixer":
        from pike_stream import Domain, PiKEStreamingMixer

        mixer = PiKEStreamingMixer([Domain(n, remote=spec["remotes"][n] if spec["remotes"] else None,
                                           local=spec["locals"][n]) for n in names],
                                   global_batch_size=batch, seed=0, partitions=spec.get("partitions"))
        loader = iter(mixer.dataloader())
        rng = np.random.default_rng(0)

        def on_step(step: int) -> None:
            if step % 10 == 9:
                mixer.set_weights(rng.dirichlet(np.ones(len(names))))
    else:
        from streaming import Stream, StreamingDataset
        from torch.utils.data import DataLoader

        streams = [Stream(remote=spec["remotes"][n] if spec["remotes"] else None, local=spec["locals"][n],
                          proportion=1 / len(names)) for n in names]
        dataset = StreamingDataset(streams=streams, batch_size=batch, shuffle=True, shuffle_seed=0,
                                   batching_method="stratified", epoch_size=batch * steps * 2,
                                   predownload=8 * batch)
        loader = iter(DataLoader(dataset, batch_size=batch, num_workers=spec["workers"],
                                 persistent_workers=False))

        def on_step(step: int) -> None:
            pass

    first = None
    tokens = 0
    for step in range(steps):
        b = next(loader)
        if first is None:
            first = time.perf_counter() - start
            loop_start = time.perf_counter()
        tokens += int(np.prod((b["input_ids"] if "input_ids" in b else b["tokens"]).shape))
        on_step(step)
    elapsed = time.perf_counter() - loop_start
    return {"first_batch_s": first, "seconds": elapsed, "samples_per_s": (steps - 1) * batch / elapsed,
            "tokens_per_s": tokens * (steps - 1) / steps / elapsed,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "rss_growth_mb": (psutil.Process().memory_info().rss - rss_before) / 2**20}


def run_child(script: str, spec: dict, timeout: float = 900) -> dict:
    """``script --child SPEC`` in a fresh interpreter; its last stdout line, as JSON."""
    env = dict(os.environ, PYTHONPATH=ROOT)
    out = subprocess.run([sys.executable, script, "--child", json.dumps(spec)], capture_output=True, text=True,
                         env=env, timeout=timeout)
    if out.returncode:
        raise RuntimeError(f"measurement {spec.get('loader', '')} of {os.path.basename(script)} failed:\n"
                           f"{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def measure(spec: dict) -> dict:
    return run_child(__file__, spec)


# ------------------------------------------------------------------------------------------ parent side
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--domains", type=int, default=8)
    parser.add_argument("--samples", type=int, default=4000, help="samples per domain")
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--phases", default="warm,cold,twenty",
                        help="which measurements to run (a subset updates those entries of an existing --out)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--out", default=os.path.join(ROOT, "bench", "results", "mixer.json"))
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return

    from pike_stream.storage import EmbeddedS3, s3_client

    # SIGTERM (a `kill`) exits through the `with EmbeddedS3` below, which stops the server, like Ctrl-C.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    work = tempfile.mkdtemp(prefix="pike-bench-mixer-")
    names = [f"d{i}" for i in range(args.domains)]
    for i, n in enumerate(names):
        write_random_domain(os.path.join(work, "data", n), n, args.samples, args.seq_len, seed=i)
    base = {"names": names, "batch": args.batch, "steps": args.steps, "remotes": None}
    contenders = {"mixer": {"loader": "mixer"},
                  "mixer_partitioned": {"loader": "mixer", "partitions": 64},
                  "streaming_w0": {"loader": "streaming", "workers": 0},
                  "streaming_w2": {"loader": "streaming", "workers": 2}}
    results: dict = {"warm": {k: [] for k in contenders}, "cold": {k: [] for k in contenders}}

    # Warm: each loader reads its own local copy, decompressed by an unrecorded first pass.
    phases = set(args.phases.split(","))
    for r in range(args.repeats if "warm" in phases else 0):
        for key, extra in contenders.items():
            warm = os.path.join(work, f"warm-{key}")
            spec = {**base, **extra, "locals": {n: os.path.join(warm, n) for n in names}}
            if not os.path.exists(warm):
                subprocess.run(["cp", "-r", os.path.join(work, "data"), warm], check=True)
                measure({**spec, "steps": args.samples * args.domains // args.batch})
            results["warm"][key].append(measure(spec))
            print(f"warm  {key:13s} round {r}: {results['warm'][key][-1]['samples_per_s']:9.0f} samples/s", flush=True)

    # Cold: shards on the embedded S3 server, a fresh empty cache each time.
    with EmbeddedS3(os.path.join(work, "s3")) as server:
        server.create_bucket("bench-mixer")
        client = s3_client(server.settings)
        for n in names:
            for f in sorted(os.listdir(os.path.join(work, "data", n))):
                if f.endswith((".zstd", ".json")):
                    client.upload_file(os.path.join(work, "data", n, f), "bench-mixer", f"{n}/{f}")
        os.environ.update(server.env())
        for r in range(args.repeats if "cold" in phases else 0):
            for key, extra in contenders.items():
                cache = tempfile.mkdtemp(dir=work, prefix=f"cold-{key}-")
                spec = {**base, **extra, "remotes": {n: f"s3://bench-mixer/{n}" for n in names},
                        "locals": {n: os.path.join(cache, n) for n in names}}
                results["cold"][key].append(measure(spec))
                print(f"cold  {key:13s} round {r}: {results['cold'][key][-1]['samples_per_s']:9.0f} samples/s",
                      flush=True)

        # 20 domains: construction → first batch and peak memory, warm cache.
        many = [f"m{i}" for i in range(20)]
        for i, n in enumerate(many):
            write_random_domain(os.path.join(work, "many", n), n, args.samples // 4, args.seq_len, seed=100 + i)
        twenty = {}
        for key, extra in (contenders.items() if "twenty" in phases else ()):
            copy = os.path.join(work, f"many-{key}")
            subprocess.run(["cp", "-r", os.path.join(work, "many"), copy], check=True)
            spec = {**base, **extra, "names": many, "steps": 50, "locals": {n: os.path.join(copy, n) for n in many}}
            twenty[key] = measure(spec)

    def summary(runs: list[dict]) -> dict:
        return {"samples_per_s_median": statistics.median(r["samples_per_s"] for r in runs),
                "tokens_per_s_median": statistics.median(r["tokens_per_s"] for r in runs),
                "first_batch_s_median": statistics.median(r["first_batch_s"] for r in runs), "runs": runs}

    keep_earlier = os.path.exists(args.out) and phases != {"warm", "cold", "twenty"}
    report: dict = json.load(open(args.out)) if keep_earlier else {}
    command = "python bench/bench_mixer.py " + " ".join(sys.argv[1:])
    report["commands"] = [c for c in report.get("commands", [report.get("command")]) if c] + [command]
    report |= {"command": command,
                    "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                                "platform": platform.platform()},
                    "settings": vars(args) | {"child": None, "out": None}}
    for phase in ("warm", "cold"):
        if phase not in phases:
            continue
        report[phase] = {k: summary(v) for k, v in results[phase].items()}
        mixer = report[phase]["mixer"]["samples_per_s_median"]
        report[phase]["ratio_vs_streaming_w0"] = mixer / report[phase]["streaming_w0"]["samples_per_s_median"]
        report[phase]["ratio_vs_streaming_w2"] = mixer / report[phase]["streaming_w2"]["samples_per_s_median"]
        report[phase]["ratio_partitioned_vs_mixer"] = (report[phase]["mixer_partitioned"]["samples_per_s_median"]
                                                       / mixer)
    if "twenty" in phases:
        report["twenty_domains"] = twenty
    import streaming
    import torch
    report["machine"] |= {"streaming": streaming.__version__, "torch": torch.__version__}
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(report, f, indent=2)
    for phase in ("warm", "cold"):
        if phase not in report:
            continue
        print(f"{phase}: mixer {report[phase]['mixer']['samples_per_s_median']:.0f} samples/s; "
              f"×{report[phase]['ratio_vs_streaming_w0']:.2f} vs streaming (0 workers), "
              f"×{report[phase]['ratio_vs_streaming_w2']:.2f} vs streaming (2 workers); with 64 partitions "
              f"×{report[phase]['ratio_partitioned_vs_mixer']:.2f} of the mixer without")
    for key, r in report.get("twenty_domains", {}).items():
        print(f"20 domains {key}: first batch {r['first_batch_s']:.2f} s, peak RSS {r['peak_rss_mb']:.0f} MB "
              f"(+{r['rss_growth_mb']:.0f} MB from construction on)")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
