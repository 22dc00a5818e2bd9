"""Does PiKE help where a better mixture exists? Tuned on one seed, judged on held-out seeds.

    python bench/corpora.py headroom HEADROOM                  # en, code, dup, noise at seq_len 64
    python bench/bench_headroom.py --data HEADROOM/mds --work RUNS [--steps 400] [--jobs 2]
    python bench/bench_headroom.py --report-only                 # md + PNG again from the JSON

Every run trains the same tiny GPT-2 (2 layers, 128 wide, byte vocabulary) on batches of 64 × 64 tokens
(16 samples of every domain at uniform weights), with the same optimizer and schedule; per seed, every arm
has the same initialisation and the same per-domain sample orders. Only the mixing differs.

The objective is PiKE's own: the validation loss averaged over **all** domains with equal weight (and the
worst domain's for Balanced-PiKE).

1. **Tuning seed** (``--tune-seed``), scored on the TRAINING split only (the first eval batches of each
   domain's train split; no validation data is looked at):
   * a coarse grid of static mixtures (:func:`static_grid`: ``noise`` at 0.05, 0.15 or 0.25, ``dup`` at the
     same shares or equal to ``en`` and ``code``; uniform is one of them). The best is the headroom's mixture.
   * a sweep of PiKE's settings (:data:`PIKE_SWEEP`): the normalised rule and the paper's raw-scale rule
     (Algorithm 1), each at three step sizes ζ1 = ζ2, and the normalised rule without the variance term
     (ζ2 = 0) at two, with a probe batch of 8 samples per domain every 10 steps and statistics averaged with
     ema 0.5. The best becomes the library's default — before any held-out seed is
     run.
2. **Held-out seeds** (``--seeds``), scored on the VALIDATION split: uniform, the best static mixture, pike
   at the shipped defaults, pike with ζ2 = 0 (the paper's variance ablation), conceptual_pike (the QP with
   the optimizer's learning rate and unit constants, untuned), and pike with a large probe
   (``ORACLE_PROBE`` samples per domain: better statistics, same rule — it tells estimator error apart from
   the rule). Differences to uniform are paired per seed. (Balanced-PiKE's objective is the worst domain;
   it is judged on the corpora of ``bench/bench_corpora.py``.)

Each run's result is kept in ``WORK/<name>.json``; rerunning the command skips finished runs (delete the
folder to start over). Writes ``bench/results/headroom.json`` and, from it, ``headroom.md`` and
``headroom.png``.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402

from corpora import CORPORA  # noqa: E402
from curves import (  # noqa: E402
    avg_curve,
    final_losses,
    fmt_spread,
    per_domain_and_goal_lines,
    plot_curves_and_weights,
    steps_to_reach,
)
from runs import (  # noqa: E402
    BATCH,
    EVAL_BATCH_SIZE,
    EVAL_BATCHES,
    RESULTS,
    SEQ_LEN,
    Runner,
    add_common_arguments,
    check_data,
    regenerate,
    shipped_defaults,
    shipped_pike,
    write_results,
)

__all__ = ["analyse", "main", "static_grid", "write_report"]

DOMAINS = CORPORA["headroom"]
ORACLE_PROBE = 64
GRID_SHARES = (0.05, 0.15, 0.25)
# PiKE's sweep on the tuning seed. Every entry is complete (no hidden defaults), so the chosen one can be
# written into the library as it is.
PIKE_BASE = {"probe_samples": 8, "update_interval": 10, "ema": 0.5, "min_weight": 0.01, "normalize": True,
             "pull": 0.0}
PIKE_SWEEP = (
    {**PIKE_BASE, "zeta1": 0.1, "zeta2": 0.1},
    {**PIKE_BASE, "zeta1": 0.3, "zeta2": 0.3},
    {**PIKE_BASE, "zeta1": 1.0, "zeta2": 1.0},
    {**PIKE_BASE, "normalize": False, "zeta1": 0.1, "zeta2": 0.1},
    {**PIKE_BASE, "normalize": False, "zeta1": 0.3, "zeta2": 0.3},
    {**PIKE_BASE, "normalize": False, "zeta1": 1.0, "zeta2": 1.0},
    {**PIKE_BASE, "zeta1": 0.1, "zeta2": 0.0},
    {**PIKE_BASE, "zeta1": 0.3, "zeta2": 0.0},
    # The pull back to the initial mixture (pike_stream.strategies.pull_toward): the weights follow the recent
    # statistics instead of their running sum. Added after the first held-out seeds (1-3) showed the running
    # sum keeping a learned domain's gains; judged on new held-out seeds.
    {**PIKE_BASE, "zeta1": 0.1, "zeta2": 0.1, "pull": 0.1},
    {**PIKE_BASE, "zeta1": 0.3, "zeta2": 0.3, "pull": 0.1},
    {**PIKE_BASE, "zeta1": 0.3, "zeta2": 0.3, "pull": 0.3},
    {**PIKE_BASE, "zeta1": 1.0, "zeta2": 1.0, "pull": 0.3},
    # Statistics from the training step itself (probe_samples 0: no probe batch, no extra pass), at the
    # defaults otherwise. Added with that option, after the held-out seeds 4-6 had been run with the others.
    {**PIKE_BASE, "zeta1": 0.1, "zeta2": 0.1, "pull": 0.1, "probe_samples": 0},
)
HELDOUT_ARMS = ["uniform", "best_static", "pike", "pike_zeta2_0", "pike_oracle", "pike_step_statistics",
                "conceptual_pike"]
"""The held-out arms, in the report's order."""
CONCEPTUAL = {"lr": 3.0e-3, "smoothness": 1.0, "beta": 1.0, "gamma": 1.0, "min_weight": 0.01}


