"""The noise floor of a paired comparison: how far does a change that should not matter move the final loss?

    python bench/bench_null.py --headroom HEADROOM/mds --unequal UNEQUAL/mds --work RUNS [--jobs 2]
    python bench/bench_null.py --report-only

Every arm of PiKE's benchmarks is paired with uniform on the same seed: same initialisation, same per-domain
sample orders. But once an arm composes one batch differently, the rest of the run follows another
trajectory, and a small model's final loss depends on the trajectory (when it leaves a plateau, say) as well
as on the mixture. This benchmark measures that part alone: uniform mixing with the weights jittered by 1%
(``1.01, 0.99, 1.01, …`` times uniform, normalised), which changes the batches from the first few steps on but
cannot change what the model learns on average. Its paired difference to uniform, on the held-out seeds of
the benchmarks of ``bench/bench_variant.py`` (the committed uniform runs are the other arm), is the smallest
difference those comparisons can resolve.

Does the floor shrink with longer training? ``--steps-scale 3 --corpora noise --seeds 60,61,62,63 --name
null_x3`` trains both arms (uniform too) for three times the steps, with evaluations three times as far apart, on
seeds no other benchmark runs.

Writes ``bench/results/NAME.json`` and ``NAME.md`` (default ``null``); finished runs are kept in ``WORK/<corpus>/``.
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

from bench_variant import BENCHMARKS, add_corpus_arguments, committed_runs, corpus_folders, lr_option  # noqa: E402
from curves import final_losses, fmt_spread  # noqa: E402
from runs import RESULTS, regenerate, run_one, run_pool, write_results  # noqa: E402

__all__ = ["JITTER", "analyse", "jittered", "main", "uniform_spec", "write_report"]

JITTER = 0.01
"""Relative change of every domain's uniform weight, alternating in sign."""


def jittered(domains: tuple[str, ...]) -> dict[str, float]:
    """Uniform weights times ``1 ± JITTER`` (alternating), normalised."""
    raw = np.array([1.0 + JITTER * (-1) ** k for k in range(len(domains))])
    return {d: float(w) for d, w in zip(domains, raw / raw.sum())}


def null_spec(uniform: dict[str, Any], domains: tuple[str, ...]) -> dict[str, Any]:
    """A committed held-out uniform run's spec, with jittered weights."""
    return {**uniform, "name": f"jitter-{uniform['name']}", "arm": "uniform_jitter", "weights": jittered(domains)}


def uniform_spec(name: str, seed: int, scale: int) -> dict[str, Any]:
    """A held-out uniform run of benchmark ``name`` trained ``scale`` times as long."""
    return {"name": f"x{scale}-uniform-s{seed}", "seed": seed, "eval_split": "val", "arm": "uniform",
            "pike": {"strategy": "uniform"}, **lr_option(name)}


def analyse(result: dict[str, Any]) -> dict[str, Any]:
    """Per benchmark: the jittered arm's paired differences to uniform, and their mean absolute value."""
    out = {}
    for name, runs in result["runs"].items():
        by_arm: dict[str, dict[int, dict[str, Any]]] = {}
        for run in runs:
            by_arm.setdefault(run["spec"]["arm"], {})[run["spec"]["seed"]] = run
        seeds = sorted(by_arm["uniform"])
        diff = [final_losses(by_arm["uniform_jitter"][s])[0] - final_losses(by_arm["uniform"][s])[0] for s in seeds]
        worst = [final_losses(by_arm["uniform_jitter"][s])[1] - final_losses(by_arm["uniform"][s])[1] for s in seeds]
        out[name] = {"seeds": seeds, "diff_avg": diff, "diff_worst": worst,
                     "mean_abs_diff_avg": float(np.mean(np.abs(diff)))}
    return out


