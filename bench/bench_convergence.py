"""Convergence of PiKE and Balanced-PiKE against static mixtures on the multilingual corpus (CPU, small scale).

    pike-stream corpus build CORPUS --max-mb-per-domain 1.5
    pike-stream corpus convert CORPUS --seq-len 128 --dest MDS
    python bench/bench_convergence.py --data MDS [--steps 1000] [--seeds 17,18,19] [--jobs 2] [--work DIR]
    python bench/bench_convergence.py --report-only      # md + PNGs again from the JSON

Every run trains the same tiny GPT-2 (``yamls/quickstart.yaml``'s: 2 layers, 128 wide, byte vocabulary) with
the same seed, data, steps, optimizer and schedule; only the mixing strategy differs: uniform, proportional,
temperature, round_robin, random (static), pike, and balanced_pike at τ = 1 and τ = 3. Per-domain validation
loss is measured every ``--eval-every`` steps on the same fixed batches of each domain's val split; no
checkpoints are written. ``--jobs`` runs train at once, each alone in a single-threaded process, so results
do not depend on it.

Before the comparison, a small sweep of PiKE's settings is scored on the TRAINING split only, never on
validation data: those runs evaluate every domain on the first batches of its train split, and the score is
the final loss averaged over the domains with equal weight. (The loss of the mixed training batches is
recorded but not used: a mixture of the easiest domains minimises it.) Stage 1 tries step sizes ζ1 = ζ2 in
``SWEEP_ZETA``; stage 2 changes one setting at a time from stage 1's best (ζ2, update interval, ema,
min_weight, normalize: :func:`sweep_stage2`). The best run's settings are used for every pike and
balanced_pike run. Then the extra seeds (``--seeds``) repeat pike, the best static strategy (the lowest final
average validation loss at the first seed), the balanced_pike τ with the lowest worst-domain loss at the first
seed, and uniform (the target of "steps to uniform's final loss"). The sweep tunes on the first seed, so the
extra seeds are the unbiased comparison.

Writes bench/results/convergence.json (settings, per-domain validation curves, weights trajectories,
gradient statistics, wall times, machine, command) and, from it, bench/results/convergence.md and
bench/results/convergence_*.png.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import numpy as np  # noqa: E402

__all__ = ["build_config", "domain_statistics", "effective_domains", "main", "run_one", "steps_to_reach",
           "summarize_run", "write_report"]

RESULTS = Path(ROOT) / "bench" / "results"
JSON_PATH = RESULTS / "convergence.json"
MD_PATH = RESULTS / "convergence.md"
DOMAINS = ("en", "de", "fr", "es", "ru", "code")
STATIC = ("uniform", "proportional", "temperature", "round_robin", "random")
TRAIN_TAIL = 20  # steps of training loss averaged to score the sweep
# The sweep, in two stages on the first seed. Stage 1: the step size ζ1 = ζ2 = ζ. Stage 2: one change at a
# time from stage 1's best. The chosen settings are those of the best run of either stage (a tested
# configuration, not a combination of separately tested changes).
SWEEP_BASE = {"normalize": True, "update_interval": 25, "ema": 0.0, "min_weight": 0.01}
SWEEP_ZETA = (0.05, 0.15, 0.5, 1.5)


# Stage 3 does not feed the benchmark's choice: it asks whether a longer update interval, with the step sizes
# scaled by the same factor (the same drift of the weights per training step), does as well, because the
# probe's overhead falls as 1/T0 (bench/bench_overhead.py). The library's default interval rests on it.
SWEEP_INTERVAL_FACTORS = (4, 10)


def sweep_stage3(chosen: dict[str, Any]) -> list[dict[str, Any]]:
    """Stage 3: ``chosen`` with the update interval and both step sizes multiplied by each factor."""
    return [{**chosen, "zeta1": chosen["zeta1"] * k, "zeta2": chosen["zeta2"] * k,
             "update_interval": chosen["update_interval"] * k} for k in SWEEP_INTERVAL_FACTORS]


def sweep_stage2(best: dict[str, Any]) -> list[dict[str, Any]]:
    """Stage 2 of the sweep: option sets that change one thing in stage 1's best ``best``."""
    zeta = best["zeta1"]
    return [{**best, "zeta2": 0.0}, {**best, "zeta2": 4 * zeta},
            {**best, "update_interval": 10}, {**best, "update_interval": 50},
            {**best, "ema": 0.8}, {**best, "min_weight": 0.05}, {**best, "normalize": False}]
GOAL_STEP_RATIO = 0.8


# ----------------------------------------------------------------------------------------------- running
def build_config(*, name: str, data: str, work: str, seed: int, steps: int, eval_every: int,
                 strategy: str, options: dict[str, Any], update_interval: int, eval_split: str = "val") -> Any:
    """The run's :class:`~pike_stream.train.config.TrainConfig`: quickstart's model, optimizer and schedule
    on local MDS folders, evaluation of every domain on the first batches of ``eval_split`` every
    ``eval_every`` steps, no checkpoints."""
    from pike_stream.train.config import config_from_dict

    def domains(split: str) -> list[dict[str, str]]:
        return [{"name": d, "local": os.path.join(data, d), "split": split} for d in DOMAINS]

    pike: dict[str, Any] = {"strategy": strategy, **options}
    if strategy in ("pike", "balanced_pike"):
        pike.setdefault("update_interval", update_interval)
        pike["warmup_steps"] = pike["update_interval"]
    return config_from_dict({
        "run_name": name,
        "seed": seed,
        "max_seq_len": 128,
        "global_train_batch_size": 16,
        "device_train_microbatch_size": 16,
        "max_duration": f"{steps}ba",
        "eval_interval": f"{eval_every}ba",
        "model": {"n_layer": 2, "n_embd": 128, "n_head": 4, "vocab_size": 258},
        "optimizer": {"name": "decoupled_adamw", "lr": 3.0e-3, "betas": [0.9, 0.95], "weight_decay": 0.0},
        "scheduler": {"name": "cosine_with_warmup", "t_warmup": "10ba", "alpha_f": 0.1},
        "train_loader": {"domains": domains("train"), "read_ahead": 2},
        "eval_loader": {"device_batch_size": 16, "max_batches": 4, "domains": domains(eval_split)},
        "algorithms": {"pike": pike},
        "loggers": {"progress_bar": False, "console": False},
        "run_folder": os.path.join(work, name),
    })


