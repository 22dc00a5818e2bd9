"""PiKE and Balanced-PiKE on the corpora with little headroom, in runs three times as long, with each
comparison's own floor.

    python bench/corpora.py unequal UNEQUAL && python bench/corpora.py multilingual MULTI
    python bench/bench_long_corpora.py unequal --data UNEQUAL/mds --work RUNS [--jobs 2]
    python bench/bench_long_corpora.py multilingual --data MULTI/mds --work RUNS [--jobs 2]
    python bench/bench_long_corpora.py unequal --report-only

At 400 steps (``bench/results/unequal_lr0.006.md``, seeds 40–42) PiKE ended +0.048 ± 0.073 above uniform on
the unequal corpus's average loss and Balanced-PiKE did not have the lowest worst-domain loss, but uniform with
its weights jittered by 1% moved the average by 0.040 on the same seeds (``null.json``): those runs cannot tell
the arms apart. ``bench_long.py`` found that three times the steps cut that floor about fourfold on two other
corpora. This benchmark asks the questions of ``bench_corpora.py`` again at that length.

**The protocol, fixed before any of its runs** (the unequal corpus's in 1f805f0, before its runs; the
multilingual corpus's in the commit that added it, before its runs). Nothing here is tuned; no default changes
with its results.

- Corpora (:data:`STUDIES`): ``unequal`` (en, code at 1.5 MB; ru at a fifth, fr at a tenth), seeds 70–73;
  ``multilingual`` (en, de, fr, es, ru, code at 1.5 MB each), seeds 74–77; no other benchmark runs these seeds.
  Both at AdamW lr 6e-3 (the learning rate ``bench_spread.py`` chose for its smaller seed spread, and that of
  ``unequal_lr0.006``), 1,200 steps (3× ``bench_corpora.py``'s 400) of 64 × 64 tokens, evaluated every 120
  steps on the validation split.
- Arms, each on every seed: ``uniform``; ``uniform_jitter`` (uniform times ``1 ± 1%``, the null arm of
  ``bench_null.py``: same seed, a different trajectory, no change in what can be learned); ``proportional``
  (weights by domain size; unequal corpus only: on equal domains it is uniform); ``pike`` and
  ``balanced_pike`` (τ = 1) at the shipped defaults.
- Scores: PiKE's objective, the validation loss averaged over all domains, and Balanced-PiKE's, the worst
  domain's; both paired per seed, arm − uniform.
- Rule (as ``bench_long.py``): an arm is *better* (*worse*) than uniform on a score when it is lower (higher) on
  all four seeds and its mean difference is larger than the null arm's mean absolute difference on that
  score; otherwise *not resolved*.
- Goals of the PiKE issue: PiKE is not worse than uniform beyond the seed spread (its verdict on the average
  is not *worse*, and its mean difference is at most the sd of uniform's final average over the seeds);
  Balanced-PiKE has the lowest mean worst-domain loss of the methods (the null arm is a measurement, not a
  method).

Writes ``bench/results/long_<corpus>.json`` and ``long_<corpus>.md``; finished runs are kept in ``WORK/``.
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

from bench_corpora import BALANCED_TAU, FOLDER_NAMES  # noqa: E402
from bench_long import SCALE, verdict  # noqa: E402
from bench_null import jittered  # noqa: E402
from corpora import CORPORA  # noqa: E402
from curves import by_arm, final_losses, fmt_spread, null_floor, paired_diffs, per_domain_table  # noqa: E402
from runs import (  # noqa: E402
    RESULTS,
    add_run_arguments,
    check_data,
    regenerate,
    run_one,
    run_pool,
    shipped_defaults,
    shipped_pike,
    write_results,
)

__all__ = ["STUDIES", "analyse", "arm_specs", "main", "write_report"]

STUDIES: dict[str, dict[str, Any]] = {
    "unequal": {"seeds": (70, 71, 72, 73), "about": "en and code at 1.5 MB, ru at a fifth, fr at a tenth",
                "methods": ("uniform", "proportional", "pike", "balanced_pike")},
    "multilingual": {"seeds": (74, 75, 76, 77), "about": "1.5 MB each",
                     "methods": ("uniform", "pike", "balanced_pike")},
}
"""Per corpus: its held-out seeds, what its domains are, and the methods compared (the null arm is added)."""
LR = 6e-3
STEPS, EVAL_EVERY = 400 * SCALE, 40 * SCALE
SCORES = {"avg": 0, "worst": 1}
"""The two scores, by their index in :func:`curves.final_losses`."""


def arms(corpus: str) -> tuple[str, ...]:
    methods = STUDIES[corpus]["methods"]
    return (methods[0], "uniform_jitter", *methods[1:])


def arm_specs(corpus: str, seed: int) -> list[dict[str, Any]]:
    """The run specs of one held-out seed, one per arm."""
    domains = CORPORA[corpus]
    pike = shipped_pike()
    options: dict[str, dict[str, Any]] = {
        "uniform": {"pike": {"strategy": "uniform"}},
        "uniform_jitter": {"pike": {"strategy": "uniform"}, "weights": jittered(domains)},
        "proportional": {"pike": {"strategy": "proportional"}},
        "pike": {"pike": pike},
        "balanced_pike": {"pike": {**pike, "strategy": "balanced_pike", "tau": BALANCED_TAU}},
    }
    return [{"name": f"x{SCALE}-{arm}-s{seed}", "seed": seed, "eval_split": "val", "arm": arm, **options[arm],
             "lr": LR} for arm in arms(corpus)]


def analyse(result: dict[str, Any]) -> dict[str, Any]:
    """Each arm's final scores and paired differences per seed, the null floors, verdicts and the goals."""
    corpus = result["corpus"]
    runs = by_arm(result["runs"])
    seeds = sorted(runs["uniform"])
    floors = {name: null_floor(runs, seeds, i) for name, i in SCORES.items()}
    table: dict[str, Any] = {}
    for arm in arms(corpus):
        row: dict[str, Any] = {"final_weights": [runs[arm][s]["weights"][-1] if runs[arm][s]["weights"]
                                                 else None for s in seeds]}
        for name, i in SCORES.items():
            d = paired_diffs(runs, arm, seeds, i)
            row[f"final_{name}"] = [final_losses(runs[arm][s])[i] for s in seeds]
            row[f"diff_{name}"] = d
            row[f"verdict_{name}"] = verdict(d, floors[name]) if arm != "uniform" else ""
        row["final_per_domain"] = {d: float(np.mean([runs[arm][s]["val_loss"][d][-1] for s in seeds]))
                                   for d in CORPORA[corpus]}
        row["wall_seconds"] = float(np.mean([runs[arm][s]["wall_seconds"] for s in seeds]))
        table[arm] = row
    spread = float(np.std(table["uniform"]["final_avg"], ddof=1))
    pike_mean = float(np.mean(table["pike"]["diff_avg"]))
    worst_means = {arm: float(np.mean(table[arm]["final_worst"])) for arm in STUDIES[corpus]["methods"]}
    goals = {
        "pike not worse than uniform beyond the seed spread": {
            "met": table["pike"]["verdict_avg"] != "worse" and pike_mean <= spread,
            "detail": f"pike − uniform on the average loss {fmt_spread(table['pike']['diff_avg'])} "
                      f"({table['pike']['verdict_avg']}); uniform's seed spread (sd) {spread:.4f}"},
        "balanced_pike has the lowest worst-domain loss": {
            "met": min(worst_means, key=lambda k: worst_means[k]) == "balanced_pike",
            "detail": "mean final worst-domain loss: " + ", ".join(
                f"{k} {v:.4f}" for k, v in sorted(worst_means.items(), key=lambda kv: kv[1]))
                      + f"; balanced_pike − uniform {fmt_spread(table['balanced_pike']['diff_worst'])} "
                      f"({table['balanced_pike']['verdict_worst']})"},
    }
    return {"seeds": seeds, "floors": floors, "uniform_spread": spread, "table": table, "goals": goals}


