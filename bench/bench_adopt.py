"""Should a variant of PiKE become its default? Decided on three tuning seeds, reported on three new seeds.

    python bench/corpora.py headroom HEADROOM && python bench/corpora.py unequal UNEQUAL
    python bench/bench_adopt.py VARIANT --headroom HEADROOM/mds --unequal UNEQUAL/mds --work RUNS [--jobs 2]
    python bench/bench_adopt.py VARIANT --report-only

``bench/bench_variant.py`` decides on one tuning seed. That cannot show a difference on these benchmarks: one
headroom seed's final loss moves by 0.118 from seed to seed, and a null arm (uniform with every weight changed by
1%, ``bench/results/null.md``) moves the paired difference by 0.024–0.059. This benchmark decides on three tuning
seeds and all three corpora, with the null arm as the yardstick, and reports on seeds no benchmark has run.

**The rule, fixed before any of its runs.** Tuning seeds 0, 1 and 2, scored on the training split, on the
headroom corpus (``en``, ``code``, ``dup``, ``noise``; lr 3e-3, 400 steps), its variant without ``dup`` (the noise
corpus; lr 6e-3, 300 steps) and the unequal corpus (lr 6e-3, 400 steps). Per corpus ``d`` is the mean over the
tuning seeds of the paired difference, variant − shipped PiKE, in the average loss over all domains (PiKE's
objective). The variant becomes the default of ``pike`` only if the mean of ``d`` over the three corpora is below
zero and no corpus's ``d`` is above that corpus's null floor (the mean absolute jittered − uniform difference of
``null.json``): better on the whole, and worse nowhere by more than a change of mixture that changes nothing.

Studies run so far (each variant's protocol is this rule, committed before its runs): ``cross_terms``;
``zeta2_0``, the paper's variance ablation, after ``bench/results/long_variance.md`` found it lowering the noise
domain's weight late in long runs and the average loss on every seed, by less than the null floor.

The tuning seeds run no uniform arm: the rule does not use it. **Held-out seeds 50, 51 and 52** (validation
split, chosen before any run), whatever the rule decides: uniform, the shipped PiKE and the variant on each
corpus, paired per seed (same initialisation and sample orders). Balanced-PiKE is not part of the decision.

Runs with a committed spec (``bench/results/*.json`` of :data:`bench_variant.BENCHMARKS`, the variant's study and
every committed ``adopt_*.json``: the uniform and shipped arms of one adoption study are those of the next) are
reused, not rerun. Writes ``bench/results/adopt_VARIANT.json`` and ``.md``; finished runs stay in ``WORK/``.
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

from bench_null import analyse as null_floors  # noqa: E402
from bench_variant import (  # noqa: E402
    BENCHMARKS,
    VARIANTS,
    add_corpus_arguments,
    committed_runs,
    corpus_folders,
    lr_option,
    with_variant,
)
from curves import final_losses, fmt_spread  # noqa: E402
from runs import LR, RESULTS, regenerate, run_one, run_pool, shipped_pike, write_results  # noqa: E402

__all__ = ["HELDOUT_SEEDS", "TUNING_SEEDS", "analyse", "main", "specs", "write_report"]

TUNING_SEEDS = (0, 1, 2)
HELDOUT_SEEDS = (50, 51, 52)
ARMS = ("uniform", "pike", "variant")


def specs(name: str, seed: int, split: str, variant: str) -> dict[str, dict[str, Any]]:
    """The uniform, shipped-PiKE and variant runs of one corpus, seed and evaluation split."""
    pike = shipped_pike()
    base = {"seed": seed, "eval_split": split, **lr_option(name)}
    shipped = {"name": f"adopt-{name}-pike-s{seed}-{split}", "arm": "pike", **base, "pike": pike}
    return {"uniform": {"name": f"adopt-{name}-uniform-s{seed}-{split}", "arm": "uniform", **base,
                        "pike": {"strategy": "uniform"}},
            "pike": shipped, "variant": with_variant(shipped, variant)}


def _key(spec: dict[str, Any]) -> str:
    """What makes two specs the same run: everything but the name and arm, with uniform weights left out."""
    weights = spec.get("weights")
    uniform = weights is None or float(np.ptp(list(weights.values()))) < 1e-9
    same = {k: v for k, v in spec.items() if k not in ("name", "arm", "weights")}
    same.setdefault("lr", LR)
    return json.dumps({**same, **({} if uniform else {"weights": weights})}, sort_keys=True)


def known_runs(name: str, variant: str, results: Path = RESULTS) -> dict[str, dict[str, Any]]:
    """The committed runs of a corpus (its benchmark, the variant's one-seed study and every adoption study), by
    :func:`_key`."""
    runs = committed_runs(name, results)
    study = results / f"{variant}.json"
    if study.exists():
        result = json.loads(study.read_text())
        runs += list(result["tuning"].get(name, {}).values()) + result["heldout"].get(name, [])
    for adoption in sorted(results.glob("adopt_*.json")):
        result = json.loads(adoption.read_text())
        runs += [run for phase in ("tuning", "heldout") for arms in result[phase].get(name, {}).values()
                 for run in arms.values()]
    return {_key(r["spec"]): r for r in runs}


def analyse(result: dict[str, Any]) -> dict[str, Any]:
    """Per corpus: tuning differences and their mean ``d``, the rule's decision, held-out paired differences."""
    floors = result["null_floor"]
    tuning, heldout = {}, {}
    for name, by_seed in result["tuning"].items():
        diff = [final_losses(r["variant"])[0] - final_losses(r["pike"])[0] for r in by_seed.values()]
        tuning[name] = {"seeds": [int(s) for s in by_seed], "variant_minus_shipped": diff, "d": float(np.mean(diff)),
                        "floor": floors[name]}
    adopt = bool(np.mean([t["d"] for t in tuning.values()]) < 0 and all(t["d"] <= t["floor"] for t in tuning.values()))
    for name, by_seed in result["heldout"].items():
        rows: dict[str, dict[str, list[float]]] = {}
        for arm in ARMS:
            runs = list(by_seed.values())
            rows[arm] = {
                "final_avg": [final_losses(r[arm])[0] for r in runs],
                "diff_avg": [final_losses(r[arm])[0] - final_losses(r["uniform"])[0] for r in runs],
                "diff_worst": [final_losses(r[arm])[1] - final_losses(r["uniform"])[1] for r in runs],
            }
        rows["variant"]["minus_shipped_avg"] = [final_losses(r["variant"])[0] - final_losses(r["pike"])[0]
                                                for r in by_seed.values()]
        heldout[name] = {"seeds": [int(s) for s in by_seed], "arms": rows}
    return {"tuning": tuning, "adopt": adopt, "heldout": heldout}


def write_report(result: dict[str, Any], out: Path = RESULTS) -> None:
    variant = VARIANTS[result["variant"]]
    a = analyse(result)
    seeds = ", ".join(map(str, TUNING_SEEDS))
    lines = [f"# Adopt {variant['title']}? Three tuning seeds, three new seeds", "", f"{variant['about']}", "",
             f"Command: `{result['command']}`", "",
             f"## The rule, on tuning seeds {seeds} (training split)", "",
             "d: the mean over the tuning seeds of variant − shipped PiKE, average loss over all domains. Adopt only "
             "if the mean of d over the corpora is below zero and no corpus's d is above its null floor "
             "(`null.json`: mean |jittered − uniform|). Negative is better.", "",
             "| corpus | variant − shipped, per seed | d | null floor |", "|---|---|---:|---:|"]
    for name, t in a["tuning"].items():
        lines.append(f"| {name} | {', '.join(f'{x:+.4f}' for x in t['variant_minus_shipped'])} | {t['d']:+.4f} | "
                     f"{t['floor']:.4f} |")
    mean_d = float(np.mean([t["d"] for t in a["tuning"].values()]))
    lines += ["", f"Mean of d: {mean_d:+.4f}. Decision: **{'adopt' if a['adopt'] else 'keep the shipped default'}**.",
              "", f"## Held-out seeds {', '.join(map(str, HELDOUT_SEEDS))} (validation split)", "",
              "Paired per seed; mean ± sd over the seeds.", "",
              "| corpus | arm | final avg loss per seed | avg − uniform | worst domain − uniform | "
              "variant − shipped: avg, per seed |", "|---|---|---|---:|---:|---|"]
    for name, h in a["heldout"].items():
        for arm, row in h["arms"].items():
            per_seed = row.get("minus_shipped_avg")
            shipped = (f"{fmt_spread(per_seed)} ({', '.join(f'{x:+.4f}' for x in per_seed)})" if per_seed else "")
            label = {"uniform": "uniform", "pike": "pike, shipped", "variant": f"pike, {variant['tag']}"}[arm]
            lines.append(f"| {name} | {label} | {', '.join(f'{x:.4f}' for x in row['final_avg'])} | "
                         f"{fmt_spread(row['diff_avg'])} | {fmt_spread(row['diff_worst'])} | {shipped} |")
    lines.append("")
    (out / f"adopt_{result['variant']}.md").write_text("\n".join(lines))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("variant", choices=sorted(VARIANTS))
    add_corpus_arguments(parser, "pike-adopt-runs")
    args = parser.parse_args(argv)
    out = Path(args.out)
    if regenerate(args, f"adopt_{args.variant}", write_report):
        return 0
    folders = corpus_folders(parser, args)
    pool = run_pool(args.jobs)
    pending: list[tuple[str, str, int, str, Any]] = []  # (phase, corpus, seed, arm, future)
    for phase, seeds, split in (("tuning", TUNING_SEEDS, "train"), ("heldout", HELDOUT_SEEDS, "val")):
        for name, bench in BENCHMARKS.items():
            work = os.path.join(args.work, name)
            os.makedirs(work, exist_ok=True)
            known = known_runs(name, args.variant)
            for seed in seeds:
                for arm, spec in specs(name, seed, split, args.variant).items():
                    if phase == "tuning" and arm == "uniform":  # the rule compares the two PiKE arms only
                        continue
                    if _key(spec) in known:  # a committed run: its result, under this benchmark's name
                        (Path(work) / f"{spec['name']}.json").write_text(json.dumps({**known[_key(spec)],
                                                                                     "spec": spec}))
                    pending.append((phase, name, seed, arm, pool.submit(
                        run_one, spec, folders[bench["data"]], work, bench["steps"], bench["eval_every"],
                        bench["domains"])))
    result: dict[str, Any] = {
        "variant": args.variant,
        "command": f"python bench/bench_adopt.py {args.variant} --headroom HEADROOM/mds --unequal UNEQUAL/mds "
                   f"--work RUNS --jobs {args.jobs}",
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count()},
        "null_floor": {name: row["mean_abs_diff_avg"]
                       for name, row in null_floors(json.loads((RESULTS / "null.json").read_text())).items()},
        "tuning": {}, "heldout": {},
    }
    for phase, name, seed, arm, future in pending:
        result[phase].setdefault(name, {}).setdefault(str(seed), {})[arm] = future.result()
    pool.shutdown()
    write_results(out, f"adopt_{args.variant}", result, write_report)
    decision = analyse(result)
    print(f"d per corpus: { {k: round(t['d'], 4) for k, t in decision['tuning'].items()} }; "
          f"adopt {args.variant}: {decision['adopt']}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
