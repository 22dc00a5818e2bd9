"""A global batch size that changes over a run: the ramp's sizes, and the mixer's invariants across them.

The mixer's promises (README "The mixer") must hold while the batch grows and across a resume that changes
the batch size: deterministic batches, no repeats inside a domain epoch, exact resume (at any step of the
ramp), the same global batches on any rank count, and cumulative draws within 2 of Σ_t w_k(t)·B(t).
"""

from __future__ import annotations

import pickle
from collections import Counter

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pike_stream import BatchRamp, MixerStateError, PiKEStreamingMixer
from pike_stream.mixer.batch_size import steps_for_samples
from tests.mds_data import write_domains
from tests.test_mixer import SIZES, make_domains, run

FINAL = 16
RAMP = BatchRamp(start=4, increment=4, samples=120)  # 4, 8, 12 then 16 after 120 samples: steps 0–9 ramp
STOPS = (1, 3, 7, 10, 14)  # inside the first increment, mid-ramp, at its end, after it


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> str:
    return write_domains(str(tmp_path_factory.mktemp("domains")), SIZES)


def ramped(root: str, **kwargs) -> PiKEStreamingMixer:
    kwargs.setdefault("global_batch_size", FINAL)
    kwargs.setdefault("batch_ramp", RAMP)
    kwargs.setdefault("seed", 7)
    return PiKEStreamingMixer(make_domains(root), **kwargs)


# ---------------------------------------------------------------------------------------- the ramp itself
def test_sizes_follow_megatrons_rampup_formula():
    # 3 increments over 120 samples: one every 40 samples; the final size after the ramp.
    assert [RAMP.size(FINAL, s) for s in (0, 39, 40, 79, 80, 119, 120, 121, 10**9)] == \
        [4, 4, 8, 8, 12, 12, 16, 16, 16]
    assert RAMP.sizes(FINAL) == [4, 8, 12, 16]


def test_the_mixers_batches_grow_along_the_ramp(data_root):
    mixer = ramped(data_root, read_ahead=0)
    sizes, samples = [], 0
    for _ in range(21):
        assert mixer.batch_size == RAMP.size(FINAL, samples)
        domain, _ = mixer.compose()
        sizes.append(len(domain))
        samples += len(domain)
        assert mixer.samples == samples
    # 10 batches of 4 (40 samples), 5 of 8 (to 80), 4 of 12 (to 128 > 120), then the final 16
    assert sizes == [4] * 10 + [8] * 5 + [12] * 4 + [16] * 2 == _expected_sizes(21)


def _expected_sizes(steps: int) -> list[int]:
    out, samples = [], 0
    for _ in range(steps):
        out.append(RAMP.size(FINAL, samples))
        samples += out[-1]
    return out


def test_steps_for_samples_counts_the_ramp():
    sizes = _expected_sizes(80)
    for samples in (1, 4, 5, 40, 119, 120, 121, 500):
        expected = next(i + 1 for i in range(80) if sum(sizes[:i + 1]) >= samples)
        assert steps_for_samples(FINAL, RAMP, samples) == expected
    assert steps_for_samples(FINAL, None, 33) == 3


@pytest.mark.parametrize("ramp, world_size, message", [
    (BatchRamp(16, 4, 100), 1, "start 16 must be below"),
    (BatchRamp(4, 5, 100), 1, "not a multiple of increment 5"),
    (BatchRamp(2, 2, 100), 4, "batch size 2 is not divisible by world_size=4"),
])
def test_a_ramp_the_mixer_cannot_follow_is_refused(data_root, ramp, world_size, message):
    with pytest.raises(ValueError, match=message):
        ramped(data_root, batch_ramp=ramp, world_size=world_size, rank=0)


@pytest.mark.parametrize("obj, message", [
    ({"start": 0, "increment": 4, "samples": 10}, "rampup_batch_size: start must be a positive integer"),
    ({"start": 4, "increment": 4}, r"expected \{start, increment, samples\}"),
    ({"start": 4, "increment": 4, "samples": 10, "x": 1}, r"expected \{start, increment, samples\}"),
])
def test_a_malformed_ramp_names_its_key(obj, message):
    with pytest.raises(ValueError, match=message):
        BatchRamp.from_dict(obj)


# ---------------------------------------------------------------------------------------- invariants
def test_same_inputs_same_batches(data_root):
    assert run(ramped(data_root), 0, 30) == run(ramped(data_root), 0, 30)


