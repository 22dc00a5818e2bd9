"""The convergence benchmark's analysis: its report is what its committed JSON says, and its helpers hold."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

import bench_convergence as bc  # noqa: E402


def test_committed_report_is_regenerated_exactly_from_the_committed_json(tmp_path: Path) -> None:
    """Every number in convergence.md comes from convergence.json: regenerating it gives the same text."""
    result = json.loads(bc.JSON_PATH.read_text())
    bc.write_report(result, tmp_path)
    assert (tmp_path / "convergence.md").read_text() == bc.MD_PATH.read_text()
    for name in ("losses", "weights", "cosines", "steps"):
        assert (tmp_path / f"convergence_{name}.png").stat().st_size > 10_000


def test_goals_follow_the_numbers() -> None:
    """The goals' verdicts agree with a direct computation from the runs."""
    result = json.loads(bc.JSON_PATH.read_text())
    a = bc.analyse(result)
    finals = {(bc._label(r), r["seed"]): bc._final_val(r) for r in result["runs"]}
    seeds = a["table"]["pike"]["seeds"]
    best = a["best_static"]
    pike = np.mean([finals["pike", s][0] for s in seeds])
    static = np.mean([finals[best, s][0] for s in seeds])
    assert a["goals"]["pike_final_avg_le_best_static"]["met"] == (pike <= static)
    base = result["settings"]["seeds"][0]
    worst_at_base = {label: v[1] for (label, seed), v in finals.items() if seed == base}
    if not min(worst_at_base, key=worst_at_base.get).startswith("balanced_pike"):
        assert not a["goals"]["balanced_pike_lowest_worst_domain"]["met"]


@pytest.mark.parametrize("curve, target, expected", [
    ([3.0, 2.5, 2.0], 2.5, 200.0),     # reached exactly at the second evaluation
    ([3.0, 2.5, 2.0], 2.25, 250.0),    # halfway between the second and third
    ([2.0, 1.5], 2.5, 100.0),          # already below at the first evaluation
    ([3.0, 2.8], 2.5, None),           # never
])
def test_steps_to_reach_interpolates_between_evaluations(curve: list[float], target: float,
                                                         expected: float | None) -> None:
    assert bc.steps_to_reach([100, 200, 300][:len(curve)], np.array(curve), target) == expected


def test_sweep_stages_change_one_setting_and_scale_interval_with_steps() -> None:
    best = {"zeta1": 0.05, "zeta2": 0.05, **bc.SWEEP_BASE}
    for options in bc.sweep_stage2(best):
        assert sum(options[k] != best[k] for k in best) == 1, options
    for factor, options in zip(bc.SWEEP_INTERVAL_FACTORS, bc.sweep_stage3({**best, "update_interval": 10})):
        assert options["update_interval"] == 10 * factor
        assert options["zeta1"] == pytest.approx(0.05 * factor) and options["zeta2"] == pytest.approx(0.05 * factor)


def test_recorded_command_hides_the_machines_folders() -> None:
    assert bc._command(["--data", "/data/x/mds", "--work=/scratch/runs", "--steps", "1000"]) == (
        "python bench/bench_convergence.py --data MDS --work=RUNS --steps 1000")
