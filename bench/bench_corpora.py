"""PiKE and Balanced-PiKE at their shipped defaults on corpora with little headroom, on held-out seeds.

    python bench/corpora.py multilingual MULTI && python bench/corpora.py unequal UNEQUAL
    python bench/bench_corpora.py --multilingual MULTI/mds --unequal UNEQUAL/mds --work RUNS [--jobs 2]
    python bench/bench_corpora.py --report-only
    python bench/bench_corpora.py --unequal UNEQUAL/mds --lr 6e-3 --seeds 40,41,42 --name unequal_lr0.006

One corpus may run alone; ``--lr`` trains every arm at another AdamW learning rate and ``--name`` names the
results (``NAME.json``, ``NAME.md``).

The same model, batches (64 × 64 tokens), optimizer, schedule and evaluation as ``bench/bench_headroom.py``
(``bench/runs.py``); nothing is tuned here: every adaptive arm runs the library's defaults (chosen on the
headroom corpus's tuning seed). Arms: uniform, pike, balanced_pike (τ = 1), and on the unequal corpus also proportional
(size-based mixing, the usual default when domains differ in size). Scores: the validation loss averaged over
all domains (PiKE's objective) and the worst domain's (Balanced-PiKE's), paired per seed against uniform.

Writes ``bench/results/corpora.json`` and ``corpora.md`` (or ``NAME.*``); finished runs are kept in
``WORK/<name>.json``.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402

from corpora import CORPORA  # noqa: E402
from curves import final_losses, fmt_spread  # noqa: E402
from runs import (  # noqa: E402
    LR,
    RESULTS,
    add_common_arguments,
    check_data,
    regenerate,
    run_one,
    run_pool,
    shipped_defaults,
    shipped_pike,
    write_results,
)

__all__ = ["analyse", "main", "write_report"]

BALANCED_TAU = 1.0
FOLDER_NAMES = {"multilingual": "MULTI", "unequal": "UNEQUAL"}  # as the README's commands name them


def arms(corpus: str) -> dict[str, dict[str, Any]]:

    pike = shipped_pike()
    out = {"uniform": {"strategy": "uniform"}, "pike": pike,
           "balanced_pike": {**pike, "strategy": "balanced_pike", "tau": BALANCED_TAU}}
    if corpus == "unequal":
        out["proportional"] = {"strategy": "proportional"}
    return out


def analyse(result: dict[str, Any]) -> dict[str, Any]:
    """Per corpus and arm: final losses per seed and paired differences to uniform; the goals."""
    seeds = result["settings"]["seeds"]
    out: dict[str, Any] = {}
    for corpus, runs in result["corpora"].items():
        by_arm: dict[str, dict[int, dict[str, Any]]] = {}
        for run in runs:
            by_arm.setdefault(run["spec"]["arm"], {})[run["spec"]["seed"]] = run
        table = {}
        for arm, by_seed in by_arm.items():
            avg = [final_losses(by_seed[s])[0] for s in seeds]
            worst = [final_losses(by_seed[s])[1] for s in seeds]
            u_avg = [final_losses(by_arm["uniform"][s])[0] for s in seeds]
            u_worst = [final_losses(by_arm["uniform"][s])[1] for s in seeds]
            table[arm] = {"final_avg": avg, "final_worst": worst,
                          "diff_avg": [a - u for a, u in zip(avg, u_avg)],
                          "diff_worst": [w - u for w, u in zip(worst, u_worst)],
                          "final_weights": [by_seed[s]["weights"][-1] if by_seed[s]["weights"] else None
                                            for s in seeds]}
        spread = float(np.std(table["uniform"]["final_avg"], ddof=1))
        pike_diff = float(np.mean(table["pike"]["diff_avg"]))
        worst_means = {arm: float(np.mean(row["final_worst"])) for arm, row in table.items()}
        out[corpus] = {"table": table, "uniform_spread": spread, "goals": {
            "pike_not_worse_than_uniform_beyond_spread": {
                "met": pike_diff <= spread,
                "detail": f"pike − uniform, mean over seeds {pike_diff:+.4f}; uniform's seed spread (sd) {spread:.4f}"},
            "balanced_pike_lowest_worst_domain": {
                "met": min(worst_means, key=worst_means.get) == "balanced_pike",
                "detail": "mean final worst-domain loss: " + ", ".join(
                    f"{k} {v:.4f}" for k, v in sorted(worst_means.items(), key=lambda kv: kv[1]))}}}
    return out


def write_report(result: dict[str, Any], out: Path = RESULTS, name: str = "corpora") -> None:
    a = analyse(result)
    s = result["settings"]
    lr = f" at AdamW lr {s['lr']:g}" if "lr" in s else ""
    lines = [f"# PiKE on corpora with little headroom ({', '.join(result['corpora'])})", "",
             f"{s['steps']} steps of 64 × 64 tokens, the model and optimizer of `bench/bench_headroom.py`{lr}; "
             "PiKE and "
             f"Balanced-PiKE (τ = {BALANCED_TAU:g}) at the library's defaults {result['defaults']}, chosen on the "
             f"headroom corpus's tuning seed before these runs. Seeds {', '.join(map(str, s['seeds']))}; differences "
             "are paired per seed against uniform (mean ± sd). Negative is better.", "",
             f"Command: `{result['command']}`", ""]
    for corpus, c in a.items():
        lines += [f"## {corpus}: {', '.join(CORPORA[corpus])}", "",
                  "| arm | final avg loss per seed | avg − uniform | final worst-domain loss per seed | "
                  "worst − uniform | final weights (first seed) |", "|---|---|---:|---|---:|---|"]
        for arm, row in c["table"].items():
            w = row["final_weights"][0]
            weights = "" if w is None else " / ".join(f"{x:.2f}" for x in w)
            lines.append(f"| {arm} | {', '.join(f'{x:.4f}' for x in row['final_avg'])} | "
                         f"{fmt_spread(row['diff_avg'])} | "
                         f"{', '.join(f'{x:.4f}' for x in row['final_worst'])} | {fmt_spread(row['diff_worst'])} | "
                         f"{weights} |")
        lines.append("")
        for goal_name, goal in c["goals"].items():
            lines.append(f"- **{goal_name}**: {'met' if goal['met'] else 'NOT met'} — {goal['detail']}")
        lines.append("")
    (out / f"{name}.md").write_text("\n".join(lines))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--multilingual", help="mds/ folder of `bench/corpora.py multilingual`")
    parser.add_argument("--unequal", help="mds/ folder of `bench/corpora.py unequal`")
    add_common_arguments(parser, "pike-corpora", "1,2,3")
    parser.add_argument("--lr", type=float, help=f"AdamW's peak learning rate (default {LR:g})")
    parser.add_argument("--name", default="corpora", help="the results' file name: NAME.json, NAME.md")
    args = parser.parse_args(argv)
    out = Path(args.out)
    if regenerate(args, args.name, lambda result, folder: write_report(result, folder, args.name)):
        return 0
    data = {c: f for c, f in {"multilingual": args.multilingual, "unequal": args.unequal}.items() if f}
    if not data:
        parser.error("give --multilingual, --unequal or both")
    for corpus, folder in data.items():
        check_data(parser, folder, CORPORA[corpus], f"--{corpus}", corpus)
    os.makedirs(args.work, exist_ok=True)
    seeds = [int(x) for x in args.seeds.split(",")]
    lr = {} if args.lr is None else {"lr": args.lr}
    pool = run_pool(args.jobs)
    futures = {corpus: [pool.submit(run_one, {"name": f"{corpus}-{arm}-s{seed}", "seed": seed, "eval_split": "val",
                                              "arm": arm, "pike": pike, **lr}, data[corpus], args.work, args.steps,
                                    args.eval_every, CORPORA[corpus])
                        for seed in seeds for arm, pike in arms(corpus).items()] for corpus in data}
    runs = {corpus: [f.result() for f in fs] for corpus, fs in futures.items()}
    pool.shutdown()
    folders = " ".join(f"--{corpus} {FOLDER_NAMES[corpus]}/mds" for corpus in data)
    extra = "" if args.lr is None else f" --lr {args.lr:g}"
    extra += "" if args.name == "corpora" else f" --name {args.name}"
    result = {"settings": {"steps": args.steps, "eval_every": args.eval_every, "seeds": seeds, **lr},
              "defaults": shipped_defaults(),
              "command": f"python bench/bench_corpora.py {folders} --work RUNS "
                         f"--steps {args.steps} --eval-every {args.eval_every} --seeds {args.seeds} --jobs {args.jobs}"
                         f"{extra}",
              "corpora": runs}
    write_results(out, args.name, result, lambda result, out: write_report(result, out, args.name))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
