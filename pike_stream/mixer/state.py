"""The mixer's checkpoint state: small, versioned, keyed by domain name, fingerprinted against the data.

Everything else (which samples each batch holds) is recomputed from it: per-domain cursors, rounding
carries and the weights in force, the cursors of the per-domain probe orders (version 2; a version-1 state,
made before probe batches existed, resumes with them at 0), plus what must match for that recomputation to
be the same (seed, shuffle, global batch size, each domain's manifest fingerprint). Version 3 adds the
batch-size ramp (an older state was made with one fixed batch size) and the retired domains: a domain left
out of a resumed run (with ``allow_domain_changes``) keeps its entry there, so adding it back continues its
order where it stopped. The samples composed so far, which decide the next batch size and match Composer's
sample count, are the sum of all cursors, retired ones included. Version 4 adds, per domain, the segments of a
domain whose data grew (``grown`` for the training order, ``probe_grown`` for the probe order; see
:mod:`pike_stream.mixer.order`): a resume with ``allow_data_growth`` accepts a domain whose saved fingerprint is
that of a prefix of its shards, and its new samples start at the next epoch boundary of each order. Version 5
adds ``partitions`` (None, or the partition count of :mod:`pike_stream.mixer.partitions`) and, with
partitions, each domain's cursors per partition (``partition_consumed``, ``partition_probed``; they sum to
its cursors). A resume needs the same partition count; the node count is free (any that divides it).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pike_stream.mixer.batch_size import BatchRamp
from pike_stream.strategies.simplex import with_added

__all__ = ["MixerState", "MixerStateError", "STATE_FORMAT", "STATE_VERSION"]

STATE_FORMAT = "pike_stream.mixer"
STATE_VERSION = 5
_READABLE_VERSIONS = (1, 2, 3, 4, 5)
Segments = list[tuple[int, int]]
"""A grown domain's earlier sizes: ``(shards, until)`` per segment (:meth:`DomainOrder.set_grown`)."""


class MixerStateError(ValueError):
    """A checkpoint's mixer state cannot be resumed with this mixer (the message says which setting differs)."""


