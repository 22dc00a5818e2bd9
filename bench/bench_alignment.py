"""Do a domain's training gradients still lower its held-out loss? A diagnostic of PiKE's statistics.

PiKE's ``G_k = ⟨g_A, g_B⟩`` estimates ``‖∇L_k‖²`` from two halves of *training* samples of domain k. PiKE's
objective is the held-out loss. While a domain's training data is fresh the two agree in expectation; once a
small domain repeats (several epochs over a run), part of its training gradient fits the samples seen before
and does not lower its held-out loss. ``⟨g_A, g_V⟩``, with ``g_V`` from held-out samples, estimates
``⟨∇L_k^train, ∇L_k^val⟩``: the first-order fall of domain k's held-out loss per unit step on its training
data, which is what PiKE means by ``G_k``. Both are unbiased (independent halves).

This trains the convergence benchmarks' model (``bench/runs.py``: 2-layer GPT-2, batches of 64 × 64 bytes,
cosine schedule) at static uniform weights and, every ``--every`` steps, estimates per domain from fresh
samples (``--samples`` training samples in two halves, and as many held-out samples in two halves):

* ``G_train = ⟨g_A, g_B⟩`` (PiKE's estimate today), ``G_gen = (⟨g_A, g_V1⟩ + ⟨g_B, g_V2⟩) / 2`` and
  ``G_val = ⟨g_V1, g_V2⟩``;
* the mean loss of those training and held-out samples.

The probes read their own mixers (a probe order of the training split, and the held-out split), so the
training run is the same as without them. It writes ``bench/results/alignment.json`` with every estimate and,
per domain and quarter of the run, ``Σ G_gen / Σ G_train`` (1: the training gradient is as useful on held-out
data as PiKE assumes; below 1: part of it fits repeated samples). A diagnostic: it changes nothing in the
library and chooses no setting.

    python bench/corpora.py unequal UNEQUAL
    python bench/bench_alignment.py --data UNEQUAL/mds --corpus unequal --seed 0 [--work runs/alignment]
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402

from corpora import CORPORA  # noqa: E402
from runs import RESULTS, build_config, check_data  # noqa: E402

__all__ = ["main"]


def _make_probe_callback(names: list[str], data: str, seed: int, every: int, samples: int,
                         records: list[dict[str, Any]]) -> Any:
    import torch
    from composer.core import Callback

    from pike_stream.mixer import Domain, PiKEStreamingMixer
    from pike_stream.probe import causal_lm_per_sample_loss

    def mixer(split: str) -> PiKEStreamingMixer:
        domains = [Domain(name=n, local=os.path.join(data, n), split=split) for n in names]
        return PiKEStreamingMixer(domains, len(names), seed=seed + 1000, rank=0, world_size=1, read_ahead=0)

    train_probe, val_probe = mixer("train"), mixer("val")
    half = samples // 2

    class Alignment(Callback):
        def batch_end(self, state: Any, logger: Any) -> None:
            step = int(state.timestamp.batch)
            if step % every:
                return
            model = state.model
            params = [p for p in model.parameters() if p.requires_grad]
            was_training = model.training
            model.eval()  # no dropout: the estimates are of the same function on both splits
            try:
                train, val = train_probe.probe_batch(samples), val_probe.probe_batch(samples)
                record: dict[str, Any] = {"step": step}
                for k, name in enumerate(names):
                    grads, losses = [], []
                    for batch in (train, val):
                        rows = torch.nonzero(batch["domain"] == k).flatten()
                        ids = batch["input_ids"][rows]
                        for part in (ids[:half], ids[half:2 * half]):
                            loss = causal_lm_per_sample_loss(model, {"input_ids": part}).mean()
                            grad = torch.autograd.grad(loss, params)
                            grads.append(torch.cat([g.reshape(-1) for g in grad]).double())
                            losses.append(float(loss))
                    g_a, g_b, g_v1, g_v2 = grads
                    record[name] = {"G_train": float(g_a @ g_b), "G_gen": float((g_a @ g_v1 + g_b @ g_v2) / 2),
                                    "G_val": float(g_v1 @ g_v2), "loss_train": (losses[0] + losses[1]) / 2,
                                    "loss_val": (losses[2] + losses[3]) / 2}
                records.append(record)
            finally:
                model.train(was_training)

        def close(self, state: Any, logger: Any) -> None:
            train_probe.close()
            val_probe.close()

    return Alignment()


def _quarters(records: list[dict[str, Any]], names: list[str], steps: int) -> dict[str, list[dict[str, float]]]:
    out: dict[str, list[dict[str, float]]] = {}
    for name in names:
        rows = []
        for q in range(4):
            low, high = q * steps / 4, (q + 1) * steps / 4
            inside = [r[name] for r in records if low < r["step"] <= high]
            g_train = float(np.sum([x["G_train"] for x in inside]))
            g_gen = float(np.sum([x["G_gen"] for x in inside]))
            rows.append({"steps": f"{int(low) + 1}-{int(high)}", "probes": len(inside),
                         "gen_over_train": g_gen / g_train if g_train > 0 else float("nan"),
                         "loss_val_minus_train": float(np.mean([x["loss_val"] - x["loss_train"] for x in inside]))})
        out[name] = rows
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="a corpus's mds/ folder (bench/corpora.py)")
    parser.add_argument("--corpus", choices=sorted(CORPORA), default="unequal")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--lr", type=float, default=6e-3, help="AdamW's peak learning rate (bench_noise's)")
    parser.add_argument("--every", type=int, default=10, help="probe every this many steps")
    parser.add_argument("--samples", type=int, default=32, help="samples per domain and split at each probe")
    parser.add_argument("--work", default=os.path.join("runs", "alignment"))
    parser.add_argument("--out", default=str(RESULTS / "alignment.json"))
    args = parser.parse_args(argv)
    names = list(CORPORA[args.corpus])
    check_data(parser, args.data, tuple(names), "--data", args.corpus)

    import torch

    from pike_stream.train.builder import build_trainer

    torch.set_num_threads(1)
    name = f"alignment-{args.corpus}-s{args.seed}"
    cfg = build_config(name=name, data=args.data, work=args.work, seed=args.seed, steps=args.steps,
                       eval_every=args.steps // 10, eval_split="val", pike={"strategy": "uniform"},
                       domain_names=tuple(names), lr=args.lr)
    records: list[dict[str, Any]] = []
    began = time.perf_counter()
    trainer = build_trainer(cfg)
    trainer.state.callbacks.append(_make_probe_callback(names, args.data, args.seed, args.every, args.samples,
                                                        records))
    trainer.fit()
    trainer.close()
    result = {
        "benchmark": "alignment",
        "command": "python " + " ".join(shlex.quote(a) for a in [sys.argv[0], *(argv or sys.argv[1:])]),
        "settings": {"corpus": args.corpus, "seed": args.seed, "steps": args.steps, "lr": args.lr,
                     "every": args.every, "samples": args.samples, "domains": names, "weights": "uniform"},
        "seconds": round(time.perf_counter() - began, 1),
        "quarters": _quarters(records, names, args.steps),
        "probes": records,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    for domain, rows in result["quarters"].items():
        cells = ", ".join(f"{r['steps']}: {r['gen_over_train']:.2f} (gap {r['loss_val_minus_train']:+.3f})"
                          for r in rows)
        print(f"{domain:>6}  Σ G_gen / Σ G_train by quarter: {cells}")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
