"""PiKE judged where a paired comparison can resolve it: runs three times as long.

    python bench/corpora.py headroom HEADROOM
    python bench/bench_long.py --headroom HEADROOM/mds --work RUNS [--jobs 2]
    python bench/bench_long.py --report-only

At the benchmarks' lengths (300 and 400 steps) uniform mixing with its weights jittered by 1% moves the final
average loss by 0.024 (noise corpus) and 0.059 (headroom corpus) on average, as much as PiKE or any static
mixture did. Trained three times as long, that null arm moves it by 0.007 and 0.013
(``bench/results/null_x3.json``, seeds 60–63, both arms trained). This benchmark asks the questions of
``bench_headroom.py`` and ``bench_noise.py`` again at that length.

**The protocol, fixed before any of its runs.** Nothing here changes a default: the shipped PiKE is judged, not
tuned.

- Corpora: ``noise`` (en, code, noise; AdamW lr 6e-3; 900 steps) and ``headroom`` (en, code, dup, noise; lr 3e-3;
  1,200 steps): three times the steps of ``bench/bench_variant.py``'s :data:`BENCHMARKS`, evaluations three
  times as far apart.
- Headroom: a coarse grid of static mixtures (:func:`static_grid`) on tuning seed 0, scored on the training
  split; the lowest average loss is the best static mixture (uniform is in the grid).
- Held-out seeds 60–63 (validation split). Their uniform and jittered-uniform (null) runs are those of
  ``null_x3.json``, reused, not rerun; no setting was ever chosen on these seeds. New arms: PiKE at the shipped
  defaults, and the best static mixture (unless it is uniform).
- Scores: PiKE's objective, the validation loss averaged over all domains; differences paired per seed, arm −
  uniform. An arm is *better* (*worse*) than uniform when it is lower (higher) on all four seeds and its mean
  difference is larger than the null arm's mean absolute difference on the same seeds; otherwise the
  comparison does not tell it from uniform.
- The goals of the PiKE issue, scored as in ``bench_noise.py``: PiKE captures at least half of the best static
  mixture's gain on every seed; it reaches uniform's final average loss in at most 0.7× the steps; the noise
  domain's weight is below its uniform share at every step after the first quarter of the run.

Writes ``bench/results/long.json`` and ``long.md``; finished runs are kept in ``WORK/<corpus>/``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402

from bench_noise import NOISE_SHARES  # noqa: E402
from bench_variant import BENCHMARKS, add_corpus_arguments, corpus_folders, lr_option  # noqa: E402
from curves import avg_curve, by_arm, final_losses, fmt_spread, null_floor, paired_diffs, steps_to_reach  # noqa: E402
from runs import RESULTS, regenerate, run_one, run_pool, shipped_defaults, shipped_pike, write_results  # noqa: E402

__all__ = ["CORPORA", "analyse", "main", "static_grid", "verdict", "write_report"]

SCALE = 3
CORPORA = ("noise", "headroom")
TUNE_SEED = 0
SEEDS = (60, 61, 62, 63)
HEADROOM_SHARES = (0.05, 0.15)
"""``dup``'s and ``noise``'s shares of the headroom corpus's grid (each of these, the rest equal): both are
learned early or not at all, so a mixture that gives them less is the one that could beat uniform."""
ARMS = ("uniform", "uniform_jitter", "best_static", "pike")


def static_grid(name: str) -> list[dict[str, float]]:
    """The tuning grid of a corpus, uniform included."""
    domains = BENCHMARKS[name]["domains"]
    if name == "noise":
        return [{"en": (1 - n) / 2, "code": (1 - n) / 2, "noise": n} for n in NOISE_SHARES]
    grid = [{d: 1 / len(domains) for d in domains}]
    for dup in HEADROOM_SHARES:
        for noise in HEADROOM_SHARES:
            rest = (1 - dup - noise) / 2
            grid.append({"en": rest, "code": rest, "dup": dup, "noise": noise})
    return grid


def grid_spec(name: str, weights: dict[str, float]) -> dict[str, Any]:
    domains = BENCHMARKS[name]["domains"]
    return {"name": f"x{SCALE}-grid-s{TUNE_SEED}-" + "-".join(f"{weights[d]:.3f}" for d in domains),
            "seed": TUNE_SEED, "eval_split": "train", "pike": {"strategy": "uniform"}, "weights": weights,
            **lr_option(name)}


def heldout_spec(name: str, arm: str, seed: int, pike: dict[str, Any],
                 weights: dict[str, float] | None = None) -> dict[str, Any]:
    return {"name": f"x{SCALE}-{arm}-s{seed}", "seed": seed, "eval_split": "val", "arm": arm, "pike": pike,
            **({"weights": weights} if weights else {}), **lr_option(name)}


def verdict(diffs: list[float], floor: float) -> str:
    """``better`` / ``worse`` than uniform by the protocol's rule, or ``not resolved``."""
    if all(d < 0 for d in diffs) and -float(np.mean(diffs)) > floor:
        return "better"
    if all(d > 0 for d in diffs) and float(np.mean(diffs)) > floor:
        return "worse"
    return "not resolved"


