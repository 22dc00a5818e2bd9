"""Headroom without memorisation: en, code and noise. Static grid on one seed, PiKE as shipped, held-out seeds.

    python bench/corpora.py headroom HEADROOM                  # builds en, code, dup, noise; dup is not used
    python bench/bench_noise.py --data HEADROOM/mds --work RUNS [--steps 300] [--seeds 10,11,12,13,14] [--jobs 2]
    python bench/bench_noise.py --report-only                    # md + PNG again from the JSON

Why a second headroom benchmark: in ``bench/bench_headroom.py`` the ``dup`` domain is memorised at a step
that varies from seed to seed, and its loss (0.03 when memorised, 0.3+ when not) swings the four-domain
average by more than any mixture gains on ``en`` and ``code``: there, the best static mixture of the tuning
seed was +0.047 ± 0.101 *worse* than uniform on the held-out seeds, so no gain of PiKE could be measured
against it. Here the only unhelpful domain is ``noise`` (uniform random printable characters, whose loss
stops at their entropy within a few dozen steps); uniform gives it a third of every batch.

The model, batches (64 × 64 tokens), schedule and evaluation are those of ``bench/bench_headroom.py``;
AdamW's learning rate is :data:`LR` (``--lr``), the one of the smallest seed-to-seed spread in
``bench/bench_spread.py`` (``bench/results/spread.md``). At the headroom benchmark's 3e-3 a plateau that each
seed leaves at another step moved the final loss by 0.15 nats between seeds, more than any mixture gained
(``bench/results/noise_lr0.003.md``). The score is PiKE's objective: the validation loss averaged over the
three domains with equal weight.

1. **Headroom first** (``--tune-seed``, scored on the TRAINING split): static mixtures with ``noise`` at
   :data:`NOISE_SHARES` and ``en = code``. The best is the ``best_static`` arm.
2. **Nothing of PiKE is tuned here**: it runs the library's shipped defaults (chosen on the four-domain
   headroom corpus), so the held-out seeds judge the defaults as a user gets them.
3. **Held-out seeds** (``--seeds``, scored on the VALIDATION split): uniform, best_static, pike, and
   pike_oracle (the same rule with :data:`~bench_headroom.ORACLE_PROBE` probe samples per domain: whether
   better statistics would change the outcome), and pike_step_statistics (``probe_samples: 0``: the statistics
   of the update step's own samples, no probe batch). Differences to uniform are paired per seed.
4. **A diagnostic arm** after those: ``static_at_pike_mean``, the static mixture at pike's weights averaged
   over its steps and held-out seeds. It is derived from held-out runs, so it is no candidate for anything; it
   tells whether pike's result comes from the mixture it settles on (the static arm does as well) or from when
   it moves (it does not).

Writes ``bench/results/noise.json`` and, from it, ``noise.md`` and ``noise.png``; finished runs are kept in
``WORK/<name>.json`` and reused.
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

from bench_headroom import ORACLE_PROBE  # noqa: E402
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

__all__ = ["NOISE_SHARES", "analyse", "main", "static_grid", "write_report"]

DOMAINS = ("en", "code", "noise")
NOISE_SHARES = (0.02, 0.1, 0.2, 1 / 3, 0.5)
LR = 6.0e-3
"""AdamW's peak learning rate: the smallest paired spread in ``bench/bench_spread.py`` (no PiKE arm runs there):
0.018 against 0.130 at 3e-3 and 0.080 at 1.2e-2 (``bench/results/spread.md``)."""
ARMS = ("uniform", "best_static", "pike", "pike_oracle", "pike_step_statistics", "static_at_pike_mean")


def static_grid() -> list[dict[str, float]]:
    """``noise`` at each of :data:`NOISE_SHARES`, the rest split equally between ``en`` and ``code``."""
    return [{"en": (1 - n) / 2, "code": (1 - n) / 2, "noise": n} for n in NOISE_SHARES]


def mean_weights(runs: list[dict[str, Any]]) -> dict[str, float]:
    """The runs' weights averaged over their steps and then over the runs, rounded to 3 decimals."""
    mean = np.mean([np.mean(np.array(r["weights"]), axis=0) for r in runs], axis=0)
    mean = np.round(mean / mean.sum(), 3)
    mean[-1] = round(1.0 - float(mean[:-1].sum()), 3)
    return {d: float(w) for d, w in zip(DOMAINS, mean)}


def _by_arm(result: dict[str, Any]) -> dict[str, dict[int, dict[str, Any]]]:
    runs: dict[str, dict[int, dict[str, Any]]] = {}
    for run in result["heldout"]:
        runs.setdefault(run["spec"]["arm"], {})[run["spec"]["seed"]] = run
    return runs


