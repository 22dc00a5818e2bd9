"""``pike-stream audit RUN_FOLDER``: what a run sampled, replayed from its saved config and logged weights.

The mixer's global batch at step t is a pure function of the seed, the domains' ``index.json``, the global
batch size and the weights in force at steps 0 … t (:mod:`pike_stream.mixer.mixer`). A run folder keeps all
of them: ``config.json`` (seed, batch size and its ramp, domains), ``metrics.jsonl`` (``pike/weight/<domain>``
and ``pike/batch_size`` of every step, as trained: records a resumed run redid are dropped; the logged sizes
also hold across a resume that changed the batch size, which a run without PiKE does not log). So the audit
rebuilds the mixer from the config — it opens each domain's ``index.json`` and manifest, downloading them if
remote, and never reads a shard — sets the logged weights (and sizes) step by step and composes each batch
with the mixer's own code. It reports, for a range of steps:

* per domain, the samples drawn, the domain epochs they came from, the weights in force, and the
  cumulative count against ``Σ_t w_k(t)·B`` (the fidelity bound: within 2 over any run, README "The mixer");
* when the run kept batch logs (``batch_log: true``), whether the replayed batches equal the logged ones;
* with ``--ids STEP``, the domain, sample id and domain epoch of every sample of that step's global batch
  ("which data did step 41,230 see?").

Exit status 0 when every check holds, 1 when one fails (named on stderr), 2 for an unusable run folder.
A run without PiKE (no ``algorithms.pike``) keeps the config's weights (or uniform) at every step.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["Audit", "FIDELITY_BOUND", "audit_run", "main"]

FIDELITY_BOUND = 2.0
"""The mixer's promise: a domain's cumulative draws stay within this of ``Σ_t w_k(t)·B`` (README "The mixer")."""

WEIGHT_PREFIX = "pike/weight/"
BATCH_SIZE_KEY = "pike/batch_size"


class AuditError(ValueError):
    """The run folder cannot be audited (the message names the file and what is missing)."""


@dataclass
class Audit:
    """The replay of steps ``first … last`` of a run (cumulative quantities count from step 0).

    Attributes:
        domains: the domain names, in the mixer's order.
        first, last: the audited steps (inclusive).
        drawn: ``[K]`` samples drawn from each domain in the range.
        expected: ``[K]`` ``Σ_t w_k(t)·B`` over the range.
        max_deviation: ``[K]`` the largest ``|cumulative draws − cumulative Σ w·B|`` at any step ≤ ``last``.
        epochs: ``[K]`` the (first, last) domain epoch drawn from in the range (None: nothing drawn).
        weight_range: ``[K]`` the (lowest, highest) weight in force in the range.
        batch_log: ``"match"``, ``"differ at step s"``, or ``"absent"``.
        batches: ``{step: (domain index, sample id, epoch)}`` for the steps asked for with ``ids``.
    """

    domains: list[str]
    first: int
    last: int
    drawn: np.ndarray
    expected: np.ndarray
    max_deviation: np.ndarray
    epochs: list[tuple[int, int] | None]
    weight_range: list[tuple[float, float]]
    batch_log: str
    batches: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = field(default_factory=dict)

    @property
    def fidelity_holds(self) -> bool:
        return bool((self.max_deviation <= FIDELITY_BOUND + 1e-9).all())

    @property
    def ok(self) -> bool:
        return self.fidelity_holds and not self.batch_log.startswith("differ")


def _read_config(folder: Path) -> Any:
    from pike_stream.train.config import ConfigError, config_from_dict
    from pike_stream.train.preflight import CONFIG_FILENAME

    path = folder / CONFIG_FILENAME
    if not path.is_file():
        raise AuditError(f"no {CONFIG_FILENAME} in {folder}: is this the run folder of `pike-stream train`?")
    try:
        return config_from_dict(json.loads(path.read_text()))
    except (json.JSONDecodeError, ConfigError) as error:
        raise AuditError(f"{path}: {error}") from error


def _logged_weights(folder: Path, names: list[str]) -> tuple[dict[int, np.ndarray], dict[int, int], int]:
    """``{step: weights}`` and ``{step: global batch size}`` logged by PiKE, and the last step the run trained
    (from any per-step record)."""
    from pike_stream.train.records import read_metrics

    try:
        records = read_metrics(folder)
    except FileNotFoundError as error:
        raise AuditError(str(error)) from error
    weights: dict[int, np.ndarray] = {}
    sizes: dict[int, int] = {}
    last = -1
    for record in records:
        step = int(record["step"])
        if "loss/train/total" in record or any(k.startswith(WEIGHT_PREFIX) for k in record):
            last = max(last, step)
        logged = sorted(k.removeprefix(WEIGHT_PREFIX) for k in record if k.startswith(WEIGHT_PREFIX))
        if logged and logged != sorted(names):
            raise AuditError(f"{folder}/metrics.jsonl: step {step} logs the weights of domains {logged}, "
                             f"config.json has {sorted(names)}: the run changed its domains on resume "
                             f"(allow_domain_changes), and the audit replays runs with one domain list")
        if logged:
            weights[step] = np.array([float(record[f"{WEIGHT_PREFIX}{n}"]) for n in names])
        if record.get(BATCH_SIZE_KEY) is not None:
            sizes[step] = int(record[BATCH_SIZE_KEY])
    return weights, sizes, last


def audit_run(folder: str | Path, *, first: int = 0, last: int | None = None,
              ids: list[int] | None = None) -> Audit:
    """Replay a run's mixture for steps ``first … last`` (default: every step it trained); see the module doc.

    Raises:
        AuditError: the run folder lacks what the replay needs, or the range is outside the run.
    """
    from pike_stream.mixer import Domain, PiKEStreamingMixer
    from pike_stream.train.records import read_batch_log

    folder = Path(folder)
    cfg = _read_config(folder)
    names = [d.name for d in cfg.train_loader.domains]
    logged, logged_sizes, trained = _logged_weights(folder, names)
    last = trained if last is None else last
    if trained < 0:
        raise AuditError(f"{folder}/metrics.jsonl records no trained step")
    if not 0 <= first <= last <= trained:
        raise AuditError(f"steps {first}:{last} are outside the run's steps 0:{trained}")
    ids = sorted(set(ids or []))
    outside = [s for s in ids if not 0 <= s <= trained]
    if outside:
        raise AuditError(f"--ids {outside[0]} is outside the run's steps 0:{trained}")
    if cfg.algorithms.pike is not None and len(logged) != trained + 1:
        gaps = [s for s in range(trained + 1) if s not in logged]
        raise AuditError(f"{folder}/metrics.jsonl has no pike/weight/* for steps {gaps[:5]}"
                         f"{' …' if len(gaps) > 5 else ''}: the replay needs the weights of every step")
    try:
        batch_log = read_batch_log(folder)
    except FileNotFoundError:
        batch_log = None

    tl = cfg.train_loader
    domains = [Domain(**asdict(d)) for d in tl.domains]
    with PiKEStreamingMixer(domains, cfg.global_train_batch_size, seed=cfg.seed, weights=tl.weights, rank=0,
                            world_size=1, shuffle_algo=tl.shuffle_algo, read_ahead=0, read_ahead_workers=1,
                            batch_ramp=cfg.batch_ramp, partitions=tl.partitions) as mixer:
        sizes = np.array(list(mixer.domain_sizes.values()))
        k = len(names)
        drawn, expected = np.zeros(k, np.int64), np.zeros(k)
        cumulative_drawn, cumulative_expected = np.zeros(k), np.zeros(k)
        deviation = np.zeros(k)
        epochs: list[list[int]] = [[] for _ in range(k)]
        low, high = np.full(k, np.inf), np.full(k, -np.inf)
        verdict = "absent" if batch_log is None else "match"
        batches = {}
        for step in range(last + 1):
            if step in logged:
                mixer.set_weights(logged[step])
            weights = np.array(list(mixer.weights.values()))
            before = np.array(list(mixer.consumed.values()))
            batch = logged_sizes.get(step, mixer.batch_size)  # logged: also across a resume that changed it
            domain, sample = mixer.compose(batch)
            counts = np.bincount(domain, minlength=k)
            cumulative_drawn += counts
            cumulative_expected += weights * batch
            deviation = np.maximum(deviation, np.abs(cumulative_drawn - cumulative_expected))
            if step < first:
                continue
            drawn += counts
            expected += weights * batch
            low, high = np.minimum(low, weights), np.maximum(high, weights)
            for d in np.flatnonzero(counts):
                epochs[d] += [int(before[d] // sizes[d]), int((before[d] + counts[d] - 1) // sizes[d])]
            if batch_log is not None and verdict == "match":
                logged_batch = batch_log.get(step)
                if logged_batch is None or not (np.array_equal(logged_batch[0], domain)
                                                and np.array_equal(logged_batch[1], sample)):
                    verdict = f"differ at step {step}"
            if step in ids:
                position = np.concatenate([np.arange(c) for c in counts]) + before[domain]
                batches[step] = (domain, sample, position // sizes[domain])
    return Audit(names, first, last, drawn, expected, deviation,
                 [(min(e), max(e)) if e else None for e in epochs],
                 [(float(a), float(b)) for a, b in zip(low, high)], verdict, batches)


def format_audit(audit: Audit) -> str:
    """The audit as the command prints it: a table per domain, the checks, then the requested batches."""
    lines = [f"steps {audit.first}–{audit.last}", "",
             f"{'domain':<16} {'drawn':>9} {'Σ w·B':>11} {'max |dev|':>9}  {'epochs':<9} weights",
             "-" * 72]
    for k, name in enumerate(audit.domains):
        epochs = audit.epochs[k]
        span = "—" if epochs is None else (f"{epochs[0]}" if epochs[0] == epochs[1] else f"{epochs[0]}–{epochs[1]}")
        low, high = audit.weight_range[k]
        lines.append(f"{name:<16} {audit.drawn[k]:>9d} {audit.expected[k]:>11.2f} {audit.max_deviation[k]:>9.3f}  "
                     f"{span:<9} {low:.4f}–{high:.4f}")
    lines += ["", f"fidelity (cumulative draws within {FIDELITY_BOUND:g} of Σ w·B from step 0): "
                  f"{'holds' if audit.fidelity_holds else 'VIOLATED'}",
              f"batch log: {audit.batch_log}"]
    for step, (domain, sample, epoch) in sorted(audit.batches.items()):
        lines += ["", f"step {step}: {len(domain)} samples (domain, sample id, domain epoch)"]
        lines += [f"  {audit.domains[d]} {s} {e}" for d, s, e in zip(domain, sample, epoch)]
    return "\n".join(lines)


def _as_json(audit: Audit) -> dict[str, Any]:
    return {
        "first": audit.first, "last": audit.last, "fidelity_bound": FIDELITY_BOUND,
        "fidelity_holds": audit.fidelity_holds, "batch_log": audit.batch_log,
        "domains": {name: {"drawn": int(audit.drawn[k]), "expected": float(audit.expected[k]),
                           "max_deviation": float(audit.max_deviation[k]),
                           "epochs": _pair(audit.epochs[k]),
                           "weight_range": list(audit.weight_range[k])}
                    for k, name in enumerate(audit.domains)},
        "batches": {str(step): [{"domain": audit.domains[d], "sample_id": int(s), "epoch": int(e)}
                                for d, s, e in zip(*batch)] for step, batch in sorted(audit.batches.items())},
    }


def _pair(span: tuple[int, int] | None) -> list[int] | None:
    return None if span is None else list(span)


def _steps(value: str) -> tuple[int, int | None]:
    """``A:B`` (inclusive), ``A:`` or ``A``."""
    first, sep, last = value.partition(":")
    try:
        return int(first or 0), (int(last) if last else None) if sep else int(first)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected FIRST:LAST (e.g. 100:200), got {value!r}") from None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="pike-stream audit", description=(__doc__ or "").splitlines()[0])
    parser.add_argument("run_folder", help="a run folder of `pike-stream train` (config.json, metrics.jsonl)")
    parser.add_argument("--steps", type=_steps, default=(0, None), metavar="FIRST:LAST",
                        help="the steps to report (inclusive; default: all)")
    parser.add_argument("--ids", type=int, action="append", default=[], metavar="STEP",
                        help="also list the samples of this step's global batch (repeatable)")
    parser.add_argument("--json", action="store_true", help="print the audit as JSON")
    args = parser.parse_args(argv)
    try:
        audit = audit_run(args.run_folder, first=args.steps[0], last=args.steps[1], ids=args.ids)
    except Exception as error:  # noqa: BLE001 - one line for the user, whatever failed (data, S3, config)
        print(f"pike-stream audit: error: {error}", file=sys.stderr)
        return 2
    print(json.dumps(_as_json(audit), indent=1) if args.json else format_audit(audit))
    if not audit.ok:
        problems = ([] if audit.fidelity_holds else ["fidelity violated"]) + (
            [f"replayed batches {audit.batch_log} from the batch log"] if audit.batch_log.startswith("differ") else [])
        print(f"pike-stream audit: {'; '.join(problems)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
