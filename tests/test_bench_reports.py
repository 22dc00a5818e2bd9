"""PiKE's convergence benchmarks: their reports are what their committed JSON says, and their helpers hold."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

import bench_adopt as badopt  # noqa: E402
import bench_corpora as bcorp  # noqa: E402
import bench_headroom as bh  # noqa: E402
import bench_long as blong  # noqa: E402
import bench_long_corpora as blc  # noqa: E402
import bench_long_variance as blv  # noqa: E402
import bench_noise as bn  # noqa: E402
import bench_null as bnull  # noqa: E402
import bench_spread as bs  # noqa: E402
import bench_variant as bv  # noqa: E402
import curves  # noqa: E402
import runs  # noqa: E402

RESULTS = ROOT / "bench" / "results"


def test_headroom_report_is_regenerated_exactly_from_the_committed_json(tmp_path: Path) -> None:
    result = json.loads((RESULTS / "headroom.json").read_text())
    bh.write_report(result, tmp_path)
    assert (tmp_path / "headroom.md").read_text() == (RESULTS / "headroom.md").read_text()
    assert (tmp_path / "headroom.png").stat().st_size > 10_000


def test_corpora_report_is_regenerated_exactly_from_the_committed_json(tmp_path: Path) -> None:
    result = json.loads((RESULTS / "corpora.json").read_text())
    bcorp.write_report(result, tmp_path)
    assert (tmp_path / "corpora.md").read_text() == (RESULTS / "corpora.md").read_text()


def test_noise_report_is_regenerated_exactly_from_the_committed_json(tmp_path: Path) -> None:
    result = json.loads((RESULTS / "noise.json").read_text())
    bn.write_report(result, tmp_path)
    assert (tmp_path / "noise.md").read_text() == (RESULTS / "noise.md").read_text()
    assert (tmp_path / "noise.png").stat().st_size > 10_000


def test_spread_report_is_regenerated_from_the_committed_json_and_the_noise_benchmark_uses_its_choice(
        tmp_path: Path) -> None:
    result = json.loads((RESULTS / "spread.json").read_text())
    bs.write_report(result, tmp_path)
    assert (tmp_path / "spread.md").read_text() == (RESULTS / "spread.md").read_text()
    chosen = bs.analyse(result)
    noise = json.loads((RESULTS / "noise.json").read_text())
    assert (chosen["chosen_lr"], chosen["chosen_batch"]) == (bn.LR, runs.BATCH) == (noise["settings"]["lr"], 64)
    seeds = set(result["settings"]["seeds"])
    assert not seeds & set(noise["settings"]["seeds"]) and noise["settings"]["tune_seed"] not in seeds


def test_noise_benchmark_chose_on_the_tuning_seed_and_pike_ran_the_shipped_defaults() -> None:
    result = json.loads((RESULTS / "noise.json").read_text())
    best = min(result["grid"], key=lambda r: np.mean([v[-1] for v in r["val_loss"].values()]))
    assert result["best_static"] == best["spec"]["weights"]
    assert all(r["spec"]["seed"] == result["settings"]["tune_seed"] and r["spec"]["eval_split"] == "train"
               for r in result["grid"])
    assert all(r["spec"]["seed"] in result["settings"]["seeds"] and r["spec"]["eval_split"] == "val"
               for r in result["heldout"])
    assert result["shipped_defaults"] == runs.shipped_defaults()  # still the library's defaults


def test_headroom_goals_follow_the_numbers() -> None:
    """The verdicts agree with a direct computation from the held-out runs (paired per seed)."""
    result = json.loads((RESULTS / "headroom.json").read_text())
    goals = bh.analyse(result)["goals"]
    final = {(r["spec"]["arm"], r["spec"]["seed"]): np.mean([v[-1] for v in r["val_loss"].values()])
             for r in result["heldout"]}
    seeds = result["settings"]["seeds"]
    captured = [(final["uniform", s] - final["pike", s]) / (final["uniform", s] - final["best_static", s])
                for s in seeds]
    gains = [final["uniform", s] - final["best_static", s] for s in seeds]
    expected = all(g > 0 and c >= 0.5 for g, c in zip(gains, captured))
    assert goals["pike_captures_half_of_best_static_gain"]["met"] == expected
    # The tuning choice was made on the tuning seed only: the chosen settings are those of the best sweep run.
    best = min(result["sweep"], key=lambda r: curves.final_losses(r)[0])
    assert result["chosen_pike"] == best["spec"]["pike"]
    assert all(r["spec"]["seed"] == result["settings"]["tune_seed"] and r["spec"]["eval_split"] == "train"
               for r in result["grid"] + result["sweep"])
    assert all(r["spec"]["seed"] in seeds and r["spec"]["eval_split"] == "val" for r in result["heldout"])
    assert result["settings"]["tune_seed"] not in seeds


def test_static_grid_is_on_the_simplex_and_holds_uniform() -> None:
    grid = bh.static_grid()
    assert all(sum(w.values()) == pytest.approx(1.0) and min(w.values()) > 0 for w in grid)
    assert any(all(v == pytest.approx(0.25) for v in w.values()) for w in grid)
    assert len({tuple(round(v, 6) for v in w.values()) for w in grid}) == len(grid)


def test_steps_to_reach_interpolates_between_evaluations() -> None:
    steps = [40, 80, 120]
    assert curves.steps_to_reach(steps, np.array([3.0, 2.0, 1.0]), 2.5) == pytest.approx(60.0)
    assert curves.steps_to_reach(steps, np.array([3.0, 2.0, 1.0]), 3.5) == pytest.approx(40.0)
    assert curves.steps_to_reach(steps, np.array([3.0, 2.0, 1.5]), 1.0) is None


def test_the_batch_24_spread_study_is_regenerated_exactly_and_chooses_nothing(tmp_path: Path) -> None:
    result = json.loads((RESULTS / "spread_b24.json").read_text())
    bs.write_report(result, tmp_path)
    assert (tmp_path / "spread_b24.md").read_text() == (RESULTS / "spread_b24.md").read_text()
    assert result["settings"]["batches"] == [24]
    assert json.loads((RESULTS / "noise.json").read_text())["settings"]["batch"] == runs.BATCH == 64


def test_alignment_quarters_sum_each_estimate_over_its_quarter_of_the_run() -> None:
    import bench_alignment as ba

    def probe(step: int, g_train: float, g_gen: float) -> dict:
        return {"step": step, "a": {"G_train": g_train, "G_gen": g_gen, "G_val": 0.0, "loss_train": 1.0,
                                    "loss_val": 1.5}}

    records = [probe(10, 2.0, 2.0), probe(20, 2.0, 1.0), probe(30, 1.0, 0.5), probe(40, -1.0, 0.0)]
    quarters = ba._quarters(records, ["a"], 40)["a"]
    assert [q["steps"] for q in quarters] == ["1-10", "11-20", "21-30", "31-40"]
    assert [q["probes"] for q in quarters] == [1, 1, 1, 1]
    ratios = [q["gen_over_train"] for q in quarters]
    assert ratios[:3] == [1.0, 0.5, 0.5] and np.isnan(ratios[3])  # a sum of G_train ≤ 0 has no ratio
    assert all(q["loss_val_minus_train"] == 0.5 for q in quarters)


def test_the_unequal_corpus_at_lr_6e3_is_regenerated_exactly_and_ran_the_shipped_defaults(tmp_path: Path) -> None:
    result = json.loads((RESULTS / "unequal_lr0.006.json").read_text())
    bcorp.write_report(result, tmp_path, "unequal_lr0.006")
    assert (tmp_path / "unequal_lr0.006.md").read_text() == (RESULTS / "unequal_lr0.006.md").read_text()
    assert result["settings"]["lr"] == 6e-3 and list(result["corpora"]) == ["unequal"]
    assert result["defaults"] == runs.shipped_defaults()
    assert {run["spec"]["lr"] for run in result["corpora"]["unequal"]} == {6e-3}


@pytest.mark.parametrize("variant", ["metric", "cross_terms"])
def test_a_variant_study_is_regenerated_exactly_and_its_arms_are_paired_twins(tmp_path: Path, variant: str) -> None:
    """Every variant run is a committed shipped run's spec with only the variant's options (and name) added; the
    shipped and uniform runs are the committed ones; the rule decided on the tuning seed's numbers, and the
    library's defaults follow the decision."""
    result = json.loads((RESULTS / f"{variant}.json").read_text())
    bv.write_report(result, tmp_path)
    assert (tmp_path / f"{variant}.md").read_text() == (RESULTS / f"{variant}.md").read_text()
    tag = bv.VARIANTS[variant]["tag"]
    for name, runs_of in result["heldout"].items():
        committed = {run["spec"]["name"]: run for run in bv.committed_runs(name)}
        for run in runs_of:
            spec = run["spec"]
            if spec["name"].startswith(f"{tag}-"):
                assert spec == bv.with_variant(committed[spec["name"].removeprefix(f"{tag}-")]["spec"], variant)
            else:
                assert run == committed[spec["name"]]
    decision = bv.analyse(result)
    assert decision["adopt"] == all(t["variant"] < t["pike"] for t in decision["tuning"].values())
    from pike_stream.controller import DEFAULT_METRIC
    from pike_stream.strategies import get_strategy
    shipped = {"metric": DEFAULT_METRIC, "cross_terms": get_strategy("pike").cross_terms}
    options = bv.VARIANTS[variant]["options"]
    assert all((shipped[k] == v) == decision["adopt"] for k, v in options.items())


