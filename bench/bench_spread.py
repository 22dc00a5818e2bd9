"""How much does the noise benchmark's score move from seed to seed? Picks its learning rate by the answer.

    python bench/corpora.py headroom HEADROOM
    python bench/bench_spread.py --data HEADROOM/mds --work RUNS [--lrs 3e-3,6e-3,1.2e-2] [--batches 64]
        [--seeds 20,21,22]

A paired comparison can only show differences larger than its own noise. In ``bench/results/noise.md``
(learning rate 3e-3) the final average loss of *uniform* moved by 0.15 nats from seed to seed, and the best
static mixture of the tuning seed was −0.006 ± 0.105 against uniform: the curves show a plateau (``en`` near
3.5 nats) that each seed leaves at a different step, and where it leaves it decides the final loss.

This measures, for each global batch size and learning rate, on seeds used by no other benchmark and with no
PiKE arm at all:

- the spread (sample standard deviation) over seeds of uniform's final average validation loss;
- the paired difference of one fixed static mixture (``noise`` at 0.1, ``en = code``) against uniform,
  with its spread: the noise a paired mixture comparison carries at that learning rate.

The setting with the smallest paired spread is the one ``bench/bench_noise.py`` trains with. PiKE plays no
part in the choice. Writes ``bench/results/spread.json`` and ``spread.md`` (``--name``: another name, for a
study that chooses nothing).
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

from curves import final_losses  # noqa: E402
from runs import BATCH, SEQ_LEN, Runner, add_common_arguments, check_data, regenerate, write_results  # noqa: E402

__all__ = ["CONTRAST", "analyse", "main", "write_report"]

DOMAINS = ("en", "code", "noise")
CONTRAST = {"en": 0.45, "code": 0.45, "noise": 0.1}
"""The fixed static mixture whose paired difference to uniform measures a comparison's noise."""


def analyse(result: dict[str, Any]) -> dict[str, Any]:
    """Per (batch, learning rate): uniform's final average loss per seed and its spread; the contrast's paired
    differences and their spread; the chosen setting (smallest paired spread)."""
    rows = {}
    seeds = result["settings"]["seeds"]
    for batch in result["settings"].get("batches", [BATCH]):
        for lr in result["settings"]["lrs"]:
            by = {(r["spec"]["arm"], r["spec"]["seed"]): final_losses(r)[0] for r in result["runs"]
                  if r["spec"]["lr"] == lr and r["spec"].get("batch", BATCH) == batch}
            uniform = [by[("uniform", s)] for s in seeds]
            diff = [by[("contrast", s)] - by[("uniform", s)] for s in seeds]
            rows[f"{batch}/{lr:g}"] = {
                "batch": batch, "lr": lr, "uniform": uniform, "uniform_sd": float(np.std(uniform, ddof=1)),
                "contrast_diff": diff, "diff_mean": float(np.mean(diff)), "diff_sd": float(np.std(diff, ddof=1))}
    chosen = min(rows.values(), key=lambda r: r["diff_sd"])
    return {"rows": rows, "chosen_lr": chosen["lr"], "chosen_batch": chosen["batch"]}


def write_report(result: dict[str, Any], out: Path) -> None:
    a = analyse(result)
    s = result["settings"]
    lines = [
        "# Seed-to-seed spread of the noise benchmark, by batch size and learning rate", "",
        f"The model, sequences of {s['seq_len']} tokens and schedule of `bench/bench_noise.py`, "
        f"{s['steps']} steps, on en, code and noise; seeds {', '.join(map(str, s['seeds']))} (used by no other "
        "benchmark). No PiKE arm runs here. `contrast` is the fixed static mixture "
        f"{CONTRAST}; its difference to uniform is paired per seed.", "",
        f"Command: `{result['command']}`", "",
        "| global batch | AdamW lr | uniform's final avg loss per seed | sd over seeds | "
        "contrast − uniform per seed | mean ± sd |",
        "|---:|---:|---|---:|---|---:|"]
    for row in a["rows"].values():
        lines.append(f"| {row['batch']} | {row['lr']:g} | {', '.join(f'{x:.4f}' for x in row['uniform'])} | "
                     f"{row['uniform_sd']:.4f} | "
                     f"{', '.join(f'{x:+.4f}' for x in row['contrast_diff'])} | "
                     f"{row['diff_mean']:+.4f} ± {row['diff_sd']:.4f} |")
    lines += ["", f"Chosen (smallest paired spread): batch {a['chosen_batch']}, lr {a['chosen_lr']:g}.", ""]
    (out / f"{s.get('name', 'spread')}.md").write_text("\n".join(lines))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", help="the headroom corpus's mds/ folder (bench/corpora.py headroom)")
    parser.add_argument("--lrs", default="3e-3,6e-3,1.2e-2", help="AdamW peak learning rates, comma-separated")
    parser.add_argument("--batches", default=str(BATCH), help="global batch sizes, comma-separated")
    parser.add_argument("--name", default="spread", help="the results' file name: NAME.json, NAME.md")
    add_common_arguments(parser, "pike-spread", "20,21,22")
    parser.set_defaults(steps=300, eval_every=30)
    args = parser.parse_args(argv)
    out = Path(args.out)
    if regenerate(args, args.name, write_report):
        return 0
    check_data(parser, args.data, DOMAINS, "--data", "headroom")
    runner = Runner(args, args.data, DOMAINS)
    lrs, seeds = [float(x) for x in args.lrs.split(",")], runner.seeds
    batches = [int(x) for x in args.batches.split(",")]
    specs = []
    for batch in batches:
        # the benchmark's batch keeps the spec (and run name) it had before batches were a setting
        size = {} if batch == BATCH else {"batch": batch}
        tag = "" if batch == BATCH else f"b{batch}-"
        for lr in lrs:
            for seed in seeds:
                specs.append({"name": f"uniform-{tag}lr{lr:g}-s{seed}", "seed": seed, "eval_split": "val",
                              "arm": "uniform", "lr": lr, "pike": {"strategy": "uniform"}, **size})
                specs.append({"name": f"contrast-{tag}lr{lr:g}-s{seed}", "seed": seed, "eval_split": "val",
                              "arm": "contrast", "lr": lr, "pike": {"strategy": "uniform"}, "weights": CONTRAST,
                              **size})
    runs = runner.run(specs)
    runner.close()
    result = {
        "settings": {"steps": args.steps, "eval_every": args.eval_every, "lrs": lrs, "batches": batches,
                     "seeds": seeds, "seq_len": SEQ_LEN, "domains": list(DOMAINS),
                     **({} if args.name == "spread" else {"name": args.name})},
        "command": f"python bench/bench_spread.py --data HEADROOM/mds --work RUNS --steps {args.steps} "
                   f"--lrs {args.lrs} --batches {args.batches} --seeds {args.seeds} --jobs {args.jobs}"
                   + ("" if args.name == "spread" else f" --name {args.name}") + runner.cached,
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count()},
        "runs": runs,
    }
    write_results(out, args.name, result, write_report)
    chosen = analyse(result)
    print(f"chosen batch {chosen['chosen_batch']}, lr {chosen['chosen_lr']:g}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