# ----------------------------------------------------------------------------------------------- running
def static_grid() -> list[dict[str, float]]:
    """The static mixtures of the tuning grid: noise's share from GRID_SHARES; dup's from GRID_SHARES with
    en = code = the rest / 2, or equal to en's and code's (the rest / 3). Uniform is one of them."""
    grid = []
    for dup in GRID_SHARES:
        for noise in GRID_SHARES:
            rest = (1.0 - dup - noise) / 2
            grid.append({"en": rest, "code": rest, "dup": dup, "noise": noise})
    for noise in GRID_SHARES[:-1]:
        rest = (1.0 - noise) / 3
        grid.append({"en": rest, "code": rest, "dup": rest, "noise": noise})
    return grid


















# ----------------------------------------------------------------------------------------------- analysis








def _paired(runs: dict[str, dict[int, dict[str, Any]]], arm: str, base: str, seeds: list[int], index: int
            ) -> list[float]:
    return [final_losses(runs[arm][s])[index] - final_losses(runs[base][s])[index] for s in seeds]


def analyse(result: dict[str, Any]) -> dict[str, Any]:
    """Per arm: final losses per held-out seed, paired differences to uniform, steps to uniform's final
    average loss, the noise domain's weight; and the goals, judged on the held-out seeds."""
    seeds = result["settings"]["seeds"]
    runs: dict[str, dict[int, dict[str, Any]]] = {}
    for run in result["heldout"]:
        runs.setdefault(run["spec"]["arm"], {})[run["spec"]["seed"]] = run
    table = {}
    for arm, by_seed in runs.items():
        have = [s for s in seeds if s in by_seed]
        diffs_avg = _paired(runs, arm, "uniform", have, 0)
        diffs_worst = _paired(runs, arm, "uniform", have, 1)
        ratios = []
        for s in have:
            uniform = runs["uniform"][s]
            target = final_losses(uniform)[0]
            ours = steps_to_reach(by_seed[s]["eval_steps"], avg_curve(by_seed[s]), target)
            theirs = steps_to_reach(uniform["eval_steps"], avg_curve(uniform), target)
            ratios.append(None if ours is None or not theirs else ours / theirs)
        noise = DOMAINS.index("noise")
        noise_weights = [np.array(by_seed[s]["weights"])[:, noise] for s in have if by_seed[s]["weights"]]
        table[arm] = {
            "seeds": have,
            "final_avg": [final_losses(by_seed[s])[0] for s in have],
            "final_worst": [final_losses(by_seed[s])[1] for s in have],
            "diff_avg": diffs_avg, "diff_worst": diffs_worst,
            "step_ratio": ratios,
            "noise_weight_final": [float(w[-1]) for w in noise_weights],
            "noise_weight_max_after_100": [float(w[100:].max()) if len(w) > 100 else None for w in noise_weights],
            "wall_seconds": float(np.mean([by_seed[s]["wall_seconds"] for s in have])),
        }
    goals = {}
    if "pike" in table and "best_static" in table:
        gains = [-d for d in table["best_static"]["diff_avg"]]
        pike_gains = [-d for d in table["pike"]["diff_avg"]]
        captured = [p / g if g > 0 else None for p, g in zip(pike_gains, gains)]
        goals["pike_captures_half_of_best_static_gain"] = {
            "met": all(c is not None and c >= 0.5 for c in captured),
            "detail": "per held-out seed, pike's gain over uniform / best static's gain: "
                      + ", ".join("n/a" if c is None else f"{c:.2f}" for c in captured)
                      + " (goal ≥ 0.5 on every seed)"}
        ratios = table["pike"]["step_ratio"]
        goals["pike_reaches_uniform_final_in_0.7x_steps"] = {
            "met": all(r is not None and r <= 0.7 for r in ratios),
            "detail": "per held-out seed, pike's steps to uniform's final average loss / uniform's: "
                      + ", ".join("not reached" if r is None else f"{r:.2f}" for r in ratios) + " (goal ≤ 0.7)"}
        share = 1 / len(DOMAINS)
        late = table["pike"]["noise_weight_max_after_100"]
        goals["noise_weight_falls_early_and_stays_below_uniform"] = {
            "met": all(x is not None and x < share for x in late),
            "detail": "per held-out seed, the noise domain's highest weight after step 100: "
                      + ", ".join("n/a" if x is None else f"{x:.3f}" for x in late) + f" (goal < {share:g})"}
    return {"table": table, "goals": goals}