def test_the_noise_floor_study_is_regenerated_exactly_and_pairs_each_jittered_run_with_a_committed_uniform(
        tmp_path: Path) -> None:
    result = json.loads((RESULTS / "null.json").read_text())
    bnull.write_report(result, tmp_path)
    assert (tmp_path / "null.md").read_text() == (RESULTS / "null.md").read_text()
    for name, runs_of in result["runs"].items():
        committed = {run["spec"]["name"]: run for run in bv.committed_runs(name)}
        domains = bv.BENCHMARKS[name]["domains"]
        uniform = [r for r in runs_of if r["spec"]["arm"] == "uniform"]
        jittered = {r["spec"]["name"]: r for r in runs_of if r["spec"]["arm"] == "uniform_jitter"}
        assert uniform and len(jittered) == len(uniform)
        for run in uniform:
            assert run == committed[run["spec"]["name"]]
            assert jittered[f"jitter-{run['spec']['name']}"]["spec"] == bnull.null_spec(run["spec"], domains)
    weights = bnull.jittered(("a", "b", "c", "d"))
    assert sum(weights.values()) == pytest.approx(1.0) and max(weights.values()) / min(weights.values()) == \
        pytest.approx(1.01 / 0.99)


def test_write_results_writes_the_json_that_regenerates_the_same_report(tmp_path: Path, capsys) -> None:
    result = json.loads((RESULTS / "null.json").read_text())
    runs.write_results(tmp_path / "new", "null", result, bnull.write_report)
    assert json.loads((tmp_path / "new" / "null.json").read_text()) == result
    assert (tmp_path / "new" / "null.md").read_text() == (RESULTS / "null.md").read_text()
    assert "null.json and null.md" in capsys.readouterr().out


