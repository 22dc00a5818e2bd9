"""A domain whose data grew (shards appended, none changed), continued with ``allow_data_growth``.

The domain epoch in progress keeps its order to its end; the new samples start in the next domain epoch, and
every later epoch is a permutation of all samples. Other domains are untouched. The resumed run is exact on
resume and on any rank count; the probe order follows the same rule; growth may happen more than once.
Anything but an appended-to domain is still refused.
"""

from __future__ import annotations

import os
import pickle

import numpy as np
import pytest

from pike_stream import Domain, MixerStateError, PiKEStreamingMixer
from tests.mds_data import write_domain
from tests.test_mixer import run

B = 8
EN = 100
SIZES = (44, 110, 154)  # de as it grows: 2, 5, then 7 shards of 22 (the earlier shards unchanged)


def still(step: int) -> None:
    """Uniform weights throughout."""


@pytest.fixture(scope="module")
def roots(tmp_path_factory) -> list[str]:
    """One root per size of ``de``, each with the same ``en``."""
    base = tmp_path_factory.mktemp("growth")
    write_domain(str(base / "en"), "en", EN, code=0)
    out = []
    for n in SIZES:
        root = base / f"de{n}"
        write_domain(str(root / "de"), "de", n, code=1)
        os.symlink(base / "en", root / "en")
        out.append(str(root))
    return out


def mixer_of(root: str, **kwargs) -> PiKEStreamingMixer:
    kwargs.setdefault("global_batch_size", B)
    kwargs.setdefault("seed", 3)
    return PiKEStreamingMixer([Domain(n, local=os.path.join(root, n)) for n in ("en", "de")], **kwargs)


def resumed(root: str, state: dict, **kwargs) -> PiKEStreamingMixer:
    mixer = mixer_of(root, allow_data_growth=True, **kwargs)
    mixer.load_state_dict(pickle.loads(pickle.dumps(state)))
    return mixer


def drawn(log, code: int) -> list[int]:
    return [i for domains, ids in log for d, i in zip(domains, ids) if d == code]


def test_without_the_option_growth_is_refused_naming_it(roots):
    old = mixer_of(roots[0])
    run(old, 0, 3, weights=still)
    with pytest.raises(MixerStateError, match=r"\['de'\] changed.*allow_data_growth"):
        mixer_of(roots[1]).load_state_dict(old.state_dict())


def test_data_that_changed_rather_than_grew_is_refused(roots, tmp_path):
    old = mixer_of(roots[0])
    run(old, 0, 3, weights=still)
    write_domain(str(tmp_path / "de"), "de", SIZES[1], code=5)  # other content: the old shards are not a prefix
    os.symlink(os.path.join(roots[0], "en"), tmp_path / "en")
    with pytest.raises(MixerStateError, match="not a prefix of the shards"):
        resumed(str(tmp_path), old.state_dict())


def test_the_epoch_in_progress_keeps_its_order_and_new_samples_start_in_the_next(roots, caplog):
    old = mixer_of(roots[0])
    head = run(old, 0, 5, weights=still)
    cursor = old.consumed["de"]
    assert 0 < cursor < SIZES[0]  # mid-epoch
    reference = run(mixer_of(roots[0]), 0, 80, weights=still)  # the run had the data not grown
    with caplog.at_level("WARNING", logger="pike_stream.mixer.mixer"):
        grown = resumed(roots[1], old.state_dict())
    assert "domain 'de' grew from 2 to 5 shards" in caplog.text, caplog.text
    tail = run(grown, 5, 80, weights=still)
    de = drawn(head + tail, 1)
    assert len(de) > SIZES[0] + 2 * SIZES[1]
    # epoch 0: the old order to its end, exactly as without growth
    assert de[:SIZES[0]] == drawn(reference, 1)[:SIZES[0]]
    # then whole epochs of all samples, each without repeats
    for start in (SIZES[0], SIZES[0] + SIZES[1]):
        assert sorted(de[start:start + SIZES[1]]) == list(range(SIZES[1]))
    assert set(de[SIZES[0]:]) & set(range(SIZES[0], SIZES[1]))  # the new samples are drawn
    assert drawn(head + tail, 0) == drawn(reference, 0)  # en is untouched
    state = grown.state_dict()
    assert state["version"] == 5
    assert state["domains"]["de"]["grown"] == [[2, SIZES[0]]]
    assert state["domains"]["de"]["fingerprint"] == grown.sources[1].fingerprint
    assert state["domains"]["en"]["grown"] == []