def analyse(result: dict[str, Any]) -> dict[str, Any]:
    """Per corpus: the grid's scores, each arm's paired differences, step ratios, noise weights and verdict; the
    goals."""
    out: dict[str, Any] = {}
    for name, corpus in result["corpora"].items():
        domains = BENCHMARKS[name]["domains"]
        noise = domains.index("noise")
        by = by_arm(corpus["heldout"])
        uniform = by["uniform"]
        seeds = sorted(uniform)
        floor = null_floor(by, seeds)
        table = {}
        for arm in [a for a in ARMS if a in by]:
            runs = [by[arm][s] for s in seeds]
            diffs = paired_diffs(by, arm, seeds)
            ratios = []
            for r, s in zip(runs, seeds):
                target = final_losses(uniform[s])[0]
                ours = steps_to_reach(r["eval_steps"], avg_curve(r), target)
                theirs = steps_to_reach(uniform[s]["eval_steps"], avg_curve(uniform[s]), target)
                ratios.append(None if ours is None or not theirs else ours / theirs)
            late_noise = []
            for r in runs:
                if r["weights"]:
                    w, steps = np.array(r["weights"]), np.array(r["weight_steps"])
                    late_noise.append(float(w[steps > result["steps"][name] / 4, noise].max()))
            table[arm] = {"final_avg": [final_losses(r)[0] for r in runs], "diff_avg": diffs,
                          "diff_worst": paired_diffs(by, arm, seeds, score=1),
                          "step_ratio": ratios, "late_noise_weight_max": late_noise,
                          "verdict": verdict(diffs, floor) if arm != "uniform" else "",
                          "wall_seconds": float(np.mean([r["wall_seconds"] for r in runs]))}
        goals = {}
        pike = table["pike"]
        gains = [-d for d in table.get("best_static", {"diff_avg": [0.0] * len(seeds)})["diff_avg"]]
        captured = [-p / g if g > 0 else None for p, g in zip(pike["diff_avg"], gains)]
        goals["pike captures half of the best static mixture's gain"] = {
            "met": all(c is not None and c >= 0.5 for c in captured),
            "detail": "best static's gain over uniform per seed " + ", ".join(f"{g:+.4f}" for g in gains)
                      + "; pike's share of it " + ", ".join("n/a" if c is None else f"{c:.2f}" for c in captured)
                      + " (goal ≥ 0.5 on every seed; n/a: no gain to capture)"}
        goals["pike reaches uniform's final loss in 0.7x the steps"] = {
            "met": all(r is not None and r <= 0.7 for r in pike["step_ratio"]),
            "detail": ", ".join("not reached" if r is None else f"{r:.2f}" for r in pike["step_ratio"])}
        share = 1 / len(domains)
        goals["noise weight below its uniform share after the first quarter"] = {
            "met": all(w < share for w in pike["late_noise_weight_max"]),
            "detail": "highest noise weight after step " + f"{result['steps'][name] // 4}: "
                      + ", ".join(f"{w:.3f}" for w in pike["late_noise_weight_max"]) + f" (uniform share {share:.3f})"}
        grid = sorted(corpus["grid"], key=lambda r: final_losses(r)[0])
        out[name] = {"seeds": seeds, "floor": floor, "table": table, "goals": goals,
                     "grid": [(r["spec"]["weights"], final_losses(r)[0]) for r in grid]}
    return out