@pytest.mark.parametrize("variant", ["cross_terms", "zeta2_0"])
def test_the_adoption_study_is_regenerated_exactly_its_arms_are_paired_and_its_held_out_seeds_were_new(
        tmp_path: Path, variant: str) -> None:
    """The held-out seeds are in no results file but the adoption studies', which share their uniform and shipped
    runs; the library's default follows each study's decision."""
    result = json.loads((RESULTS / f"adopt_{variant}.json").read_text())
    badopt.write_report(result, tmp_path)
    assert (tmp_path / f"adopt_{variant}.md").read_text() == (RESULTS / f"adopt_{variant}.md").read_text()
    for phase, seeds, split in (("tuning", badopt.TUNING_SEEDS, "train"), ("heldout", badopt.HELDOUT_SEEDS, "val")):
        assert sorted(result[phase]) == sorted(bv.BENCHMARKS)
        for name, by_seed in result[phase].items():
            assert sorted(map(int, by_seed)) == list(seeds)
            for seed, arms in by_seed.items():
                expected = badopt.specs(name, int(seed), split, variant)
                assert set(arms) == ({"pike", "variant"} if phase == "tuning" else set(badopt.ARMS))
                assert all(arms[arm]["spec"] == expected[arm] for arm in arms)
    floors = bnull.analyse(json.loads((RESULTS / "null.json").read_text()))
    assert result["null_floor"] == {name: row["mean_abs_diff_avg"] for name, row in floors.items()}
    fresh = set(badopt.HELDOUT_SEEDS)
    for other in RESULTS.glob("*.json"):
        if not other.name.startswith("adopt_"):
            assert not any(f'"seed":{s},' in other.read_text().replace(" ", "") for s in fresh), other.name
    from pike_stream.strategies.registry import PiKEStrategy
    adopt = badopt.analyse(result)["adopt"]
    assert all((getattr(PiKEStrategy(), k) == v) == adopt for k, v in bv.VARIANTS[variant]["options"].items())