def write_report(result: dict[str, Any], out: Path = RESULTS) -> None:
    a = analyse(result)
    scale = result.get("steps_scale", 1)
    title = "# The noise floor of a paired comparison" + (f", runs {scale} times as long" if scale != 1 else "")
    lines = [title, "",
             f"Uniform mixing against uniform with every weight changed by {JITTER:.0%} (alternating sign): the same "
             "seed, initialisation and sample orders, batches that differ from the first steps on, no change in what "
             "the model can learn on average. Differences are jittered − uniform, final validation loss.", "",
             f"Command: `{result['command']}`", "",
             "| corpus | seeds | avg loss: per seed | mean ± sd | mean of abs | worst domain: mean ± sd |",
             "|---|---|---|---:|---:|---:|"]
    for name, row in a.items():
        lines.append(f"| {name} | {', '.join(map(str, row['seeds']))} | "
                     f"{', '.join(f'{x:+.4f}' for x in row['diff_avg'])} | {fmt_spread(row['diff_avg'])} | "
                     f"{row['mean_abs_diff_avg']:.4f} | {fmt_spread(row['diff_worst'])} |")
    lines.append("")
    (out / f"{result.get('name', 'null')}.md").write_text("\n".join(lines))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_corpus_arguments(parser, "pike-null-runs")
    parser.add_argument("--steps-scale", type=int, default=1,
                        help="train both arms this many times as long (1: the committed uniform runs are one arm)")
    parser.add_argument("--seeds", help="held-out seeds, comma-separated (with --steps-scale; default: the "
                                        "committed runs' seeds)")
    parser.add_argument("--corpora", default=",".join(BENCHMARKS), help="benchmarks to run, comma-separated")
    parser.add_argument("--name", default="null", help="results name: bench/results/NAME.json and NAME.md")
    args = parser.parse_args(argv)
    out = Path(args.out)
    if regenerate(args, args.name, write_report):
        return 0
    corpora = args.corpora.split(",")
    unknown = sorted(set(corpora) - set(BENCHMARKS))
    if unknown:
        parser.error(f"--corpora {','.join(unknown)}: not one of {', '.join(BENCHMARKS)}")
    if args.seeds and args.steps_scale == 1:
        parser.error("--seeds needs --steps-scale above 1 (at scale 1 the committed uniform runs set the seeds)")
    folders = corpus_folders(parser, args, corpora)
    scale = args.steps_scale
    pool = run_pool(args.jobs)
    runs: dict[str, list[Any]] = {}
    for name in corpora:
        bench = BENCHMARKS[name]
        work = os.path.join(args.work, name)
        os.makedirs(work, exist_ok=True)
        steps, every = bench["steps"] * scale, bench["eval_every"] * scale
        uniform: list[Any] = [r for r in committed_runs(name) if r["spec"].get("arm") == "uniform"
                              and r["spec"]["eval_split"] == "val"]
        specs = [r["spec"] for r in uniform]
        if scale != 1:
            seeds = [int(s) for s in args.seeds.split(",")] if args.seeds else sorted(s["seed"] for s in specs)
            specs = [uniform_spec(name, seed, scale) for seed in seeds]
            uniform = [pool.submit(run_one, spec, folders[bench["data"]], work, steps, every, bench["domains"])
                       for spec in specs]
        runs[name] = uniform + [pool.submit(run_one, null_spec(spec, bench["domains"]), folders[bench["data"]],
                                            work, steps, every, bench["domains"]) for spec in specs]
    runs = {name: [r if isinstance(r, dict) else r.result() for r in rs] for name, rs in runs.items()}
    pool.shutdown()
    extra = (f" --steps-scale {scale} --corpora {args.corpora}{f' --seeds {args.seeds}' if args.seeds else ''} "
             f"--name {args.name}" if scale != 1 else "")
    result = {"command": f"python bench/bench_null.py --headroom HEADROOM/mds --unequal UNEQUAL/mds --work RUNS "
                         f"--jobs {args.jobs}{extra}",
              "machine": {"python": platform.python_version(), "cpus": os.cpu_count()},
              "jitter": JITTER, "runs": runs,
              **({"name": args.name} if args.name != "null" else {}),
              **({"steps_scale": scale} if scale != 1 else {})}
    write_results(out, args.name, result, write_report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