def test_after_growth_resume_is_exact_and_rank_independent(roots):
    old = mixer_of(roots[0])
    run(old, 0, 4, weights=still)
    state = old.state_dict()
    whole = run(resumed(roots[1], state), 4, 50, weights=still)
    assert run(resumed(roots[1], state), 4, 50, weights=still) == whole
    # stopped before the boundary (de still in its old epoch), resumed without the option: the state has it
    mid = resumed(roots[1], state)
    run(mid, 4, 7, weights=still)
    assert mid.consumed["de"] < SIZES[0]
    again = mixer_of(roots[1])
    again.load_state_dict(pickle.loads(pickle.dumps(mid.state_dict())))
    assert run(again, 7, 50, weights=still) == whole[3:]
    parts = [run(resumed(roots[1], state, rank=r, world_size=2), 4, 50, weights=still) for r in range(2)]
    for step, (domains, ids) in enumerate(whole):
        pairs = list(zip(domains, ids))
        assert [list(zip(*parts[r][step])) for r in range(2)] == [pairs[0::2], pairs[1::2]]


def test_the_probe_order_grows_at_its_own_epoch_boundary(roots):
    old = mixer_of(roots[0])
    before = [old.compose_probe(8) for _ in range(3)]  # de's probe cursor at 24 of 44
    reference = mixer_of(roots[0])
    ref_ids = np.concatenate([reference.compose_probe(8)[1][8:] for _ in range(7)])  # de's rows: the second 8
    grown = resumed(roots[1], old.state_dict())
    assert grown.state_dict()["domains"]["de"]["probe_grown"] == [[2, SIZES[0]]]
    after = [grown.compose_probe(8) for _ in range(20)]
    de = np.concatenate([ids[8:] for _, ids in before + after]).tolist()
    assert de[:SIZES[0]] == ref_ids.tolist()[:SIZES[0]]
    assert sorted(de[SIZES[0]:SIZES[0] + SIZES[1]]) == list(range(SIZES[1]))