def test_the_adoption_rule_needs_a_lower_mean_and_no_corpus_above_its_null_floor() -> None:
    def run(loss: float) -> dict:
        return {"val_loss": {"a": [loss]}}

    def result(diffs: dict[str, list[float]], floor: float = 0.05) -> dict:
        return {"null_floor": {name: floor for name in diffs}, "heldout": {},
                "tuning": {name: {str(s): {"pike": run(2.0), "variant": run(2.0 + d)} for s, d in enumerate(ds)}
                           for name, ds in diffs.items()}}

    assert badopt.analyse(result({"a": [-0.02, 0.0], "b": [0.01, 0.0]}))["adopt"]
    assert not badopt.analyse(result({"a": [-0.02, 0.0], "b": [0.03, 0.0]}))["adopt"]  # mean of d above zero
    assert not badopt.analyse(result({"a": [-0.2, -0.2], "b": [0.06, 0.06]}))["adopt"]  # b above its floor
    assert badopt.analyse(result({"a": [-0.2, -0.2], "b": [0.06, 0.06]}, floor=0.1))["adopt"]


def test_the_longer_runs_noise_floor_is_regenerated_exactly_and_trains_both_arms_on_new_seeds(tmp_path: Path) -> None:
    result = json.loads((RESULTS / "null_x3.json").read_text())
    bnull.write_report(result, tmp_path)
    assert (tmp_path / "null_x3.md").read_text() == (RESULTS / "null_x3.md").read_text()
    scale = result["steps_scale"]
    assert scale == 3
    for name, runs_of in result["runs"].items():
        bench = bv.BENCHMARKS[name]
        uniform = {r["spec"]["seed"]: r for r in runs_of if r["spec"]["arm"] == "uniform"}
        jittered = {r["spec"]["seed"]: r for r in runs_of if r["spec"]["arm"] == "uniform_jitter"}
        assert sorted(uniform) == sorted(jittered) == [60, 61, 62, 63]
        for seed, run in uniform.items():
            assert run["spec"] == bnull.uniform_spec(name, seed, scale)
            assert jittered[seed]["spec"] == bnull.null_spec(run["spec"], bench["domains"])
            assert run["steps"] == jittered[seed]["steps"] == bench["steps"] * scale
    for other in RESULTS.glob("*.json"):
        if other.name not in ("null_x3.json", "long.json", "long_variance.json"):  # they reuse its runs (checked)
            assert not any(f'"seed":{s},' in other.read_text().replace(" ", "") for s in (60, 61, 62, 63)), other.name


