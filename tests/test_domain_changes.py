"""Domains added or retired on resume (``allow_domain_changes``): the mixer's promises across the change.

Each domain's draws over the whole run, whatever the changes, are its own order from position 0 (nothing
repeated inside a domain epoch, nothing skipped); a retired domain added back continues where it stopped;
the resumed run is deterministic, resumes exactly, and has the same global batches on any rank count; draws
track Σ w·B within 2 from the change on. PiKE's controller follows the new domain list.
"""

from __future__ import annotations

import os
import pickle

import numpy as np
import pytest

from pike_stream import Domain, MixerStateError, PiKEStreamingMixer
from pike_stream.controller import MixingController
from pike_stream.strategies import get_strategy
from tests.in_process import fit
from tests.mds_data import write_domain, write_domains
from tests.test_mixer import SIZES, run

B = 8
ALL = {**SIZES, "fr": 90}


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> str:
    return write_domains(str(tmp_path_factory.mktemp("domains")), ALL)


def still(step: int) -> None:
    """No weight changes (the test_mixer schedule names three domains)."""


def mixer_of(root: str, names: tuple[str, ...], **kwargs) -> PiKEStreamingMixer:
    kwargs.setdefault("global_batch_size", B)
    kwargs.setdefault("seed", 7)
    return PiKEStreamingMixer([Domain(n, local=os.path.join(root, n)) for n in names], **kwargs)


def resumed(root: str, state: dict, names: tuple[str, ...], **kwargs) -> PiKEStreamingMixer:
    mixer = mixer_of(root, names, allow_domain_changes=True, **kwargs)
    mixer.load_state_dict(pickle.loads(pickle.dumps(state)))
    return mixer


def draws(segments: list[tuple[tuple[str, ...], list]]) -> dict[str, list[int]]:
    """Per domain name, the sample ids drawn over the run's segments (each with its own domain list)."""
    out: dict[str, list[int]] = {}
    for names, log in segments:
        for domains, ids in log:
            for k, i in zip(domains, ids):
                out.setdefault(names[k], []).append(i)
    return out


def assert_orders_continue(root: str, drawn: dict[str, list[int]]) -> None:
    reference = mixer_of(root, tuple(ALL))
    for name, ids in drawn.items():
        k = list(ALL).index(name)
        assert ids == reference.orders[k].take(0, len(ids)).tolist(), f"{name} did not continue its order"


def test_without_the_option_a_change_is_refused_naming_it(data_root):
    state = mixer_of(data_root, ("en", "de", "code")).state_dict()
    with pytest.raises(MixerStateError, match="allow_domain_changes"):
        mixer_of(data_root, ("en", "de")).load_state_dict(state)
    with pytest.raises(MixerStateError, match="allow_domain_changes"):
        mixer_of(data_root, ("en", "de", "code", "fr")).load_state_dict(state)


def test_retire_then_add_back_continues_every_order(data_root, caplog):
    three = ("en", "de", "code")
    first = mixer_of(data_root, three)
    head = run(first, 0, 13)  # the last weights set: en 0.1, de 0.45, code 0.45
    two = ("en", "de")
    with caplog.at_level("WARNING", logger="pike_stream.mixer.mixer"):
        middle_mixer = resumed(data_root, first.state_dict(), two)
    assert "retired ['code']" in caplog.text
    # the continuing domains keep their saved proportions; the retired one keeps its cursor in the state
    saved = first.weights
    assert middle_mixer.weights == pytest.approx({n: saved[n] / (saved["en"] + saved["de"]) for n in two})
    state = middle_mixer.state_dict()
    assert state["retired"]["code"]["consumed"] == first.consumed["code"] > 0
    middle = run(middle_mixer, 13, 30, weights=lambda step: None)
    assert all(d in (0, 1) for domains, _ in middle for d in domains)

    back = resumed(data_root, middle_mixer.state_dict(), three)
    assert back.consumed["code"] == first.consumed["code"]  # continues where it stopped
    assert back.weights["code"] == pytest.approx(1 / 3)     # its share of the initial (uniform) mixture
    assert back.state_dict()["retired"] == {}
    tail = run(back, 30, 90)
    drawn = draws([(three, head), (two, middle), (three, tail)])
    assert_orders_continue(data_root, drawn)
    assert len(drawn["code"]) > SIZES["code"]  # crossed a domain epoch of code after coming back


