"""Node-partitioned reads on a real (loopback) 2-node run: 2 nodes × 2 ranks = 4 separate interpreters, each
with the environment a launcher gives it (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``LOCAL_WORLD_SIZE``,
``NODE_RANK``) and the S3 settings of one embedded S3 server; each node has a shard cache folder of its own,
shared by its two ranks as on a real node.

Over about one epoch of every domain, with ``partitions=4``:

1. the union of the four ranks' samples at every step is the global batch of a one-node mixer;
2. each node downloads about half the corpus (its two partitions of every domain, plus the shards cut by a
   partition boundary), strictly less than all of it, while the same layout without partitions makes each
   node download (nearly) the whole corpus;
3. every process exits 0, and none is left running.
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from pike_stream import Domain, PiKEStreamingMixer
from tests.mds_data import write_domain
from tests.test_mixer_s3 import upload_folder

REPO = Path(__file__).resolve().parent.parent
SIZES = {"en": 600, "de": 800, "code": 1000}
# write_domain's size limit fits 16 samples in a shard at this setting: 38, 50 and 63 shards; the partition
# boundaries (every 150, 200, 250 samples) cut some shards in two, as does the middle of en and code.
SAMPLES_PER_SHARD = 20
P = 4
NODES, LOCAL = 2, 2
WORLD = NODES * LOCAL
B = 32
SEED = 11
WEIGHTS = {name: n / sum(SIZES.values()) for name, n in SIZES.items()}  # every domain's epoch ends together
STEPS = math.ceil(sum(SIZES.values()) / B) + 1  # about one epoch of every domain
PROCESS_TIMEOUT_S = 150.0
SHARD_FILE = re.compile(r"^shard\.\d+\.mds(\.zstd)?$")

# One rank: builds the mixer from the launcher's environment (no rank/world_size/local_world_size given),
# takes STEPS batches, checks the tokens read are the samples the batch names, writes what it read as JSON.
_RANK = """
import json, sys
from pike_stream import Domain, PiKEStreamingMixer
from tests.mds_data import decode_ids
spec = json.loads(sys.argv[1])
domains = [Domain(name, remote=remote, local=f"{spec['cache']}/{name}") for name, remote in spec["domains"]]
steps = []
with PiKEStreamingMixer(domains, spec["batch"], seed=spec["seed"], weights=spec["weights"],
                        partitions=spec["partitions"], read_ahead_workers=1) as mixer:
    for _ in range(spec["steps"]):
        batch = mixer.next_batch()
        code, sid = decode_ids(batch["input_ids"])
        if code.tolist() != batch["domain"].tolist() or sid.tolist() != batch["sample_id"].tolist():
            sys.exit(f"step {len(steps)}: read {list(zip(code.tolist(), sid.tolist()))}, the batch names "
                     f"{list(zip(batch['domain'].tolist(), batch['sample_id'].tolist()))}")
        steps.append([[int(c), int(s)] for c, s in zip(code.tolist(), sid.tolist())])
    place = {"rank": mixer.rank, "world_size": mixer.world_size, "node": mixer.node, "nodes": mixer.nodes,
             "local_rank": mixer.local_rank}
with open(spec["out"], "w") as f:
    json.dump({**place, "steps": steps}, f)
