"""`pike-stream audit`: a run's batches replayed from its config and logged weights, without reading shards."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from pike_stream.audit import audit_run, main
from pike_stream.train.records import read_batch_log
from tests.in_process import fit
from tests.mds_data import write_domain
from tests.test_train import _config

SIZES = {"a": 40, "b": 25, "c": 60}  # small: a run of 16 steps × 24 samples crosses several domain epochs


@pytest.fixture(scope="module")
def pike_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 16-step PiKE run on local domains, with batch logs: its weights move every 3 steps."""
    root = tmp_path_factory.mktemp("audit")
    for code, (name, size) in enumerate(SIZES.items(), 1):
        write_domain(str(root / name), name, size, code=code)
    cfg = _config(run_folder=str(root / "run"), eval_loader=None, save_folder=None, save_interval="16ba",
                  loggers={"console": False, "progress_bar": False})
    cfg["train_loader"]["domains"] = [{"name": n, "local": str(root / n)} for n in SIZES]
    fit(cfg)
    return root / "run"


def test_the_replay_equals_the_logged_batches_and_keeps_the_fidelity_bound(pike_run: Path, capsys) -> None:
    assert main([str(pike_run)]) == 0
    out = capsys.readouterr().out
    assert "batch log: match" in out and "fidelity" in out and "holds" in out
    logged = read_batch_log(pike_run)
    audit = audit_run(pike_run)
    assert (audit.first, audit.last) == (0, max(logged))
    drawn = sum(np.bincount(domain, minlength=len(SIZES)) for domain, _ in logged.values())
    assert audit.drawn.tolist() == drawn.tolist()
    assert audit.batch_log == "match" and audit.fidelity_holds
    weights = [w for w in audit.weight_range]
    assert any(high - low > 0.01 for low, high in weights), "PiKE's weights should have moved"
    # A domain of 25 samples drawn ~130 times over the run spans several epochs.
    assert audit.epochs[1] is not None and audit.epochs[1][1] >= 2


def test_ids_list_the_samples_of_a_step_with_their_epochs(pike_run: Path, capsys) -> None:
    logged = read_batch_log(pike_run)
    audit = audit_run(pike_run, first=5, last=9, ids=[7])
    domain, sample, epoch = audit.batches[7]
    assert np.array_equal(domain, logged[7][0]) and np.array_equal(sample, logged[7][1])
    # Every domain epoch holds each sample once: the sample ids of one epoch of a domain never repeat.
    full = audit_run(pike_run, ids=list(range(audit.last + 1)))
    seen: dict[tuple[int, int], list[int]] = {}
    for d, s, e in full.batches.values():
        for di, si, ei in zip(d, s, e):
            seen.setdefault((int(di), int(ei)), []).append(int(si))
    assert all(len(ids) == len(set(ids)) for ids in seen.values())
    assert all(len(ids) == list(SIZES.values())[d] for (d, e), ids in seen.items() if e < max(
        ep for (dd, ep) in seen if dd == d))
    assert main([str(pike_run), "--steps", "5:9", "--ids", "7", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert (report["first"], report["last"]) == (5, 9)
    assert [r["sample_id"] for r in report["batches"]["7"]] == sample.tolist()


def test_a_changed_weight_is_caught_by_the_batch_log(pike_run: Path, tmp_path: Path, capsys) -> None:
    copy = tmp_path / "run"
    shutil.copytree(pike_run, copy)
    records = [json.loads(line) for line in (copy / "metrics.jsonl").read_text().splitlines()]
    changed = next(r for r in records if r["step"] == 4 and "pike/weight/a" in r)
    assert changed["pike/weight/a"] < 0.8  # PiKE's weights at step 4 are far from the ones written below
    changed.update({"pike/weight/a": 0.9, "pike/weight/b": 0.05, "pike/weight/c": 0.05})
    (copy / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    assert main([str(copy)]) == 1
    assert "differ at step 4" in capsys.readouterr().err


def test_an_unusable_run_folder_is_one_line(tmp_path: Path, pike_run: Path, capsys) -> None:
    assert main([str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "config.json" in err
    assert main([str(pike_run), "--steps", "5:999"]) == 2
    assert "outside the run's steps" in capsys.readouterr().err


def test_a_partitioned_run_is_replayed_with_its_partitions(tmp_path: Path) -> None:
    """With ``train_loader.partitions`` the samples differ from a run without; the replay follows the config."""
    for code, (name, size) in enumerate(SIZES.items(), 1):
        write_domain(str(tmp_path / name), name, size, code=code)
    cfg = _config(run_folder=str(tmp_path / "run"), eval_loader=None, save_folder=None, save_interval="16ba",
                  max_duration="8ba", loggers={"console": False, "progress_bar": False})
    cfg["train_loader"]["domains"] = [{"name": n, "local": str(tmp_path / n)} for n in SIZES]
    cfg["train_loader"]["partitions"] = 4
    fit(cfg)
    audit = audit_run(tmp_path / "run")
    assert audit.batch_log == "match" and audit.fidelity_holds
    config = tmp_path / "run" / "config.json"
    saved = json.loads(config.read_text())
    saved["train_loader"]["partitions"] = None  # as if the audit ignored the partitions
    config.write_text(json.dumps(saved))
    assert audit_run(tmp_path / "run").batch_log != "match"
