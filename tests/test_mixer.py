"""PiKEStreamingMixer: each invariant in the README ("The mixer") is a test here."""

from __future__ import annotations

import json
import os
import pickle
import shutil
from collections import Counter

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pike_stream import Domain, DomainDataError, MixerStateError, PiKEStreamingMixer
from tests.mds_data import decode_ids, write_domain, write_domains

SIZES = {"en": 300, "de": 120, "code": 57}  # small domains so runs cross domain-epoch boundaries
B = 8


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> str:
    return write_domains(str(tmp_path_factory.mktemp("domains")), SIZES)


def make_domains(root: str, names=tuple(SIZES)) -> list[Domain]:
    return [Domain(name, local=os.path.join(root, name)) for name in names]


def make_mixer(root: str, **kwargs) -> PiKEStreamingMixer:
    kwargs.setdefault("global_batch_size", B)
    kwargs.setdefault("seed", 7)
    return PiKEStreamingMixer(make_domains(root), **kwargs)


def schedule(step: int) -> dict[str, float] | None:
    """Weights set after batch ``step`` (for the next one): changes every few steps, including one-hot."""
    table = [None, {"en": 0.7, "de": 0.2, "code": 0.1}, None, {"en": 0.0, "de": 0.0, "code": 1.0},
             {"en": 0.1, "de": 0.45, "code": 0.45}, None, None, {"en": 1, "de": 1, "code": 1}]
    return table[step % len(table)]


def run(mixer: PiKEStreamingMixer, start: int, stop: int, weights=schedule) -> list[tuple[tuple, tuple]]:
    """Take batches ``start..stop-1``, setting the scheduled weights after each; return (domain, sample_id) logs."""
    log = []
    iterator = iter(mixer)
    for step in range(start, stop):
        batch = next(iterator)
        code, sid = decode_ids(batch["input_ids"])
        assert code.tolist() == batch["domain"].tolist() and sid.tolist() == batch["sample_id"].tolist(), \
            "the tokens read are not the samples the batch names"
        log.append((tuple(batch["domain"].tolist()), tuple(batch["sample_id"].tolist())))
        new = weights(step)
        if new is not None:
            mixer.set_weights(new)
    return log


def run_stop_resume(root: str, total: int, stop_at: int, *, first: dict | None = None,
                    second: dict | None = None) -> None:
    """Run→stop→resume→compare: a run stopped after ``stop_at`` steps and resumed from its state (through a
    pickle, as a checkpoint would) yields exactly the batches of an uninterrupted run."""
    reference = run(make_mixer(root), 0, total)
    before = make_mixer(root, **(first or {}))
    head = run(before, 0, stop_at)
    state = pickle.loads(pickle.dumps(before.state_dict(stop_at * B, True)))
    after = make_mixer(root, **(second or {}))
    after.load_state_dict(state)
    assert after.weights == pytest.approx(before.weights)
    tail = run(after, stop_at, total)
    if (second or {}).get("world_size", 1) == 1 and (first or {}).get("world_size", 1) == 1:
        assert head + tail == reference


# ---------------------------------------------------------------------------------------- determinism
def test_same_inputs_same_batches(data_root):
    assert run(make_mixer(data_root), 0, 40) == run(make_mixer(data_root), 0, 40)


def test_seed_changes_order(data_root):
    assert run(make_mixer(data_root), 0, 5) != run(make_mixer(data_root, seed=8), 0, 5)


@pytest.mark.parametrize("read_ahead, workers", [(0, 0), (1, 1), (4, 8)])
def test_read_ahead_settings_do_not_change_batches(data_root, read_ahead, workers):
    baseline = run(make_mixer(data_root), 0, 30)
    assert run(make_mixer(data_root, read_ahead=read_ahead, read_ahead_workers=workers), 0, 30) == baseline


def test_batch_layout(data_root):
    batch = next(iter(make_mixer(data_root).dataloader()))
    assert set(batch) == {"input_ids", "domain", "sample_id"}
    assert batch["input_ids"].shape == (B, 16) and str(batch["input_ids"].dtype) == "torch.int64"
    assert batch["domain"].shape == batch["sample_id"].shape == (B,)


# ---------------------------------------------------------------------------------------- zero lag
def test_weights_shape_the_very_next_batch(data_root):
    mixer = make_mixer(data_root)
    loader = iter(mixer.dataloader())
    next(loader)
    for k, name in enumerate(SIZES):
        mixer.set_weights({n: float(n == name) for n in SIZES})
        batch = next(loader)
        # A one-hot weight draws all B samples from that domain (up to a carried remainder of < 1 sample each).
        assert Counter(batch["domain"].tolist())[k] >= B - len(SIZES) + 1


def test_dataloader_refuses_worker_processes(data_root):
    with pytest.raises(ValueError, match="num_workers"):
        make_mixer(data_root).dataloader(num_workers=2)


