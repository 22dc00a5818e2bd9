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
import json
import multiprocessing
import os
import platform
import shutil
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import numpy as np  # noqa: E402

__all__ = ["analyse", "build_config", "fill_cache", "main", "plot_curves_and_weights", "run_one", "static_grid",
           "write_report"]

RESULTS = Path(ROOT) / "bench" / "results"
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from corpora import CORPORA  # noqa: E402

DOMAINS = CORPORA["headroom"]
SEQ_LEN = 64
BATCH = 64
EVAL_BATCHES = 8
EVAL_BATCH_SIZE = 16
ORACLE_PROBE = 64
LR = 3.0e-3
"""AdamW's peak learning rate; a run's spec may set another (``"lr"``), as ``bench/bench_spread.py`` does."""
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


def build_config(*, name: str, data: str, work: str, seed: int, steps: int, eval_every: int, eval_split: str,
                 pike: dict[str, Any], weights: dict[str, float] | None = None,
                 domain_names: tuple[str, ...] = DOMAINS, lr: float = LR) -> Any:
    """One run's :class:`~pike_stream.train.config.TrainConfig`: local MDS folders, evaluation of every domain
    on the first batches of ``eval_split`` every ``eval_every`` steps, no checkpoints."""
    from pike_stream.train.config import config_from_dict

    def domains(split: str) -> list[dict[str, str]]:
        return [{"name": d, "local": os.path.join(data, d), "split": split} for d in domain_names]

    train_loader: dict[str, Any] = {"domains": domains("train"), "read_ahead": 2}
    if weights is not None:
        train_loader["weights"] = weights
    return config_from_dict({
        "run_name": name,
        "seed": seed,
        "max_seq_len": SEQ_LEN,
        "global_train_batch_size": BATCH,
        "device_train_microbatch_size": BATCH,
        "max_duration": f"{steps}ba",
        "eval_interval": f"{eval_every}ba",
        "model": {"n_layer": 2, "n_embd": 128, "n_head": 4, "vocab_size": 258},
        "optimizer": {"name": "decoupled_adamw", "lr": lr, "betas": [0.9, 0.95], "weight_decay": 0.0},
        "scheduler": {"name": "cosine_with_warmup", "t_warmup": "20ba", "alpha_f": 0.1},
        "train_loader": train_loader,
        "eval_loader": {"device_batch_size": EVAL_BATCH_SIZE, "max_batches": EVAL_BATCHES,
                        "domains": domains(eval_split)},
        "algorithms": {"pike": pike},
        "loggers": {"progress_bar": False, "console": False},
        "run_folder": os.path.join(work, name),
    })


def summarize(records: list[dict[str, Any]], domain_names: tuple[str, ...] = DOMAINS) -> dict[str, Any]:
    """Per-domain eval curves, the weights of every step and PiKE's statistics from ``metrics.jsonl``."""
    val: dict[int, dict[str, float]] = {}
    weights: dict[int, list[float]] = {}
    stats: dict[int, dict[str, Any]] = {}
    probe_seconds = []
    for r in records:
        step = int(r["step"])
        for d in domain_names:
            if f"metrics/{d}/LanguageCrossEntropy" in r:
                val.setdefault(step, {})[d] = float(r[f"metrics/{d}/LanguageCrossEntropy"])
        if f"pike/weight/{domain_names[0]}" in r:
            weights[step] = [float(r[f"pike/weight/{d}"]) for d in domain_names]
        if "pike/updates" in r:
            stats[step] = {stat: [r.get(f"pike/{stat}/{d}") for d in domain_names]
                           for stat in ("grad_sq", "variance", "loss")}
            stats[step]["cosine"] = {k.split("/", 2)[2]: v for k, v in r.items() if k.startswith("pike/cosine/")}
            stats[step]["min_cosine"] = r.get("pike/min_cosine")
        if "pike/probe_seconds" in r:
            probe_seconds.append(float(r["pike/probe_seconds"]))
    eval_steps = sorted(s for s in val if len(val[s]) == len(domain_names))
    return {
        "eval_steps": eval_steps,
        "val_loss": {d: [val[s][d] for s in eval_steps] for d in domain_names},
        "weight_steps": sorted(weights),
        "weights": [weights[s] for s in sorted(weights)],
        "stats_steps": sorted(stats),
        "stats": [stats[s] for s in sorted(stats)],
        "probe_seconds": float(np.sum(probe_seconds)),
    }