def test_the_long_runs_study_is_regenerated_exactly_reuses_the_null_runs_and_chose_on_the_tuning_seed(
        tmp_path: Path) -> None:
    result = json.loads((RESULTS / "long.json").read_text())
    blong.write_report(result, tmp_path)
    assert (tmp_path / "long.md").read_text() == (RESULTS / "long.md").read_text()
    null = json.loads((RESULTS / "null_x3.json").read_text())
    assert result["shipped_defaults"] == runs.shipped_defaults()
    pike = runs.shipped_pike()
    assert sorted(result["corpora"]) == sorted(blong.CORPORA)
    for name, corpus in result["corpora"].items():
        steps = bv.BENCHMARKS[name]["steps"] * blong.SCALE
        grid = corpus["grid"]
        assert [r["spec"] for r in grid] == [blong.grid_spec(name, w) for w in blong.static_grid(name)]
        assert all(r["spec"]["seed"] == blong.TUNE_SEED and r["spec"]["eval_split"] == "train" for r in grid)
        assert corpus["best_static"] == min(grid, key=lambda r: curves.final_losses(r)[0])["spec"]["weights"]
        heldout = corpus["heldout"]
        assert all(r["steps"] == steps for r in grid + heldout)
        reused = [r for r in heldout if r["spec"]["arm"] in ("uniform", "uniform_jitter")]
        assert reused == null["runs"][name], "the uniform and null arms are null_x3's runs, not rerun"
        by_arm: dict[str, list[int]] = {}
        for run in heldout:
            by_arm.setdefault(run["spec"]["arm"], []).append(run["spec"]["seed"])
            assert run["spec"]["eval_split"] == "val"
            if run["spec"]["arm"] == "pike":
                assert run["spec"] == blong.heldout_spec(name, "pike", run["spec"]["seed"], pike)
            if run["spec"]["arm"] == "best_static":
                assert run["spec"]["weights"] == corpus["best_static"]
        assert all(sorted(seeds) == list(blong.SEEDS) for seeds in by_arm.values())
        uniform_best = np.ptp(list(corpus["best_static"].values())) < 1e-9
        assert ("best_static" in by_arm) != uniform_best


def test_the_variance_ablation_is_regenerated_exactly_reuses_long_json_and_runs_new_seeds(tmp_path: Path) -> None:
    result = json.loads((RESULTS / "long_variance.json").read_text())
    blv.write_report(result, tmp_path)
    assert (tmp_path / "long_variance.md").read_text() == (RESULTS / "long_variance.md").read_text()
    assert result["shipped_defaults"] == runs.shipped_defaults()
    long = json.loads((RESULTS / "long.json").read_text())
    assert sorted(result["corpora"]) == sorted(blv.STUDIES)
    for corpus, study in result["corpora"].items():
        assert result["steps"][corpus] == long["steps"][corpus] == bv.BENCHMARKS[corpus]["steps"] * blong.SCALE
        assert sorted(r["spec"]["name"] for r in study["runs"]) == sorted(s["name"] for s in blv.specs(corpus))
        assert all(r["spec"] in blv.specs(corpus) and r["steps"] == result["steps"][corpus] for r in study["runs"])
        committed = long["corpora"][corpus]["heldout"]
        expected = {"uniform": {"strategy": "uniform"}, "uniform_jitter": {"strategy": "uniform"},
                    "pike": runs.shipped_pike(), "pike_zeta2_0": {**runs.shipped_pike(), "zeta2": 0.0}}
        for run in study["runs"]:
            assert run["spec"]["pike"] == expected[run["spec"]["arm"]]
            if run["spec"]["arm"] in blv.STUDIES[corpus]["reused"]:
                assert run in committed, f"{run['spec']['name']} is long.json's run, not rerun"
    for other in RESULTS.glob("*.json"):  # the noise corpus's seeds are new
        if other.name != "long_variance.json":
            text = other.read_text().replace(" ", "")
            assert not any(f'"seed":{s},' in text for s in blv.STUDIES["noise"]["seeds"]), other.name


def test_the_long_runs_verdict_needs_every_seed_and_a_mean_past_the_null_floor() -> None:
    assert blong.verdict([-0.02, -0.03, -0.01, -0.02], 0.01) == "better"
    assert blong.verdict([-0.02, -0.03, -0.01, +0.001], 0.01) == "not resolved"  # one seed the other way
    assert blong.verdict([-0.005, -0.006, -0.004, -0.005], 0.01) == "not resolved"  # inside the floor
    assert blong.verdict([0.02, 0.03, 0.01, 0.02], 0.01) == "worse"


