"""What the PiKE benchmarks compute from a run's curves, and the pieces of their reports they share.

A run (``runs.run_one``) holds ``eval_steps`` and ``val_loss`` (per domain, per evaluation), the weights of
every step and PiKE's statistics. Pure functions of those, plus the shared report table and plot.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["avg_curve", "by_arm", "final_losses", "fmt_spread", "null_floor", "paired_diffs",
           "per_domain_and_goal_lines", "per_domain_table", "plot_curves_and_weights", "steps_to_reach", "worst_curve"]


def avg_curve(run: dict[str, Any]) -> np.ndarray:
    """The validation loss averaged over all of the run's domains with equal weight, per evaluation."""
    return np.mean(list(run["val_loss"].values()), axis=0)


def worst_curve(run: dict[str, Any]) -> np.ndarray:
    """The highest domain's validation loss, per evaluation."""
    return np.max(list(run["val_loss"].values()), axis=0)


def final_losses(run: dict[str, Any]) -> tuple[float, float]:
    return float(avg_curve(run)[-1]), float(worst_curve(run)[-1])


def by_arm(runs: list[dict[str, Any]]) -> dict[str, dict[int, dict[str, Any]]]:
    """Runs keyed by their spec's arm, then seed: the pairs of a paired comparison."""
    out: dict[str, dict[int, dict[str, Any]]] = {}
    for run in runs:
        out.setdefault(run["spec"]["arm"], {})[run["spec"]["seed"]] = run
    return out


def paired_diffs(runs: dict[str, dict[int, dict[str, Any]]], arm: str, seeds: list[int], score: int = 0,
                 base: str = "uniform") -> list[float]:
    """``arm`` − ``base`` per seed in a final score (0: the average over domains, 1: the worst domain)."""
    return [final_losses(runs[arm][s])[score] - final_losses(runs[base][s])[score] for s in seeds]


def null_floor(runs: dict[str, dict[int, dict[str, Any]]], seeds: list[int], score: int = 0) -> float:
    """The smallest difference a paired comparison resolves: the mean |null arm − uniform| (``bench_null.py``'s
    ``uniform_jitter``: uniform with every weight changed by 1%)."""
    return float(np.mean(np.abs(paired_diffs(runs, "uniform_jitter", seeds, score))))


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


def fmt_spread(values: list[float]) -> str:
    """``mean ± sd`` of paired differences (the value alone for one seed)."""
    if len(values) < 2:
        return f"{values[0]:+.4f}" if values else ""
    return f"{np.mean(values):+.4f} ± {np.std(values, ddof=1):.4f}"


def per_domain_table(means: dict[str, dict[str, float]], domains: tuple[str, ...],
                     over: str = "the seeds") -> list[str]:
    """A report's per-domain table: each arm's final validation loss per domain, a mean over ``over``."""
    return ["", f"Per-domain final validation loss, mean over {over}:", "",
            "| arm | " + " | ".join(domains) + " |", "|---|" + "---:|" * len(domains),
            *(f"| {arm} | " + " | ".join(f"{row[d]:.3f}" for d in domains) + " |" for arm, row in means.items())]


def per_domain_and_goal_lines(result: dict[str, Any], arms: list[str], domains: tuple[str, ...],
                              goals: dict[str, Any]) -> list[str]:
    """The report's per-domain table (final validation loss, mean over the held-out seeds) and its goals."""
    means = {arm: {d: float(np.mean([r["val_loss"][d][-1] for r in result["heldout"] if r["spec"]["arm"] == arm]))
                   for d in domains} for arm in arms}
    lines = per_domain_table(means, domains, "the held-out seeds") + ["", "## Goals", ""]
    for name, goal in goals.items():
        lines.append(f"- **{name}**: {'met' if goal['met'] else 'NOT met'} — {goal['detail']}")
    return lines


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
