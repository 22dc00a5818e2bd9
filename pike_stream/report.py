"""``pike-stream report RUN_FOLDER``: what a run's mixture did, from its ``metrics.jsonl``.

Writes into the run folder (or ``--out``):

- ``weights.png``: each domain's mixing weight over training steps (``pike/weight/<domain>``);
- ``losses.png``: each domain's validation cross-entropy over steps (``metrics/<domain>/LanguageCrossEntropy``);
- ``report.md``: a table of the final weights and validation losses (and perplexities), the range of the
  gradient cosines between domains (``pike/min_cosine``), and the final training loss;

and prints the table and the paths. Plots use matplotlib's Agg backend (no display needed).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pike_stream.train.records import METRICS_FILENAME, read_metrics

__all__ = ["RunSummary", "main", "summarize", "write_report"]

WEIGHT_PREFIX = "pike/weight/"
EVAL_PREFIX = "metrics/"
CROSS_ENTROPY = "LanguageCrossEntropy"
PERPLEXITY = "LanguagePerplexity"
MIN_COSINE = "pike/min_cosine"
TRAIN_LOSS = "loss/train/total"

Series = list[tuple[int, float]]


@dataclass
class RunSummary:
    """The time series of a run that the report shows, read from its metrics records."""

    weights: dict[str, Series] = field(default_factory=dict)       # domain → [(step, weight)]
    val_loss: dict[str, Series] = field(default_factory=dict)      # domain → [(step, cross-entropy)]
    val_perplexity: dict[str, Series] = field(default_factory=dict)
    min_cosine: Series = field(default_factory=list)
    train_loss: Series = field(default_factory=list)

    @property
    def domains(self) -> list[str]:
        """Mixed domains first (in the order logged), then domains that were only evaluated."""
        return list(self.weights) + [d for d in self.val_loss if d not in self.weights]

    def final_weights(self) -> dict[str, float]:
        return {d: s[-1][1] for d, s in self.weights.items() if s}

    def final_val_loss(self) -> dict[str, float]:
        return {d: s[-1][1] for d, s in self.val_loss.items() if s}

    def table(self) -> str:
        """A markdown table: domain, final weight, final validation loss and perplexity."""
        weights, losses = self.final_weights(), self.final_val_loss()
        perplexities = {d: s[-1][1] for d, s in self.val_perplexity.items() if s}
        rows = ["| domain | final weight | val loss | val perplexity |", "|---|---:|---:|---:|"]
        for d in self.domains:
            rows.append(f"| {d} | {_fmt(weights.get(d))} | {_fmt(losses.get(d))} | {_fmt(perplexities.get(d), 2)} |")
        if losses:
            mean = sum(losses.values()) / len(losses)
            rows.append(f"| **mean / worst** | | {mean:.4f} / {max(losses.values()):.4f} | |")
        return "\n".join(rows)


def _fmt(value: float | None, digits: int = 4) -> str:
    return "–" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


def _append(series: dict[str, Series], name: str, step: int, value: Any) -> None:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        points = series.setdefault(name, [])
        if points and points[-1][0] == step:  # the same step logged again: the later value stands
            points[-1] = (step, float(value))
        else:
            points.append((step, float(value)))


def summarize(records: list[dict[str, Any]]) -> RunSummary:
    """Collect the report's series from ``metrics.jsonl`` records (see :mod:`pike_stream.train.logs`)."""
    summary = RunSummary()
    single: dict[str, Series] = {}
    for record in records:
        step = record.get("step")
        if not isinstance(step, int):
            continue
        for key, value in record.items():
            if key.startswith(WEIGHT_PREFIX):
                _append(summary.weights, key[len(WEIGHT_PREFIX):], step, value)
            elif key.startswith(EVAL_PREFIX) and key.endswith("/" + CROSS_ENTROPY):
                _append(summary.val_loss, key[len(EVAL_PREFIX):-len(CROSS_ENTROPY) - 1], step, value)
            elif key.startswith(EVAL_PREFIX) and key.endswith("/" + PERPLEXITY):
                _append(summary.val_perplexity, key[len(EVAL_PREFIX):-len(PERPLEXITY) - 1], step, value)
            elif key in (MIN_COSINE, TRAIN_LOSS):
                _append(single, key, step, value)
    summary.min_cosine = single.get(MIN_COSINE, [])
    summary.train_loss = single.get(TRAIN_LOSS, [])
    return summary


def _plot(series: dict[str, Series], path: Path, title: str, ylabel: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    for name, points in series.items():
        if points:
            steps, values = zip(*points)
            ax.plot(steps, values, label=name, marker="o" if len(points) < 20 else None, markersize=3)
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if series:
        ax.legend(loc="best", fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _markdown(run: Path, summary: RunSummary) -> str:
    lines = [f"# Run report: {run.name}", "", summary.table(), ""]
    if summary.min_cosine:
        values = [v for _, v in summary.min_cosine]
        lines.append(f"Smallest pairwise gradient cosine between domains, per refresh: from {min(values):.3f} "
                     f"to {max(values):.3f} (last {values[-1]:.3f}, {len(values)} refreshes); negative values "
                     f"mean conflicting domain gradients.")
    else:
        lines.append("No gradient cosines were logged (no adaptive PiKE refresh in this run).")
    if summary.train_loss:
        step, value = summary.train_loss[-1]
        lines.append(f"\nTraining loss at step {step}: {value:.4f}.")
    lines += ["", "![weights](weights.png)", "", "![validation losses](losses.png)", ""]
    return "\n".join(lines)


def write_report(run_folder: str | os.PathLike[str],
                 out: str | os.PathLike[str] | None = None) -> tuple[RunSummary, dict[str, Path]]:
    """Read ``run_folder``'s metrics; write ``weights.png``, ``losses.png`` and ``report.md`` into ``out``
    (default: the run folder). Returns the summary and ``{"weights", "losses", "report"}`` paths."""
    run = Path(run_folder)
    summary = summarize(read_metrics(run / METRICS_FILENAME if run.is_dir() else run))
    folder = Path(out) if out is not None else (run if run.is_dir() else run.parent)
    folder.mkdir(parents=True, exist_ok=True)
    paths = {"weights": folder / "weights.png", "losses": folder / "losses.png", "report": folder / "report.md"}
    _plot(summary.weights, paths["weights"], f"{run.name}: mixing weights", "weight")
    _plot(summary.val_loss, paths["losses"], f"{run.name}: validation loss per domain", "cross-entropy (nats/token)")
    paths["report"].write_text(_markdown(run if run.is_dir() else run.parent, summary))
    return summary, paths


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="pike-stream report",
                                     description="Plot a run's mixing weights and per-domain validation losses.")
    parser.add_argument("run_folder", help="a run folder of `pike-stream train` (holds metrics.jsonl)")
    parser.add_argument("--out", help="where to write the PNGs and report.md (default: the run folder)")
    args = parser.parse_args(argv)
    try:
        summary, paths = write_report(args.run_folder, args.out)
    except (FileNotFoundError, ValueError) as error:
        print(f"pike-stream report: error: {error}", file=sys.stderr)
        return 2
    print(summary.table())
    for name, path in paths.items():
        print(f"{name}: {path}")
    return 0
