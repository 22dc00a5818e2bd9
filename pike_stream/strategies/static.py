"""The non-adaptive mixtures PiKE is compared against: uniform, size-proportional, temperature, round-robin
and random.

The first three are fixed mixes of every domain in each batch; round-robin and random give each step to a
single domain (a one-hot weight vector). Every value is a pure function of its arguments: the random
choice is derived from ``(seed, step)``, never from a generator that advances between calls, so a resumed
run draws the same domains.
"""

from __future__ import annotations

import numpy as np

from pike_stream.strategies.checks import check_non_negative_int, check_num_domains, check_sizes, check_step
from pike_stream.strategies.simplex import log_normalize

__all__ = [
    "one_hot",
    "proportional_weights",
    "random_domain",
    "random_weights",
    "round_robin_weights",
    "temperature_weights",
    "uniform_weights",
]


def uniform_weights(num_domains: int) -> np.ndarray:
    """``w_k = 1/K`` — the paper's "Mix" baseline."""
    k = check_num_domains(num_domains)
    return np.full(k, 1.0 / k)


def proportional_weights(sizes: np.ndarray) -> np.ndarray:
    """``w_k = n_k / Σ_j n_j`` for domain sizes ``n_k`` (samples or tokens): the natural concatenated mix."""
    n = check_sizes(sizes)
    return n / n.sum()


def temperature_weights(sizes: np.ndarray, temperature: float) -> np.ndarray:
    """Temperature sampling ``w_k ∝ n_k^(1/T)``.

    ``T = 1`` is size-proportional, ``T → ∞`` tends to uniform over the non-empty domains, ``T < 1`` sharpens
    towards the largest domain. Computed as ``softmax(log(n)/T)`` so that large sizes with a small ``T``
    cannot overflow; empty domains get weight 0.
    """
    n = check_sizes(sizes)
    if not (np.isfinite(temperature) and temperature > 0):
        raise ValueError(f"temperature must be a finite number > 0, got {temperature!r}")
    with np.errstate(divide="ignore"):
        log_n = np.log(n)
    return log_normalize(log_n / temperature)


def one_hot(domain: int, num_domains: int) -> np.ndarray:
    """The weight vector that gives a whole batch to ``domain``."""
    k = check_num_domains(num_domains)
    if not 0 <= domain < k:
        raise ValueError(f"domain index {domain} is out of range for {k} domains")
    w = np.zeros(k)
    w[domain] = 1.0
    return w


def round_robin_weights(step: int, num_domains: int) -> np.ndarray:
    """Step ``t`` goes entirely to domain ``t mod K`` — the paper's "Round-Robin" baseline."""
    return one_hot(check_step(step) % check_num_domains(num_domains), num_domains)


def random_domain(step: int, num_domains: int, seed: int) -> int:
    """The domain that step ``t`` draws uniformly at random, as a pure function of ``(seed, t)``.

    NumPy's ``SeedSequence`` hashes ``(seed, t)`` into 64 random bits (an algorithm NumPy keeps stable across
    versions); their residue mod ``K`` picks the domain, with a bias below ``K/2^64``.
    """
    k = check_num_domains(num_domains)
    entropy = [check_non_negative_int(seed, "seed"), check_step(step)]
    bits = np.random.SeedSequence(entropy).generate_state(1, dtype=np.uint64)[0]
    return int(bits % np.uint64(k))


def random_weights(step: int, num_domains: int, seed: int) -> np.ndarray:
    """Step ``t`` goes entirely to :func:`random_domain` ``(t, K, seed)`` — the paper's "Random" baseline."""
    return one_hot(random_domain(step, num_domains, seed), num_domains)
