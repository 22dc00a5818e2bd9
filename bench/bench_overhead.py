"""Training-step overhead of the PiKE algorithm vs the same run with static weights, on a small GPT-2 (CPU).

    python bench/bench_overhead.py [--threads 1] [--chunk 20] [--rounds 8] [--quick]

Three measurements, in one process, on the same model and synthetic domains (random tokens):

* probe vs step: the time of one probe (:func:`pike_stream.probe.probe_domains`) over a training step
  (zero_grad, forward, backward, Adam), for K = 2, 8 and 32 domains and a 64-sample training batch. The
  probe reads the default probe batch (``DEFAULT_PROBE_SAMPLES`` samples of every domain, so K·m samples in
  2K pieces), as PiKE does at its defaults. The algorithm's overhead at interval T0 is about this ratio /
  T0; the table gives it for several T0. Beside it, the extra time of a training step that takes the
  statistics itself (``probe_samples: 0``: domain-grouped microbatches, gradients read after each half;
  :mod:`pike_stream.step_statistics`) over a plain step, on the same batch. The probe batch does not grow
  with the training batch, so its cost is also given against a step of ``LARGE_BATCH`` samples (accumulated
  in microbatches of 64, as a larger run would; pretraining batches are 512–4,096 sequences).
* end to end: Composer Trainers on K = 8 domains, static weights (no algorithm) against PiKE at the default
  T0 and at T0 = 100, and PiKE with ``probe_samples: 0`` at the default T0, trained in interleaved chunks of
  ``--chunk`` steps (every arm once per round, so load changes on the machine hit all alike); the overhead is
  the extra wall time per chunk.
* memory: peak bytes of live tensors during a static step and during probe + step (as in Composer, the
  previous step's gradients are alive while the probe runs), counted by a dispatch mode that sees every
  tensor an operator allocates; the extra is compared with the parameters' bytes (one gradient buffer).

Writes bench/results/overhead.json (machine, command, settings, results) and, from it, overhead.png (the
overhead against the update interval for each K, with the end-to-end measurements); ``--plot-only`` redraws
the plot from the JSON.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shlex
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch.multiprocessing.reductions import StorageWeakRef  # noqa: E402
from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402
from torch.utils._pytree import tree_flatten  # noqa: E402

__all__ = ["LiveTensorBytes", "main"]

BATCH = 64
LARGE_BATCH = 512
SEQ_LEN = 32
VOCAB = 2048
MODEL = dict(n_layer=2, n_embd=128, n_head=4)
SAMPLES_PER_DOMAIN = 512
KS = (2, 8, 32)
END_TO_END_K = 8
INTERVALS = (10, 50, 100, 200, 500)


# ------------------------------------------------------------------------------------------ data and model
def write_domain(out: str, name: str, seed: int) -> None:
    """A domain of random tokens (each domain its own slice of the vocabulary) in ``pike-stream convert``'s layout."""
    from streaming import MDSWriter

    rng = np.random.default_rng(seed)
    low = (seed * 97) % (VOCAB // 2)
    with MDSWriter(out=out, columns={"tokens": f"ndarray:uint16:{SEQ_LEN}"}, compression="zstd",
                   hashes=["sha1", "xxh64"], size_limit=1 << 16) as writer:
        for _ in range(SAMPLES_PER_DOMAIN):
            writer.write({"tokens": rng.integers(low, low + VOCAB // 2, SEQ_LEN).astype(np.uint16)})
    with open(os.path.join(out, "index.json")) as f:
        index = json.load(f)
    manifest = {"format": "pike_stream.domain", "version": 1, "domain": name, "samples": SAMPLES_PER_DOMAIN,
                "seq_len": SEQ_LEN, "dtype": "uint16", "tokenizer": {"kind": "random"},
                "shards": [s["zip_data"]["basename"] for s in index["shards"]],
                "fingerprint": hashlib.sha256(json.dumps(index, sort_keys=True).encode()).hexdigest()}
    with open(os.path.join(out, "manifest.json"), "w") as f:
        json.dump(manifest, f)


def make_mixer(root: str, k: int, batch: int = BATCH):
    from pike_stream import Domain, PiKEStreamingMixer

    names = [f"d{i:02d}" for i in range(k)]
    return PiKEStreamingMixer([Domain(n, local=os.path.join(root, n)) for n in names], global_batch_size=batch,
                              seed=0, read_ahead_workers=1)


def make_network() -> torch.nn.Module:
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    return GPT2LMHeadModel(GPT2Config(vocab_size=VOCAB, n_positions=SEQ_LEN, use_cache=False, **MODEL))


def make_composer_model():
    from composer.models import ComposerModel

    class CausalLM(ComposerModel):
        def __init__(self) -> None:
            super().__init__()
            self.model = make_network()

        def forward(self, batch):
            return self.model(input_ids=batch["input_ids"]).logits

        def loss(self, outputs, batch, *args, **kwargs):
            return F.cross_entropy(outputs[:, :-1].flatten(0, 1), batch["input_ids"][:, 1:].flatten())

    return CausalLM()


# ------------------------------------------------------------------------------------------ memory
class LiveTensorBytes(TorchDispatchMode):
    """Tracks the bytes of live tensor storages while active, and their peak.

    Storages alive on entry that are passed to :meth:`track` (parameters, gradients, optimizer state) count
    from the start; every storage an operator returns is added when it appears; a storage is dropped when
    its last reference dies (checked before each operator, so a freed buffer is not counted twice).
    """

    def __init__(self) -> None:
        super().__init__()
        self._live: dict[int, tuple[StorageWeakRef, int]] = {}
        self.current = 0
        self.peak = 0

    def track(self, tensors) -> None:
        for t in tensors:
            if isinstance(t, torch.Tensor):
                self._add(t)
        self.peak = max(self.peak, self.current)

    def _add(self, t: torch.Tensor) -> None:
        storage = t.untyped_storage()
        key, size = storage.data_ptr(), storage.nbytes()
        if size and key not in self._live:
            self._live[key] = (StorageWeakRef(storage), size)
            self.current += size

    def _collect(self) -> None:
        for key in [k for k, (ref, _) in self._live.items() if ref.expired()]:
            self.current -= self._live.pop(key)[1]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self._collect()
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                self._add(t)
        self.peak = max(self.peak, self.current)
        return out


def state_tensors(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> list[torch.Tensor]:
    out = [p for p in model.parameters()] + [p.grad for p in model.parameters() if p.grad is not None]
    for state in optimizer.state.values():
        out += [v for v in state.values() if isinstance(v, torch.Tensor)]
    return out


# ------------------------------------------------------------------------------------------ measurements
def timed(fn: Callable[[], Any], repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


class StepAndProbe:
    """A fresh model and Adam on one batch of K domains (uniform weights), with a training step and a probe of
    the default probe batch."""

    def __init__(self, root: str, k: int) -> None:
        from pike_stream.controller import DEFAULT_PROBE_SAMPLES

        self.k = k
        self.model = make_network()
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=1e-3)
        mixer = make_mixer(root, k)
        self.batch = mixer.next_batch()
        self.probe_batch = mixer.probe_batch(DEFAULT_PROBE_SAMPLES)
        self.large_batch = make_mixer(root, k, LARGE_BATCH).next_batch()

    def step(self) -> None:
        """zero_grad, forward, backward, Adam."""
        from pike_stream.probe import causal_lm_per_sample_loss

        self.optimizer.zero_grad(set_to_none=True)
        causal_lm_per_sample_loss(self.model, self.batch).mean().backward()
        self.optimizer.step()

    def probe(self, sketch_dim: int = 256) -> None:
        from pike_stream.probe import causal_lm_per_sample_loss, probe_domains

        probe_domains(self.model, self.probe_batch, self.k, causal_lm_per_sample_loss, sketch_dim=sketch_dim)

    def step_in_microbatches(self, microbatch_size: int, large: bool = False) -> None:
        """A training step accumulated over microbatches, as Composer runs it (each loss × its share); on the
        ``LARGE_BATCH``-sample batch with ``large``."""
        from pike_stream.probe import causal_lm_per_sample_loss

        batch = self.large_batch if large else self.batch
        size = len(batch["domain"])
        self.optimizer.zero_grad(set_to_none=True)
        for rows in torch.arange(size).split(microbatch_size):
            microbatch = {key: value[rows] for key, value in batch.items()}
            (causal_lm_per_sample_loss(self.model, microbatch).mean() * len(rows) / size).backward()
        self.optimizer.step()

    def measured_step(self, microbatch_size: int = BATCH, sketch_dim: int = 256) -> None:
        """A training step that takes the statistics itself, as Composer runs it with ``probe_samples: 0``:
        domain-grouped microbatches, each loss scaled by its share of the batch, gradients read after each half."""
        from pike_stream.probe import causal_lm_per_sample_loss
        from pike_stream.step_statistics import DomainGroupedBatch, StepStatistics, plan_microbatches, split_batch

        self.optimizer.zero_grad(set_to_none=True)
        plan = plan_microbatches(self.batch["domain"], self.k, microbatch_size)
        measured = StepStatistics(self.model, plan, self.k, BATCH, sketch_dim=sketch_dim, seed=0)
        for microbatch in split_batch(DomainGroupedBatch(self.batch, plan), microbatch_size):
            measured.before_forward(microbatch)
            loss = causal_lm_per_sample_loss(self.model, microbatch).mean()
            measured.after_loss(loss)
            (loss * len(microbatch["domain"]) / BATCH).backward()
            measured.after_backward()
        measured.result()
        self.optimizer.step()


def probe_vs_step(root: str, repeats: int) -> list[dict[str, Any]]:
    """Median step and probe times for each K, on one batch of the mixer (uniform weights)."""
    rows = []
    for k in KS:
        run = StepAndProbe(root, k)
        step, probe = run.step, run.probe

        def probe_without_sketch(run: StepAndProbe = run) -> None:
            run.probe(sketch_dim=0)

        step()
        probe()
        small = max(1, BATCH // (2 * k))  # microbatches no larger than a domain half at uniform weights

        def small_step(run: StepAndProbe = run, small: int = small) -> None:
            run.step_in_microbatches(small)

        def small_measured(run: StepAndProbe = run, small: int = small) -> None:
            run.measured_step(small)

        def large_step(run: StepAndProbe = run) -> None:
            run.step_in_microbatches(BATCH, large=True)

        run.measured_step()
        steps, probes, unsketched, measured, small_steps, small_measured_steps = [], [], [], [], [], []
        large_steps: list[float] = []
        for _ in range(repeats):  # alternate, so load changes hit all alike
            large_steps += timed(large_step, 1)
            steps += timed(step, 2)
            probes += timed(probe, 1)
            unsketched += timed(probe_without_sketch, 1)
            measured += timed(run.measured_step, 2)
            small_steps += timed(small_step, 2)
            small_measured_steps += timed(small_measured, 2)
        step_s, probe_s = statistics.median(steps), statistics.median(probes)
        ratio = probe_s / step_s
        measured_s = statistics.median(measured)
        step_ratio = (measured_s - step_s) / step_s
        small_ratio = statistics.median(small_measured_steps) / statistics.median(small_steps) - 1
        rows.append({"domains": k, "samples_per_domain": BATCH // k,
                     "probe_samples_per_domain": int(run.probe_batch["domain"].numel()) // k,
                     "step_s": step_s, "probe_s": probe_s,
                     "probe_without_sketch_s": statistics.median(unsketched), "probe_over_step": ratio,
                     "predicted_overhead": {str(t0): ratio / t0 for t0 in INTERVALS},
                     "measured_step_s": measured_s, "measured_step_extra_over_step": step_ratio,
                     "predicted_overhead_step_statistics": {str(t0): step_ratio / t0 for t0 in INTERVALS},
                     "small_microbatch": small, "small_microbatch_step_s": statistics.median(small_steps),
                     "small_microbatch_measured_step_s": statistics.median(small_measured_steps),
                     "small_microbatch_measured_extra_over_step": small_ratio,
                     "predicted_overhead_step_statistics_small_microbatch": {
                         str(t0): small_ratio / t0 for t0 in INTERVALS},
                     "large_batch": LARGE_BATCH, "large_step_s": statistics.median(large_steps),
                     "probe_over_large_step": probe_s / statistics.median(large_steps),
                     "predicted_overhead_large_batch": {
                         str(t0): probe_s / statistics.median(large_steps) / t0 for t0 in INTERVALS}})
        print(f"K={k:2d}: step {step_s:.3f}s, probe {probe_s:.3f}s (no sketch "
              f"{rows[-1]['probe_without_sketch_s']:.3f}s), ratio {ratio:.2f}; a step taking the statistics "
              f"{measured_s:.3f}s (+{step_ratio:.1%}); with microbatches of {small}: +{small_ratio:.1%}; against a "
              f"step of {LARGE_BATCH} ({rows[-1]['large_step_s']:.3f}s) the probe costs "
              f"{rows[-1]['probe_over_large_step']:.2f} steps", flush=True)
    return rows


def memory(root: str) -> list[dict[str, Any]]:
    """Peak live bytes of a static step and of probe + step, for each K."""
    from pike_stream.probe import causal_lm_per_sample_loss

    rows = []
    for k in KS:
        run = StepAndProbe(root, k)
        model, optimizer, step, probe = run.model, run.optimizer, run.step, run.probe
        param_bytes = sum(p.numel() * p.element_size() for p in model.parameters())

        # A reference: one gradient of the largest half-domain the probe differentiates (one gradient buffer
        # and that half's activations); the probe's peak should exceed it by at most one gradient buffer.
        domains = run.probe_batch["domain"]
        largest = int(torch.bincount(domains).argmax())
        rows_of_half = torch.nonzero(domains == largest).flatten()
        rows_of_half = rows_of_half[rows_of_half.numel() // 2:]
        half = {key: value[rows_of_half] for key, value in run.probe_batch.items()}

        def one_gradient(model: Any = model, half: dict[str, Any] = half) -> None:
            torch.autograd.grad(causal_lm_per_sample_loss(model, half).mean(), list(model.parameters()))

        step()  # gradients and Adam's moments exist, as in the middle of a run
        peaks, state_bytes = {}, 0
        for name, fn in (("static_step", step), ("probe", probe), ("one_gradient", one_gradient),
                         ("probe_then_step", lambda probe=probe, step=step: (probe(), step()))):
            tracker = LiveTensorBytes()
            tracker.track(state_tensors(model, optimizer))
            state_bytes = tracker.current
            with tracker:
                fn()
            peaks[name] = tracker.peak
        extra = peaks["probe_then_step"] - peaks["static_step"]
        probe_extra = peaks["probe"] - state_bytes
        beyond_one_gradient = peaks["probe"] - peaks["one_gradient"]
        rows.append({"domains": k, "param_bytes": param_bytes, "state_bytes": state_bytes,
                     "peak_static_bytes": peaks["static_step"], "peak_with_probe_bytes": peaks["probe_then_step"],
                     "extra_bytes": extra, "extra_over_param_bytes": extra / param_bytes,
                     "probe_peak_above_state_bytes": probe_extra,
                     "probe_peak_above_state_over_param_bytes": probe_extra / param_bytes,
                     "largest_half_samples": int(rows_of_half.numel()),
                     "probe_peak_above_one_gradient_over_param_bytes": beyond_one_gradient / param_bytes})
        print(f"K={k:2d}: peak static {peaks['static_step'] / 2**20:.1f} MiB, with probe "
              f"{peaks['probe_then_step'] / 2**20:.1f} MiB (extra {extra / param_bytes:.2f} x parameter bytes); "
              f"the probe alone peaks {probe_extra / param_bytes:.2f} x parameter bytes above the training state, "
              f"{beyond_one_gradient / param_bytes:.2f} x above one gradient of its largest half", flush=True)
    return rows


def end_to_end(root: str, chunk: int, rounds: int) -> dict[str, Any]:
    """Composer training: static weights vs PiKE at the default T0 and at T0 = 100, in interleaved chunks.

    Two estimates of the overhead. The wall time of the chunks is the direct one, but on a shared machine
    load changes between chunks move it by more than the effect: a second static arm ("static_control")
    shows by how much. So also, from times measured inside the runs: ``(median bookkeeping of a step
    without probe + mean probe seconds / T0) / median static step``, where the bookkeeping is PiKE's own
    AFTER_DATALOADER work (weights, logging) and the probe seconds are the ``pike/probe_seconds`` logged by
    both PiKE arms (same model, batch size and K).
    """
    from composer import Callback, Event, Trainer
    from composer.loggers import InMemoryLogger

    from pike_stream import PiKE
    from pike_stream.controller import DEFAULT_UPDATE_INTERVAL

    class TimedPiKE(PiKE):
        """PiKE that records how long its AFTER_DATALOADER work takes on steps without a probe."""

        def __init__(self, **options: Any) -> None:
            super().__init__(**options)
            self.bookkeeping_s: list[float] = []

        def apply(self, event, state, logger) -> None:
            start = time.perf_counter()
            super().apply(event, state, logger)
            if event == Event.AFTER_DATALOADER and not self.controller.probes_at(int(state.timestamp.batch)):
                self.bookkeeping_s.append(time.perf_counter() - start)

    class StepTimes(Callback):
        """Seconds of each step, from BEFORE_DATALOADER to BATCH_END."""

        def __init__(self) -> None:
            self.seconds: list[float] = []

        def before_dataloader(self, state, logger) -> None:
            self._start = time.perf_counter()

        def batch_end(self, state, logger) -> None:
            self.seconds.append(time.perf_counter() - self._start)

    step_arm = f"pike_T0={DEFAULT_UPDATE_INTERVAL}_probe_samples=0"
    intervals = {"static": None, f"pike_T0={DEFAULT_UPDATE_INTERVAL}": DEFAULT_UPDATE_INTERVAL,
                 "pike_T0=100": 100, step_arm: DEFAULT_UPDATE_INTERVAL, "static_control": None}
    trainers, timers, algorithms, loggers = {}, {}, {}, {}
    for name, interval in intervals.items():
        model = make_composer_model()
        timers[name], loggers[name] = StepTimes(), InMemoryLogger()
        options = {"probe_samples": 0} if name == step_arm else {}
        algorithms[name] = [] if interval is None else [TimedPiKE(update_interval=interval, **options)]
        trainers[name] = Trainer(model=model, train_dataloader=PiKE.data_spec(make_mixer(root, END_TO_END_K)),
                                 max_duration="1ba", algorithms=algorithms[name], callbacks=[timers[name]],
                                 loggers=[loggers[name]], optimizers=torch.optim.Adam(model.parameters(), lr=1e-3),
                                 device="cpu", device_train_microbatch_size=BATCH, progress_bar=False,
                                 log_to_console=False, spin_dataloaders=False, seed=0)
        trainers[name].fit()  # a warm-up step (the PiKE arms probe step 0 here, outside the timed chunks)
        timers[name].seconds.clear()
    wall: dict[str, list[float]] = {name: [] for name in intervals}
    for r in range(rounds):
        for name, trainer in trainers.items():
            start = time.perf_counter()
            trainer.fit(duration=f"{chunk}ba")
            wall[name].append(time.perf_counter() - start)
        if r % max(1, rounds // 5) == 0 or r == rounds - 1:
            print(f"round {r}: " + ", ".join(f"{n} {t[-1] / chunk * 1e3:.0f} ms/step" for n, t in wall.items()),
                  flush=True)

    static_step = statistics.median(timers["static"].seconds)
    probes = [value for name, interval in intervals.items() if interval is not None and name != step_arm
              for ts, value in loggers[name].data.get("pike/probe_seconds", []) if int(ts.batch) > 0]
    probe_s = statistics.mean(probes)
    arms = {}
    for name, interval in intervals.items():
        if interval is None:
            continue
        bookkeeping = statistics.median(algorithms[name][0].bookkeeping_s)
        if name == step_arm:  # the cost is inside the update steps: their extra time over the other steps
            seconds = timers[name].seconds  # step i of the timed chunks is batch i + 1 (one warm-up step)
            update = [s for i, s in enumerate(seconds) if (i + 1) % interval == 0]
            other = [s for i, s in enumerate(seconds) if (i + 1) % interval != 0]
            extra = statistics.mean(update) - statistics.median(other)
            estimate = (bookkeeping + extra / interval) / static_step
        else:
            extra = probe_s
            estimate = (bookkeeping + probe_s / interval) / static_step
        arms[name] = {"update_interval": interval, "median_bookkeeping_s": bookkeeping,
                      "median_step_s": statistics.median(timers[name].seconds),
                      "overhead_from_step_times": estimate,
                      "wall_overhead": sum(wall[name]) / sum(wall["static"]) - 1}
        arms[name]["extra_s_per_update"] = extra
        print(f"{name}: overhead {estimate:+.2%} (bookkeeping {bookkeeping * 1e6:.0f} us/step, "
              f"{extra:.3f}s per update / {interval}); wall clock {arms[name]['wall_overhead']:+.1%}", flush=True)
    noise = sum(wall["static_control"]) / sum(wall["static"]) - 1
    print(f"wall clock of a second static arm: {noise:+.1%} (the machine's noise)", flush=True)
    return {"domains": END_TO_END_K, "chunk_steps": chunk, "rounds": rounds, "median_static_step_s": static_step,
            "probes_timed": len(probes), "mean_probe_s": probe_s, "probe_over_static_step": probe_s / static_step,
            "wall_seconds": {name: sum(t) for name, t in wall.items()}, "wall_noise_static_vs_static": noise,
            "pike": arms}


def machine() -> dict[str, Any]:
    return {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "python": platform.python_version(),
            "torch": torch.__version__, "load_average_at_start": os.getloadavg()}


def plot(result: dict[str, Any], path: str) -> None:
    """overhead.png: predicted step-time overhead (probe / step / T0) against T0 for every K, and the
    end-to-end overhead measured in Composer (K = END_TO_END_K) at the intervals it ran."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for row in result["probe_vs_step"]:
        intervals = sorted(int(t) for t in row["predicted_overhead"])
        ax.plot(intervals, [100 * row["predicted_overhead"][str(t)] for t in intervals], marker="o",
                label=f"K = {row['domains']}, predicted (a probe costs {row['probe_over_step']:.1f} steps)")
        if "predicted_overhead_step_statistics" in row:
            ax.plot(intervals, [100 * max(row["predicted_overhead_step_statistics"][str(t)], 1e-4) for t in intervals],
                    marker=".", ls="--", color=ax.lines[-1].get_color(),
                    label=f"K = {row['domains']}, probe_samples: 0 (a step costs "
                          f"{row['measured_step_extra_over_step']:+.0%})")
    e2e = result["end_to_end"]
    points = sorted((arm["update_interval"], 100 * arm["wall_overhead"]) for arm in e2e["pike"].values())
    ax.scatter(*zip(*points), marker="x", s=60, color="black", zorder=3,
               label=f"measured in Composer, K = {e2e['domains']} (wall time)")
    ax.axhline(2.0, color="grey", lw=0.8, ls="--")
    ax.text(10, 2.2, "2% goal", fontsize=8, color="grey")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("update interval T0 (steps)")
    ax.set_ylabel("step-time overhead of PiKE (%)")
    ax.set_title("PiKE's overhead vs static weights")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--chunk", type=int, default=20, help="steps per timed chunk (end to end)")
    parser.add_argument("--rounds", type=int, default=8, help="interleaved rounds of chunks (end to end)")
    parser.add_argument("--repeats", type=int, default=5, help="probe timings per K (probe vs step)")
    parser.add_argument("--quick", action="store_true", help="a smoke run: 2 rounds of 10 steps, 2 repeats")
    parser.add_argument("--out", default=os.path.join(ROOT, "bench", "results", "overhead.json"))
    parser.add_argument("--plot-only", action="store_true", help="redraw overhead.png from the JSON at --out")
    args = parser.parse_args(argv)
    png = os.path.splitext(args.out)[0] + ".png"
    if args.plot_only:
        with open(args.out) as f:
            result = json.load(f)
        plot(result, png)
        print(f"wrote {png}")
        return result
    if args.quick:
        args.chunk, args.rounds, args.repeats = 10, 2, 2
    torch.set_num_threads(args.threads)

    from pike_stream.controller import DEFAULT_UPDATE_INTERVAL

    started = time.perf_counter()
    result: dict[str, Any] = {
        "command": " ".join(["python", "bench/bench_overhead.py",
                             *map(shlex.quote, sys.argv[1:] if argv is None else argv)]),
        "machine": machine(),
        "settings": {"batch": BATCH, "large_batch": LARGE_BATCH, "seq_len": SEQ_LEN, "vocab": VOCAB, **MODEL,
                     "optimizer": "Adam",
                     "default_update_interval": DEFAULT_UPDATE_INTERVAL, "threads": args.threads,
                     "chunk": args.chunk, "rounds": args.rounds, "repeats": args.repeats},
    }
    with tempfile.TemporaryDirectory() as root:
        for i in range(max(KS)):
            write_domain(os.path.join(root, f"d{i:02d}"), f"d{i:02d}", seed=i)
        print("probe vs step", flush=True)
        result["probe_vs_step"] = probe_vs_step(root, args.repeats)
        print("memory", flush=True)
        result["memory"] = memory(root)
        print("end to end", flush=True)
        result["end_to_end"] = end_to_end(root, args.chunk, args.rounds)
    result["parameters"] = sum(p.numel() for p in make_network().parameters())
    result["seconds"] = time.perf_counter() - started
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)
    plot(result, png)
    print(f"wrote {args.out} and {png} in {result['seconds']:.0f}s")
    return result


if __name__ == "__main__":
    main()
