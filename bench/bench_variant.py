"""Does a variant of PiKE's statistics beat the shipped ones? Decided on a tuning seed, judged on held-out seeds.

    python bench/corpora.py headroom HEADROOM && python bench/corpora.py unequal UNEQUAL
    python bench/bench_variant.py VARIANT --headroom HEADROOM/mds --unequal UNEQUAL/mds --work RUNS [--jobs 2]
    python bench/bench_variant.py VARIANT --report-only

Variants (:data:`VARIANTS`; everything else is the library's shipped PiKE):

- ``metric``: ``metric: adam``. Every benchmark trains with AdamW, whose step is ``−η·P·m̂`` and not the SGD step
  PiKE's analysis assumes; this measures ``G``, ``S`` and the cross-domain inner products in ``⟨a, b⟩_P``
  (``pike_stream/metric.py``).
- ``cross_terms``: ``cross_terms: true``. The gradient term of domain j becomes its alignment with the gradient
  of the whole objective, ``Σ_k ⟨∇L_j, ∇L_k⟩``, instead of ``‖∇L_j‖²`` alone (``pike_stream/strategies/pike.py:
  gains``); the paper drops the cross terms under low conflict, but the benchmarks' domains share structure
  (averaged cosines of 0.3–0.9 between related domains).
- ``zeta2_0``: ``zeta2: 0``, the paper's variance ablation: no ``−(ζ2/2b)·S`` term in the exponent. Judged by
  ``bench/bench_adopt.py`` only (``bench/results/long_variance.md`` is why).

**The rule, fixed before any run with a variant.** On tuning seed 0, scored on the training split, the shipped
PiKE runs with and without the variant on the headroom corpus (``en``, ``code``, ``dup``, ``noise``; lr 3e-3,
400 steps, as ``bench/bench_headroom.py``) and on its variant without ``dup`` (lr 6e-3, 300 steps, as
``bench/bench_noise.py``). The variant becomes the library's default only if its average training-split loss is
lower on both.

**Held-out seeds**, whatever the rule decides: the seeds of those benchmarks (headroom 4–6, noise 10–14) and
of the unequal corpus at lr 6e-3 (40–42, ``bench/results/unequal_lr0.006.json``). The new arms are the
benchmarks' own ``pike`` (and, on the unequal corpus, ``balanced_pike``) specs with the variant's options
added; uniform and the shipped arms are the committed runs of ``headroom.json``, ``noise.json`` and
``unequal_lr0.006.json`` (same specs and seeds, so every difference is paired: same initialisation and data
order). Scores: the validation loss averaged over all domains (PiKE's objective) and the worst domain's
(Balanced-PiKE's), arm − uniform and variant − shipped per seed, mean ± sd.

Writes ``bench/results/VARIANT.json`` and ``VARIANT.md``; finished runs are kept in ``WORK/<corpus>/``.
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

from corpora import CORPORA  # noqa: E402
from curves import final_losses, fmt_spread  # noqa: E402
from runs import LR, RESULTS, add_run_arguments, check_data, regenerate, run_one, run_pool, shipped_pike, write_results  # noqa: E402

__all__ = ["BENCHMARKS", "VARIANTS", "add_corpus_arguments", "analyse", "corpus_folders", "lr_option", "main",
           "write_report"]

BENCHMARKS: dict[str, dict[str, Any]] = {
    "headroom": {"results": "headroom.json", "data": "headroom", "domains": CORPORA["headroom"], "steps": 400,
                 "eval_every": 40, "tuned": True, "lr": LR},
    "noise": {"results": "noise.json", "data": "headroom", "domains": ("en", "code", "noise"), "steps": 300,
              "eval_every": 30, "tuned": True, "lr": 6e-3},
    "unequal": {"results": "unequal_lr0.006.json", "data": "unequal", "domains": CORPORA["unequal"], "steps": 400,
                "eval_every": 40, "tuned": False, "lr": 6e-3},
}
"""The benchmarks whose committed runs are the Euclidean and uniform arms, and how their runs were made (``lr``:
AdamW's peak learning rate)."""

VARIANTS: dict[str, dict[str, Any]] = {
    "metric": {"options": {"metric": "adam"}, "tag": "adam",
               "title": "PiKE's statistics in Adam's inner product (`metric: adam`)",
               "about": "Shipped PiKE with `metric: euclidean` (the paper's inner product) and `metric: adam` (that "
                        "of the AdamW step the runs take)."},
    "cross_terms": {"options": {"cross_terms": True}, "tag": "cross",
                    "title": "PiKE with the cross-domain terms of its gradient term (`cross_terms: true`)",
                    "about": "Shipped PiKE (the paper's gradient term ‖∇L_j‖²) and `cross_terms: true` (the "
                             "alignment Σ_k ⟨∇L_j, ∇L_k⟩ with the whole objective's gradient)."},
    "zeta2_0": {"options": {"zeta2": 0.0}, "tag": "z2zero",
                "title": "PiKE without its variance term (`zeta2: 0`, the paper's ablation)",
                "about": "Shipped PiKE (exponent `ζ1·G − (ζ2/2b)·S`) and `zeta2: 0` (exponent `ζ1·G`: the variance "
                         "term dropped, every other option shipped)."},
}
"""The variants this benchmark judges: the PiKE options each adds, and the tag of its runs' names and arms."""

ADAPTIVE_ARMS = ("pike", "balanced_pike")
TUNE_SEED = 0


def committed_runs(name: str, results: Path = RESULTS) -> list[dict[str, Any]]:
    """Every run of a benchmark's committed results JSON (grid, sweep and held-out)."""
    result = json.loads((results / BENCHMARKS[name]["results"]).read_text())
    if "corpora" in result:
        return [run for runs in result["corpora"].values() for run in runs]
    return result.get("grid", []) + result.get("sweep", []) + result.get("heldout", [])


def with_variant(spec: dict[str, Any], variant: str) -> dict[str, Any]:
    """``spec`` with the variant's options added to its PiKE options, under the variant's name (and arm)."""
    v = VARIANTS[variant]
    out = {**spec, "name": f"{v['tag']}-{spec['name']}", "pike": {**spec["pike"], **v["options"]}}
    if "arm" in spec:
        out["arm"] = f"{spec['arm']}_{v['tag']}"
    return out


def tuning_specs(name: str, runs: list[dict[str, Any]], variant: str) -> dict[str, dict[str, Any]]:
    """The tuning seed's uniform and shipped PiKE runs' specs (committed where they exist) and the variant's."""
    pike = shipped_pike()
    tuning = [r["spec"] for r in runs if r["spec"]["seed"] == TUNE_SEED and r["spec"]["eval_split"] == "train"]
    uniform = next(s for s in tuning if s["pike"] == {"strategy": "uniform"}
                   and np.ptp(list(s.get("weights", {"u": 1}).values())) < 1e-9)
    euclidean = next((s for s in tuning if s["pike"] == pike), None)
    if euclidean is None:  # this benchmark ran no PiKE on its tuning seed: the same spec as its held-out pike
        euclidean = {"name": f"tune-pike-s{TUNE_SEED}", "seed": TUNE_SEED, "eval_split": "train", "pike": pike,
                     **({"lr": uniform["lr"]} if "lr" in uniform else {})}
    return {"uniform": uniform, "pike": euclidean, "variant": with_variant(euclidean, variant)}


def heldout_specs(runs: list[dict[str, Any]], variant: str) -> list[dict[str, Any]]:
    """The variant's twins of the held-out PiKE and Balanced-PiKE runs."""
    return [with_variant(r["spec"], variant) for r in runs
            if r["spec"].get("eval_split") == "val" and r["spec"].get("arm") in ADAPTIVE_ARMS]


def analyse(result: dict[str, Any]) -> dict[str, Any]:
    """Tuning-seed scores and the rule's decision; per benchmark and arm, held-out differences."""
    tag = VARIANTS[result["variant"]]["tag"]
    tuning = {name: {arm: final_losses(run)[0] for arm, run in t.items()} for name, t in result["tuning"].items()}
    adopt = all(t["variant"] < t["pike"] for t in tuning.values())
    heldout: dict[str, Any] = {}
    for name, runs in result["heldout"].items():
        by_arm: dict[str, dict[int, dict[str, Any]]] = {}
        for run in runs:
            by_arm.setdefault(run["spec"]["arm"], {})[run["spec"]["seed"]] = run
        seeds = sorted(by_arm["uniform"])
        rows = {}
        for arm, by_seed in by_arm.items():
            avg = [final_losses(by_seed[s])[0] for s in seeds]
            worst = [final_losses(by_seed[s])[1] for s in seeds]
            row = {"final_avg": avg, "final_worst": worst,
                   "diff_avg": [a - final_losses(by_arm["uniform"][s])[0] for a, s in zip(avg, seeds)],
                   "diff_worst": [w - final_losses(by_arm["uniform"][s])[1] for w, s in zip(worst, seeds)]}
            base = arm.removesuffix(f"_{tag}")
            if arm != base:
                row["variant_minus_shipped_avg"] = [a - final_losses(by_arm[base][s])[0] for a, s in zip(avg, seeds)]
                row["variant_minus_shipped_worst"] = [w - final_losses(by_arm[base][s])[1]
                                                      for w, s in zip(worst, seeds)]
            rows[arm] = row
        heldout[name] = {"seeds": seeds, "arms": rows,
                         "uniform_spread": float(np.std(rows["uniform"]["final_avg"], ddof=1))}
    return {"tuning": tuning, "adopt": adopt, "heldout": heldout}


def write_report(result: dict[str, Any], out: Path = RESULTS) -> None:
    variant = VARIANTS[result["variant"]]
    a = analyse(result)
    lines = [f"# {variant['title']}", "", f"{variant['about']} Negative is better.", "",
             f"Command: `{result['command']}`", "",
             f"## The rule, on tuning seed {TUNE_SEED} (training split)", "",
             "The variant becomes the default only if its average training-split loss is lower on both corpora.", "",
             f"| corpus | uniform | pike, shipped | pike, {variant['tag']} |", "|---|---:|---:|---:|"]
    for name, t in a["tuning"].items():
        lines.append(f"| {name} | {t['uniform']:.4f} | {t['pike']:.4f} | {t['variant']:.4f} |")
    lines += ["", f"Decision: **{'adopt' if a['adopt'] else 'keep the shipped default'}**"
              f" (the variant {'is' if a['adopt'] else 'is not'} lower on both).", "",
              "## Held-out seeds (validation split)", ""]
    for name, h in a["heldout"].items():
        domains = ", ".join(BENCHMARKS[name]["domains"])
        lines += [f"### {name} ({domains}; seeds {', '.join(map(str, h['seeds']))}; uniform's seed spread "
                  f"{h['uniform_spread']:.4f})", "",
                  "| arm | final avg loss per seed | avg − uniform | worst − uniform | variant − shipped: avg | "
                  "variant − shipped: worst |", "|---|---|---:|---:|---:|---:|"]
        for arm, row in h["arms"].items():
            lines.append(f"| {arm} | {', '.join(f'{x:.4f}' for x in row['final_avg'])} | "
                         f"{fmt_spread(row['diff_avg'])} | {fmt_spread(row['diff_worst'])} | "
                         f"{fmt_spread(row.get('variant_minus_shipped_avg', []))} | "
                         f"{fmt_spread(row.get('variant_minus_shipped_worst', []))} |")
        lines.append("")
    (out / f"{result['variant']}.md").write_text("\n".join(lines))


def add_corpus_arguments(parser: argparse.ArgumentParser, work: str) -> None:
    """The options of a benchmark over the committed runs of :data:`BENCHMARKS`: the two corpora's folders, the
    run folder, parallel jobs, report-only and the output folder."""
    parser.add_argument("--headroom", help="the headroom corpus's mds/ folder (bench/corpora.py headroom)")
    parser.add_argument("--unequal", help="the unequal corpus's mds/ folder (bench/corpora.py unequal)")
    add_run_arguments(parser, work)


def lr_option(name: str) -> dict[str, float]:
    """A run spec's ``lr`` entry for benchmark ``name``: absent at the default learning rate, as the committed
    specs have it."""
    lr = BENCHMARKS[name]["lr"]
    return {"lr": lr} if lr != LR else {}


def corpus_folders(parser: argparse.ArgumentParser, args: argparse.Namespace,
                   names: list[str] | tuple[str, ...] = tuple(BENCHMARKS)) -> dict[str, str]:
    """The ``--headroom`` / ``--unequal`` folder of each corpus, by corpus; a usage error unless those the benchmarks
    ``names`` train on hold every domain."""
    folders = {"headroom": args.headroom, "unequal": args.unequal}
    for corpus in sorted({BENCHMARKS[name]["data"] for name in names}):
        check_data(parser, folders[corpus], CORPORA[corpus], f"--{corpus}", corpus)
    return folders


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("variant", choices=sorted(VARIANTS))
    add_corpus_arguments(parser, "pike-variant-runs")
    args = parser.parse_args(argv)
    out = Path(args.out)
    if regenerate(args, args.variant, write_report):
        return 0
    folders = corpus_folders(parser, args)
    pool = run_pool(args.jobs)
    pending: list[tuple[str, str, Any]] = []  # (benchmark, tuning arm or "", future)
    committed = {name: committed_runs(name) for name in BENCHMARKS}
    for name, bench in BENCHMARKS.items():
        work = os.path.join(args.work, name)
        os.makedirs(work, exist_ok=True)
        data = folders[bench["data"]]
        specs = [("", spec) for spec in heldout_specs(committed[name], args.variant)]
        if bench["tuned"]:
            specs = [(arm, spec) for arm, spec in tuning_specs(name, committed[name], args.variant).items()] + specs
        for arm, spec in specs:
            known = next((r for r in committed[name] if r["spec"] == spec), None)
            if known is not None:
                (Path(work) / f"{spec['name']}.json").write_text(json.dumps(known))
            pending.append((name, arm, pool.submit(run_one, spec, data, work, bench["steps"], bench["eval_every"],
                                                   bench["domains"])))
    tuning: dict[str, dict[str, Any]] = {}
    heldout: dict[str, list[dict[str, Any]]] = {
        name: [r for r in committed[name] if r["spec"].get("eval_split") == "val"
               and r["spec"].get("arm") in ("uniform", *ADAPTIVE_ARMS)] for name in BENCHMARKS}
    for name, arm, future in pending:
        run = future.result()
        if arm:
            tuning.setdefault(name, {})[arm] = run
        else:
            heldout[name].append(run)
    pool.shutdown()
    result = {
        "variant": args.variant,
        "command": f"python bench/bench_variant.py {args.variant} --headroom HEADROOM/mds --unequal UNEQUAL/mds "
                   f"--work RUNS --jobs {args.jobs}",
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count()},
        "benchmarks": {name: {k: (list(v) if isinstance(v, tuple) else v) for k, v in bench.items()}
                       for name, bench in BENCHMARKS.items()},
        "tuning": tuning, "heldout": heldout,
    }
    write_results(out, args.variant, result, write_report)
    decision = analyse(result)
    print(f"tuning seed {TUNE_SEED}: {decision['tuning']}; adopt {args.variant}: {decision['adopt']}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