def write_report(result: dict[str, Any], out: Path = RESULTS) -> None:
    a = analyse(result)
    corpus = result["corpus"]
    domains = CORPORA[corpus]
    lines = [f"# PiKE and Balanced-PiKE on the {corpus} corpus, runs {SCALE} times as long", "",
             f"The {corpus} corpus ({', '.join(domains)}: {STUDIES[corpus]['about']}), the "
             f"model, batches (64 × 64 tokens) and evaluation of [headroom.md](headroom.md), AdamW lr "
             f"{result['lr']:g}, {result['steps']} steps. The protocol (arms, seeds, the rule for *better* "
             "and *worse*, the goals) was fixed before any run: see `bench/bench_long_corpora.py`. PiKE and "
             f"Balanced-PiKE (τ = {BALANCED_TAU:g}) run the shipped defaults ({result['shipped_defaults']}). "
             "Differences are arm − uniform, paired per seed, mean ± sd; negative is better.", "",
             f"Command: `{result['command']}`", "",
             f"Seeds {', '.join(map(str, a['seeds']))} (validation split). The null arm's mean absolute difference, "
             f"the smallest one this comparison resolves: **{a['floors']['avg']:.4f}** on the average loss, "
             f"**{a['floors']['worst']:.4f}** on the worst domain's.", "",
             "| arm | final avg loss per seed | avg − uniform per seed | mean ± sd | verdict | final worst-domain loss "
             "per seed | worst − uniform, mean ± sd | verdict | final weights (first seed) |",
             "|---|---|---|---:|---|---|---:|---|---|"]
    for arm, t in a["table"].items():
        w = t["final_weights"][0]
        lines.append(
            f"| {arm} | {', '.join(f'{x:.4f}' for x in t['final_avg'])} | "
            f"{', '.join(f'{x:+.4f}' for x in t['diff_avg'])} | {fmt_spread(t['diff_avg'])} | {t['verdict_avg']} | "
            f"{', '.join(f'{x:.4f}' for x in t['final_worst'])} | {fmt_spread(t['diff_worst'])} | "
            f"{t['verdict_worst']} | {'' if w is None else ' / '.join(f'{x:.2f}' for x in w)} |")
    lines += per_domain_table({arm: t["final_per_domain"] for arm, t in a["table"].items()}, domains)
    lines += ["", "Goals:", ""]
    for goal, g in a["goals"].items():
        lines.append(f"- **{goal}**: {'met' if g['met'] else 'NOT met'} — {g['detail']}")
    lines.append("")
    (out / f"long_{corpus}.md").write_text("\n".join(lines))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("corpus", choices=sorted(STUDIES))
    parser.add_argument("--data", help="the corpus's mds/ folder (bench/corpora.py CORPUS OUT)")
    add_run_arguments(parser, "pike-long-corpora-runs")
    args = parser.parse_args(argv)
    out, corpus = Path(args.out), args.corpus
    if regenerate(args, f"long_{corpus}", write_report):
        return 0
    check_data(parser, args.data, CORPORA[corpus], "--data", corpus)
    os.makedirs(args.work, exist_ok=True)
    pool = run_pool(args.jobs)
    futures = [pool.submit(run_one, spec, args.data, args.work, STEPS, EVAL_EVERY, CORPORA[corpus])
               for seed in STUDIES[corpus]["seeds"] for spec in arm_specs(corpus, seed)]
    runs = [f.result() for f in futures]
    pool.shutdown()
    result = {"command": f"python bench/bench_long_corpora.py {corpus} --data {FOLDER_NAMES[corpus]}/mds --work RUNS "
                         f"--jobs {args.jobs}",
              "machine": {"python": platform.python_version(), "cpus": os.cpu_count()}, "corpus": corpus,
              "scale": SCALE, "steps": STEPS, "lr": LR, "shipped_defaults": shipped_defaults(), "runs": runs}
    write_results(out, f"long_{corpus}", result, write_report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
