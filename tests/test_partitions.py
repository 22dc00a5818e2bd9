"""Node-partitioned reads (``PiKEStreamingMixer(partitions=P)``): each node reads only its partitions' shards,
and the mixer's invariants hold as without partitions: the same global batches on any node count that
divides P, exact resume (also on another node count), without replacement (per partition epoch), the
fidelity of counts to weights, zero lag."""

from __future__ import annotations

import pickle
from collections import Counter

import numpy as np
import pytest

from pike_stream import MixerStateError, PiKEStreamingMixer
from pike_stream.mixer.partitions import (
    PartitionedOrder,
    node_counts,
    partition_nodes,
    slot_capacities,
    slot_order,
    split_counts,
)
from tests.mds_data import decode_ids
from tests.test_mixer import SIZES, make_domains, schedule

P = 4
B = 8
WORLD = 4


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> str:
    from tests.mds_data import write_domains

    return write_domains(str(tmp_path_factory.mktemp("domains")), SIZES)


def mixer(root: str, **kwargs) -> PiKEStreamingMixer:
    kwargs.setdefault("global_batch_size", B)
    kwargs.setdefault("seed", 7)
    kwargs.setdefault("partitions", P)
    return PiKEStreamingMixer(make_domains(root), read_ahead_workers=0, **kwargs)


