"""The global batch size at every step: fixed, or ramped up over the first samples of a run.

A ramp follows Megatron-LM's ``--rampup-batch-size START INCREMENT SAMPLES`` exactly, so a schedule ported
from a Megatron run means the same here: the batch starts at ``start`` and grows by ``increment`` each time
another ``SAMPLES / n`` samples have been trained (``n = (final − start) / increment`` increments), reaching
the final size once ``SAMPLES`` samples have been trained::

    size(s) = final                                          if s > SAMPLES
            = start + increment · ⌊s / (SAMPLES / n)⌋        otherwise          (s: samples trained so far)

The size is a pure function of the samples composed so far, which the mixer's state holds, so a resumed run
(on any world size dividing every size of the ramp) composes the same batches.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["BatchRamp", "batch_size_at", "steps_for_samples"]


@dataclass(frozen=True)
class BatchRamp:
    """A batch-size ramp-up: from ``start`` to the run's global batch size in steps of ``increment``, over the
    first ``samples`` samples (Megatron-LM's ``--rampup-batch-size``)."""

    start: int
    increment: int
    samples: int

    def __post_init__(self) -> None:
        for key in ("start", "increment", "samples"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"batch ramp: {key} must be a positive integer, got {value!r}")

    @classmethod
    def from_dict(cls, obj: Any, key: str = "rampup_batch_size") -> BatchRamp:
        """``{start, increment, samples}`` (a YAML mapping or a saved state) as a ramp; errors name ``key``."""
        if not isinstance(obj, dict) or set(obj) != {"start", "increment", "samples"}:
            raise ValueError(f"{key}: expected {{start, increment, samples}}, got {obj!r}")
        try:
            return cls(**obj)
        except ValueError as error:
            raise ValueError(f"{key}: {str(error).removeprefix('batch ramp: ')}") from None

    def to_dict(self) -> dict[str, int]:
        return {"start": self.start, "increment": self.increment, "samples": self.samples}

    def check(self, final: int, world_size: int = 1) -> None:
        """Refuse a ramp that cannot reach ``final`` in whole increments or has a size that ``world_size``
        does not divide (each rank takes an equal part of every batch)."""
        if self.start >= final:
            raise ValueError(f"batch ramp: start {self.start} must be below the global batch size {final}")
        if (final - self.start) % self.increment:
            raise ValueError(f"batch ramp: the global batch size {final} minus start {self.start} is not a multiple "
                             f"of increment {self.increment}")
        odd = [b for b in self.sizes(final) if b % world_size]
        if odd:
            raise ValueError(f"batch ramp: batch size {odd[0]} is not divisible by world_size={world_size}; "
                             f"every size of the ramp ({self.start} … {final} by {self.increment}) must be")

    def sizes(self, final: int) -> list[int]:
        """Every batch size the ramp passes through, ``final`` included."""
        return list(range(self.start, final + 1, self.increment))

    def size(self, final: int, samples: int) -> int:
        """The global batch size after ``samples`` samples have been trained (Megatron-LM's formula)."""
        if samples > self.samples:
            return final
        increments = (final - self.start) // self.increment
        return min(final, self.start + self.increment * int(samples / (self.samples / increments)))


def batch_size_at(final: int, ramp: BatchRamp | None, samples: int) -> int:
    """The size of the batch composed after ``samples`` samples: ``final`` without a ramp."""
    return final if ramp is None else ramp.size(final, samples)


def steps_for_samples(final: int, ramp: BatchRamp | None, samples: int) -> int:
    """The fewest steps whose batches add up to at least ``samples`` samples."""
    if ramp is None:
        return -(-samples // final)
    steps = done = 0
    while done < samples:
        if done > ramp.samples:  # past the ramp: the rest at the final size
            return steps + -(-(samples - done) // final)
        done += ramp.size(final, done)
        steps += 1
    return steps
