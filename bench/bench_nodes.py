"""How much of the corpus does each node read in one epoch? The mixer against mosaicml-streaming's partitions.

    python bench/bench_nodes.py [--nodes 1,2,4,8,16,64] [--ranks-per-node 2] [--batch 256]

A simulation from the shard layout alone (no data, no I/O): two domains of ``--shards`` shards of
``--samples-per-shard`` samples each, uniform weights, one epoch of the corpus.

- **pike_stream**: the mixer's own batch plan (``pike_stream.mixer.mixer.plan_batch``, the code that composes
  every batch) over each domain's order; rank ``r`` of ``W`` reads positions ``r :: W`` of each global batch,
  and a node is ``--ranks-per-node`` consecutive ranks.
- **pike_stream_partitioned**: the same with ``partitions=--partitions`` (``plan_partitioned_batch`` and
  ``rank_positions``, the mixer's own code): each node reads only its partitions.
- **streaming**: ``StreamingDataset``'s sample assignment for the same corpus as two streams (its
  ``get_partitions`` with ``num_canonical_nodes`` = ``--canonical-nodes``, then its ``py1e`` shuffle), the
  node-partitioned reads the mixer does not have.

For each node count N it reports the shards each node touches in the epoch, as a fraction of the corpus (the
largest over nodes), against the goal of issue 17: at most ``1.2 × corpus/N`` plus one shard per domain and
partition. Writes ``bench/results/nodes.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from pathlib import Path
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import numpy as np  # noqa: E402

__all__ = ["main", "mixer_shards_per_node", "partitioned_shards_per_node", "streaming_shards_per_node"]

RESULTS = Path(ROOT) / "bench" / "results"


def mixer_shards_per_node(shard_sizes: list[np.ndarray], nodes: int, ranks_per_node: int, batch: int,
                          seed: int = 0) -> list[int]:
    """Distinct shards (over all domains) each node reads in one epoch of the mixer at uniform weights."""
    from pike_stream.mixer.mixer import plan_batch
    from pike_stream.mixer.order import DomainOrder, domain_seed

    k = len(shard_sizes)
    orders = [DomainOrder(sizes, domain_seed(seed, f"d{i}")) for i, sizes in enumerate(shard_sizes)]
    bounds = [np.concatenate([[0], np.cumsum(sizes)]) for sizes in shard_sizes]
    offsets = np.cumsum([0] + [len(sizes) for sizes in shard_sizes])  # global shard index of each domain's first
    consumed, carry, weights = np.zeros(k, np.int64), np.zeros(k), np.full(k, 1 / k)
    world = nodes * ranks_per_node
    touched: list[set[int]] = [set() for _ in range(nodes)]
    total = int(sum(int(s.sum()) for s in shard_sizes))
    for _ in range(-(-total // batch)):
        domain, sample, counts, carry = plan_batch(orders, consumed, weights, carry, batch)
        consumed = consumed + counts
        shard = np.array([offsets[d] + np.searchsorted(bounds[d], i, side="right") - 1
                          for d, i in zip(domain, sample)])
        for rank in range(world):
            touched[rank // ranks_per_node].update(shard[rank::world].tolist())
    return [len(t) for t in touched]


def partitioned_shards_per_node(shard_sizes: list[np.ndarray], nodes: int, ranks_per_node: int, batch: int,
                                partitions: int, seed: int = 0) -> list[int]:
    """Distinct shards each node reads in one epoch of the mixer with ``partitions`` at uniform weights."""
    from pike_stream.mixer.mixer import plan_partitioned_batch, rank_positions
    from pike_stream.mixer.order import domain_seed
    from pike_stream.mixer.partitions import PartitionedOrder

    k = len(shard_sizes)
    orders = [PartitionedOrder(sizes, domain_seed(seed, f"d{i}"), partitions) for i, sizes in enumerate(shard_sizes)]
    bounds = [np.concatenate([[0], np.cumsum(sizes)]) for sizes in shard_sizes]
    offsets = np.cumsum([0] + [len(sizes) for sizes in shard_sizes])
    cursors, carry, weights = np.zeros((k, partitions), np.int64), np.zeros(k), np.full(k, 1 / k)
    world = nodes * ranks_per_node
    touched: list[set[int]] = [set() for _ in range(nodes)]
    total = int(sum(int(s.sum()) for s in shard_sizes))
    composed = 0
    for _ in range(-(-total // batch)):
        domain, sample, partition, _, carry, split = plan_partitioned_batch(orders, cursors, weights, carry, batch,
                                                                            composed)
        cursors, composed = cursors + split, composed + batch
        shard = np.array([offsets[d] + np.searchsorted(bounds[d], i, side="right") - 1
                          for d, i in zip(domain, sample)])
        for rank in range(world):
            mine = rank_positions(len(domain), rank, world, partition, partitions, nodes)
            touched[rank // ranks_per_node].update(shard[mine].tolist())
    return [len(t) for t in touched]


def streaming_shards_per_node(shard_sizes: list[np.ndarray], nodes: int, ranks_per_node: int, batch: int,
                              canonical_nodes: int, seed: int = 0) -> list[int]:
    """Distinct shards each node reads in epoch 0 of a ``StreamingDataset`` over the domains as streams."""
    from streaming.base.partition import get_partitions
    from streaming.base.shuffle import get_shuffle

    sizes = np.concatenate(shard_sizes)
    total = int(sizes.sum())
    partitions = get_partitions("orig", total, canonical_nodes, nodes, ranks_per_node, 1,
                                batch // (nodes * ranks_per_node))
    shuffle = get_shuffle("py1e", sizes, canonical_nodes, seed, 0, max(4_000_000 // canonical_nodes, 1 << 18))
    bounds = np.concatenate([[0], np.cumsum(sizes)])
    out = []
    for node in range(nodes):
        ids = partitions[node].reshape(-1)
        ids = shuffle[ids[ids >= 0]]
        out.append(len(np.unique(np.searchsorted(bounds, ids, side="right") - 1)))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", default="1,2,4,8,16,64")
    parser.add_argument("--ranks-per-node", type=int, default=2)
    parser.add_argument("--batch", type=int, default=256, help="global batch (divisible by every rank count)")
    parser.add_argument("--domains", type=int, default=2)
    parser.add_argument("--shards", type=int, default=200, help="shards per domain")
    parser.add_argument("--samples-per-shard", type=int, default=64)
    parser.add_argument("--canonical-nodes", type=int, default=64, help="streaming's num_canonical_nodes")
    parser.add_argument("--partitions", type=int, default=64, help="the mixer's partitions")
    parser.add_argument("--out", default=str(RESULTS / "nodes.json"))
    args = parser.parse_args(argv)
    shard_sizes = [np.full(args.shards, args.samples_per_shard, dtype=np.int64) for _ in range(args.domains)]
    total_shards = args.domains * args.shards
    rows: list[dict[str, Any]] = []
    for nodes in [int(n) for n in args.nodes.split(",")]:
        if args.batch % (nodes * args.ranks_per_node):
            parser.error(f"--batch {args.batch} is not divisible by {nodes} nodes × {args.ranks_per_node} ranks")
        goal = 1.2 * total_shards / nodes + args.domains * max(1, args.partitions // nodes)
        row = {"nodes": nodes, "goal_shards": goal,
               "pike_stream": mixer_shards_per_node(shard_sizes, nodes, args.ranks_per_node, args.batch),
               "pike_stream_partitioned": partitioned_shards_per_node(shard_sizes, nodes, args.ranks_per_node,
                                                                      args.batch, args.partitions),
               "streaming": streaming_shards_per_node(shard_sizes, nodes, args.ranks_per_node, args.batch,
                                                      args.canonical_nodes)}
        rows.append(row)
        print(f"N={nodes:>3}: shards read by the busiest node, of {total_shards}: pike_stream "
              f"{max(row['pike_stream'])}, with {args.partitions} partitions {max(row['pike_stream_partitioned'])}, "
              f"streaming {max(row['streaming'])} (goal ≤ {goal:.1f})", flush=True)
    result = {"settings": {k: v for k, v in vars(args).items() if k != "out"}, "total_shards": total_shards,
              "command": "python bench/bench_nodes.py " + " ".join(a for a in (argv or sys.argv[1:])),
              "machine": {"python": platform.python_version(), "cpus": os.cpu_count()}, "rows": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