def summarize_run(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Curves from a run's ``metrics.jsonl`` records: training loss per step, per-domain validation loss
    per evaluation step, the weights of every step, and PiKE's statistics on update steps."""
    train: dict[int, float] = {}
    val: dict[int, dict[str, float]] = {}
    weights: dict[int, list[float]] = {}
    stats: dict[int, dict[str, Any]] = {}
    for r in records:
        step = int(r["step"])
        if "loss/train/total" in r:
            train[step] = float(r["loss/train/total"])
        for d in DOMAINS:
            key = f"metrics/{d}/LanguageCrossEntropy"
            if key in r:
                val.setdefault(step, {})[d] = float(r[key])
        if f"pike/weight/{DOMAINS[0]}" in r:
            weights[step] = [float(r[f"pike/weight/{d}"]) for d in DOMAINS]
        if "pike/min_cosine" in r or any(f"pike/grad_sq/{d}" in r for d in DOMAINS):
            entry = stats.setdefault(step, {})
            if "pike/min_cosine" in r:
                entry["min_cosine"] = float(r["pike/min_cosine"])
            for stat in ("grad_sq", "variance", "loss"):
                entry[stat] = [r.get(f"pike/{stat}/{d}") for d in DOMAINS]
    eval_steps = sorted(s for s in val if len(val[s]) == len(DOMAINS))
    steps = sorted(train)
    return {
        "train_loss": [train[s] for s in steps],
        "train_steps": steps,
        "eval_steps": eval_steps,
        "val_loss": {d: [val[s][d] for s in eval_steps] for d in DOMAINS},
        "weight_steps": sorted(weights),
        "weights": [weights[s] for s in sorted(weights)],
        "stats_steps": sorted(stats),
        "stats": [stats[s] for s in sorted(stats)],
    }


def run_one(spec: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """Train one run and return its spec, curves and wall time."""
    from pike_stream.train.builder import build_trainer
    from pike_stream.train.records import read_metrics

    cfg = build_config(name=spec["name"], data=args.data, work=args.work, seed=spec["seed"], steps=args.steps,
                       eval_every=args.eval_every, strategy=spec["strategy"], options=spec["options"],
                       update_interval=args.update_interval, eval_split=spec.get("eval_split", "val"))
    metrics = Path(cfg.resolved_run_folder) / "metrics.jsonl"
    if metrics.exists():
        metrics.unlink()  # a fresh run, not an append to an older one
    start = time.perf_counter()
    trainer = build_trainer(cfg)
    trainer.fit()
    trainer.close()
    wall = time.perf_counter() - start
    out = {**spec, "wall_seconds": round(wall, 1), **summarize_run(read_metrics(cfg.resolved_run_folder))}
    tail = out["train_loss"][-TRAIN_TAIL:]
    out["train_tail_loss"] = float(np.mean(tail)) if tail else None
    final = _final_val(out)
    print(f"[{spec['name']}] {wall:.0f} s, train tail {out['train_tail_loss']:.4f}, "
          f"final val avg {final[0]:.4f} worst {final[1]:.4f}", flush=True)
    return out


# ----------------------------------------------------------------------------------------------- analysis
def _avg_curve(run: dict[str, Any]) -> np.ndarray:
    return np.mean([run["val_loss"][d] for d in DOMAINS], axis=0)


def _worst_curve(run: dict[str, Any]) -> np.ndarray:
    return np.max([run["val_loss"][d] for d in DOMAINS], axis=0)


def _final_val(run: dict[str, Any]) -> tuple[float, float]:
    return float(_avg_curve(run)[-1]), float(_worst_curve(run)[-1])


def _mean_final(runs: list[dict[str, Any]], seeds: list[int], index: int) -> float:
    """The mean over ``seeds`` of the runs' final average (``index`` 0) or worst-domain (1) validation loss."""
    return float(np.mean([_final_val(r)[index] for r in runs if r["seed"] in seeds]))


def steps_to_reach(steps: list[int], curve: np.ndarray, target: float) -> float | None:
    """The first step where ``curve`` reaches ``target``, linearly interpolated between evaluation points
    (None: never reached)."""
    for i, value in enumerate(curve):
        if value <= target:
            if i == 0:
                return float(steps[0])
            prev = curve[i - 1]
            frac = (prev - target) / (prev - value) if prev != value else 1.0
            return float(steps[i - 1] + frac * (steps[i] - steps[i - 1]))
    return None


def _label(run: dict[str, Any]) -> str:
    if run["strategy"] == "balanced_pike":
        return f"balanced_pike(τ={run['options']['tau']:g})"
    return run["strategy"]


def _groups(runs: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    groups: dict[str, list[dict[str, Any]]] = {}
    for run in runs:
        groups.setdefault(_label(run), []).append(run)
    return groups


def analyse(result: dict[str, Any]) -> dict[str, Any]:
    """Per-strategy finals (mean and spread over seeds), steps to uniform's final loss, and the goals.

    Each run's target is uniform's final average loss at the same seed (the first seed's where uniform did
    not run at that seed). Strategies are ranked and the goals judged on the seeds both sides ran, so one
    that ran more seeds is not compared by a different average.
    """
    runs = result["runs"]
    groups = _groups(runs)
    base_seed = result["settings"]["seeds"][0]
    uniform_by_seed = {r["seed"]: r for r in groups["uniform"]}
    targets = {seed: _final_val(r)[0] for seed, r in uniform_by_seed.items()}

    def reach(run: dict[str, Any]) -> float | None:
        return steps_to_reach(run["eval_steps"], _avg_curve(run), targets.get(run["seed"], targets[base_seed]))

    table = {}
    for label, members in groups.items():
        finals = np.array([_final_val(r) for r in members])
        each = [reach(r) for r in members]
        reached = [x for x in each if x is not None]
        sd = finals.std(axis=0, ddof=1).tolist() if len(members) > 1 else [0.0, 0.0]
        table[label] = {
            "seeds": [r["seed"] for r in members],
            "final_avg": float(finals[:, 0].mean()), "final_avg_sd": sd[0],
            "final_worst": float(finals[:, 1].mean()), "final_worst_sd": sd[1],
            "steps_to_uniform": float(np.mean(reached)) if len(reached) == len(members) else None,
            "steps_to_uniform_each": each,
            "wall_seconds": float(np.mean([r["wall_seconds"] for r in members])),
        }

    def at_first_seed(label: str) -> dict[str, Any]:
        return next(r for r in groups[label] if r["seed"] == base_seed)

    static = [k for k in table if k in STATIC]
    best_static = min(static, key=lambda k: _final_val(at_first_seed(k))[0])
    shared = sorted({r["seed"] for r in groups["pike"]} & {r["seed"] for r in groups[best_static]})

    pike_avg, static_avg = _mean_final(groups["pike"], shared, 0), _mean_final(groups[best_static], shared, 0)
    ratios = []
    for seed in shared:
        pike_run = next(r for r in groups["pike"] if r["seed"] == seed)
        ours, theirs = reach(pike_run), (reach(uniform_by_seed[seed]) if seed in uniform_by_seed else None)
        ratios.append(None if ours is None or theirs is None else ours / theirs)
    worst_first = {k: _final_val(at_first_seed(k))[1] for k in table}
    lowest_worst = min(worst_first, key=worst_first.get)
    # The balanced run repeated over the extra seeds, against every strategy that ran those seeds too.
    balanced = [k for k in table if k.startswith("balanced_pike")]
    repeated = max(balanced, key=lambda k: len(table[k]["seeds"]), default=None)
    extra_seeds = sorted(set(table[repeated]["seeds"]) - {base_seed}) if repeated else []
    rivals = [k for k in table if k != repeated and set(extra_seeds) <= set(table[k]["seeds"])]
    worst_extra = ({k: _mean_final(groups[k], extra_seeds, 1) for k in [repeated, *rivals]}
                   if extra_seeds and rivals else {})
    seeds_text = ", ".join(map(str, shared))
    goals = {
        "pike_final_avg_le_best_static": {
            "met": pike_avg <= static_avg,
            "detail": f"seeds {seeds_text}: pike {pike_avg:.4f} vs best static ({best_static}) {static_avg:.4f}"},
        "pike_reaches_uniform_final_in_0.8x_steps": {
            "met": bool(ratios) and all(x is not None and x <= GOAL_STEP_RATIO for x in ratios),
            "detail": f"seeds {seeds_text}: pike's steps / uniform's steps = "
                      + ", ".join("not reached" if x is None else f"{x:.2f}" for x in ratios)
                      + f" (goal ≤ {GOAL_STEP_RATIO:g})"},
        "balanced_pike_lowest_worst_domain": {
            "met": lowest_worst.startswith("balanced_pike")
                   and (not worst_extra or min(worst_extra, key=worst_extra.get) == repeated),
            "detail": f"seed {base_seed}, every strategy: lowest final worst-domain loss {lowest_worst} "
                      f"{worst_first[lowest_worst]:.4f}; balanced_pike "
                      + ", ".join(f"{k} {v:.4f}" for k, v in worst_first.items() if k.startswith("balanced_pike"))
                      + ("" if not worst_extra else
                         f"; seeds {', '.join(map(str, extra_seeds))} (not used by the sweep), mean final worst-domain "
                         "loss: " + ", ".join(f"{k} {v:.4f}" for k, v in sorted(worst_extra.items(),
                                                                               key=lambda kv: kv[1])))},
    }
    return {"table": table, "best_static": best_static, "uniform_targets": targets, "goals": goals}


def _fmt_steps(value: float | None) -> str:
    return "not reached" if value is None else f"{value:.0f}"


# ----------------------------------------------------------------------------------------------- report
def _plot_losses(result: dict[str, Any], path: Path) -> None:
    """Average and worst-domain validation loss of every strategy at the first seed (the sweep's), and the
    average over the other seeds (not used by the sweep) for the strategies repeated on them."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    base_seed = result["settings"]["seeds"][0]
    groups = _groups(result["runs"])
    others = sorted({r["seed"] for r in result["runs"]} - {base_seed})
    fig, axes = plt.subplots(1, 3 if others else 2, figsize=(18 if others else 12, 4.5))
    colors = {label: f"C{i}" for i, label in enumerate(groups)}
    for label, members in groups.items():
        first = next((r for r in members if r["seed"] == base_seed), None)
        if first is not None:
            for ax, fn in zip(axes[:2], (_avg_curve, _worst_curve)):
                ax.plot(first["eval_steps"], fn(first), marker="o", ms=3, color=colors[label], label=label)
        repeated = [r for r in members if r["seed"] in others]
        if others and len(repeated) == len(others):
            curves = np.array([_avg_curve(r) for r in repeated])
            steps = repeated[0]["eval_steps"]
            axes[2].plot(steps, curves.mean(axis=0), marker="o", ms=3, color=colors[label], label=label)
            axes[2].fill_between(steps, curves.min(axis=0), curves.max(axis=0), color=colors[label], alpha=0.2)
    axes[0].set_title(f"average validation loss over domains, seed {base_seed} (the sweep's)")
    axes[1].set_title(f"worst-domain validation loss, seed {base_seed}")
    if others:
        axes[2].set_title(f"average validation loss, mean (band: min–max) of seeds {', '.join(map(str, others))}",
                          fontsize=10)
        axes[2].legend(fontsize=8)
    for ax in axes:
        ax.set_xlabel("step")
        ax.set_ylabel("cross-entropy (nats/token)")
        ax.grid(alpha=0.3)
        # Zoom on the last 80% of training: the first evaluations are far higher and flatten the rest.
        late = [y for line in ax.get_lines() for x, y in zip(line.get_xdata(), line.get_ydata())
                if x >= 0.2 * result["settings"]["steps"]]
        if late:
            ax.set_ylim(top=max(late) + 0.02)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plot_steps(analysis: dict[str, Any], steps: int, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    table = analysis["table"]
    labels = list(table)
    fig, ax = plt.subplots(figsize=(8, 4))
    for i, label in enumerate(labels):
        reach = table[label]["steps_to_uniform_each"]
        done = [x for x in reach if x is not None]
        if done:
            ax.bar(i, np.mean(done), color="tab:blue" if len(done) == len(reach) else "tab:orange")
            ax.scatter([i] * len(done), done, color="black", s=10, zorder=3)
        if len(done) < len(reach):
            ax.text(i, steps * 0.05, f"not reached\n({len(reach) - len(done)} of {len(reach)})", ha="center",
                    fontsize=7, rotation=90, va="bottom")
    ax.axhline(steps, color="grey", lw=0.8, ls="--")
    ax.set_xticks(range(len(labels)), labels, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("steps")
    ax.set_title("steps to reach uniform's final average validation loss (same seed)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plot_weights(result: dict[str, Any], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    base_seed = result["settings"]["seeds"][0]
    runs = [r for r in result["runs"] if r["strategy"] in ("pike", "balanced_pike") and r["seed"] == base_seed]
    fig, axes = plt.subplots(1, len(runs), figsize=(5 * len(runs), 4), squeeze=False)
    for ax, run in zip(axes[0], runs):
        w = np.array(run["weights"])
        ax.stackplot(run["weight_steps"], w.T, labels=DOMAINS)
        ax.set_title(_label(run))
        ax.set_xlabel("step")
        ax.set_ylim(0, 1)
    axes[0][0].set_ylabel("weight")
    axes[0][-1].legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plot_cosines(result: dict[str, Any], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for run in result["runs"]:
        points = [(s, e["min_cosine"]) for s, e in zip(run["stats_steps"], run["stats"]) if "min_cosine" in e]
        if points and run["seed"] == result["settings"]["seeds"][0]:
            ax.plot(*zip(*points), marker=".", label=_label(run))
    ax.axhline(0.0, color="grey", lw=0.8)
    ax.set_xlabel("step")
    ax.set_ylabel("lowest pairwise gradient cosine")
    ax.set_title("gradient conflict between domains (sketched cosines)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _stat_matrix(run: dict[str, Any], stat: str) -> np.ndarray:
    """``[update, domain]`` of one logged statistic (NaN where the probe had no estimate)."""
    return np.array([[np.nan if v is None else v for v in e.get(stat, [None] * len(DOMAINS))]
                     for e in run["stats"]], float).reshape(-1, len(DOMAINS))


def effective_domains(weights: np.ndarray) -> np.ndarray:
    """``exp(entropy)`` of each row of weights: K for uniform, 1 when one domain takes everything."""
    w = np.clip(np.asarray(weights, float), 1e-12, None)
    return np.exp(-(w * np.log(w)).sum(axis=-1))


def domain_statistics(run: dict[str, Any], batch: int) -> dict[str, dict[str, float]]:
    """Per domain, over an adaptive run's updates: its mean weight, the mean of its gradient estimate G
    divided by the common scale of PiKE's ``normalize`` (mean over domains of |G| + S/b: what the step
    multiplies by ζ1), the share of fresh estimates with G < 0
    (only noise makes an unbiased estimate of a squared norm negative), the jitter between fresh estimates
    of G relative to their mean (√(mean squared change / 2) / mean: estimation noise if the true G moves
    slowly), the
    noise of a b-sample gradient relative to its signal, (S/b)/|G|, and the share of updates that reused the
    previous estimate unchanged (the domain had too few samples in the batch to be probed)."""
    g, var = _stat_matrix(run, "grad_sq"), _stat_matrix(run, "variance")
    w = np.array(run["weights"])
    out = {}
    with np.errstate(invalid="ignore", divide="ignore"):
        rel = g / np.nanmean(np.abs(g) + var / batch, axis=1, keepdims=True)
        for k, d in enumerate(DOMAINS):
            gk = g[:, k][np.isfinite(g[:, k])]
            stale = float(np.mean(gk[1:] == gk[:-1])) if gk.size > 1 else np.nan
            gk = gk[np.r_[True, gk[1:] != gk[:-1]]] if gk.size else gk  # fresh estimates only
            jitter = (np.sqrt(np.mean(np.diff(gk) ** 2) / 2) / abs(np.mean(gk))) if gk.size > 2 else np.nan
            out[d] = {"mean_weight": float(w[:, k].mean()), "relative_G": float(np.nanmean(rel[:, k])),
                      "negative_G_share": float(np.mean(gk < 0)) if gk.size else np.nan,
                      "G_jitter": float(jitter),
                      "noise_to_signal": float(np.nanmedian(var[:, k] / batch / np.abs(g[:, k]))), "stale_share": stale}
    return out


def _completeness(result: dict[str, Any]) -> list[str]:
    """A line saying which requested seeds have no runs in the results (a run stopped early), if any."""
    requested = result["settings"]["seeds"]
    done = {r["seed"] for r in result["runs"]}
    missing = [seed for seed in requested if seed not in done]
    if not missing:
        return []
    return [f"Requested seeds {', '.join(map(str, requested))}; the benchmark was stopped before the runs of "
            f"seed(s) {', '.join(map(str, missing))}, so these results hold seeds "
            f"{', '.join(map(str, sorted(done)))} only.", ""]


def _estimate_quality(result: dict[str, Any]) -> list[str]:
    """One paragraph on how reliable the probe's G estimates were over all adaptive runs of the first seed."""
    base_seed = result["settings"]["seeds"][0]
    batch = result["settings"]["batch_size"]
    negative, jitter, stale = [], [], []
    for run in result["runs"]:
        if run["strategy"] in ("pike", "balanced_pike") and run["seed"] == base_seed:
            for row in domain_statistics(run, batch).values():
                negative.append(row["negative_G_share"])
                jitter.append(row["G_jitter"])
                stale.append(row["stale_share"])
    if not negative:
        return []
    per_domain = batch / len(DOMAINS)
    return [f"Probe quality (pike and balanced_pike, seed {base_seed}, per domain): a batch of {batch} over "
            f"{len(DOMAINS)} domains holds about {per_domain:.1f} samples of a domain at uniform weights, so G "
            f"comes from two halves of about {per_domain / 2:.1f} samples. Share of fresh G estimates below zero: "
            f"median {np.nanmedian(negative):.0%} (max {np.nanmax(negative):.0%}); jitter between fresh "
            f"estimates: median {np.nanmedian(jitter):.2f} (1 means the noise is as large as the value); "
            f"updates that reused a domain's previous estimate because it had fewer than 2 samples: median "
            f"{np.nanmedian(stale):.0%} (max {np.nanmax(stale):.0%}). A reused estimate is applied again at "
            "every update, so a domain pushed to the floor by one bad estimate tends to stay there.", ""]


def _reading(result: dict[str, Any], a: dict[str, Any]) -> list[str]:
    """What the numbers say, derived from them: per-domain wins and losses of PiKE against uniform, the
    domains it starved, and how concentrated its mixture became."""
    base_seed = result["settings"]["seeds"][0]
    by_label = {_label(r): r for r in result["runs"] if r["seed"] == base_seed}
    uniform = by_label["uniform"]
    lines = []
    for label in ("pike", "balanced_pike(τ=1)", "balanced_pike(τ=3)"):
        run = by_label.get(label)
        if run is None:
            continue
        delta = {d: run["val_loss"][d][-1] - uniform["val_loss"][d][-1] for d in DOMAINS}
        w = np.array(run["weights"]).mean(axis=0)
        better = [f"{d} ({delta[d]:+.3f})" for d in DOMAINS if delta[d] < 0]
        worse = [f"{d} ({delta[d]:+.3f})" for d in DOMAINS if delta[d] >= 0]
        starved = [f"{d} (mean weight {w[k]:.3f})" for k, d in enumerate(DOMAINS) if w[k] < 0.5 / len(DOMAINS)]
        eff = effective_domains(np.array(run["weights"]))
        lines.append(f"- {label} against uniform, final validation loss per domain (seed {base_seed}): better on "
                     f"{', '.join(better) or 'none'}; worse on {', '.join(worse) or 'none'}. Domains it gave less "
                     f"than half the uniform share on average: {', '.join(starved) or 'none'}. Its mixture "
                     f"averaged {eff.mean():.2f} effective domains of {len(DOMAINS)}.")
    groups = _groups(result["runs"])
    fair = sorted({r["seed"] for r in groups["pike"]} & {r["seed"] for r in groups["uniform"]} - {base_seed})
    if fair:
        pike_fair, uniform_fair = _mean_final(groups["pike"], fair, 0), _mean_final(groups["uniform"], fair, 0)
        lines.append(f"- On the seeds the sweep did not tune on ({', '.join(map(str, fair))}), pike's final average "
                     f"validation loss is {pike_fair:.4f} against uniform's {uniform_fair:.4f} "
                     f"({pike_fair - uniform_fair:+.4f}); uniform's own spread over seeds is ± "
                     f"{a['table']['uniform']['final_avg_sd']:.4f}. Seed {base_seed}'s result is the tuned one.")
    met = [name for name, goal in a["goals"].items() if goal["met"]]
    lines.append(f"- Goals met: {len(met)} of {len(a['goals'])}" + (f" ({', '.join(met)})." if met else "."))
    return lines + list(result.get("notes", []))


def write_report(result: dict[str, Any], out: Path = RESULTS) -> None:
    """convergence.md and the PNGs from the results (``--report-only`` calls only this)."""
    out.mkdir(parents=True, exist_ok=True)
    _plot_losses(result, out / "convergence_losses.png")
    _plot_weights(result, out / "convergence_weights.png")
    _plot_cosines(result, out / "convergence_cosines.png")
    a = analyse(result)
    s = result["settings"]
    _plot_steps(a, s["steps"], out / "convergence_steps.png")
    base_seed = s["seeds"][0]
    tokens = s["steps"] * s["batch_size"] * s["seq_len"]
    lines = [
        "# Convergence: PiKE vs static mixtures (multilingual man pages + Python code)",
        "",
        f"Small-scale run on CPU ({result['machine']['cpu_count']} cores, torch {result['machine']['torch']}): "
        f"a GPT-2 of {s['n_layer']} layers, width {s['n_embd']} ({s['parameters'] / 1e6:.2f}M parameters, "
        f"byte vocabulary), {s['steps']} steps of {s['batch_size']} × {s['seq_len']} tokens "
        f"({tokens / 1e6:.2f}M training tokens), AdamW lr {s['lr']:g}, cosine schedule with "
        f"{s['warmup']} warm-up steps. Six domains ({', '.join(DOMAINS)}), ~1.5 MB of text each, so the "
        f"size-based strategies (proportional, temperature) are almost uniform here. Validation: the first "
        f"{s['eval_batches']} × {s['eval_batch_size']} sequences of each domain's val split, every "
        f"{s['eval_every']} steps. PiKE and Balanced-PiKE use the settings the sweep below chose, with as many "
        "warm-up steps as their update interval. Conclusions at this scale do not carry over to the paper's "
        "110M–1B models.",
        "",
        f"Command: `{result['command']}`" + (f" ({result['notes_on_running']})" if result.get("notes_on_running")
                                              else ""),
        "",
        *_completeness(result),
        "## PiKE's settings (sweep, scored on the training split only)",
        "",
        f"Seed {base_seed}, pike strategy. Score: the final loss on the first {s['eval_batches']} × "
        f"{s['eval_batch_size']} sequences of each domain's TRAIN split, averaged over the domains with equal "
        "weight (the validation split is not looked at). The loss of the mixed training batches (last "
        f"{TRAIN_TAIL} steps) is shown too, but not used: it is lowest for a mixture of the easiest domains. "
        "Stage 1 tries step sizes ζ1 = ζ2; stage 2 changes one setting at a time from stage 1's best. The "
        "chosen settings are those of the best run.",
        "",
        "| ζ1 | ζ2 | update interval | ema | min_weight | normalize | score: avg train-split loss per domain | "
        "mixed-batch training loss | wall s |",
        "|---:|---:|---:|---:|---:|---|---:|---:|---:|",
    ]
    for run in sorted(result["sweep"], key=lambda r: r["sweep_score"]):
        o = run["options"]
        lines.append(f"| {o['zeta1']:g} | {o['zeta2']:g} | {o['update_interval']} | {o['ema']:g} | "
                     f"{o['min_weight']:g} | {'on' if o['normalize'] else 'off'} | {run['sweep_score']:.4f} | "
                     f"{run['train_tail_loss']:.4f} | {run['wall_seconds']:.0f} |")
    for run in result.get("sweep_reference", []):
        lines.append(f"| uniform weights (reference, no PiKE) | | | | | | {run['sweep_score']:.4f} | "
                     f"{run['train_tail_loss']:.4f} | {run['wall_seconds']:.0f} |")
    if result.get("sweep_interval"):
        lines += ["", "Stage 3, not used for the choice: the chosen settings with the update interval and both "
                  "step sizes multiplied by the same factor (the weights drift as fast per training step, the "
                  "probe runs less often). The library's default interval rests on it.", "",
                  "| factor | ζ1 | ζ2 | update interval | score | mixed-batch training loss |",
                  "|---:|---:|---:|---:|---:|---:|"]
        for run in sorted(result["sweep_interval"], key=lambda r: r["options"]["update_interval"]):
            o = run["options"]
            factor = o["update_interval"] / result["chosen"]["update_interval"]
            lines.append(f"| {factor:g} | {o['zeta1']:g} | {o['zeta2']:g} | {o['update_interval']} | "
                         f"{run['sweep_score']:.4f} | {run['train_tail_loss']:.4f} |")
    c = result["chosen"]
    lines += ["", f"Chosen: ζ1 = {c['zeta1']:g}, ζ2 = {c['zeta2']:g}, update interval {c['update_interval']}, "
              f"ema {c['ema']:g}, min_weight {c['min_weight']:g}, normalize {'on' if c['normalize'] else 'off'} "
              "(used for every pike and balanced_pike run below)."]
    if result["sweep"] and c["zeta1"] == min(r["options"]["zeta1"] for r in result["sweep"]):
        lines[-1] += " The best ζ1 is the smallest one tried: a smaller step may do better still."
    lines.append("")

    lines += ["## Final validation loss and steps to uniform's final average loss", "",
              "Target: uniform's final average validation loss at the same seed ("
              + ", ".join(f"seed {k}: {v:.4f}" for k, v in sorted(a["uniform_targets"].items()))
              + "); steps interpolated linearly between evaluations. Losses are means over the seeds listed, ± "
              f"their sample standard deviation; rows are sorted by the seed-{base_seed} final average loss "
              f"(column 3), the one seed every strategy ran. Seed {base_seed} is also the seed the sweep tuned "
              "PiKE's settings on (scored on the training split), which favours pike and balanced_pike there; the "
              "other seeds played no part in any choice, so they are the fair comparison (per seed below).", "",
              f"| strategy | seeds | seed-{base_seed} final avg | final avg val loss | final worst-domain loss | "
              "steps to target | wall s/run |", "|---|---|---:|---:|---:|---:|---:|"]
    first = {_label(r): _final_val(r)[0] for r in result["runs"] if r["seed"] == base_seed}
    for label, row in sorted(a["table"].items(), key=lambda kv: first[kv[0]]):
        sd = len(row["seeds"]) > 1
        avg = f"{row['final_avg']:.4f}" + (f" ± {row['final_avg_sd']:.4f}" if sd else "")
        worst = f"{row['final_worst']:.4f}" + (f" ± {row['final_worst_sd']:.4f}" if sd else "")
        each = ", ".join(_fmt_steps(x) for x in row["steps_to_uniform_each"])
        seeds = ", ".join(map(str, row["seeds"]))
        wall = f"{row['wall_seconds']:.0f}"
        lines.append(f"| {label} | {seeds} | {first[label]:.4f} | {avg} | {worst} | {each} | {wall} |")
    repeated = [label for label, row in a["table"].items() if len(row["seeds"]) > 1]
    if repeated:
        lines += ["", "Per seed, the strategies run on every seed: final average / worst-domain validation loss.", "",
                  "| seed | " + " | ".join(repeated) + " |", "|---|" + "---:|" * len(repeated)]
        groups = _groups(result["runs"])
        for seed in sorted({r["seed"] for r in result["runs"]}):
            cells = []
            for label in repeated:
                run = next((r for r in groups[label] if r["seed"] == seed), None)
                cells.append("" if run is None else "{:.4f} / {:.4f}".format(*_final_val(run)))
            lines.append(f"| {seed}{' (sweep seed)' if seed == base_seed else ''} | " + " | ".join(cells) + " |")
    lines += ["", "![steps to uniform's final loss](convergence_steps.png)", "",
              f"Per-domain final validation loss (seed {base_seed}):", "",
              "| strategy | " + " | ".join(DOMAINS) + " |", "|---|" + "---:|" * len(DOMAINS)]
    for run in result["runs"]:
        if run["seed"] == base_seed:
            lines.append(f"| {_label(run)} | " + " | ".join(f"{run['val_loss'][d][-1]:.3f}" for d in DOMAINS) + " |")

    lines += ["", "![losses](convergence_losses.png)", "", "## Goals", ""]
    for name, goal in a["goals"].items():
        lines.append(f"- **{name}**: {'met' if goal['met'] else 'NOT met'} — {goal['detail']}")

    lines += ["", "## What PiKE saw", "", "![weights](convergence_weights.png)", ""]
    for run in result["runs"]:
        if run["strategy"] in ("pike", "balanced_pike") and run["seed"] == base_seed:
            w = np.array(run["weights"])
            final = ", ".join(f"{d} {x:.3f}" for d, x in zip(DOMAINS, w[-1]))
            eff = effective_domains(w)
            lines += [f"**{_label(run)}** (seed {base_seed}): {len(run['stats'])} updates; final weights {final}; "
                      f"effective number of domains exp(entropy) {eff[-1]:.2f} at the end, {eff.min():.2f} at "
                      f"the lowest, {eff.mean():.2f} on average (6 = uniform).", "",
                      "| domain | mean weight | mean normalised G | fresh G estimates < 0 | "
                      "G jitter between fresh estimates | median (S/b)/abs(G) | estimate reused (not re-probed) |",
                      "|---|---:|---:|---:|---:|---:|---:|"]
            for d, row in domain_statistics(run, s["batch_size"]).items():
                lines.append(f"| {d} | {row['mean_weight']:.3f} | {row['relative_G']:.2f} | "
                             f"{row['negative_G_share']:.0%} | {row['G_jitter']:.2f} | {row['noise_to_signal']:.3g} | "
                             f"{row['stale_share']:.0%} |")
            lines.append("")
    lines += _estimate_quality(result)
    cosines = [e["min_cosine"] for r in result["runs"] for e in r["stats"] if "min_cosine" in e]
    if cosines:
        lines += ["", f"Lowest pairwise gradient cosine over all updates of all adaptive runs: min "
                  f"{min(cosines):.3f}, median {np.median(cosines):.3f}, max {max(cosines):.3f} "
                  f"({len(cosines)} updates). The lowest cosine was below 0 at "
                  f"{np.mean(np.array(cosines) < 0):.0%} of updates and below −0.2 (the algorithm's conflict "
                  f"warning) at {np.mean(np.array(cosines) < -0.2):.0%}: "
                  + ("the low-conflict assumption mostly holds on this corpus."
                     if np.median(cosines) > -0.05 else
                     "on this corpus some pair of domains usually pulls in opposite directions, so the "
                     "low-conflict assumption behind PiKE's step holds only loosely."),
                  "", "![cosines](convergence_cosines.png)"]
    lines += ["", "## Reading", "", *_reading(result, a), ""]
    (out / MD_PATH.name).write_text("\n".join(lines) + "\n")


# ----------------------------------------------------------------------------------------------- main
def _machine() -> dict[str, Any]:
    import torch
    return {"platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
            "cpu_count": os.cpu_count(), "threads": torch.get_num_threads()}


def _rounded(value: Any) -> Any:
    """``value`` with every float kept to 6 significant digits (the curves' noise is far larger)."""
    if isinstance(value, float):
        return float(f"{value:.6g}")
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_rounded(v) for v in value]
    return value


def _save(result: dict[str, Any], out: Path = RESULTS) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / JSON_PATH.name).write_text(json.dumps(_rounded(result), separators=(",", ":")) + "\n")