def test_each_domain_epoch_is_a_permutation_across_the_ramp(data_root):
    drawn: dict[int, list[int]] = {k: [] for k in range(len(SIZES))}
    for domains, ids in run(ramped(data_root), 0, 200):
        for k, i in zip(domains, ids):
            drawn[k].append(i)
    for k, n in enumerate(SIZES.values()):
        assert len(drawn[k]) >= 2 * n
        for e in range(len(drawn[k]) // n):
            assert sorted(drawn[k][e * n:(e + 1) * n]) == list(range(n)), f"domain {k} epoch {e}"


@pytest.mark.parametrize("stop_at", STOPS)
def test_exact_resume_at_any_step_of_the_ramp(data_root, stop_at):
    reference = run(ramped(data_root), 0, 30)
    before = ramped(data_root)
    head = run(before, 0, stop_at)
    samples = sum(len(ids) for _, ids in head)
    state = pickle.loads(pickle.dumps(before.state_dict(samples, True)))
    after = ramped(data_root)
    after.load_state_dict(state)
    assert head + run(after, stop_at, 30) == reference


def test_state_for_a_step_already_passed_is_found_by_samples(data_root):
    ahead = ramped(data_root)
    run(ahead, 0, 12)
    behind = ramped(data_root)
    head = run(behind, 0, 9)
    samples = sum(len(ids) for _, ids in head)
    assert ahead.state_dict(samples) == behind.state_dict(samples)
    with pytest.raises(MixerStateError, match=f"none at {samples + 1}"):
        ahead.state_dict(samples + 1)


@pytest.mark.parametrize("world_size", [2, 4])
def test_rank_slices_partition_every_batch_of_the_ramp(data_root, world_size):
    whole = run(ramped(data_root), 0, 20)
    parts = [run(ramped(data_root, rank=r, world_size=world_size), 0, 20) for r in range(world_size)]
    for step, (domains, ids) in enumerate(whole):
        pairs = list(zip(domains, ids))
        slices = [list(zip(*parts[r][step])) for r in range(world_size)]
        for r in range(world_size):
            assert slices[r] == pairs[r::world_size]
        assert Counter(sum(slices, [])) == Counter(pairs)


def test_resume_four_ranks_on_two_mid_ramp(data_root):
    ranks = [ramped(data_root, rank=r, world_size=4) for r in range(4)]
    for mixer in ranks:
        run(mixer, 0, 6)
    states = [mixer.state_dict() for mixer in ranks]
    assert all(s == states[0] for s in states)
    two = [ramped(data_root, rank=r, world_size=2) for r in range(2)]
    for mixer in two:
        mixer.load_state_dict(states[0])
    tails = [run(mixer, 6, 20) for mixer in two]
    whole = run(ramped(data_root), 0, 20)[6:]
    for step, (domains, ids) in enumerate(whole):
        pairs = list(zip(domains, ids))
        assert [list(zip(*tails[r][step])) for r in range(2)] == [pairs[0::2], pairs[1::2]]


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), start=st.integers(1, 4), increments=st.integers(1, 5),
       ramp_samples=st.integers(1, 400), steps=st.integers(1, 150))
def test_counts_track_weights_times_the_changing_batch_size(data_root, seed, start, increments, ramp_samples, steps):
    """Cumulative draws stay within 2 of Σ_t w_k(t)·B(t) however the batch grows and the weights change."""
    ramp = BatchRamp(start, 2, ramp_samples)
    mixer = ramped(data_root, global_batch_size=start + 2 * increments, batch_ramp=ramp, seed=seed,
                   read_ahead=0, read_ahead_workers=0)
    rng = np.random.default_rng(seed)
    target = np.zeros(len(SIZES))
    for step in range(steps):
        if step % 3 == 0:
            w = rng.dirichlet(np.full(len(SIZES), 0.4)) * (rng.random(len(SIZES)) > 0.3)
            mixer.set_weights(w if w.sum() else [1, 0, 0])
        target += np.array(list(mixer.weights.values())) * mixer.batch_size
        mixer.compose()
    assert np.abs(np.array(list(mixer.consumed.values())) - target).max() < 2.0


# ---------------------------------------------------------------------------------------- changing the size
@pytest.mark.parametrize("first, second", [
    ({"batch_ramp": None, "global_batch_size": 8}, {"batch_ramp": None, "global_batch_size": 16}),
    ({}, {"batch_ramp": None}),
    ({"batch_ramp": None}, {}),
])
def test_another_batch_size_is_refused_unless_allowed(data_root, first, second):
    before = ramped(data_root, **first)
    run(before, 0, 5)
    state = before.state_dict()
    with pytest.raises(MixerStateError, match="allow_batch_size_change"):
        ramped(data_root, **second).load_state_dict(state)


def test_an_allowed_change_continues_the_cursors_with_the_new_size(data_root, caplog):
    """Resumed at 16 after 9 steps at 8: the same weights, cursors and carries, batches of 16 from then on,
    and each domain's order continues where it stopped (nothing repeated, nothing skipped)."""
    before = ramped(data_root, batch_ramp=None, global_batch_size=8)
    head = run(before, 0, 9)
    state = before.state_dict()
    after = ramped(data_root, batch_ramp=None, global_batch_size=16, allow_batch_size_change=True)
    with caplog.at_level("WARNING", logger="pike_stream.mixer.mixer"):
        after.load_state_dict(state)
    assert "global batch 8" in caplog.text and "size 16" in caplog.text
    assert after.consumed == before.consumed and after.weights == before.weights
    tail = run(after, 9, 40)
    assert {len(ids) for _, ids in tail} == {16}
    # The concatenated draws of each domain are its order from position 0: what one mixer draws in sequence.
    reference = ramped(data_root, batch_ramp=None, global_batch_size=8)
    for k, name in enumerate(SIZES):
        drawn = [i for d, ids in head + tail for kk, i in zip(d, ids) if kk == k]
        order = reference.orders[k].take(0, len(drawn))
        assert drawn == order.tolist(), name
    # and the resumed run is itself exactly resumable
    again = ramped(data_root, batch_ramp=None, global_batch_size=16)
    again.load_state_dict(after.state_dict())
    assert run(again, 40, 50) == run(after, 40, 50)


def test_an_older_state_resumes_as_a_fixed_batch(data_root):
    fixed = ramped(data_root, batch_ramp=None, global_batch_size=8)
    run(fixed, 0, 6)
    state = fixed.state_dict()
    old = {k: v for k, v in {**state, "version": 2}.items() if k != "rampup_batch_size"}
    resumed = ramped(data_root, batch_ramp=None, global_batch_size=8)
    resumed.load_state_dict(old)
    assert resumed.samples == 48 and run(resumed, 6, 12) == run(fixed, 6, 12)
    with pytest.raises(MixerStateError, match="rampup_batch_size is missing"):
        ramped(data_root, batch_ramp=None, global_batch_size=8).load_state_dict({**old, "version": 3})