# ---------------------------------------------------------------------------------------- exact resume
@pytest.mark.parametrize("stop_at", [0, 1, 3, 4, 11, 29])  # 3/4: right after weight changes; 29: past epochs
def test_exact_resume(data_root, stop_at):
    run_stop_resume(data_root, 40, stop_at)


def test_resume_crosses_domain_epoch_boundary(data_root):
    """Stop right before the batch in which `code` (57 samples) runs out of its first epoch."""
    mixer = make_mixer(data_root)
    for step in range(100):
        before = mixer.consumed["code"]
        run(mixer, step, step + 1)
        if before < SIZES["code"] <= mixer.consumed["code"]:
            break
    else:
        pytest.fail("`code` never finished its first epoch")
    run_stop_resume(data_root, step + 10, step)


def test_state_is_small_and_json_serialisable(data_root):
    mixer = make_mixer(data_root)
    run(mixer, 0, 50)
    state = mixer.state_dict(50 * B, True)
    assert len(json.dumps(state)) < 2000  # positions and weights, no sample lists
    assert state["version"] == 5 and set(state["domains"]) == set(SIZES)


def test_state_for_a_step_already_passed(data_root):
    """Composer passes the samples *trained on*; the iterator may be ahead of them."""
    mixer = make_mixer(data_root)
    run(mixer, 0, 10)
    reference = make_mixer(data_root)
    run(reference, 0, 8)
    assert mixer.state_dict(8 * B) == reference.state_dict(8 * B)
    with pytest.raises(MixerStateError, match="none at"):
        mixer.state_dict(8 * B + 1)


# ---------------------------------------------------------------------------------------- probe batches
def run_with_probes(mixer: PiKEStreamingMixer, start: int, stop: int, m: int = 4) -> list[tuple]:
    """``run``, plus a probe batch of ``m`` per domain after every third batch (as PiKE draws one)."""
    log = []
    iterator = iter(mixer)
    for step in range(start, stop):
        batch = next(iterator)
        log.append(("train", tuple(batch["domain"].tolist()), tuple(batch["sample_id"].tolist())))
        if step % 3 == 0:
            probe = mixer.probe_batch(m)
            code, sid = decode_ids(probe["input_ids"])
            assert code.tolist() == probe["domain"].tolist() and sid.tolist() == probe["sample_id"].tolist()
            log.append(("probe", tuple(probe["domain"].tolist()), tuple(probe["sample_id"].tolist())))
        new = schedule(step)
        if new is not None:
            mixer.set_weights(new)
    return log


def test_probe_batches_hold_every_domain_whatever_the_weights_and_leave_training_alone(data_root):
    mixer = make_mixer(data_root, weights={"en": 1.0, "de": 0.0, "code": 0.0})
    probe = mixer.probe_batch(5)
    assert Counter(probe["domain"].tolist()) == {0: 5, 1: 5, 2: 5}
    assert mixer.probed == {"en": 5, "de": 5, "code": 5} and mixer.consumed == {"en": 0, "de": 0, "code": 0}
    # Training batches are those of a mixer that never probed.
    assert run(mixer, 0, 30) == run(make_mixer(data_root, weights={"en": 1.0, "de": 0.0, "code": 0.0}), 0, 30)
    # The probe order is its own shuffle: each probe epoch is a permutation of the domain, unlike the training one.
    fresh = make_mixer(data_root)
    ids = fresh.compose_probe(SIZES["code"])[1][2 * SIZES["code"]:]
    assert sorted(ids.tolist()) == list(range(SIZES["code"]))
    assert ids.tolist() != fresh.orders[2].take(0, SIZES["code"]).tolist()
    with pytest.raises(ValueError, match="samples_per_domain"):
        fresh.probe_batch(0)


@pytest.mark.parametrize("stop_at", [1, 4, 13])
def test_probe_batches_resume_exactly(data_root, stop_at):
    reference = run_with_probes(make_mixer(data_root), 0, 20)
    before = make_mixer(data_root)
    head = run_with_probes(before, 0, stop_at)
    state = pickle.loads(pickle.dumps(before.state_dict(stop_at * B)))
    after = make_mixer(data_root)
    after.load_state_dict(state)
    assert head + run_with_probes(after, stop_at, 20) == reference


def test_probe_batches_are_split_over_ranks_like_training_batches(data_root):
    whole = make_mixer(data_root).probe_batch(6)
    parts = [make_mixer(data_root, rank=r, world_size=2).probe_batch(6) for r in range(2)]
    for key in ("domain", "sample_id"):
        assert whole[key][0::2].tolist() == parts[0][key].tolist()
        assert whole[key][1::2].tolist() == parts[1][key].tolist()