@dataclass
class MixerState:
    """Where the mixer stands before composing batch ``step`` (0-based)."""

    step: int
    consumed: np.ndarray  # [K] int64: samples drawn from each domain so far (its cursor)
    carry: np.ndarray     # [K] float64: rounding remainders owed to each domain
    weights: np.ndarray   # [K] float64: the weights that will compose batch ``step``
    probed: np.ndarray    # [K] int64: samples drawn from each domain's probe order so far (its probe cursor)
    retired: dict[str, dict[str, Any]] = field(default_factory=dict)  # name → its entry when it left the run
    grown: list[Segments] = field(default_factory=list)  # [K] earlier sizes of the training order (empty: none)
    probe_grown: list[Segments] = field(default_factory=list)  # [K] the same for the probe order
    partitions: int | None = None  # the partition count (None: no partitions)
    part_consumed: np.ndarray | None = None  # [K, P] int64: samples drawn from each domain's partitions
    part_probed: np.ndarray | None = None    # [K, P] int64: the same for the probe orders

    def __post_init__(self) -> None:
        k = len(self.consumed)
        self.grown = self.grown or [[] for _ in range(k)]
        self.probe_grown = self.probe_grown or [[] for _ in range(k)]
        if self.partitions is not None:
            empty = np.zeros((k, self.partitions), dtype=np.int64)
            self.part_consumed = empty.copy() if self.part_consumed is None else self.part_consumed
            self.part_probed = empty.copy() if self.part_probed is None else self.part_probed

    @property
    def samples(self) -> int:
        """Samples composed in batches 0 … step − 1 (all domains, all ranks): every cursor's, retired ones too."""
        return int(self.consumed.sum()) + sum(int(entry["consumed"]) for entry in self.retired.values())

    def copy(self) -> MixerState:
        return MixerState(self.step, self.consumed.copy(), self.carry.copy(), self.weights.copy(),
                          self.probed.copy(), {name: dict(entry) for name, entry in self.retired.items()},
                          [list(g) for g in self.grown], [list(g) for g in self.probe_grown], self.partitions,
                          None if self.part_consumed is None else self.part_consumed.copy(),
                          None if self.part_probed is None else self.part_probed.copy())

    def to_dict(self, *, names: list[str], fingerprints: list[str], global_batch_size: int,
                ramp: BatchRamp | None, seed: int, shuffle: dict[str, Any]) -> dict[str, Any]:
        return {
            "format": STATE_FORMAT,
            "version": STATE_VERSION,
            "step": int(self.step),
            "global_batch_size": int(global_batch_size),
            "rampup_batch_size": None if ramp is None else ramp.to_dict(),
            "seed": int(seed),
            "shuffle": dict(shuffle),
            "domain_order": list(names),
            "partitions": self.partitions,
            "domains": {name: self._domain_entry(k, fingerprints[k]) for k, name in enumerate(names)},
            "retired": {name: dict(entry) for name, entry in self.retired.items()},
        }

    def _domain_entry(self, k: int, fingerprint: str) -> dict[str, Any]:
        entry = {"consumed": int(self.consumed[k]), "carry": float(self.carry[k]), "weight": float(self.weights[k]),
                 "probed": int(self.probed[k]), "fingerprint": fingerprint,
                 "grown": [[int(n), int(u)] for n, u in self.grown[k]],
                 "probe_grown": [[int(n), int(u)] for n, u in self.probe_grown[k]]}
        if self.part_consumed is not None and self.part_probed is not None:
            entry["partition_consumed"] = [int(c) for c in self.part_consumed[k]]
            entry["partition_probed"] = [int(c) for c in self.part_probed[k]]
        return entry

    @classmethod
    def from_dict(cls, obj: Any, *, names: list[str], fingerprints: list[str], global_batch_size: int,
                  ramp: BatchRamp | None, seed: int, shuffle: dict[str, Any], partitions: int | None = None,
                  allow_batch_size_change: bool = False, allow_domain_changes: bool = False,
                  initial_weights: np.ndarray | None = None,
                  shard_sizes: Sequence[np.ndarray] | None = None,
                  prefix_shards: Callable[[int, str], int | None] | None = None) -> MixerState:
        """Check a saved state against this mixer's settings and data, then load it.

        A different global batch size or ramp is refused unless ``allow_batch_size_change``: then the
        batches from the saved step on follow this mixer's sizes (cursors, carries and weights carry over).

        Other domains than the checkpoint's are refused unless ``allow_domain_changes``. Then a domain of the
        checkpoint missing here is retired (its entry kept in :attr:`retired`); a domain here that the
        checkpoint lacks starts at cursor 0, or, if it was retired, continues from its entry. Added domains
        (new or back) take their share of ``initial_weights`` (this run's initial mixture); the continuing
        domains keep their saved proportions in the rest; every carry restarts at 0, so the fidelity bound
        counts from the change.

        A domain whose fingerprint differs is refused, unless ``prefix_shards`` (given with ``allow_data_growth``)
        finds the saved fingerprint to be that of the domain's first ``n`` shards: its data grew. Then each of
        its two orders keeps the saved size up to its next epoch boundary and walks every shard from there
        (segments in :attr:`grown` and :attr:`probe_grown`; ``shard_sizes`` gives each domain's shard sizes).

        A malformed state (a field missing or of the wrong type, e.g. a hand-edited or truncated checkpoint)
        is a :class:`MixerStateError` naming the field (``domains.en.consumed``), never a bare KeyError.
        """
        if not isinstance(obj, dict) or obj.get("format") != STATE_FORMAT:
            raise MixerStateError(f"not a PiKEStreamingMixer state (expected format {STATE_FORMAT!r}, got "
                                  f"{obj.get('format') if isinstance(obj, dict) else type(obj).__name__!r})")
        if obj.get("version") not in _READABLE_VERSIONS:
            raise MixerStateError(f"mixer state version {obj.get('version')!r} is not supported "
                                  f"(this pike_stream reads versions {', '.join(map(str, _READABLE_VERSIONS))})")
        version = obj["version"]
        saved_batch = _field(obj, "global_batch_size", int)
        saved_ramp = _saved_ramp(obj) if version >= 3 else None
        if (saved_batch, saved_ramp) != (global_batch_size, ramp) and not allow_batch_size_change:
            raise MixerStateError(
                f"the checkpoint was made with global_batch_size={saved_batch}"
                f"{'' if saved_ramp is None else f' ramped up by {saved_ramp.to_dict()}'}, this run has "
                f"{global_batch_size}{'' if ramp is None else f' ramped up by {ramp.to_dict()}'}: the batches "
                f"would differ (to continue with the new size from the saved step, allow_batch_size_change)")
        saved_seed = _field(obj, "seed", int)
        if saved_seed != seed:
            raise MixerStateError(f"the checkpoint was made with seed={saved_seed}, this run has seed={seed}")
        saved_shuffle = _field(obj, "shuffle", dict)
        if saved_shuffle != shuffle:
            raise MixerStateError(f"the checkpoint was made with shuffle {saved_shuffle}, this run has {shuffle}")
        saved_partitions = obj.get("partitions") if version >= 5 else None
        if saved_partitions != partitions:
            raise MixerStateError(f"the checkpoint was made with partitions={saved_partitions}, this run has "
                                  f"partitions={partitions}: the batches would differ (the node count may change, "
                                  f"the partition count may not)")
        saved = _field(obj, "domains", dict)
        retired = _field(obj, "retired", dict) if version >= 3 else {}
        if set(saved) != set(names) and not allow_domain_changes:
            raise MixerStateError(f"the checkpoint's domains {sorted(saved)} differ from this run's {sorted(names)} "
                                  f"(missing: {sorted(set(saved) - set(names))}, new: "
                                  f"{sorted(set(names) - set(saved))}); to add or retire domains on resume, "
                                  f"allow_domain_changes")
        order = _field(obj, "domain_order", list)
        if order != names and not allow_domain_changes:
            raise MixerStateError(f"domains are listed in a different order than in the checkpoint: "
                                  f"{order} there, {names} here")
        pool = {**{n: _field(retired, n, dict, "retired.") for n in retired},
                **{n: _field(saved, n, dict, "domains.") for n in saved}}
        known = [n for n in names if n in pool]

        def column(key: str, kind: type, *, default: Any = None) -> dict[str, Any]:
            where = {n: "domains." if n in saved else "retired." for n in known}
            return {n: _field(pool[n], key, kind, f"{where[n]}{n}.", default=default if version < 2 else None)
                    for n in known}

        saved_fingerprints = column("fingerprint", str)
        changed = [n for n, fp in zip(names, fingerprints) if n in known and saved_fingerprints[n] != fp]
        prefix = {n: prefix_shards(names.index(n), saved_fingerprints[n]) for n in changed} if prefix_shards else {}
        if [n for n in changed if prefix.get(n) is None]:
            raise MixerStateError(
                f"the data of domain(s) {[n for n in changed if prefix.get(n) is None]} changed since the checkpoint "
                f"(manifest fingerprint differs"
                + ("; the saved data is not a prefix of the shards either" if prefix_shards else "")
                + "); resuming would not reproduce the run"
                + ("" if prefix_shards else " (a domain whose shards were appended to: allow_data_growth)"))
        consumed, probed = column("consumed", int), column("probed", int, default=0)
        carry, weight = column("carry", float), column("weight", float)
        grown = {n: _segments(pool[n], "grown", n) for n in known}
        probe_grown = {n: _segments(pool[n], "probe_grown", n) for n in known}
        state = cls(step=_field(obj, "step", int),
                    consumed=np.array([consumed.get(n, 0) for n in names], dtype=np.int64),
                    carry=np.array([carry.get(n, 0.0) for n in names], dtype=np.float64),
                    weights=np.array([weight.get(n, 0.0) for n in names], dtype=np.float64),
                    probed=np.array([probed.get(n, 0) for n in names], dtype=np.int64),
                    retired={n: dict(entry) for n, entry in pool.items() if n not in names},
                    grown=[grown.get(n, []) for n in names], probe_grown=[probe_grown.get(n, []) for n in names],
                    partitions=partitions)
        if partitions is not None:
            for k, n in enumerate(names):
                if n in known:
                    assert state.part_consumed is not None and state.part_probed is not None
                    state.part_consumed[k] = _partition_cursors(pool[n], "partition_consumed", n, partitions,
                                                                int(state.consumed[k]))
                    state.part_probed[k] = _partition_cursors(pool[n], "partition_probed", n, partitions,
                                                              int(state.probed[k]))
        for n, shards in prefix.items():
            k = names.index(n)
            assert shards is not None and shard_sizes is not None
            size = int(np.asarray(shard_sizes[k])[:shards].sum())
            state.grown[k] = grown_segments(state.grown[k], shards, size, int(state.consumed[k]))
            state.probe_grown[k] = grown_segments(state.probe_grown[k], shards, size, int(state.probed[k]))
        if set(saved) != set(names):
            share = np.ones(len(names)) if initial_weights is None else initial_weights
            state.weights = with_added(state.weights, np.array([n not in saved for n in names]), share)
            state.carry[:] = 0.0
        _check_values(state, names)
        return state