"""


def _shard_bytes(folder: Path) -> int:
    """Bytes of the shard files (``shard.N.mds``, ``shard.N.mds.zstd``) under a cache folder."""
    names = [p for p in folder.rglob("*") if p.is_file() and SHARD_FILE.match(p.name)]
    return sum(p.stat().st_size for p in names)


def _rank_env(base: dict[str, str], rank: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "NODE_RANK", "MASTER_ADDR",
                        "MASTER_PORT")}
    env.update(base)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    env.update(RANK=str(rank), WORLD_SIZE=str(WORLD), LOCAL_RANK=str(rank % LOCAL), LOCAL_WORLD_SIZE=str(LOCAL),
               NODE_RANK=str(rank // LOCAL), OMP_NUM_THREADS="1")
    return env


def _run_ranks(tmp_path: Path, s3_environ: dict[str, str], domains: list[tuple[str, str]]) -> list[dict]:
    """The four rank processes, started together; their JSON results in rank order."""
    procs: list[tuple[subprocess.Popen, Path]] = []
    try:
        for rank in range(WORLD):
            spec = {"domains": domains, "cache": str(tmp_path / "cache" / f"node{rank // LOCAL}"), "batch": B,
                    "seed": SEED, "weights": WEIGHTS, "partitions": P, "steps": STEPS,
                    "out": str(tmp_path / f"rank{rank}.json")}
            log = tmp_path / f"rank{rank}.log"
            with open(log, "w") as out:
                procs.append((subprocess.Popen([sys.executable, "-c", _RANK, json.dumps(spec)], cwd=REPO,
                                               env=_rank_env(s3_environ, rank), stdout=out,
                                               stderr=subprocess.STDOUT), log))
        deadline = time.monotonic() + PROCESS_TIMEOUT_S
        for rank, (proc, log) in enumerate(procs):
            try:
                proc.wait(timeout=max(1.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                raise AssertionError(f"rank {rank} still running after {PROCESS_TIMEOUT_S:.0f}s:\n"
                                     f"{log.read_text()[-4000:]}") from None
            assert proc.returncode == 0, f"rank {rank} exited {proc.returncode}:\n{log.read_text()[-4000:]}"
    finally:
        for proc, _ in procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=30)
    return [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in range(WORLD)]


def _run_control(tmp_path: Path, domains: list[tuple[str, str]]) -> list[int]:
    """The same 2 × 2 layout without partitions, in this process: shard bytes each node's cache holds after."""
    caches = [tmp_path / "control" / f"node{j}" for j in range(NODES)]
    ranks = [PiKEStreamingMixer([Domain(n, remote=r, local=str(caches[rank // LOCAL] / n)) for n, r in domains], B,
                                seed=SEED, weights=WEIGHTS, rank=rank, world_size=WORLD, local_world_size=LOCAL,
                                read_ahead_workers=1)
             for rank in range(WORLD)]
    try:
        for _ in range(STEPS):
            for m in ranks:
                m.next_batch()
    finally:
        for m in ranks:
            m.close()
    return [_shard_bytes(c) for c in caches]


@pytest.mark.slow
def test_two_nodes_each_read_their_partitions_and_together_the_global_batches(s3_env, s3_bucket, tmp_path):
    source = tmp_path / "source"
    domains = []
    for code, (name, n) in enumerate(SIZES.items()):
        write_domain(str(source / name), name, n, code=code, samples_per_shard=SAMPLES_PER_SHARD)
        upload_folder(s3_env.settings, s3_bucket, str(source / name), f"corpus/{name}")
        domains.append((name, f"s3://{s3_bucket}/corpus/{name}"))

    results = _run_ranks(tmp_path, s3_env.env(), domains)

    # Each process found its place in the launcher's environment.
    for rank, r in enumerate(results):
        assert (r["rank"], r["world_size"], r["node"], r["nodes"], r["local_rank"]) == \
            (rank, WORLD, rank // LOCAL, NODES, rank % LOCAL)
        assert len(r["steps"]) == STEPS and all(len(part) == B // WORLD for part in r["steps"])

    # 1. The four ranks' parts make up the global batches of a one-node mixer, step by step.
    reference = PiKEStreamingMixer([Domain(n, remote=r, local=str(tmp_path / "reference" / n)) for n, r in domains],
                                   B, seed=SEED, weights=WEIGHTS, rank=0, world_size=1, partitions=P,
                                   read_ahead_workers=0)
    try:
        expected = []
        for _ in range(STEPS):
            domain, sample = reference.compose()
            expected.append(Counter(zip(domain.tolist(), sample.tolist())))
        orders = reference.part_orders
    finally:
        reference.close()
    for step in range(STEPS):
        union = Counter((c, s) for r in results for c, s in r["steps"][step])
        assert union == expected[step], f"step {step}: the ranks' union differs from the one-node global batch"
    assert all(consumed >= SIZES[name] for name, consumed in reference.consumed.items()), reference.consumed
    # … and the nodes read disjoint partitions, P/N of every domain each (which ones is the mixer's choice).
    read: list[dict[int, set[int]]] = [{c: set() for c in range(len(SIZES))} for _ in range(NODES)]
    for rank, r in enumerate(results):
        for part in r["steps"]:
            for c, s in part:
                read[rank // LOCAL][c].add(int(np.searchsorted(orders[c].bounds, s, side="right") - 1))
    for c in range(len(SIZES)):
        assert all(len(read[j][c]) == P // NODES for j in range(NODES)), f"domain {c}: partitions read {read}"
        assert not read[0][c] & read[1][c], f"domain {c}: both nodes read a partition: {read}"

    # 2. Bytes each node downloaded (shard files in its cache; no cache_limit, so nothing was evicted).
    cached_names = {p.name for p in (tmp_path / "cache").rglob("*") if p.is_file() and SHARD_FILE.match(p.name)}
    assert cached_names and all(n.endswith(".mds") for n in cached_names)  # decompressed: compare with raw sizes
    raw_corpus = 0
    biggest = 0
    for name in SIZES:
        index = json.loads((source / name / "index.json").read_text())
        raw_corpus += sum(s["raw_data"]["bytes"] for s in index["shards"])
        biggest = max(biggest, max(s["raw_data"]["bytes"] for s in index["shards"]))
    per_node = [_shard_bytes(tmp_path / "cache" / f"node{j}") for j in range(NODES)]
    slack = len(SIZES) * (P // NODES) * biggest  # a boundary shard per domain and owned partition
    control = _run_control(tmp_path, domains)
    report = (f"bytes per node with partitions {per_node}, without {control}, corpus {raw_corpus} "
              f"(bound {1.2 * raw_corpus / NODES + slack:.0f})")
    print(report)
    for j in range(NODES):
        assert 0 < per_node[j] <= 1.2 * raw_corpus / NODES + slack, report
        assert per_node[j] < raw_corpus, report
        assert control[j] >= 0.9 * raw_corpus, report  # without partitions every node reads (nearly) everything
        assert control[j] <= raw_corpus, report
    assert sum(per_node) >= 0.95 * raw_corpus, report  # between them, the nodes read (nearly) the whole corpus