def world(root: str, nodes: int, **kwargs) -> list[PiKEStreamingMixer]:
    """The WORLD ranks of a run on ``nodes`` nodes."""
    return [mixer(root, rank=r, world_size=WORLD, local_world_size=WORLD // nodes, **kwargs) for r in range(WORLD)]


def run_world(ranks: list[PiKEStreamingMixer], start: int, stop: int) -> list[list[tuple[int, int]]]:
    """Steps ``start..stop-1`` on every rank, weights scheduled as in the mixer tests; per step, the samples
    (domain, id) each rank read, in rank order."""
    steps = []
    for step in range(start, stop):
        parts = []
        for m in ranks:
            batch = m.next_batch()
            code, sid = decode_ids(batch["input_ids"])
            assert code.tolist() == batch["domain"].tolist() and sid.tolist() == batch["sample_id"].tolist()
            assert len(sid) == m.global_batch_size // m.world_size
            parts.append(list(zip(code.tolist(), sid.tolist())))
        steps.append(parts)
        new = schedule(step)
        if new is not None:
            for m in ranks:
                m.set_weights(new)
    return steps


def global_batches(steps: list[list[list[tuple[int, int]]]]) -> list[Counter]:
    return [Counter(s for part in parts for s in part) for parts in steps]


def test_one_partition_is_the_mixer_without_partitions(data_root):
    plain = PiKEStreamingMixer(make_domains(data_root), B, seed=7)
    one = mixer(data_root, partitions=1)
    for step in range(60):
        assert [a.tolist() for a in one.compose()] == [a.tolist() for a in plain.compose()], step
        new = schedule(step)
        if new is not None:
            one.set_weights(new)
            plain.set_weights(new)


@pytest.mark.parametrize("nodes", [1, 2, 4])
def test_the_global_batches_do_not_depend_on_the_node_count(data_root, nodes):
    reference = mixer(data_root)
    expected = []
    for step in range(40):
        domain, sample = reference.compose()
        expected.append(Counter(zip(domain.tolist(), sample.tolist())))
        new = schedule(step)
        if new is not None:
            reference.set_weights(new)
    assert global_batches(run_world(world(data_root, nodes), 0, 40)) == expected


@pytest.mark.parametrize("nodes", [2, 4])
def test_each_node_reads_only_its_partitions(data_root, nodes):
    ranks = world(data_root, nodes)
    orders = ranks[0].part_orders
    local = WORLD // nodes
    for parts in run_world(ranks, 0, 60):  # more than an epoch of every domain
        for rank, part in enumerate(parts):
            node = rank // local
            for k, sid in part:
                p = int(np.searchsorted(orders[k].bounds, sid, side="right") - 1)
                assert p // (P // nodes) == node, f"rank {rank} (node {node}) read sample {sid} of partition {p}"


def test_shards_read_per_node_shrink_with_the_node_count(data_root):
    """Over two epochs of every domain, each node touches about 1/N of the shards (plus shared boundaries)."""
    touched = {}
    for nodes in (1, 2, 4):
        ranks = world(data_root, nodes)
        shards: list[set] = [set() for _ in range(nodes)]
        for parts in run_world(ranks, 0, 120):
            for rank, part in enumerate(parts):
                for k, sid in part:
                    shard, _ = ranks[0].sources[k].locate(np.array([sid]))
                    shards[rank // (WORLD // nodes)].add((k, int(shard[0])))
        touched[nodes] = max(len(s) for s in shards)
    total = sum(len(s.shards) for s in ranks[0].sources)
    assert touched[1] == total
    for nodes in (2, 4):
        assert touched[nodes] <= 1.2 * total / nodes + len(SIZES) * P / nodes, touched


@pytest.mark.parametrize("resume_nodes", [1, 2, 4])
def test_resume_on_another_node_count_is_exact(data_root, resume_nodes):
    expected = global_batches(run_world(world(data_root, 2), 0, 50))
    first = world(data_root, 2)
    head = global_batches(run_world(first, 0, 23))
    state = pickle.loads(pickle.dumps(first[0].state_dict(first[0].samples)))
    assert all(m.state_dict() == state for m in first)
    second = world(data_root, resume_nodes)
    for m in second:
        m.load_state_dict(state)
    assert head + global_batches(run_world(second, 23, 50)) == expected


def test_each_partition_epoch_is_a_permutation_and_partitions_keep_pace(data_root):
    m = mixer(data_root)
    rng = np.random.default_rng(3)
    seen: dict[tuple[int, int, int], list[int]] = {}
    for step in range(300):
        before = m._state.part_consumed.copy()
        domain, sample = m.compose()
        orders = m.part_orders
        for k, sid in zip(domain.tolist(), sample.tolist()):
            p = int(np.searchsorted(orders[k].bounds, sid, side="right") - 1)
            epoch = orders[k].epoch_of(p, int(before[k, p]))
            seen.setdefault((k, p, epoch), []).append(sid)
            before[k, p] += 1
        consumed = np.array(list(m.consumed.values()))
        assert np.abs(m._state.part_consumed - consumed[:, None] / P).max() <= 2.0, step
        m.set_weights(rng.dirichlet(np.ones(len(SIZES)) * 0.5))
    for (k, p, epoch), ids in seen.items():
        lo, hi = m.part_orders[k].bounds[p], m.part_orders[k].bounds[p + 1]
        assert len(ids) == len(set(ids)), f"domain {k} partition {p} repeated a sample in its epoch {epoch}"
        assert all(lo <= i < hi for i in ids)
        if len(ids) == hi - lo:
            assert sorted(ids) == list(range(lo, hi))


def test_counts_per_domain_are_those_without_partitions(data_root):
    """Partitions change which samples, never how many of each domain: fidelity and zero lag as without."""
    plain = PiKEStreamingMixer(make_domains(data_root), B, seed=7)
    parted = mixer(data_root)
    for step in range(80):
        a, _ = plain.compose()
        b, _ = parted.compose()
        assert np.bincount(a, minlength=3).tolist() == np.bincount(b, minlength=3).tolist(), step
        new = schedule(step)
        if new is not None:
            plain.set_weights(new)
            parted.set_weights(new)


def test_probe_batches_are_node_local_and_resume_exactly(data_root):
    ranks = world(data_root, 2)
    for m in ranks:
        m.probe_batch(4)
    state = ranks[0].state_dict()
    probes = [[decode_ids(m.probe_batch(4)["input_ids"]) for m in ranks] for _ in range(3)]
    orders = ranks[0].probe_part_orders
    for parts in probes:
        ids = [(int(c), int(s)) for code, sid in parts for c, s in zip(code, sid)]
        assert Counter(c for c, _ in ids) == {0: 4, 1: 4, 2: 4}
        for rank, (code, sid) in enumerate(parts):
            for c, s in zip(code.tolist(), sid.tolist()):
                assert int(np.searchsorted(orders[c].bounds, s, side="right") - 1) // (P // 2) == rank // 2
    again = world(data_root, 4)
    for m in again:
        m.load_state_dict(state)
    replay = [[decode_ids(m.probe_batch(4)["input_ids"]) for m in again] for _ in range(3)]
    flat = [sorted((int(c), int(s)) for code, sid in parts for c, s in zip(code, sid)) for parts in probes]
    assert flat == [sorted((int(c), int(s)) for code, sid in parts for c, s in zip(code, sid)) for parts in replay]


def test_mistakes_are_one_clear_error(data_root):
    with pytest.raises(ValueError, match=r"partitions=4 cannot be split evenly over this run's 3 nodes .* \[1, 2, 4\]"):
        mixer(data_root, rank=0, world_size=3, local_world_size=1, global_batch_size=9)
    with pytest.raises(ValueError, match="allow_data_growth does not work with partitions"):
        mixer(data_root, allow_data_growth=True)
    with pytest.raises(ValueError, match=r"partitions=100: domain 'code' has 57 samples"):
        mixer(data_root, partitions=100)
    with pytest.raises(ValueError, match="partitions must be a positive integer"):
        mixer(data_root, partitions=0)
    saved = mixer(data_root)
    saved.compose()
    with pytest.raises(MixerStateError, match=r"partitions=4, this run has partitions=2"):
        mixer(data_root, partitions=2).load_state_dict(saved.state_dict())
    with pytest.raises(MixerStateError, match=r"partitions=4, this run has partitions=None"):
        PiKEStreamingMixer(make_domains(data_root), B, seed=7).load_state_dict(saved.state_dict())
    broken = saved.state_dict()
    broken["domains"]["en"]["partition_consumed"][0] += 1
    with pytest.raises(MixerStateError, match=r"domains\.en\.partition_consumed must be 4 counts"):
        mixer(data_root).load_state_dict(broken)


def test_local_world_size_comes_from_the_launcher(data_root, monkeypatch):
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    m = mixer(data_root, rank=3, world_size=4)
    assert (m.node, m.nodes, m.local_rank) == (1, 2, 1)


def test_split_counts_fills_every_slot_and_every_count():
    rng = np.random.default_rng(0)
    order = PartitionedOrder(np.array([25] * 7 + [13]), seed=1, partitions=5)
    assert order.sizes.tolist() == [37, 38, 37, 38, 38] and order.sizes.sum() == 188
    for _ in range(200):
        k, p, b = int(rng.integers(1, 6)), int(rng.integers(1, 9)), int(rng.integers(1, 50))
        counts = rng.multinomial(b, rng.dirichlet(np.ones(k)))
        cursors = rng.integers(0, 20, size=(k, p))
        caps = slot_capacities(b, int(rng.integers(0, 100)), p)
        split = split_counts(counts, cursors, caps)
        assert split.min() >= 0
        assert split.sum(axis=1).tolist() == counts.tolist() and split.sum(axis=0).tolist() == caps.tolist()



def test_a_version_4_state_resumes_without_partitions(data_root):
    """States saved before partitions existed (version 4: no ``partitions`` key) resume as before."""
    before = PiKEStreamingMixer(make_domains(data_root), B, seed=7)
    for _ in range(5):
        before.compose()
    state = before.state_dict()
    del state["partitions"]
    state["version"] = 4
    after = PiKEStreamingMixer(make_domains(data_root), B, seed=7)
    after.load_state_dict(state)
    assert [a.tolist() for a in after.compose()] == [a.tolist() for a in before.compose()]
    with pytest.raises(MixerStateError, match="partitions=None, this run has partitions=4"):
        mixer(data_root).load_state_dict(state)


@pytest.mark.parametrize("partitions", [1, 8, 12, 64])
def test_every_allowed_node_count_gets_equal_parts_of_every_batch(partitions):
    """Whatever the batch size (a multiple of the node count) and where the slot sequence stands."""
    assert sorted(slot_order(partitions).tolist()) == list(range(partitions))
    allowed = node_counts(partitions)
    assert allowed == {1: [1], 8: [1, 2, 4, 8], 12: [1, 2, 4, 12], 64: [1, 2, 4, 8, 16, 32, 64]}[partitions]
    rng = np.random.default_rng(partitions)
    for nodes in allowed:
        owner = partition_nodes(partitions, nodes)
        for _ in range(50):
            batch = nodes * int(rng.integers(1, 40))
            caps = slot_capacities(batch, int(rng.integers(0, 10_000)), partitions)
            assert caps.sum() == batch
            assert np.bincount(owner, weights=caps, minlength=nodes).tolist() == [batch // nodes] * nodes