def run_one(spec: dict[str, Any], data: str, work: str, steps: int, eval_every: int,
            domain_names: tuple[str, ...] = DOMAINS) -> dict[str, Any]:
    """Train one run (or load its finished result from ``work``) and return its spec and curves."""
    cached = Path(work) / f"{spec['name']}.json"
    if cached.exists():
        result = json.loads(cached.read_text())
        if result.get("spec") == spec and result.get("steps") == steps:
            return result
    from pike_stream.train.builder import build_trainer
    from pike_stream.train.records import read_metrics

    cfg = build_config(name=spec["name"], data=data, work=work, seed=spec["seed"], steps=steps,
                       eval_every=eval_every, eval_split=spec["eval_split"], pike=spec["pike"],
                       weights=spec.get("weights"), domain_names=domain_names, lr=spec.get("lr", LR))
    # A run that is not cached (or was made with another spec) starts from an empty run folder.
    shutil.rmtree(cfg.resolved_run_folder, ignore_errors=True)
    start = time.perf_counter()
    trainer = build_trainer(cfg)
    trainer.fit()
    trainer.close()
    wall = time.perf_counter() - start
    result = {"spec": spec, "steps": steps, "wall_seconds": round(wall, 1),
              **summarize(read_metrics(cfg.resolved_run_folder), domain_names)}
    tmp = cached.with_suffix(".json.partial")
    tmp.write_text(json.dumps(result))
    tmp.replace(cached)
    final = final_losses(result)
    print(f"[{spec['name']}] {wall:.0f} s, final avg {final[0]:.4f}, worst {final[1]:.4f}", flush=True)
    return result


def shipped_defaults() -> dict[str, Any]:
    """The library's PiKE defaults, as the benchmarks record them."""
    from pike_stream.controller import DEFAULT_EMA, DEFAULT_PROBE_SAMPLES, DEFAULT_PULL, DEFAULT_UPDATE_INTERVAL
    from pike_stream.strategies import get_strategy

    strategy = get_strategy("pike")
    return {"probe_samples": DEFAULT_PROBE_SAMPLES, "update_interval": DEFAULT_UPDATE_INTERVAL, "ema": DEFAULT_EMA,
            "pull": DEFAULT_PULL, "zeta1": strategy.zeta1, "zeta2": strategy.zeta2, "min_weight": strategy.min_weight,
            "normalize": strategy.normalize}


def add_common_arguments(parser: argparse.ArgumentParser, work: str, seeds: str) -> None:
    """The options every PiKE benchmark takes: run folder, length, seeds, parallel jobs, report-only, output."""
    parser.add_argument("--work", default=os.path.join(tempfile.gettempdir(), work))
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--eval-every", type=int, default=40)
    parser.add_argument("--seeds", default=seeds, help="held-out seeds, comma-separated")
    parser.add_argument("--jobs", type=int, default=2, help="runs at once, each single-threaded in its own process")
    parser.add_argument("--report-only", action="store_true", help="regenerate the report from the JSON in --out")
    parser.add_argument("--out", default=str(RESULTS))
    parser.add_argument("--cache-from", metavar="JSON",
                        help="a results JSON whose runs fill --work first (runs with the same spec are not rerun)")


def fill_cache(work: str, results_json: str | None) -> str:
    """Put the runs of an earlier results JSON into ``work`` as finished runs (:func:`run_one` reuses a run only
    when its spec and steps are the same); returns the command-line suffix that says so."""
    if not results_json:
        return ""
    previous = json.loads(Path(results_json).read_text())
    for run in previous.get("grid", []) + previous.get("sweep", []) + previous.get("heldout", []):
        (Path(work) / f"{run['spec']['name']}.json").write_text(json.dumps(run))
    return f" --cache-from {results_json}"


def run_pool(jobs: int) -> ProcessPoolExecutor:
    """Worker processes for :func:`run_one`: spawned, quiet, one torch thread each."""
    return ProcessPoolExecutor(max_workers=jobs, initializer=_worker_init,
                               mp_context=multiprocessing.get_context("spawn"))


def _worker_init() -> None:
    import logging

    import torch
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(1)


# ----------------------------------------------------------------------------------------------- analysis
def avg_curve(run: dict[str, Any]) -> np.ndarray:
    """The validation loss averaged over all of the run's domains with equal weight, per evaluation."""
    return np.mean(list(run["val_loss"].values()), axis=0)


def worst_curve(run: dict[str, Any]) -> np.ndarray:
    """The highest domain's validation loss, per evaluation."""
    return np.max(list(run["val_loss"].values()), axis=0)


def final_losses(run: dict[str, Any]) -> tuple[float, float]:
    return float(avg_curve(run)[-1]), float(worst_curve(run)[-1])