def write_report(result: dict[str, Any], out: Path = RESULTS) -> None:
    a = analyse(result)
    lines = [f"# PiKE in runs {SCALE} times as long", "",
             "The model, batches (64 × 64 tokens) and evaluation of [headroom.md](headroom.md); each corpus trained "
             f"{SCALE}× the steps of its benchmark. The protocol (tuning grid on seed {TUNE_SEED}'s training split, "
             "held-out seeds, the rule for *better* and *worse*) was fixed before any run: see `bench/bench_long.py`. "
             "PiKE runs the shipped defaults "
             f"({result['shipped_defaults']}). Scores: the validation loss averaged over all domains (PiKE's "
             "objective); differences are arm − uniform, paired per seed, mean ± sd; negative is better.", "",
             f"Command: `{result['command']}`", ""]
    for name, row in a.items():
        domains = BENCHMARKS[name]["domains"]
        lines += [f"## {name} ({', '.join(domains)}; {result['steps'][name]} steps, lr {BENCHMARKS[name]['lr']:g})", "",
                  f"Tuning grid, seed {TUNE_SEED}, training split:", "",
                  "| " + " | ".join(domains) + " | avg train-split loss |", "|" + "---:|" * (len(domains) + 1)]
        for weights, score in row["grid"]:
            lines.append("| " + " | ".join(f"{weights[d]:.3f}" for d in domains) + f" | {score:.4f} |")
        lines += ["", f"Held-out seeds {', '.join(map(str, row['seeds']))} (validation split). The null arm's mean "
                  f"absolute difference, the smallest one this comparison resolves: **{row['floor']:.4f}**.", "",
                  "| arm | final avg loss per seed | avg − uniform per seed | mean ± sd | verdict | worst domain − "
                  "uniform | steps to uniform's final (× uniform's) | noise weight after the first quarter, max |",
                  "|---|---|---|---:|---|---:|---|---|"]
        for arm, t in row["table"].items():
            lines.append(
                f"| {arm} | {', '.join(f'{x:.4f}' for x in t['final_avg'])} | "
                f"{', '.join(f'{x:+.4f}' for x in t['diff_avg'])} | {fmt_spread(t['diff_avg'])} | {t['verdict']} | "
                f"{fmt_spread(t['diff_worst'])} | "
                f"{', '.join('—' if r is None else f'{r:.2f}' for r in t['step_ratio'])} | "
                f"{', '.join(f'{w:.3f}' for w in t['late_noise_weight_max'])} |")
        lines += ["", "Goals:", ""]
        for goal, g in row["goals"].items():
            lines.append(f"- **{goal}**: {'met' if g['met'] else 'NOT met'} — {g['detail']}")
        lines.append("")
    (out / "long.md").write_text("\n".join(lines))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_corpus_arguments(parser, "pike-long-runs")
    args = parser.parse_args(argv)
    out = Path(args.out)
    if regenerate(args, "long", write_report):
        return 0
    folders = corpus_folders(parser, args, CORPORA)
    shipped, pike = shipped_defaults(), shipped_pike()
    null = json.loads((RESULTS / "null_x3.json").read_text())
    pool = run_pool(args.jobs)
    steps = {name: BENCHMARKS[name]["steps"] * SCALE for name in CORPORA}

    def submit(name: str, spec: dict[str, Any]) -> Any:
        bench = BENCHMARKS[name]
        work = os.path.join(args.work, name)
        os.makedirs(work, exist_ok=True)
        return pool.submit(run_one, spec, folders[bench["data"]], work, steps[name], bench["eval_every"] * SCALE,
                           bench["domains"])

    grids = {name: [submit(name, grid_spec(name, w)) for w in static_grid(name)] for name in CORPORA}
    pikes = {name: [submit(name, heldout_spec(name, "pike", s, pike)) for s in SEEDS] for name in CORPORA}
    corpora: dict[str, Any] = {}
    for name in CORPORA:
        reused = [r for r in null["runs"][name] if r["spec"]["seed"] in SEEDS]
        if len(reused) != 2 * len(SEEDS) or null["steps_scale"] != SCALE:
            raise SystemExit(f"bench/results/null_x3.json: expected the uniform and jittered runs of seeds {SEEDS} "
                             f"on {name} at {SCALE}x")
        grid = [f.result() for f in grids[name]]
        best = min(grid, key=lambda r: final_losses(r)[0])["spec"]["weights"]
        print(f"{name}: best static mixture on seed {TUNE_SEED}: {best}", flush=True)
        corpora[name] = {"grid": grid, "best_static": best, "heldout": reused,
                         "pending": [] if np.ptp(list(best.values())) < 1e-9 else
                         [submit(name, heldout_spec(name, "best_static", s, {"strategy": "uniform"}, best))
                          for s in SEEDS]}
    for name in CORPORA:
        corpora[name]["heldout"] += [f.result() for f in pikes[name] + corpora[name].pop("pending")]
    pool.shutdown()
    result = {"command": f"python bench/bench_long.py --headroom HEADROOM/mds --work RUNS --jobs {args.jobs}",
              "machine": {"python": platform.python_version(), "cpus": os.cpu_count()},
              "scale": SCALE, "steps": steps, "shipped_defaults": shipped, "corpora": corpora}
    write_results(out, "long", result, write_report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