def test_a_version_1_state_resumes_with_probe_cursors_at_zero(data_root):
    mixer = make_mixer(data_root)
    run(mixer, 0, 5)
    state = mixer.state_dict()
    old = {**state, "version": 1, "domains": {n: {k: v for k, v in d.items() if k != "probed"}
                                              for n, d in state["domains"].items()}}
    resumed = make_mixer(data_root)
    resumed.load_state_dict(old)
    assert resumed.probed == {"en": 0, "de": 0, "code": 0} and resumed.consumed == mixer.consumed
    assert run(resumed, 5, 12) == run(mixer, 5, 12)


# ---------------------------------------------------------------------------------------- without replacement
def test_each_domain_epoch_is_a_permutation(data_root):
    mixer = make_mixer(data_root)
    drawn = {k: [] for k in range(len(SIZES))}
    for domains, ids in run(mixer, 0, 260):
        for k, i in zip(domains, ids):
            drawn[k].append(i)
    for k, n in enumerate(SIZES.values()):
        seq = drawn[k]
        full_epochs = len(seq) // n
        assert full_epochs >= 2
        for e in range(full_epochs):
            assert sorted(seq[e * n:(e + 1) * n]) == list(range(n)), f"domain {k} epoch {e} is not a permutation"
        assert seq[:n] != seq[n:2 * n], "each domain epoch must use a fresh shuffle"


def test_without_replacement_across_resume(data_root):
    before = make_mixer(data_root)
    head = run(before, 0, 13)
    after = make_mixer(data_root)
    after.load_state_dict(before.state_dict())
    tail = run(after, 13, 30)
    en = [i for d, ids in head + tail for k, i in zip(d, ids) if k == 0][:SIZES["en"]]
    assert len(en) == len(set(en))


# ---------------------------------------------------------------------------------------- ranks
def test_rank_slices_partition_the_global_batch(data_root):
    whole = run(make_mixer(data_root), 0, 25)
    parts = [run(make_mixer(data_root, rank=r, world_size=2), 0, 25) for r in range(2)]
    for step, (domains, ids) in enumerate(whole):
        pairs = list(zip(domains, ids))
        slices = [list(zip(*parts[r][step])) for r in range(2)]
        assert len(slices[0]) == len(slices[1]) == B // 2
        assert slices[0] == pairs[0::2] and slices[1] == pairs[1::2]
        assert Counter(slices[0] + slices[1]) == Counter(pairs)


def test_resume_two_ranks_on_one(data_root):
    ranks = [make_mixer(data_root, rank=r, world_size=2) for r in range(2)]
    for mixer in ranks:
        run(mixer, 0, 9)
    states = [mixer.state_dict(9 * B) for mixer in ranks]
    assert states[0] == states[1]  # rank-independent: any rank's state resumes any world size
    single = make_mixer(data_root)
    single.load_state_dict(states[0])
    assert run(single, 9, 30) == run(make_mixer(data_root), 0, 30)[9:]


# ---------------------------------------------------------------------------------------- fidelity
@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), steps=st.integers(1, 300))
def test_counts_track_weights_with_twenty_domains(tmp_path_factory, seed, steps):
    """20 domains, a batch of 8: cumulative draws stay within 2 samples of Σ_t w_k(t)·B (carried rounding)."""
    root = _twenty_domains(tmp_path_factory)
    names = [f"d{i}" for i in range(20)]
    rng = np.random.default_rng(seed)
    mixer = PiKEStreamingMixer([Domain(n, local=os.path.join(root, n)) for n in names], global_batch_size=8,
                               seed=seed, read_ahead=0, read_ahead_workers=0)
    target = np.zeros(20)
    for step in range(steps):
        if step % 7 == 0:
            w = rng.dirichlet(np.full(20, 0.5)) * (rng.random(20) > 0.2)
            if w.sum() == 0:
                w[0] = 1
            mixer.set_weights(w)
        target += np.array(list(mixer.weights.values())) * 8
        mixer.compose()
    drawn = np.array(list(mixer.consumed.values()))
    assert np.abs(drawn - target).max() < 2.0


_TWENTY: dict[str, str] = {}


def _twenty_domains(factory) -> str:
    if "root" not in _TWENTY:
        root = str(factory.mktemp("twenty"))
        for i in range(20):
            write_domain(os.path.join(root, f"d{i}"), f"d{i}", 40, code=i, samples_per_shard=40)
        _TWENTY["root"] = root
    return _TWENTY["root"]


# ---------------------------------------------------------------------------------------- checked state
def test_resume_refuses_changed_data(data_root, tmp_path):
    mixer = make_mixer(data_root)
    run(mixer, 0, 3)
    state = mixer.state_dict()
    changed = str(tmp_path / "changed")
    for code, (name, n) in enumerate(SIZES.items()):
        write_domain(os.path.join(changed, name), name, n + (name == "de"), code=code)
    with pytest.raises(MixerStateError, match=r"\['de'\] changed"):
        make_mixer(changed).load_state_dict(state)