def grown_segments(segments: Segments, shards: int, size: int, cursor: int) -> Segments:
    """The segments of an order whose data grew from ``shards`` shards (``size`` samples an epoch) to more, at
    ``cursor``: the saved size runs on to its next epoch boundary (none if the cursor has not left the earlier
    segments, or has drawn nothing from the current one), then every shard."""
    start = segments[-1][1] if segments else 0
    if cursor <= start:
        return list(segments)
    return [*segments, (shards, start + -(-(cursor - start) // size) * size)]


def _segments(entry: dict[str, Any], key: str, name: str) -> Segments:
    value = entry.get(key, [])
    if not (isinstance(value, list) and all(isinstance(p, list) and len(p) == 2 and
                                            all(isinstance(x, int) and not isinstance(x, bool) for x in p)
                                            for p in value)):
        raise MixerStateError(f"malformed mixer state: field domains.{name}.{key} must be a list of "
                              f"[shards, until] pairs, got {value!r}")
    return [(int(n), int(u)) for n, u in value]


def _partition_cursors(entry: dict[str, Any], key: str, name: str, partitions: int, total: int) -> list[int]:
    value = entry.get(key)
    if not (isinstance(value, list) and len(value) == partitions
            and all(isinstance(c, int) and not isinstance(c, bool) and c >= 0 for c in value) and sum(value) == total):
        raise MixerStateError(f"malformed mixer state: field domains.{name}.{key} must be {partitions} counts ≥ 0 "
                              f"summing to {total}, got {value!r}")
    return value


def _saved_ramp(obj: dict[str, Any]) -> BatchRamp | None:
    if "rampup_batch_size" not in obj:
        raise MixerStateError("malformed mixer state: field rampup_batch_size is missing")
    saved = obj["rampup_batch_size"]
    if saved is None:
        return None
    try:
        return BatchRamp.from_dict(saved)
    except ValueError as error:
        raise MixerStateError(f"malformed mixer state: {error}") from None


def _field(obj: dict[str, Any], key: str, kind: type, prefix: str = "", *, default: Any = None) -> Any:
    """``obj[key]`` checked to be a ``kind`` (an int counts as a float), or a MixerStateError naming it."""
    if key not in obj:
        if default is not None:
            return default
        raise MixerStateError(f"malformed mixer state: field {prefix}{key} is missing")
    value = obj[key]
    ok = (isinstance(value, (int, float)) and not isinstance(value, bool) if kind is float
          else isinstance(value, kind) and not (kind is int and isinstance(value, bool)))
    if not ok:
        raise MixerStateError(f"malformed mixer state: field {prefix}{key} must be {kind.__name__}, "
                              f"got {value!r} ({type(value).__name__})")
    return value


def _check_values(state: MixerState, names: list[str]) -> None:
    problems = [f"step is {state.step}"] if state.step < 0 else []
    for k, name in enumerate(names):
        if state.consumed[k] < 0:
            problems.append(f"domains.{name}.consumed is {state.consumed[k]}")
        if state.probed[k] < 0:
            problems.append(f"domains.{name}.probed is {state.probed[k]}")
        if not np.isfinite(state.carry[k]):
            problems.append(f"domains.{name}.carry is {state.carry[k]}")
        if not np.isfinite(state.weights[k]) or state.weights[k] < 0:
            problems.append(f"domains.{name}.weight is {state.weights[k]}")
    if not problems and state.weights.sum() <= 0:
        problems.append("the domains' weights are all 0")
    if problems:
        raise MixerStateError(f"malformed mixer state: {'; '.join(problems)} (counts must be ≥ 0, weights finite "
                              f"and ≥ 0, carries finite)")