def steps_to_reach(steps: list[int], curve: np.ndarray, target: float) -> float | None:
    """The first step where ``curve`` reaches ``target``, interpolated linearly (None: never)."""
    for i, value in enumerate(curve):
        if value <= target:
            if i == 0:
                return float(steps[0])
            prev = curve[i - 1]
            frac = (prev - target) / (prev - value) if prev != value else 1.0
            return float(steps[i - 1] + frac * (steps[i] - steps[i - 1]))
    return None


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
def fmt_spread(values: list[float]) -> str:
    """``mean ± sd`` of paired differences (the value alone for one seed)."""
    if len(values) < 2:
        return f"{values[0]:+.4f}" if values else ""
    return f"{np.mean(values):+.4f} ± {np.std(values, ddof=1):.4f}"


def per_domain_and_goal_lines(result: dict[str, Any], arms: list[str], domains: tuple[str, ...],
                              goals: dict[str, Any]) -> list[str]:
    """The report's per-domain table (final validation loss, mean over the held-out seeds) and its goals."""
    lines = ["", "Per-domain final validation loss, mean over the held-out seeds:", "",
             "| arm | " + " | ".join(domains) + " |", "|---|" + "---:|" * len(domains)]
    for arm in arms:
        runs = [r for r in result["heldout"] if r["spec"]["arm"] == arm]
        lines.append(f"| {arm} | " + " | ".join(f"{np.mean([r['val_loss'][d][-1] for r in runs]):.3f}"
                                                for d in domains) + " |")
    lines += ["", "## Goals", ""]
    for name, goal in goals.items():
        lines.append(f"- **{name}**: {'met' if goal['met'] else 'NOT met'} — {goal['detail']}")
    return lines


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


def plot_curves_and_weights(result: dict[str, Any], path: Path, domains: tuple[str, ...], arms: list[str]) -> None:
    """Left: each arm's validation loss averaged over domains (mean over the held-out seeds); right: pike's
    weights on every held-out seed. Shared by the headroom and noise reports."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    seeds = result["settings"]["seeds"]
    runs: dict[str, dict[int, dict[str, Any]]] = {}
    for run in result["heldout"]:
        runs.setdefault(run["spec"]["arm"], {})[run["spec"]["seed"]] = run
    fig, axes = plt.subplots(1, 2, figsize=(14, 4.5))
    for i, arm in enumerate(a for a in arms if a in runs):
        have = [s for s in seeds if s in runs[arm]]
        if not have:
            continue
        curve = np.mean([avg_curve(runs[arm][s]) for s in have], axis=0)
        axes[0].plot(runs[arm][have[0]]["eval_steps"], curve, marker="o", ms=3, color=f"C{i}", label=arm)
    axes[0].set_xlabel("step")
    axes[0].set_ylabel("avg validation loss over domains")
    axes[0].set_title("mean over the held-out seeds", fontsize=9)
    axes[0].legend(fontsize=8)
    for s in seeds:
        run = runs.get("pike", {}).get(s)
        if run and run["weights"]:
            w = np.array(run["weights"])
            for k, d in enumerate(domains):
                axes[1].plot(run["weight_steps"], w[:, k], color=f"C{k}", alpha=0.7, label=d if s == seeds[0] else None)
    axes[1].axhline(1 / len(domains), color="grey", ls=":", lw=1)
    axes[1].set_xlabel("step")
    axes[1].set_ylabel("pike's weight (each held-out seed)")
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


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
    if args.report_only:
        write_report(json.loads((out / "headroom.json").read_text()), out)
        print(f"wrote {out / 'headroom.md'}")
        return 0
    if not args.data or not all(os.path.isdir(os.path.join(args.data, d, "train")) for d in DOMAINS):
        parser.error(f"--data must hold {', '.join(DOMAINS)} with train/ and val/ (bench/corpora.py headroom)")
    os.makedirs(args.work, exist_ok=True)
    cached = fill_cache(args.work, args.cache_from)
    seeds = [int(s) for s in args.seeds.split(",")]
    pool = run_pool(args.jobs)

    def run_all(specs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        futures = [pool.submit(run_one, spec, args.data, args.work, args.steps, args.eval_every) for spec in specs]
        return [f.result() for f in futures]

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
        pool.shutdown()
        return 0

    # The held-out arms use the library's shipped defaults; they must be the tuning seed's choice.
    shipped = shipped_defaults()
    if {k: chosen[k] for k in shipped} != shipped:
        print(f"note: the shipped defaults {shipped} differ from the tuning seed's choice {chosen}", flush=True)
    # The defaults are written into every spec, so a run cached under other defaults is not reused.
    pike = {"strategy": "pike", "warmup_steps": DEFAULT_UPDATE_INTERVAL, **shipped}
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
    pool.shutdown()
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
    out.mkdir(parents=True, exist_ok=True)
    (out / "headroom.json").write_text(json.dumps(result, indent=None, separators=(",", ":")))
    write_report(result, out)
    print(f"wrote {out / 'headroom.json'} and headroom.md", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