@pytest.mark.parametrize("change, message", [
    ({"global_batch_size": 16}, "global_batch_size=8"),
    ({"seed": 3}, "seed=7"),
    ({"shuffle_algo": "naive"}, "shuffle"),
])
def test_resume_refuses_changed_settings(data_root, change, message):
    state = make_mixer(data_root).state_dict()
    with pytest.raises(MixerStateError, match=message):
        make_mixer(data_root, **change).load_state_dict(state)


def test_resume_refuses_other_domains_and_versions(data_root):
    state = make_mixer(data_root).state_dict()
    two = PiKEStreamingMixer(make_domains(data_root, ("en", "de")), global_batch_size=B, seed=7)
    with pytest.raises(MixerStateError, match="missing: \\['code'\\]"):
        two.load_state_dict(state)
    with pytest.raises(MixerStateError, match="version 99"):
        make_mixer(data_root).load_state_dict({**state, "version": 99})
    with pytest.raises(MixerStateError, match="not a PiKEStreamingMixer state"):
        make_mixer(data_root).load_state_dict({"epoch": 0})


# ---------------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("weights, message", [
    ({"en": -1, "de": 1, "code": 1}, "finite and ≥ 0"),
    ({"en": float("nan"), "de": 1, "code": 1}, "finite and ≥ 0"),
    ({"en": 0, "de": 0, "code": 0}, "all zero"),
    ({"en": 1, "de": 1, "code": 1, "fr": 1}, "unknown: \\['fr'\\]"),
    ({"en": 1, "de": 1}, "missing: \\['code'\\]"),
])
def test_bad_weights(data_root, weights, message):
    with pytest.raises(ValueError, match=message):
        make_mixer(data_root, weights=weights)
    with pytest.raises(ValueError, match=message):
        make_mixer(data_root).set_weights(weights)


def test_bad_arguments_fail_before_reading(tmp_path):
    nowhere = str(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="duplicate domain names: \\['en'\\]"):
        PiKEStreamingMixer([Domain("en", local=nowhere), Domain("en", local=nowhere)], global_batch_size=8)
    with pytest.raises(ValueError, match="non-empty"):
        PiKEStreamingMixer([Domain("", local=nowhere)], global_batch_size=8)
    with pytest.raises(ValueError, match="not divisible by world_size=3"):
        PiKEStreamingMixer([Domain("en", local=nowhere)], global_batch_size=8, rank=0, world_size=3)
    with pytest.raises(ValueError, match="at least one domain"):
        PiKEStreamingMixer([], global_batch_size=8)


def test_missing_index_and_manifest(data_root, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DomainDataError, match="domain 'xx': no manifest.json"):
        PiKEStreamingMixer([Domain("xx", local=str(empty))], global_batch_size=8)
    no_index = tmp_path / "no_index"
    shutil.copytree(os.path.join(data_root, "en"), no_index)
    os.remove(no_index / "index.json")
    with pytest.raises(DomainDataError, match="domain 'en': no index.json"):
        PiKEStreamingMixer([Domain("en", local=str(no_index))], global_batch_size=8)


def test_manifest_that_does_not_match_index(data_root, tmp_path):
    copy = tmp_path / "en"
    shutil.copytree(os.path.join(data_root, "en"), copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    (copy / "manifest.json").write_text(json.dumps({**manifest, "samples": 299}))
    with pytest.raises(DomainDataError, match="says 299 samples but index.json holds 300"):
        PiKEStreamingMixer([Domain("en", local=str(copy))], global_batch_size=8)


def test_different_seq_len(data_root, tmp_path):
    write_domain(str(tmp_path / "long"), "long", 30, seq_len=32)
    with pytest.raises(ValueError, match="different seq_len"):
        PiKEStreamingMixer([Domain("en", local=os.path.join(data_root, "en")),
                            Domain("long", local=str(tmp_path / "long"))], global_batch_size=8)


def test_the_shard_cache_and_the_embedded_server_share_one_data_home(monkeypatch, tmp_path) -> None:
    from pike_stream.mixer.domain import default_cache_root
    from pike_stream.storage import default_data_dir

    monkeypatch.delenv("PIKE_STREAM_HOME", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_root() == str(tmp_path / "xdg" / "pike_stream" / "shards")
    assert default_data_dir() == tmp_path / "xdg" / "pike_stream" / "s3"
    monkeypatch.setenv("PIKE_STREAM_HOME", str(tmp_path / "home"))
    assert default_cache_root() == str(tmp_path / "home" / "shards")
    assert default_data_dir() == tmp_path / "home" / "s3"