def test_at_an_epoch_boundary_or_before_any_draw_the_new_samples_come_at_once(roots):
    only_de = mixer_of(roots[0], global_batch_size=11, weights={"en": 0, "de": 1})
    run(only_de, 0, 4, weights=still)
    assert only_de.consumed["de"] == SIZES[0]  # exactly one epoch drawn
    grown = resumed(roots[1], only_de.state_dict(), global_batch_size=11, weights={"en": 0, "de": 1})
    assert grown.state_dict()["domains"]["de"]["grown"] == [[2, SIZES[0]]]
    assert sorted(drawn(run(grown, 4, 4 + SIZES[1] // 11, weights=still), 1)) == list(range(SIZES[1]))
    untouched = mixer_of(roots[0], weights={"en": 1, "de": 0})
    run(untouched, 0, 3, weights=still)
    assert untouched.consumed["de"] == 0
    fresh = resumed(roots[1], untouched.state_dict(), weights={"en": 1, "de": 0})
    assert fresh.state_dict()["domains"]["de"]["grown"] == []  # nothing drawn: all of it from position 0
    assert fresh.orders[1].take(0, SIZES[1]).tolist() == mixer_of(roots[1]).orders[1].take(0, SIZES[1]).tolist()


def test_growing_twice_chains_the_segments(roots):
    first = mixer_of(roots[0])
    head = run(first, 0, 5, weights=still)  # de mid-epoch in its first size
    second = resumed(roots[1], first.state_dict())
    middle = run(second, 5, 8, weights=still)
    assert second.consumed["de"] < SIZES[0]  # the second size has not begun
    third = resumed(roots[2], second.state_dict())
    assert third.state_dict()["domains"]["de"]["grown"] == [[2, SIZES[0]]]  # the second size never began
    middle += run(third, 8, 30, weights=still)
    cursor = third.consumed["de"]
    assert SIZES[0] < cursor < SIZES[0] + SIZES[2]
    de = drawn(head + middle + run(third, 30, 120, weights=still), 1)
    assert sorted(de[SIZES[0]:SIZES[0] + SIZES[2]]) == list(range(SIZES[2]))
    assert sorted(de[SIZES[0] + SIZES[2]:SIZES[0] + 2 * SIZES[2]]) == list(range(SIZES[2]))

    # grown while in an epoch of the second size: that epoch finishes, then the third size
    a = mixer_of(roots[0])
    run(a, 0, 5, weights=still)
    b = resumed(roots[1], a.state_dict())
    log = run(b, 5, 25, weights=still)
    assert SIZES[0] < b.consumed["de"] < SIZES[0] + SIZES[1]
    c = resumed(roots[2], b.state_dict())
    assert c.state_dict()["domains"]["de"]["grown"] == [[2, SIZES[0]], [5, SIZES[0] + SIZES[1]]]
    de = drawn(log + run(c, 25, 110, weights=still), 1)
    start = SIZES[0] - a.consumed["de"]  # where de's first epoch of the second size begins in this tail
    assert sorted(de[start:start + SIZES[1]]) == list(range(SIZES[1]))
    assert sorted(de[start + SIZES[1]:start + SIZES[1] + SIZES[2]]) == list(range(SIZES[2]))


def test_a_malformed_segment_list_is_named(roots):
    state = mixer_of(roots[0]).state_dict()
    state["domains"]["de"]["grown"] = [[2, "x"]]
    with pytest.raises(MixerStateError, match=r"domains\.de\.grown must be a list of \[shards, until\] pairs"):
        mixer_of(roots[0]).load_state_dict(state)
    state["domains"]["de"]["grown"] = [[1, 7]]  # not an epoch boundary of a 25-sample segment
    with pytest.raises(MixerStateError, match="domains.de: segment"):
        mixer_of(roots[0]).load_state_dict(state)


def test_a_version_3_state_without_segments_resumes(roots):
    old = mixer_of(roots[0])
    run(old, 0, 3, weights=still)
    state = old.state_dict()
    for entry in state["domains"].values():
        del entry["grown"], entry["probe_grown"]
    again = mixer_of(roots[0])
    again.load_state_dict({**state, "version": 3})
    assert run(again, 3, 12, weights=still) == run(old, 3, 12, weights=still)


def test_pike_training_resumed_on_grown_data(roots, tmp_path, in_process_dist):
    from pike_stream.train.records import read_batch_log
    from tests.test_domain_changes import _train

    first = str(tmp_path / "first")
    _train(roots[0], first, ("en", "de"))
    checkpoint = os.path.join(first, "ckpt", "ep0-ba8-rank0.pt")
    with pytest.raises(MixerStateError, match="allow_data_growth"):
        _train(roots[1], str(tmp_path / "refused"), ("en", "de"), load_path=checkpoint, max_duration="16ba")
    second = str(tmp_path / "second")
    _train(roots[1], second, ("en", "de"), load_path=checkpoint, max_duration="16ba",
           train_loader={"allow_data_growth": True})
    logs = [read_batch_log(first), read_batch_log(second)]
    assert sorted(logs[1]) == list(range(8, 16))
    de = [int(i) for log in logs for s in sorted(log) for d, i in zip(*log[s]) if d == 1]
    before = sum(int(d == 1) for s in logs[0] for d in logs[0][s][0])
    boundary = -(-before // SIZES[0]) * SIZES[0]  # the end of the old epoch in progress at the resume
    assert before % SIZES[0] and len(de) > boundary, "resumed mid-epoch, and the run reached the grown samples"
    for start in range(0, boundary, SIZES[0]):  # the old epochs, the one in progress finished
        assert sorted(de[start:start + SIZES[0]]) == list(range(SIZES[0]))
    grown = de[boundary:boundary + SIZES[1]]  # the next epoch: all 110 samples
    assert len(set(grown)) == len(grown) and set(grown) <= set(range(SIZES[1])) and max(grown) >= SIZES[0]
