"""A batch-size ramp and a batch-size change inside Composer training: exact resume, audit, clear refusals."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from pike_stream.audit import audit_run
from pike_stream.train.config import ConfigError, config_from_dict
from pike_stream.train.records import read_batch_log
from tests.in_process import fit
from tests.mds_data import write_domain
from tests.test_train import _config

SIZES = {"a": 60, "b": 40, "c": 80}
RAMP = {"start": 8, "increment": 8, "samples": 96}  # 6 batches of 8, 3 of 16, then 24
EXPECTED_SIZES = [8] * 6 + [16] * 3 + [24] * 7


def _train(root: Path, run: str, **changes: Any) -> Path:
    cfg = _config(run_folder=str(root / run), eval_loader=None, save_folder=str(root / run / "ckpt"),
                  save_interval="4ba", loggers={"console": False, "progress_bar": False},
                  global_train_batch_size=24, rampup_batch_size=RAMP)
    cfg["train_loader"]["domains"] = [{"name": n, "local": str(root / n)} for n in SIZES]
    train_loader = changes.pop("train_loader", {})
    cfg.update(changes)
    cfg["train_loader"].update(train_loader)
    fit(cfg)
    return root / run


@pytest.fixture(scope="module")
def ramped_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("ramp")
    for code, (name, size) in enumerate(SIZES.items(), 1):
        write_domain(str(root / name), name, size, code=code)
    return _train(root, "reference")


def _logged_sizes(run: Path) -> dict[int, int]:
    sizes = {}
    for line in (run / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        if "pike/batch_size" in record:
            sizes[record["step"]] = int(record["pike/batch_size"])
    return sizes


def test_the_trainer_follows_the_ramp_and_the_audit_replays_it(ramped_run: Path) -> None:
    batches = read_batch_log(ramped_run)
    assert [len(batches[s][0]) for s in sorted(batches)] == EXPECTED_SIZES
    assert list(_logged_sizes(ramped_run).values()) == EXPECTED_SIZES
    audit = audit_run(ramped_run)
    assert audit.batch_log == "match" and audit.fidelity_holds
    assert int(audit.drawn.sum()) == sum(EXPECTED_SIZES)


def test_a_resume_mid_ramp_gives_the_uninterrupted_batches(ramped_run: Path, in_process_dist: None) -> None:
    root = ramped_run.parent
    resumed = _train(root, "resumed", load_path=str(ramped_run / "ckpt" / "ep0-ba8-rank0.pt"))
    expected, got = read_batch_log(ramped_run), read_batch_log(resumed)
    assert sorted(got) == list(range(8, 16))
    for step in got:  # step 8 is the ramp's last batch of 16, 9 the first of 24
        np.testing.assert_array_equal(got[step][0], expected[step][0], err_msg=f"domains of step {step}")
        np.testing.assert_array_equal(got[step][1], expected[step][1], err_msg=f"sample ids of step {step}")


def test_another_batch_size_on_resume_is_refused_then_allowed(ramped_run: Path, in_process_dist: None) -> None:
    from pike_stream.mixer import MixerStateError

    root = ramped_run.parent
    checkpoint = str(ramped_run / "ckpt" / "ep0-ba8-rank0.pt")
    changed = root / "changed"
    shutil.copytree(ramped_run, changed, ignore=shutil.ignore_patterns("ckpt"))
    with pytest.raises(ConfigError, match="global_train_batch_size"):  # the run folder's config says 24
        _train(root, "changed", load_path=checkpoint, global_train_batch_size=32, rampup_batch_size=None)
    with pytest.raises(MixerStateError, match="allow_batch_size_change"):  # a fresh folder: the mixer refuses
        _train(root, "elsewhere", load_path=checkpoint, global_train_batch_size=32, rampup_batch_size=None)

    _train(root, "changed", load_path=checkpoint, global_train_batch_size=32, rampup_batch_size=None,
           train_loader={"allow_batch_size_change": True}, max_duration="12ba")
    batches = read_batch_log(changed)
    assert [len(batches[s][0]) for s in sorted(batches)] == EXPECTED_SIZES[:8] + [32] * 4
    # Each domain's draws continue its order: the first 8 steps as before, nothing repeated or skipped.
    before = read_batch_log(ramped_run)
    for step in range(8):
        np.testing.assert_array_equal(batches[step][1], before[step][1])
    audit = audit_run(changed)  # replayed with the logged sizes, across the change
    assert audit.batch_log == "match" and audit.fidelity_holds


@pytest.mark.parametrize("ramp, message", [
    ({"start": 24, "increment": 8, "samples": 96}, "rampup_batch_size: start 24 must be below"),
    ({"start": 8, "increment": 5, "samples": 96}, "rampup_batch_size: .*not a multiple of increment 5"),
    ({"start": 8, "increment": 8}, "rampup_batch_size.*samples"),
])
def test_a_bad_ramp_is_a_config_error_naming_the_key(ramp: dict[str, int], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        config_from_dict(_config(global_train_batch_size=24, rampup_batch_size=ramp))


def test_token_durations_count_the_ramp() -> None:
    cfg = config_from_dict(_config(global_train_batch_size=24, rampup_batch_size=RAMP, max_seq_len=16))
    # 6 × 8 + 3 × 16 = 96 samples in 9 steps; 96 × 16 tokens
    assert cfg.batches(f"{96 * 16}tok", "max_duration") == 9
    assert cfg.batches(f"{(96 + 24) * 16}tok", "max_duration") == 10