def _command(argv: list[str]) -> str:
    """The command line to record, with the machine's folders replaced by the names the docstring uses."""
    placeholders = {"--data": "MDS", "--work": "RUNS", "--out": "OUT"}
    shown, hide = [], None
    for arg in argv:
        key = arg.split("=", 1)[0]
        if hide:
            shown.append(hide)
            hide = None
        elif key in placeholders and "=" in arg:
            shown.append(f"{key}={placeholders[key]}")
        else:
            hide = placeholders.get(arg)
            shown.append(arg)
    return "python " + " ".join(shlex.quote(a) for a in ["bench/bench_convergence.py", *shown])


def _worker_init(threads: int) -> None:
    """Each run process: quiet logs and ``threads`` torch threads."""
    import logging
    import torch
    logging.basicConfig(level=logging.WARNING)
    if threads:
        torch.set_num_threads(threads)


def _spec_name(prefix: str, options: dict[str, Any]) -> str:
    short = {"zeta1": "z1", "zeta2": "z2", "update_interval": "T", "ema": "ema", "min_weight": "mw",
             "normalize": "norm", "tau": "tau"}
    return prefix + "".join(f"-{short[k]}_{v:g}" if not isinstance(v, bool) else f"-{short[k]}_{int(v)}"
                            for k, v in options.items() if k in short)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", help="folder with <domain>/{train,val} MDS shards (`pike-stream corpus convert`)")
    parser.add_argument("--work", default=os.path.join(tempfile.gettempdir(), "pike-convergence"),
                        help="folder for the run folders (metrics.jsonl)")
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--eval-every", type=int, default=50)
    parser.add_argument("--update-interval", type=int, default=SWEEP_BASE["update_interval"],
                        help="PiKE's T0 when --no-sweep (the sweep chooses it otherwise)")
    parser.add_argument("--seeds", default="17,18,19", help="comma-separated; the first one runs every strategy, "
                        "the others repeat pike, the best static strategy and uniform")
    parser.add_argument("--no-sweep", action="store_true", help="skip the sweep (ζ1 = ζ2 = 0.1, the defaults)")
    parser.add_argument("--jobs", type=int, default=2, help="runs trained at once, each in its own process "
                        "(results do not depend on it: every run is seeded and alone in its process)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per run (0: torch's default); one "
                        "is fastest for this tiny model (≈0.24 s per step)")
    parser.add_argument("--report-only", action="store_true", help="regenerate md and PNGs from the JSON")
    parser.add_argument("--out", default=str(RESULTS), help="folder for convergence.json, .md and the PNGs")
    args = parser.parse_args(argv)
    out = Path(args.out)

    if args.report_only:
        source = out / JSON_PATH.name
        if not source.exists():
            parser.error(f"--report-only: no results at {source}; run the benchmark first")
        write_report(json.loads(source.read_text()), out)
        print(f"wrote {out / MD_PATH.name}")
        return 0
    if not args.data or not all(os.path.isdir(os.path.join(args.data, d, "train")) for d in DOMAINS):
        parser.error(f"--data must hold {', '.join(DOMAINS)} each with train/ and val/ (`pike-stream corpus convert "
                     "CORPUS --seq-len 128 --dest DIR`)")
    if args.jobs < 1:
        parser.error("--jobs must be ≥ 1")
    import multiprocessing
    from concurrent.futures import Future, ProcessPoolExecutor

    seeds = [int(x) for x in args.seeds.split(",")]
    base = seeds[0]
    from pike_stream.train.model import CausalLM
    from pike_stream.train.config import ModelConfig
    result: dict[str, Any] = {
        "command": _command(sys.argv[1:]),
        "machine": {**_machine(), "threads": args.threads, "jobs": args.jobs},
        "settings": {"steps": args.steps, "eval_every": args.eval_every, "seeds": seeds, "batch_size": 16,
                     "seq_len": 128, "n_layer": 2, "n_embd": 128, "lr": 3.0e-3, "warmup": 10, "eval_batches": 4,
                     "eval_batch_size": 16, "domains": list(DOMAINS),
                     "parameters": CausalLM(ModelConfig(), 128).num_parameters},
        "sweep": [], "sweep_reference": [], "sweep_interval": [], "runs": [],
    }
    started = time.perf_counter()
    lock = threading.Lock()  # completion callbacks run on the pool's thread
    pool = ProcessPoolExecutor(max_workers=args.jobs, mp_context=multiprocessing.get_context("spawn"),
                               initializer=_worker_init, initargs=(args.threads,))

    def submit(spec: dict[str, Any], into: str) -> Future:
        future = pool.submit(run_one, spec, args)

        def done(f: Future) -> None:
            if f.exception() is not None:
                return  # raised again by wait()
            run = f.result()
            if into.startswith("sweep"):
                run["sweep_score"] = _final_val(run)[0]
            with lock:
                result[into].append(run)
                _save(result, out)
        future.add_done_callback(done)
        return future

    def wait(futures: list[Future]) -> None:
        for f in futures:
            f.result()

    def sweep_spec(options: dict[str, Any]) -> dict[str, Any]:
        return {"name": _spec_name("sweep", options), "strategy": "pike", "seed": base, "eval_split": "train",
                "options": options}

    def spec_for(label: str, seed: int, chosen: dict[str, Any]) -> dict[str, Any]:
        if label == "pike":
            return {"name": f"pike-s{seed}", "strategy": "pike", "seed": seed, "options": dict(chosen)}
        if label.startswith("balanced_pike"):
            tau = float(label.split("=")[1].rstrip(")"))
            return {"name": f"balanced_pike-tau{tau:g}-s{seed}", "strategy": "balanced_pike", "seed": seed,
                    "options": {**chosen, "tau": tau}}
        return {"name": f"{label}-s{seed}", "strategy": label, "seed": seed, "options": {}}

    with pool:
        stage1 = [] if args.no_sweep else [submit(sweep_spec({"zeta1": z, "zeta2": z, **SWEEP_BASE}), "sweep")
                                           for z in SWEEP_ZETA]
        # Uniform weights scored like the sweep: is the best PiKE setting better than no adaptation at all?
        reference = [] if args.no_sweep else [submit({"name": "sweep-reference-uniform", "strategy": "uniform",
                                                      "seed": base, "eval_split": "train", "options": {}},
                                                     "sweep_reference")]
        # The static runs do not depend on the sweep: they fill the workers while it runs.
        static = [submit(spec_for(label, base, {}), "runs") for label in STATIC]
        if args.no_sweep:
            result["chosen"] = {"zeta1": 0.1, "zeta2": 0.1, **SWEEP_BASE, "update_interval": args.update_interval}
        else:
            wait(stage1)
            best1 = min(result["sweep"], key=lambda r: r["sweep_score"])["options"]
            wait([submit(sweep_spec(options), "sweep") for options in sweep_stage2(best1)])
            with lock:
                result["chosen"] = dict(min(result["sweep"], key=lambda r: r["sweep_score"])["options"])
        chosen = result["chosen"]
        longer = [] if args.no_sweep else [submit(sweep_spec(o), "sweep_interval") for o in sweep_stage3(chosen)]
        adaptive = [submit(spec_for(label, base, chosen), "runs")
                    for label in ("pike", "balanced_pike(τ=1)", "balanced_pike(τ=3)")]
        wait(static + adaptive)
        best_static = min((r for r in result["runs"] if r["strategy"] in STATIC), key=lambda r: _final_val(r)[0])
        best_balanced = min((r for r in result["runs"] if r["strategy"] == "balanced_pike"),
                            key=lambda r: _final_val(r)[1])
        repeats = ["pike", best_static["strategy"], _label(best_balanced)]
        repeats += ["uniform"] if best_static["strategy"] != "uniform" else []
        extra = [submit(spec_for(label, seed, chosen), "runs") for seed in seeds[1:] for label in repeats]
        wait(reference + longer + extra)
    result["total_wall_seconds"] = round(time.perf_counter() - started, 1)
    _save(result, out)
    write_report(result, out)
    print(f"wrote {out / JSON_PATH.name} and {out / MD_PATH.name} ({result['total_wall_seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