def analyse(result: dict[str, Any]) -> dict[str, Any]:
    """Per arm and held-out seed: final average loss, the paired difference to uniform, steps to uniform's
    final average (as a fraction of uniform's), the noise weight; then the goals."""
    seeds = result["settings"]["seeds"]
    runs = _by_arm(result)
    noise = DOMAINS.index("noise")
    table = {}
    for arm, by_seed in runs.items():
        have = [s for s in seeds if s in by_seed]
        ratios = []
        for s in have:
            uniform = runs["uniform"][s]
            target = final_losses(uniform)[0]
            ours = steps_to_reach(by_seed[s]["eval_steps"], avg_curve(by_seed[s]), target)
            theirs = steps_to_reach(uniform["eval_steps"], avg_curve(uniform), target)
            ratios.append(None if ours is None or not theirs else ours / theirs)
        weights = [np.array(by_seed[s]["weights"]) for s in have if by_seed[s]["weights"]]
        table[arm] = {
            "seeds": have,
            "final_avg": [final_losses(by_seed[s])[0] for s in have],
            "diff_avg": [final_losses(by_seed[s])[0] - final_losses(runs["uniform"][s])[0] for s in have],
            "step_ratio": ratios,
            "noise_weight_final": [float(w[-1, noise]) for w in weights],
            "noise_weight_mean": [float(w[:, noise].mean()) for w in weights],
            "wall_seconds": float(np.mean([by_seed[s]["wall_seconds"] for s in have])),
        }
    goals = {}
    if "pike" in table and "best_static" in table:
        gains = [-d for d in table["best_static"]["diff_avg"]]
        captured = [-p / g if g > 0 else None for p, g in zip(table["pike"]["diff_avg"], gains)]
        goals["headroom_exists"] = {
            "met": all(g > 0 for g in gains),
            "detail": "per held-out seed, best static's gain over uniform: "
                      + ", ".join(f"{g:+.4f}" for g in gains) + " (goal > 0 on every seed)"}
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
    return {"table": table, "goals": goals}