# ----------------------------------------------------------------------------------------------- report




def write_report(result: dict[str, Any], out: Path = RESULTS) -> None:
    """``headroom.md`` and ``headroom.png`` from the results JSON."""
    a = analyse(result)
    s = result["settings"]
    seeds = s["seeds"]
    lines = [
        "# Headroom: PiKE where a better mixture exists (en, code, dup, noise)", "",
        f"A GPT-2 of 2 layers, width 128 (byte vocabulary) trained {s['steps']} steps on batches of {BATCH} × "
        f"{SEQ_LEN} tokens, AdamW lr 3e-3, cosine schedule. Four domains: English man pages, Python's standard "
        "library, `dup` (16 lines repeated: memorised early) and `noise` (random printable characters: nothing "
        "to learn past their frequencies). The score is PiKE's objective: the loss averaged over all four "
        f"domains with equal weight, on the first {EVAL_BATCHES} × {EVAL_BATCH_SIZE} sequences of each domain. "
        f"Settings were chosen on seed {s['tune_seed']} scored on the training split; seeds "
        f"{', '.join(map(str, seeds))} played no part in any choice. (The first version of this benchmark, "
        "without the pull back to the initial mixture, was judged on seeds 1, 2, 3: "
        "[headroom_before_pull.md](headroom_before_pull.md). What those seeds showed led to the pull, so they "
        "are no longer held out, and the current version is judged on new seeds.)", "",
        f"Command: `{result['command']}`", "",
        f"## Tuning (seed {s['tune_seed']:d}, training split)", "",
        "Static mixtures (weights en / code / dup / noise), sorted by score:", "",
        "| en | code | dup | noise | avg train-split loss |", "|---:|---:|---:|---:|---:|"]
    for run in sorted(result["grid"], key=lambda r: final_losses(r)[0]):
        w = run["spec"]["weights"]
        lines.append(f"| {w['en']:.3f} | {w['code']:.3f} | {w['dup']:.3f} | {w['noise']:.3f} | "
                     f"{final_losses(run)[0]:.4f} |")
    lines += ["", "PiKE's settings, sorted by score:", "",
              "| rule | ζ1 | ζ2 | pull | probe samples | T0 | ema | avg train-split loss |",
              "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for run in sorted(result["sweep"], key=lambda r: final_losses(r)[0]):
        p = run["spec"]["pike"]
        rule = "normalised" if p.get("normalize", True) else "raw (paper)"
        lines.append(f"| {rule} | {p['zeta1']:g} | {p['zeta2']:g} | {p.get('pull', 0.0):g} | {p['probe_samples']} | "
                     f"{p['update_interval']} | "
                     f"{p['ema']:g} | {final_losses(run)[0]:.4f} |")
    chosen, shipped = result["chosen_pike"], result.get("shipped_defaults", {})
    if all(chosen.get(k) == v for k, v in shipped.items()):
        choice = f"Chosen PiKE settings (the library's defaults): {chosen}."
    else:
        choice = (f"Chosen PiKE settings: {chosen}. They differ from the library's defaults, which the held-out "
                  f"`pike` arm ran: {shipped}.")
    lines += ["", f"Chosen static mixture: {result['best_static']}. {choice}", "",
              "## Held-out seeds (validation split)", "",
              "Differences are paired per seed (same initialisation and sample orders), arm − uniform; mean ± "
              "sample standard deviation over the held-out seeds. Negative is better.", "",
              "| arm | final avg loss per seed | avg − uniform | final worst-domain loss | worst − uniform | "
              "steps to uniform's final avg (× uniform's) | noise weight at the end | wall s/run |",
              "|---|---|---:|---|---:|---|---|---:|"]
    for arm in [a_ for a_ in HELDOUT_ARMS if a_ in a["table"]]:
        row = a["table"][arm]
        lines.append(
            f"| {arm} | {', '.join(f'{x:.4f}' for x in row['final_avg'])} | {fmt_spread(row['diff_avg'])} | "
            f"{', '.join(f'{x:.4f}' for x in row['final_worst'])} | {fmt_spread(row['diff_worst'])} | "
            f"{', '.join('—' if r is None else f'{r:.2f}' for r in row['step_ratio'])} | "
            f"{', '.join(f'{x:.3f}' for x in row['noise_weight_final'])} | {row['wall_seconds']:.0f} |")
    lines += per_domain_and_goal_lines(result, [a_ for a_ in HELDOUT_ARMS if a_ in a["table"]], DOMAINS,
                                       a["goals"])
    lines += ["", "![validation loss and weights](headroom.png)", ""]
    (out / "headroom.md").write_text("\n".join(lines))
    plot_curves_and_weights(result, out / "headroom.png", DOMAINS, HELDOUT_ARMS)




# ----------------------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", help="the headroom corpus's mds/ folder (bench/corpora.py headroom)")
    add_common_arguments(parser, "pike-headroom", "1,2,3")
    parser.add_argument("--tune-seed", type=int, default=0)
    parser.add_argument("--stage", choices=("tune", "all"), default="all",
                        help="tune: only the tuning seed's grid and sweep (prints the choice)")
    args = parser.parse_args(argv)
    out = Path(args.out)
    if regenerate(args, "headroom", write_report):
        return 0
    check_data(parser, args.data, DOMAINS, "--data", "headroom")
    runner = Runner(args, args.data, DOMAINS)
    cached, seeds, run_all = runner.cached, runner.seeds, runner.run

    from pike_stream.controller import DEFAULT_UPDATE_INTERVAL

    tune = args.tune_seed
    static = {"strategy": "uniform"}
    grid_specs = [{"name": f"grid-s{tune}-" + "-".join(f"{w[d]:.3f}" for d in DOMAINS), "seed": tune,
                   "eval_split": "train", "pike": static, "weights": w} for w in static_grid()]
    sweep_specs = [{"name": f"sweep-s{tune}-" + "-".join(f"{k}_{v}" for k, v in sorted(p.items())), "seed": tune,
                    "eval_split": "train",
                    "pike": {"strategy": "pike", "warmup_steps": p["update_interval"], **p}} for p in PIKE_SWEEP]
    tuned = run_all(grid_specs + sweep_specs)
    grid, sweep = tuned[:len(grid_specs)], tuned[len(grid_specs):]
    best_static = min(grid, key=lambda r: final_losses(r)[0])["spec"]["weights"]
    chosen = min(sweep, key=lambda r: final_losses(r)[0])["spec"]["pike"]
    print(f"tuning seed {tune}: best static mixture {best_static}; best PiKE settings {chosen}", flush=True)
    if args.stage == "tune":
        runner.close()
        return 0

    # The held-out arms use the library's shipped defaults; they must be the tuning seed's choice.
    shipped = shipped_defaults()
    if {k: chosen[k] for k in shipped} != shipped:
        print(f"note: the shipped defaults {shipped} differ from the tuning seed's choice {chosen}", flush=True)
    # The defaults are written into every spec, so a run cached under other defaults is not reused.
    pike = shipped_pike()
    arms = {
        "uniform": ({"strategy": "uniform"}, None),
        "best_static": ({"strategy": "uniform"}, best_static),
        "pike": (pike, None),
        "pike_zeta2_0": ({**pike, "zeta2": 0.0}, None),
        "pike_oracle": ({**pike, "probe_samples": ORACLE_PROBE}, None),
        "pike_step_statistics": ({**pike, "probe_samples": 0}, None),
        "conceptual_pike": ({"strategy": "conceptual_pike", "warmup_steps": DEFAULT_UPDATE_INTERVAL,
                             "pull": shipped["pull"], **CONCEPTUAL}, None),
    }
    specs = [{"name": f"{arm}-s{seed}", "seed": seed, "eval_split": "val", "arm": arm, "pike": p,
              **({"weights": w} if w else {})} for seed in seeds for arm, (p, w) in arms.items()]
    heldout = run_all(specs)
    runner.close()
    result = {
        "settings": {"steps": args.steps, "eval_every": args.eval_every, "tune_seed": tune, "seeds": seeds,
                     "batch": BATCH, "seq_len": SEQ_LEN, "domains": list(DOMAINS)},
        "command": "python bench/bench_headroom.py --data HEADROOM/mds --work RUNS "
                   f"--steps {args.steps} --eval-every {args.eval_every} --tune-seed {tune} --seeds {args.seeds} "
                   f"--jobs {args.jobs}{cached}",
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count()},
        "grid": grid, "sweep": sweep, "best_static": best_static, "chosen_pike": chosen,
        "shipped_defaults": shipped, "heldout": heldout,
    }
    write_results(out, "headroom", result, write_report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