@pytest.mark.parametrize("corpus", [c for c in blc.STUDIES if (RESULTS / f"long_{c}.json").exists()])
def test_a_long_corpus_study_is_regenerated_exactly_and_every_arm_is_its_protocols(tmp_path: Path,
                                                                                  corpus: str) -> None:
    name = f"long_{corpus}.json"
    result = json.loads((RESULTS / name).read_text())
    assert result["corpus"] == corpus
    blc.write_report(result, tmp_path)
    assert (tmp_path / f"long_{corpus}.md").read_text() == (RESULTS / f"long_{corpus}.md").read_text()
    assert result["shipped_defaults"] == runs.shipped_defaults()
    assert result["steps"] == blc.STEPS == 400 * blong.SCALE
    seeds = blc.STUDIES[corpus]["seeds"]
    expected = [spec for seed in seeds for spec in blc.arm_specs(corpus, seed)]
    assert [r["spec"] for r in result["runs"]] == expected, "every arm on every seed, as the protocol fixed them"
    assert all(r["steps"] == result["steps"] for r in result["runs"])
    by_spec = {r["spec"]["name"]: r for r in result["runs"]}
    pike = runs.shipped_pike()
    for seed in seeds:
        assert by_spec[f"x3-pike-s{seed}"]["spec"]["pike"] == pike
        assert by_spec[f"x3-balanced_pike-s{seed}"]["spec"]["pike"] == {**pike, "strategy": "balanced_pike",
                                                                           "tau": bcorp.BALANCED_TAU}
    for other in RESULTS.glob("*.json"):  # seeds no other benchmark runs
        text = other.read_text().replace(" ", "")
        if other.name != name:
            assert not any(f'"seed":{s},' in text for s in seeds), other.name


def test_the_unequal_study_kept_the_specs_of_its_committed_protocol() -> None:
    """The unequal corpus's runs were made before the multilingual corpus joined the script: its specs are
    those the first protocol wrote (lr as ``unequal_lr0.006``)."""
    assert blc.arm_specs("unequal", 70)[3] == {"name": "x3-pike-s70", "seed": 70, "eval_split": "val", "arm": "pike",
                                               "pike": runs.shipped_pike(), **bv.lr_option("unequal")}
    assert (RESULTS / "long_unequal.json").exists()


def test_the_unequal_studys_goals_follow_its_numbers() -> None:
    def run(arm: str, seed: int, avg: float, worst: float) -> dict:
        # two domains whose mean is avg and whose higher is worst
        return {"spec": {"arm": arm, "seed": seed}, "val_loss": {"en": [2 * avg - worst], "code": [worst],
                                                                  "ru": [avg], "fr": [avg]},
                "weights": [], "wall_seconds": 1.0}

    def study(pike_avg: float, balanced_worst: float) -> dict:
        out = []
        for seed, noise in zip(blc.STUDIES["unequal"]["seeds"], (0.0, 0.01, -0.01, 0.02)):
            out += [run("uniform", seed, 2.0 + noise, 2.5 + noise),
                    run("uniform_jitter", seed, 2.005 + noise, 2.505 + noise),
                    run("proportional", seed, 2.0 + noise, 2.45 + noise),
                    run("pike", seed, pike_avg + noise, 2.5 + noise),
                    run("balanced_pike", seed, 2.0 + noise, balanced_worst + noise)]
        return {"corpus": "unequal", "runs": out}

    good = blc.analyse(study(pike_avg=2.0, balanced_worst=2.4))
    assert good["floors"]["avg"] == pytest.approx(0.005)
    assert all(g["met"] for g in good["goals"].values())
    assert good["table"]["balanced_pike"]["verdict_worst"] == "better"
    bad = blc.analyse(study(pike_avg=2.05, balanced_worst=2.47))
    assert bad["table"]["pike"]["verdict_avg"] == "worse"
    assert not any(g["met"] for g in bad["goals"].values())  # proportional's 2.45 is below balanced's 2.47