def test_a_new_domain_starts_at_its_share_of_the_initial_mixture(data_root):
    first = mixer_of(data_root, ("en", "de", "code"))
    first.set_weights({"en": 0.5, "de": 0.3, "code": 0.2})
    head = run(first, 0, 9, weights=lambda step: None)
    four = ("en", "de", "code", "fr")
    after = resumed(data_root, first.state_dict(), four, weights={"en": 1, "de": 1, "code": 1, "fr": 2})
    assert after.consumed["fr"] == 0
    assert after.weights == pytest.approx({"en": 0.3, "de": 0.18, "code": 0.12, "fr": 0.4})
    tail = run(after, 9, 40, weights=lambda step: None)
    assert_orders_continue(data_root, draws([(("en", "de", "code"), head), (four, tail)]))
    # fidelity from the change on: every carry restarted at 0
    drawn = np.array([after.consumed[n] - (first.consumed.get(n, 0)) for n in four])
    assert np.abs(drawn - 31 * B * np.array([0.3, 0.18, 0.12, 0.4])).max() < 2.0


def test_after_a_change_the_run_is_deterministic_resumable_and_rank_independent(data_root):
    first = mixer_of(data_root, ("en", "de", "code"))
    run(first, 0, 7)
    state = first.state_dict()
    four = ("en", "de", "code", "fr")
    whole = run(resumed(data_root, state, four), 7, 30, weights=still)
    assert run(resumed(data_root, state, four), 7, 30, weights=still) == whole
    parts = [run(resumed(data_root, state, four, rank=r, world_size=2), 7, 30, weights=still) for r in range(2)]
    for step, (domains, ids) in enumerate(whole):
        pairs = list(zip(domains, ids))
        assert [list(zip(*parts[r][step])) for r in range(2)] == [pairs[0::2], pairs[1::2]]
    mid = resumed(data_root, state, four)
    run(mid, 7, 15, weights=still)
    again = mixer_of(data_root, four)  # no option needed: the domains match the state now
    again.load_state_dict(mid.state_dict())
    assert run(again, 15, 30, weights=still) == whole[8:]


def test_a_changed_domain_data_is_still_refused(data_root, tmp_path):
    first = mixer_of(data_root, ("en", "de", "code"))
    run(first, 0, 3)
    state = first.state_dict()
    write_domain(str(tmp_path / "de"), "de", SIZES["de"] + 1, code=1)
    mixer = PiKEStreamingMixer([Domain("en", local=os.path.join(data_root, "en")),
                                Domain("de", local=str(tmp_path / "de"))], global_batch_size=B, seed=7,
                               allow_domain_changes=True)
    with pytest.raises(MixerStateError, match=r"\['de'\] changed"):
        mixer.load_state_dict(state)


def test_the_controller_follows_the_new_domain_list():
    strategy = get_strategy("pike")
    old = MixingController(strategy, ["en", "de", "code"], update_interval=1)
    state = old.state_dict()
    state["domains"] = {n: {"grad_sq": 1.0, "variance": 2.0, "loss": 3.0} for n in ("en", "de", "code")}
    state["anchor"] = {"en": 0.5, "de": 0.25, "code": 0.25}
    new = MixingController(strategy, ["en", "fr", "de"], update_interval=1)
    with pytest.raises(ValueError, match="allow_domain_changes"):
        new.load_state_dict(state)
    new.load_state_dict(state, allow_domain_changes=True)
    assert new.anchor is not None
    assert new.anchor.tolist() == pytest.approx([0.5 / 0.75 * (2 / 3), 1 / 3, 0.25 / 0.75 * (2 / 3)])
    estimates = new.state_dict()["domains"]
    assert estimates["en"]["grad_sq"] == 1.0 and np.isnan(estimates["fr"]["grad_sq"])