def write_report(result: dict[str, Any], out: Path = RESULTS) -> None:
    """``<name>.md`` and ``<name>.png`` from the results JSON (``noise`` unless ``--name`` said otherwise)."""
    a = analyse(result)
    s = result["settings"]
    name = s.get("name", "noise")
    lines = [
        "# Headroom without memorisation: PiKE on en, code and noise", "",
        f"The model, batches ({s.get('batch', BATCH)} × {SEQ_LEN} tokens), optimizer and evaluation of "
        f"[headroom.md](headroom.md), AdamW lr {s.get('lr', 3e-3):g} ([spread.md](spread.md)), {s['steps']} "
        "steps. Three domains: English man pages, Python's standard "
        "library and `noise` (uniform random printable characters: nothing to learn past their frequencies). "
        "The score is PiKE's objective, the validation loss averaged over the three domains. The static grid "
        f"ran on seed {s['tune_seed']}, scored on the training split; PiKE runs the library's shipped defaults "
        f"({result['shipped_defaults']}), untuned here; seeds {', '.join(map(str, s['seeds']))} played no part "
        "in any choice.", "",
        f"Command: `{result['command']}`", "",
        f"## Headroom (seed {s['tune_seed']}, training split)", "",
        "| en | code | noise | avg train-split loss |", "|---:|---:|---:|---:|"]
    for run in sorted(result["grid"], key=lambda r: final_losses(r)[0]):
        w = run["spec"]["weights"]
        lines.append(f"| {w['en']:.3f} | {w['code']:.3f} | {w['noise']:.3f} | {final_losses(run)[0]:.4f} |")
    lines += ["", f"Chosen static mixture: {result['best_static']}.", "",
              "## Held-out seeds (validation split)", "",
              "Differences are paired per seed (same initialisation and sample orders), arm − uniform; mean ± "
              "sample standard deviation over the seeds. Negative is better.", "",
              "| arm | final avg loss per seed | avg − uniform | steps to uniform's final avg (× uniform's) | "
              "noise weight, mean over the run | noise weight at the end | wall s/run |",
              "|---|---|---:|---|---|---|---:|"]
    for arm in [x for x in ARMS if x in a["table"]]:
        row = a["table"][arm]
        lines.append(
            f"| {arm} | {', '.join(f'{x:.4f}' for x in row['final_avg'])} | {fmt_spread(row['diff_avg'])} | "
            f"{', '.join('—' if r is None else f'{r:.2f}' for r in row['step_ratio'])} | "
            f"{', '.join(f'{x:.3f}' for x in row['noise_weight_mean'])} | "
            f"{', '.join(f'{x:.3f}' for x in row['noise_weight_final'])} | {row['wall_seconds']:.0f} |")
    if "static_at_pike_mean" in a["table"]:
        lines += ["", "`static_at_pike_mean` is a diagnostic, not a candidate: the static mixture at pike's weights "
                  "averaged over its steps and held-out seeds, run after them. As good as pike: pike's result comes "
                  "from the mixture it settles on; worse: from when it moves."]
    lines += per_domain_and_goal_lines(result, [x for x in ARMS if x in a["table"]], DOMAINS, a["goals"])
    lines += ["", f"![validation loss and weights]({name}.png)", ""]
    (out / f"{name}.md").write_text("\n".join(lines))
    plot_curves_and_weights(result, out / f"{name}.png", DOMAINS, ARMS)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", help="the headroom corpus's mds/ folder (bench/corpora.py headroom)")
    add_common_arguments(parser, "pike-noise", "10,11,12,13,14")
    parser.set_defaults(steps=300, eval_every=30)
    parser.add_argument("--lr", type=float, default=LR, help="AdamW's peak learning rate")
    parser.add_argument("--batch", type=int, default=BATCH, help="the global batch size")
    parser.add_argument("--name", default="noise", help="the results' file name: NAME.json, NAME.md, NAME.png")
    parser.add_argument("--tune-seed", type=int, default=0)
    args = parser.parse_args(argv)
    out = Path(args.out)
    if regenerate(args, args.name, write_report):
        return 0
    check_data(parser, args.data, DOMAINS, "--data", "headroom")
    runner = Runner(args, args.data, DOMAINS)
    cached, seeds, run_all = runner.cached, runner.seeds, runner.run


    tune = args.tune_seed
    # runs at the default batch keep the spec (and name) they had before the batch was an option
    size, tag = ({}, "") if args.batch == BATCH else ({"batch": args.batch}, f"b{args.batch}-")
    grid = run_all([{"name": f"{tag}grid-s{tune}-" + "-".join(f"{w[d]:.3f}" for d in DOMAINS), "seed": tune,
                     "eval_split": "train", "lr": args.lr, "pike": {"strategy": "uniform"}, "weights": w, **size}
                    for w in static_grid()])
    best_static = min(grid, key=lambda r: final_losses(r)[0])["spec"]["weights"]
    print(f"tuning seed {tune}: best static mixture {best_static}", flush=True)
    shipped = shipped_defaults()
    pike = shipped_pike()
    arms = {"uniform": ({"strategy": "uniform"}, None), "best_static": ({"strategy": "uniform"}, best_static),
            "pike": (pike, None), "pike_oracle": ({**pike, "probe_samples": ORACLE_PROBE}, None),
            "pike_step_statistics": ({**pike, "probe_samples": 0}, None)}
    heldout = run_all([{"name": f"{tag}{arm}-s{seed}", "seed": seed, "eval_split": "val", "arm": arm, "lr": args.lr,
                        "pike": p, **({"weights": w} if w else {}), **size}
                       for seed in seeds for arm, (p, w) in arms.items()])
    pike_mean = mean_weights([r for r in heldout if r["spec"]["arm"] == "pike"])
    print(f"pike's mean weights over its steps and held-out seeds: {pike_mean}", flush=True)
    heldout += run_all([{"name": f"{tag}static_at_pike_mean-s{seed}", "seed": seed, "eval_split": "val",
                         "arm": "static_at_pike_mean", "lr": args.lr, "pike": {"strategy": "uniform"},
                         "weights": pike_mean, **size} for seed in seeds])
    runner.close()
    result = {
        "settings": {"steps": args.steps, "eval_every": args.eval_every, "lr": args.lr, "tune_seed": tune,
                     "seeds": seeds, "batch": args.batch, "seq_len": SEQ_LEN, "domains": list(DOMAINS),
                     **({} if args.name == "noise" else {"name": args.name})},
        "command": f"python bench/bench_noise.py --data HEADROOM/mds --work RUNS --steps {args.steps} "
                   f"--eval-every {args.eval_every} --lr {args.lr:g} "
                   + ("" if args.batch == BATCH else f"--batch {args.batch} ")
                   + ("" if args.name == "noise" else f"--name {args.name} ")
                   + f"--tune-seed {tune} --seeds {args.seeds} --jobs {args.jobs}{cached}",
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count()},
        "grid": grid, "best_static": best_static, "shipped_defaults": shipped, "heldout": heldout,
    }
    write_results(out, args.name, result, write_report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
