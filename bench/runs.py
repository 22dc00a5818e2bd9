"""Training runs of PiKE's convergence benchmarks: one run's config, running it (in a pool of worker
processes), keeping finished runs, and the curves a run leaves.

Every run trains the same tiny GPT-2 (2 layers, 128 wide, byte vocabulary) on batches of :data:`BATCH` ×
:data:`SEQ_LEN` tokens with AdamW and a cosine schedule, and evaluates every domain on the first
:data:`EVAL_BATCHES` × :data:`EVAL_BATCH_SIZE` sequences of a split. A run is described by a *spec*
(``name``, ``seed``, ``eval_split``, ``pike``, optionally ``weights``, ``lr``, ``batch`` and ``arm``); its result is
kept in ``WORK/<name>.json`` and reused while the spec and the number of steps are the same. Used by
``bench_headroom.py``, ``bench_noise.py``, ``bench_corpora.py`` and ``bench_spread.py``.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import shutil
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402

from corpora import CORPORA  # noqa: E402
from curves import final_losses  # noqa: E402

__all__ = ["BATCH", "EVAL_BATCHES", "EVAL_BATCH_SIZE", "LR", "RESULTS", "SEQ_LEN", "Runner", "add_common_arguments",
           "build_config", "check_data", "fill_cache", "regenerate", "run_one", "run_pool", "shipped_defaults",
           "summarize", "write_results"]

RESULTS = Path(ROOT) / "bench" / "results"
DOMAINS = CORPORA["headroom"]
SEQ_LEN = 64
BATCH = 64
EVAL_BATCHES = 8
EVAL_BATCH_SIZE = 16
LR = 3.0e-3
"""AdamW's peak learning rate; a run's spec may set another (``"lr"``), as ``bench/bench_spread.py`` does."""


def build_config(*, name: str, data: str, work: str, seed: int, steps: int, eval_every: int, eval_split: str,
                 pike: dict[str, Any], weights: dict[str, float] | None = None,
                 domain_names: tuple[str, ...] = DOMAINS, lr: float = LR, batch: int = BATCH) -> Any:
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
        "global_train_batch_size": batch,
        "device_train_microbatch_size": batch,
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
                       weights=spec.get("weights"), domain_names=domain_names, lr=spec.get("lr", LR),
                       batch=spec.get("batch", BATCH))
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


def shipped_pike() -> dict[str, Any]:
    """The PiKE options of a benchmark's shipped-defaults arm: :func:`shipped_defaults`, warmed up for one
    update interval."""
    from pike_stream.controller import DEFAULT_UPDATE_INTERVAL

    return {"strategy": "pike", "warmup_steps": DEFAULT_UPDATE_INTERVAL, **shipped_defaults()}


def add_run_arguments(parser: argparse.ArgumentParser, work: str) -> None:
    """The options of every benchmark that trains runs: run folder (default ``work``), parallel jobs,
    report-only and the output folder."""
    parser.add_argument("--work", default=work)
    parser.add_argument("--jobs", type=int, default=2, help="runs at once, each single-threaded in its own process")
    parser.add_argument("--report-only", action="store_true", help="regenerate the report from the JSON in --out")
    parser.add_argument("--out", default=str(RESULTS))


def add_common_arguments(parser: argparse.ArgumentParser, work: str, seeds: str) -> None:
    """The options every PiKE benchmark takes: :func:`add_run_arguments` (run folder under the temporary
    folder), length and seeds."""
    add_run_arguments(parser, os.path.join(tempfile.gettempdir(), work))
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--eval-every", type=int, default=40)
    parser.add_argument("--seeds", default=seeds, help="held-out seeds, comma-separated")
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


def regenerate(args: argparse.Namespace, name: str, write_report: Any) -> bool:
    """With ``--report-only``: write ``<out>/<name>.md`` again from ``<out>/<name>.json`` and say so (True)."""
    if not args.report_only:
        return False
    out = Path(args.out)
    write_report(json.loads((out / f"{name}.json").read_text()), out)
    print(f"wrote {out / f'{name}.md'}")
    return True


def write_results(out: Path, name: str, result: dict[str, Any], write_report: Any) -> None:
    """Write ``<out>/<name>.json`` (compact) and its report (``write_report(result, out)``), and say so."""
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(result, separators=(",", ":")))
    write_report(result, out)
    print(f"wrote {out / f'{name}.json'} and {name}.md", flush=True)


def check_data(parser: argparse.ArgumentParser, folder: str | None, domains: tuple[str, ...], option: str,
               corpus: str) -> None:
    """Exit with a usage error unless ``folder`` holds every domain with a ``train/`` split."""
    if not folder or not all(os.path.isdir(os.path.join(folder, d, "train")) for d in domains):
        parser.error(f"{option} must hold {', '.join(domains)} with train/ and val/ "
                     f"(python bench/corpora.py {corpus} OUT)")


class Runner:
    """A benchmark's runs: the held-out ``seeds`` of its arguments, finished runs kept in ``--work`` (filled
    from ``--cache-from``), and :meth:`run` to train specs ``--jobs`` at a time (:func:`run_one`)."""

    def __init__(self, args: argparse.Namespace, data: str, domains: tuple[str, ...]) -> None:
        os.makedirs(args.work, exist_ok=True)
        self.args, self.data, self.domains = args, data, domains
        self.cached = fill_cache(args.work, args.cache_from)  # the command-line suffix that says so
        self.seeds = [int(s) for s in args.seeds.split(",")]
        self._pool = run_pool(args.jobs)

    def run(self, specs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Each spec's run (trained, or the finished one), in order."""
        a = self.args
        futures = [self._pool.submit(run_one, spec, self.data, a.work, a.steps, a.eval_every, self.domains)
                   for spec in specs]
        return [f.result() for f in futures]

    def close(self) -> None:
        self._pool.shutdown()