# ---------------------------------------------------------------------------------------- in Composer training
def _train(root: str, run_folder: str, names: tuple[str, ...], **changes) -> None:
    from tests.test_train import _config

    cfg = _config(run_folder=run_folder, eval_loader=None, save_folder=os.path.join(run_folder, "ckpt"),
                  save_interval="4ba", loggers={"console": False, "progress_bar": False}, max_duration="8ba")
    cfg["train_loader"]["domains"] = [{"name": n, "local": os.path.join(root, n)} for n in names]
    cfg["train_loader"].update(changes.pop("train_loader", {}))
    cfg.update(changes)
    fit(cfg)


def test_pike_training_resumed_with_a_domain_added_and_one_retired(data_root, tmp_path, in_process_dist):
    from pike_stream.train.records import read_batch_log, read_metrics

    first = str(tmp_path / "first")
    _train(data_root, first, ("en", "de", "code"))
    checkpoint = os.path.join(first, "ckpt", "ep0-ba8-rank0.pt")
    changed = ("en", "code", "fr")  # de retired, fr added
    with pytest.raises(MixerStateError, match="allow_domain_changes"):
        _train(data_root, str(tmp_path / "refused"), changed, load_path=checkpoint, max_duration="14ba")
    second = str(tmp_path / "second")
    _train(data_root, second, changed, load_path=checkpoint, max_duration="14ba",
           train_loader={"allow_domain_changes": True})

    batches = read_batch_log(second)
    assert sorted(batches) == list(range(8, 14))
    drawn = np.concatenate([batches[s][0] for s in batches])
    assert set(np.unique(drawn)) == {0, 1, 2}, "every domain of the new list is drawn, fr included"
    weights = [r for r in read_metrics(second) if "pike/weight/fr" in r]
    assert weights and all("pike/weight/de" not in r for r in weights)
    assert any(r["step"] >= 9 and "pike/grad_sq/fr" in r for r in read_metrics(second)), \
        "PiKE estimated the added domain after the resume"
    # the continuing domains continue their orders from the first run
    before = read_batch_log(first)
    for k_now, name in enumerate(changed):
        if name == "fr":
            continue
        k_before = ("en", "de", "code").index(name)
        ids = [i for s in sorted(before) for d, i in zip(*before[s]) if d == k_before]
        ids += [i for s in sorted(batches) for d, i in zip(*batches[s]) if d == k_now]
        reference = mixer_of(data_root, tuple(ALL), seed=5)  # the run's seed (tests.test_train._config)
        assert ids == reference.orders[list(ALL).index(name)].take(0, len(ids)).tolist(), name


def test_domains_are_matched_by_name_in_any_order(data_root):
    first = mixer_of(data_root, ("en", "de", "code"), read_ahead=0, read_ahead_workers=0)
    for _ in range(6):
        first.compose()
    shuffled = ("code", "fr", "en", "de")
    after = mixer_of(data_root, shuffled, read_ahead=0, read_ahead_workers=0, allow_domain_changes=True)
    after.load_state_dict(first.state_dict())
    assert {n: after.consumed[n] for n in ("en", "de", "code")} == first.consumed and after.consumed["fr"] == 0
    drawn: dict[str, list[int]] = {}
    for _ in range(10):
        domain, sample = after.compose()
        for k, i in zip(domain, sample):
            drawn.setdefault(shuffled[k], []).append(int(i))
    reference = mixer_of(data_root, tuple(ALL), read_ahead=0, read_ahead_workers=0)
    for name, ids in drawn.items():  # each continues its own order from where the checkpoint left it
        start = first.consumed.get(name, 0)
        assert ids == reference.orders[list(ALL).index(name)].take(start, len(ids)).tolist(), name
