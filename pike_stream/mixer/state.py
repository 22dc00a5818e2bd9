"""The mixer's checkpoint state: small, versioned, keyed by domain name, fingerprinted against the data.

Everything else (which samples each batch holds) is recomputed from it: per-domain cursors, rounding
carries and the weights in force, the cursors of the per-domain probe orders (version 2; a version-1 state,
made before probe batches existed, resumes with them at 0), plus what must match for that recomputation to
be the same (seed, shuffle, global batch size, each domain's manifest fingerprint).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["MixerState", "MixerStateError", "STATE_FORMAT", "STATE_VERSION"]

STATE_FORMAT = "pike_stream.mixer"
STATE_VERSION = 2
_READABLE_VERSIONS = (1, 2)


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

    def copy(self) -> "MixerState":
        return MixerState(self.step, self.consumed.copy(), self.carry.copy(), self.weights.copy(),
                          self.probed.copy())

    def to_dict(self, *, names: list[str], fingerprints: list[str], global_batch_size: int, seed: int,
                shuffle: dict[str, Any]) -> dict[str, Any]:
        return {
            "format": STATE_FORMAT,
            "version": STATE_VERSION,
            "step": int(self.step),
            "global_batch_size": int(global_batch_size),
            "seed": int(seed),
            "shuffle": dict(shuffle),
            "domain_order": list(names),
            "domains": {
                name: {"consumed": int(self.consumed[k]), "carry": float(self.carry[k]),
                       "weight": float(self.weights[k]), "probed": int(self.probed[k]),
                       "fingerprint": fingerprints[k]}
                for k, name in enumerate(names)
            },
        }

    @classmethod
    def from_dict(cls, obj: Any, *, names: list[str], fingerprints: list[str], global_batch_size: int, seed: int,
                  shuffle: dict[str, Any]) -> "MixerState":
        """Check a saved state against this mixer's settings and data, then load it."""
        if not isinstance(obj, dict) or obj.get("format") != STATE_FORMAT:
            raise MixerStateError(f"not a PiKEStreamingMixer state (expected format {STATE_FORMAT!r}, got "
                                  f"{obj.get('format') if isinstance(obj, dict) else type(obj).__name__!r})")
        if obj.get("version") not in _READABLE_VERSIONS:
            raise MixerStateError(f"mixer state version {obj.get('version')!r} is not supported "
                                  f"(this pike_stream reads versions {', '.join(map(str, _READABLE_VERSIONS))})")
        if obj["global_batch_size"] != global_batch_size:
            raise MixerStateError(f"the checkpoint was made with global_batch_size={obj['global_batch_size']}, "
                                  f"this run has {global_batch_size}: the batches would differ")
        if obj["seed"] != seed:
            raise MixerStateError(f"the checkpoint was made with seed={obj['seed']}, this run has seed={seed}")
        if obj["shuffle"] != shuffle:
            raise MixerStateError(f"the checkpoint was made with shuffle {obj['shuffle']}, this run has {shuffle}")
        saved = obj["domains"]
        if set(saved) != set(names):
            raise MixerStateError(f"the checkpoint's domains {sorted(saved)} differ from this run's {sorted(names)} "
                                  f"(missing: {sorted(set(saved) - set(names))}, new: "
                                  f"{sorted(set(names) - set(saved))})")
        if obj["domain_order"] != names:
            raise MixerStateError(f"domains are listed in a different order than in the checkpoint: "
                                  f"{obj['domain_order']} there, {names} here")
        changed = [name for name, fp in zip(names, fingerprints) if saved[name]["fingerprint"] != fp]
        if changed:
            raise MixerStateError(f"the data of domain(s) {changed} changed since the checkpoint (manifest "
                                  f"fingerprint differs); resuming would not reproduce the run")
        return cls(step=int(obj["step"]),
                   consumed=np.array([saved[n]["consumed"] for n in names], dtype=np.int64),
                   carry=np.array([saved[n]["carry"] for n in names], dtype=np.float64),
                   weights=np.array([saved[n]["weight"] for n in names], dtype=np.float64),
                   probed=np.array([saved[n].get("probed", 0) for n in names], dtype=np.int64))
