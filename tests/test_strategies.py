"""Invariants of the mixing math: PiKE's step, the floor, the conceptual QP, Balanced-PiKE, the static
baselines and the strategy registry."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from pike_stream.strategies import (
    STRATEGIES,
    DomainStats,
    Strategy,
    apply_floor,
    balanced_dual_weights,
    balanced_pike_step,
    conceptual_pike_weights,
    get_strategy,
    multiplicative_update,
    pike_step,
    proportional_weights,
    pull_toward,
    random_weights,
    round_robin_weights,
    separable_qp_weights,
    temperature_weights,
    uniform_weights,
)
from pike_stream.strategies.static import random_domain

SUM_ATOL = 1e-12


def assert_on_simplex(w: np.ndarray, floor: float = 0.0) -> None:
    assert w.ndim == 1
    assert np.all(np.isfinite(w))
    assert abs(w.sum() - 1.0) <= SUM_ATOL, w.sum()
    assert np.all(w >= floor), (w, floor)


# ---------------------------------------------------------------------------------------------- generators

@st.composite
def simplex_points(draw, num_domains: int | None = None, min_k: int = 1, max_k: int = 8) -> np.ndarray:
    """Points on the simplex with strictly positive entries, spread over many orders of magnitude."""
    k = num_domains if num_domains is not None else draw(st.integers(min_k, max_k))
    logs = draw(st.lists(st.floats(-20, 0), min_size=k, max_size=k))
    w = np.exp(np.array(logs))
    return w / w.sum()


@st.composite
def pike_inputs(draw, allow_missing: bool = True):
    """(weights, G, S, b): G may be negative (an unbiased estimate), S ≥ 0, some entries NaN."""
    w = draw(simplex_points(min_k=2))
    k = w.size
    magnitude = draw(st.sampled_from([1e-8, 1e-3, 1.0, 1e3, 1e8]))
    # Values are 0 or at least 1e-6·magnitude: subnormal inputs would underflow when rescaled.
    g_unit = st.one_of(st.just(0.0), st.floats(1e-6, 1.0), st.floats(-0.2, -1e-6))
    s_unit = st.one_of(st.just(0.0), st.floats(1e-6, 50.0))
    g = np.array(draw(st.lists(g_unit, min_size=k, max_size=k))) * magnitude
    s = np.array(draw(st.lists(s_unit, min_size=k, max_size=k))) * magnitude
    if allow_missing:
        missing = np.array(draw(st.lists(st.booleans(), min_size=k, max_size=k)))
        g[missing] = np.nan
        s[missing] = np.nan
    b = draw(st.integers(1, 4096))
    return w, g, s, b


zetas = st.floats(1e-3, 10.0)


# ----------------------------------------------------------------------------------------- practical PiKE

def test_pike_step_matches_a_hand_computed_case() -> None:
    w = np.array([0.5, 0.3, 0.2])
    g = np.array([1.0, 2.0, 0.5])
    s = np.array([4.0, 0.0, 8.0])
    # Exponents ζ1·G − (ζ2/2b)·S with ζ1 = 0.5, ζ2 = 1, b = 2: [0.5 − 1, 1 − 0, 0.25 − 2].
    out = pike_step(w, g, s, 2, zeta1=0.5, zeta2=1.0, normalize=False)
    unnormalized = [0.5 * math.exp(-0.5), 0.3 * math.exp(1.0), 0.2 * math.exp(-1.75)]
    expected = np.array(unnormalized) / sum(unnormalized)
    np.testing.assert_allclose(out, expected, rtol=1e-14)
    np.testing.assert_allclose(out, [0.26290776, 0.70696250, 0.03012973], atol=1e-8)

    # normalize: common scale mean(|G| + S/b) = mean(3, 2, 4.5) = 9.5/3, so the exponents become
    # [0.5·3 − 0.25·12, 0.5·6 − 0, 0.5·1.5 − 0.25·24] / 9.5 = [−1.5, 3, −5.25] / 9.5.
    out = pike_step(w, g, s, 2, zeta1=0.5, zeta2=1.0, normalize=True)
    unnormalized = [0.5 * math.exp(-1.5 / 9.5), 0.3 * math.exp(3 / 9.5), 0.2 * math.exp(-5.25 / 9.5)]
    np.testing.assert_allclose(out, np.array(unnormalized) / sum(unnormalized), rtol=1e-14)


@given(inputs=pike_inputs(), zeta1=zetas, zeta2=zetas, normalize=st.booleans(), floor_fraction=st.floats(0, 0.99))
def test_pike_step_stays_on_the_simplex_above_the_floor(inputs, zeta1, zeta2, normalize, floor_fraction) -> None:
    w, g, s, b = inputs
    floor = floor_fraction / w.size
    out = pike_step(w, g, s, b, zeta1=zeta1, zeta2=zeta2, min_weight=floor, normalize=normalize)
    assert_on_simplex(out, floor)


def test_pike_step_does_not_overflow_on_huge_exponents() -> None:
    w = np.array([0.25, 0.25, 0.5])
    # Exponents 1e7, 2e7 − 500, −1e7: exp() of any of them overflows or underflows on its own.
    out = pike_step(w, [1e6, 2e6, -1e6], [0.0, 1e3, 0.0], 1, zeta1=10.0, zeta2=1.0, normalize=False)
    assert_on_simplex(out)
    np.testing.assert_allclose(out, [0.0, 1.0, 0.0], atol=1e-300)


@given(inputs=pike_inputs(allow_missing=False), zeta1=zetas, zeta2=zetas, normalize=st.booleans(),
       data=st.data())
def test_larger_gradient_norm_gains_weight(inputs, zeta1, zeta2, normalize, data) -> None:
    w, g, s, b = inputs
    i, j = data.draw(st.lists(st.integers(0, w.size - 1), min_size=2, max_size=2, unique=True))
    s[j] = s[i]
    g[i] = g[j] + 0.5 * (abs(g).max() + s.max() / b + 1e-6)  # G_i > G_j by a margin, S_i = S_j
    out = pike_step(w, g, s, b, zeta1=zeta1, zeta2=zeta2, normalize=normalize)
    assume(out[i] > 0 and out[j] > 0)  # not both underflowed
    assert out[i] / out[j] > w[i] / w[j]


@given(inputs=pike_inputs(allow_missing=False), zeta1=zetas, zeta2=st.floats(1e-3, 10.0),
       normalize=st.booleans(), data=st.data())
def test_larger_variance_loses_weight(inputs, zeta1, zeta2, normalize, data) -> None:
    w, g, s, b = inputs
    i, j = data.draw(st.lists(st.integers(0, w.size - 1), min_size=2, max_size=2, unique=True))
    g[i] = g[j]
    s[i] = s[j] + b * (s.max() / b + abs(g).max() + 1e-6)  # S_i > S_j by a margin, G_i = G_j
    out = pike_step(w, g, s, b, zeta1=zeta1, zeta2=zeta2, normalize=normalize)
    assume(out[i] > 0 and out[j] > 0)
    assert out[i] / out[j] < w[i] / w[j]


@given(inputs=pike_inputs(), zeta1=zetas, zeta2=zetas, factor=st.sampled_from([1e-9, 1e-3, 0.5, 7.0, 1e6]))
def test_normalize_makes_the_step_invariant_to_the_gradient_scale(inputs, zeta1, zeta2, factor) -> None:
    w, g, s, b = inputs
    base = pike_step(w, g, s, b, zeta1=zeta1, zeta2=zeta2, normalize=True)
    scaled = pike_step(w, g * factor, s * factor, b, zeta1=zeta1, zeta2=zeta2, normalize=True)
    np.testing.assert_allclose(scaled, base, rtol=1e-9, atol=1e-15)


def test_without_normalize_the_step_depends_on_the_gradient_scale() -> None:
    w = np.full(2, 0.5)
    small = pike_step(w, [1.0, 2.0], [0.0, 0.0], 8, zeta1=1.0, zeta2=1.0, normalize=False)
    large = pike_step(w, [10.0, 20.0], [0.0, 0.0], 8, zeta1=1.0, zeta2=1.0, normalize=False)
    assert large[1] > small[1] > 0.5


@given(inputs=pike_inputs(allow_missing=False), zeta1=zetas, zeta2=zetas, normalize=st.booleans(), data=st.data())
def test_domains_without_estimates_keep_their_weight(inputs, zeta1, zeta2, normalize, data) -> None:
    w, g, s, b = inputs
    missing = np.array(data.draw(st.lists(st.booleans(), min_size=w.size, max_size=w.size)))
    g[missing] = np.nan
    s[missing] = np.nan
    out = pike_step(w, g, s, b, zeta1=zeta1, zeta2=zeta2, normalize=normalize)
    np.testing.assert_allclose(out[missing], w[missing], rtol=1e-12)
    assert_on_simplex(out)


def test_a_domain_missing_a_single_estimate_counts_as_missing() -> None:
    w = np.array([0.2, 0.3, 0.5])
    out = pike_step(w, [1.0, np.nan, 3.0], [1.0, 1.0, np.nan], 4, zeta1=1.0, zeta2=1.0)
    np.testing.assert_allclose(out[1:], w[1:])
    np.testing.assert_allclose(out[0], 0.2)


def test_multiplicative_update_is_shift_invariant_and_keeps_zeros() -> None:
    w = np.array([0.0, 0.4, 0.6])
    e = np.array([5.0, 1.0, -2.0])
    np.testing.assert_allclose(multiplicative_update(w, e), multiplicative_update(w, e + 123.0), rtol=1e-12)
    assert multiplicative_update(w, e)[0] == 0.0


@pytest.mark.parametrize(
    ("kwargs", "option"),
    [
        (dict(zeta1=0.0, zeta2=1.0), "zeta1"),
        (dict(zeta1=1.0, zeta2=-1.0), "zeta2"),
        (dict(zeta1=1.0, zeta2=1.0, min_weight=0.5), "min_weight"),
        (dict(zeta1=1.0, zeta2=1.0, min_weight=-0.1), "min_weight"),
    ],
)
def test_pike_step_rejects_bad_arguments(kwargs, option) -> None:
    with pytest.raises(ValueError, match=option):
        pike_step(np.full(3, 1 / 3), [1.0, 2.0, 3.0], [1.0, 1.0, 1.0], 4, **kwargs)


def test_pike_step_rejects_bad_statistics() -> None:
    w = np.full(3, 1 / 3)
    with pytest.raises(ValueError, match="variance"):
        pike_step(w, [1.0, 2.0, 3.0], [1.0, -1.0, 1.0], 4, zeta1=1.0, zeta2=1.0)
    with pytest.raises(ValueError, match="grad_sq"):
        pike_step(w, [1.0, np.inf, 3.0], [1.0, 1.0, 1.0], 4, zeta1=1.0, zeta2=1.0)
    with pytest.raises(ValueError, match="batch_size"):
        pike_step(w, [1.0, 2.0, 3.0], [1.0, 1.0, 1.0], 0, zeta1=1.0, zeta2=1.0)
    with pytest.raises(ValueError, match="weights"):
        pike_step([0.5, 0.6, 0.1], [1.0, 2.0, 3.0], [1.0, 1.0, 1.0], 4, zeta1=1.0, zeta2=1.0)


# ------------------------------------------------------------------------------------------------- floor

def _floor_by_bisection(w: np.ndarray, floor: float) -> np.ndarray:
    """Reference: bisect on c in Σ max(m, c·w) = 1."""
    lo, hi = 0.0, 1.0 / w[w > 0].min() + 1.0
    for _ in range(200):
        mid = (lo + hi) / 2
        if np.maximum(floor, mid * w).sum() < 1.0:
            lo = mid
        else:
            hi = mid
    return np.maximum(floor, lo * w)


@given(w=simplex_points(min_k=1, max_k=12), floor_fraction=st.floats(0, 0.999), data=st.data())
def test_apply_floor_is_the_exact_kl_projection(w, floor_fraction, data) -> None:
    zeroed = np.array(data.draw(st.lists(st.booleans(), min_size=w.size, max_size=w.size)))
    if zeroed.all():
        zeroed[0] = False
    w = np.where(zeroed, 0.0, w)
    w = w / w.sum()
    floor = floor_fraction / w.size
    out = apply_floor(w, floor)
    assert_on_simplex(out, floor)
    np.testing.assert_allclose(out, _floor_by_bisection(w, floor), rtol=1e-9, atol=1e-15)
    free = out > floor
    if free.sum() >= 2:  # domains above the floor keep their ratios
        ratios = out[free] / w[free]
        np.testing.assert_allclose(ratios, ratios[0], rtol=1e-9)


def test_apply_floor_hand_computed_and_identity() -> None:
    # [0.9, 0.09, 0.01, 0] with m = 0.05: two domains on the floor, c = (1 − 2·0.05)/0.99.
    out = apply_floor(np.array([0.9, 0.09, 0.01, 0.0]), 0.05)
    c = 0.9 / 0.99
    np.testing.assert_allclose(out, [0.9 * c, 0.09 * c, 0.05, 0.05], rtol=1e-14)
    w = np.array([0.2, 0.3, 0.5])
    np.testing.assert_array_equal(apply_floor(w, 0.2), w)
    np.testing.assert_allclose(apply_floor(np.array([2.0, 6.0]), 0.0), [0.25, 0.75])


def test_apply_floor_requires_k_times_floor_below_one() -> None:
    with pytest.raises(ValueError, match="min_weight"):
        apply_floor(np.full(4, 0.25), 0.25)
    with pytest.raises(ValueError, match="min_weight"):
        apply_floor(np.full(4, 0.25), -1e-3)


# --------------------------------------------------------------------------------------- conceptual PiKE

def _objective(w: np.ndarray, lam: np.ndarray, kappa: np.ndarray) -> np.ndarray:
    return w @ lam + 0.5 * (w**2) @ kappa


def _assert_kkt(w: np.ndarray, lam: np.ndarray, kappa: np.ndarray, total: float = 1.0) -> None:
    """Stationarity λ_k + κ_k·w_k + μ = 0 on the support, λ_k + μ ≥ 0 off it, Σ w = total."""
    scale = max(np.abs(lam).max(), (kappa * total).max(), 1e-300)
    tol = 1e-9 * scale
    assert np.all(w >= 0)
    assert abs(w.sum() - total) <= SUM_ATOL * max(total, 1.0)
    support = w > 0
    mus = -(lam[support] + kappa[support] * w[support])
    mu = mus.mean()
    np.testing.assert_allclose(mus, mu, atol=tol)
    assert np.all(lam[~support] + mu >= -tol)


@pytest.mark.parametrize(
    ("lam", "kappa", "expected"),
    [
        # μ = 1/4: w = max(0, −1/4 − λ) = [3/4, 1/4, 0]; the third domain is priced out (λ + μ = 1/4 > 0).
        ([-1.0, -0.5, 0.0], [1.0, 1.0, 1.0], [0.75, 0.25, 0.0]),
        # Equal λ, κ = 1 and 3: w ∝ 1/κ.
        ([0.0, 0.0], [1.0, 3.0], [0.75, 0.25]),
        # A linear domain (κ = 0) with λ = 0.5: the quadratic ones alone would need μ = −0.55 < −0.5, so
        # μ = −0.5, they take 0.5 + 0.4 and the linear domain gets the rest.
        ([0.0, 0.1, 0.5], [1.0, 1.0, 0.0], [0.5, 0.4, 0.1]),
        # A linear domain with λ = 2: the quadratic ones' μ = −0.55 ≥ −2, so it gets nothing.
        ([0.0, 0.1, 2.0], [1.0, 1.0, 0.0], [0.55, 0.45, 0.0]),
        # A very cheap linear domain takes everything.
        ([0.0, 0.1, -1.0], [1.0, 1.0, 0.0], [0.0, 0.0, 1.0]),
        # All linear: the LP's vertex; tied minima split equally.
        ([0.3, -1.0, 0.2], [0.0, 0.0, 0.0], [0.0, 1.0, 0.0]),
        ([0.3, -1.0, -1.0], [0.0, 0.0, 0.0], [0.0, 0.5, 0.5]),
    ],
)
def test_separable_qp_hand_computed_cases(lam, kappa, expected) -> None:
    lam, kappa = np.array(lam), np.array(kappa)
    w = separable_qp_weights(lam, kappa)
    np.testing.assert_allclose(w, expected, atol=1e-14)
    _assert_kkt(w, lam, kappa)


@st.composite
def qp_inputs(draw, min_k: int = 1, max_k: int = 10, allow_linear: bool = True):
    k = draw(st.integers(min_k, max_k))
    magnitude = draw(st.sampled_from([1e-9, 1e-3, 1.0, 1e4]))
    lam = np.array(draw(st.lists(st.floats(-5, 5), min_size=k, max_size=k))) * magnitude
    kappa = np.array(draw(st.lists(st.floats(1e-3, 10), min_size=k, max_size=k))) * magnitude
    if allow_linear:
        linear = np.array(draw(st.lists(st.booleans(), min_size=k, max_size=k)))
        kappa[linear] = 0.0
    total = draw(st.sampled_from([1.0, 0.3]))
    return lam, kappa, total


@given(inputs=qp_inputs())
def test_separable_qp_satisfies_kkt(inputs) -> None:
    lam, kappa, total = inputs
    w = separable_qp_weights(lam, kappa, total)
    _assert_kkt(w, lam, kappa, total)


@settings(max_examples=60, deadline=None)  # no timing: the suite runs beside other work
@given(inputs=qp_inputs(min_k=2, max_k=3), seed=st.integers(0, 2**32 - 1))
def test_separable_qp_matches_brute_force(inputs, seed) -> None:
    lam, kappa, total = inputs
    w = separable_qp_weights(lam, kappa, total)
    k = lam.size
    grid = np.linspace(0.0, 1.0, 201)
    points = np.array([p for p in itertools.product(grid, repeat=k - 1) if sum(p) <= 1.0 + 1e-12])
    candidates = np.column_stack([points, 1.0 - points.sum(axis=1)]).clip(0.0)
    rng = np.random.default_rng(seed)
    candidates = np.vstack([candidates, rng.dirichlet(np.full(k, 0.3), size=2000)]) * total
    best = _objective(candidates, lam, kappa).min()
    scale = np.abs(lam).max() * total + kappa.max() * total**2
    assert _objective(w, lam, kappa) <= best + 1e-12 * scale
    # ... and the brute-force minimiser sits next to it (the grid step bounds the distance when κ > 0).
    if np.all(kappa > 0.05 * np.abs(lam).max()):
        nearest = candidates[np.argmin(_objective(candidates, lam, kappa))]
        assert np.abs(nearest - w).max() < 0.05 * total


def test_separable_qp_rejects_negative_curvature() -> None:
    with pytest.raises(ValueError, match="quadratic"):
        separable_qp_weights([0.0, 1.0], [1.0, -1.0])


def test_conceptual_pike_uses_the_papers_coefficients() -> None:
    g = np.array([2.0, 1.0, -0.5])  # the negative estimate is clipped to 0
    s = np.array([10.0, 1.0, 3.0])
    lr, smoothness, beta, gamma, b = 0.1, 2.0, 0.5, 3.0, 4
    w = conceptual_pike_weights(g, s, b, lr=lr, smoothness=smoothness, beta=beta, gamma=gamma)
    g_clipped = np.array([2.0, 1.0, 0.0])
    lam = -lr * beta * g_clipped + smoothness * lr**2 / (2 * b) * s
    kappa = smoothness * lr**2 * gamma * g_clipped
    np.testing.assert_allclose(w, separable_qp_weights(lam, kappa), rtol=1e-14)
    _assert_kkt(w, lam, kappa)
    with pytest.raises(ValueError, match="lr"):
        conceptual_pike_weights(g, s, b, lr=0.0, smoothness=1.0, beta=1.0, gamma=1.0)


def test_conceptual_pike_favours_signal_over_noise() -> None:
    w = conceptual_pike_weights([1.0, 1.0], [0.0, 50.0], 8, lr=0.1, smoothness=1.0, beta=1.0, gamma=1.0)
    assert w[0] > w[1]
    w = conceptual_pike_weights([2.0, 1.0], [1.0, 1.0], 8, lr=0.1, smoothness=1.0, beta=1.0, gamma=1.0)
    assert w[0] > w[1]


# ------------------------------------------------------------------------------------------ Balanced-PiKE

def test_balanced_dual_weights() -> None:
    y = balanced_dual_weights(np.array([1.0, 2.0, 3.0]), 2.0)
    e = np.exp([2.0, 4.0, 6.0])
    np.testing.assert_allclose(y, 3.0 * e / e.sum(), rtol=1e-14)  # mean 1 over the domains with a loss
    np.testing.assert_allclose(balanced_dual_weights(np.array([1e4, 0.0]), 10.0), [2.0, 0.0], atol=1e-300)
    y = balanced_dual_weights(np.array([1.0, np.nan, 1.0]), 0.5)
    np.testing.assert_allclose(y[[0, 2]], [1.0, 1.0])
    assert np.isnan(y[1])
    with pytest.raises(ValueError, match="tau"):
        balanced_dual_weights(np.array([1.0]), 0.0)


@pytest.mark.parametrize("normalize", [True, False])
def test_balanced_pike_weights_the_gradient_term_by_y_and_leaves_the_variance_term(normalize) -> None:
    """The training loss is unweighted: y enters the descent term once (y·G) and not the noise term (S)."""
    w = np.array([0.2, 0.3, 0.5])
    g, s, losses, b, tau = np.array([1.0, 5.0, 2.0]), np.array([40.0, 8.0, 100.0]), np.array([3.0, 1.0, 2.0]), 8, 1.5
    y = balanced_dual_weights(losses, tau)
    expected = pike_step(w, y * g, s, b, zeta1=0.3, zeta2=0.7, normalize=normalize)
    out = balanced_pike_step(w, g, s, losses, b, tau=tau, zeta1=0.3, zeta2=0.7, normalize=normalize)
    np.testing.assert_allclose(out, expected, rtol=1e-12)
    # y² scaling of both (a y-weighted training loss) is a different step.
    assert not np.allclose(out, pike_step(w, y**2 * g, y**2 * s, b, zeta1=0.3, zeta2=0.7, normalize=normalize))
    # Only the variance term moving: equal G, unequal S — the same as plain PiKE whatever the losses.
    same_g = balanced_pike_step(w, np.ones(3), s, losses, b, tau=tau, zeta1=1e-9, zeta2=0.7, normalize=False)
    np.testing.assert_allclose(same_g, pike_step(w, np.ones(3), s, b, zeta1=1e-9, zeta2=0.7, normalize=False),
                               rtol=1e-6)


@given(inputs=pike_inputs(), zeta1=zetas, zeta2=zetas, normalize=st.booleans(), data=st.data())
def test_tau_to_zero_recovers_plain_pike(inputs, zeta1, zeta2, normalize, data) -> None:
    w, g, s, b = inputs
    losses = np.array(data.draw(st.lists(st.floats(0.0, 20.0), min_size=w.size, max_size=w.size)))
    losses[np.isnan(g)] = np.nan
    plain = pike_step(w, g, s, b, zeta1=zeta1, zeta2=zeta2, normalize=normalize)
    # y deviates from 1 by about τ·loss, which moves the raw-scale exponent by ζ1·|G|·τ·loss: τ small next to
    # that product (an absolute 1e-10 is not small enough for |G| = 1e7 in raw units).
    tau = 1e-12 / (1.0 + zeta1 * float(np.nanmax(np.abs(g), initial=0.0)))
    tilted = balanced_pike_step(w, g, s, losses, b, tau=tau, zeta1=zeta1, zeta2=zeta2, normalize=normalize)
    np.testing.assert_allclose(tilted, plain, rtol=1e-6, atol=1e-12)


def test_large_tau_moves_weight_to_the_highest_loss_domain() -> None:
    w = np.full(4, 0.25)
    g = np.ones(4)
    s = np.full(4, 0.1)
    losses = np.array([2.0, 3.5, 3.0, 1.0])
    plain = pike_step(w, g, s, 64, zeta1=1.0, zeta2=1.0)
    np.testing.assert_allclose(plain, w)  # equal statistics: plain PiKE does not move
    previous_share = 0.25
    for tau in (0.5, 2.0, 10.0, 100.0):
        out = balanced_pike_step(w, g, s, losses, 64, tau=tau, zeta1=1.0, zeta2=1.0)
        assert_on_simplex(out)
        assert int(np.argmax(out)) == 1
        assert out[1] > previous_share  # the highest-loss domain's share grows with τ
        previous_share = out[1]
    assert previous_share > 0.9


# ------------------------------------------------------------------------------------- static strategies

def test_static_weights() -> None:
    np.testing.assert_allclose(uniform_weights(4), np.full(4, 0.25))
    sizes = np.array([100.0, 300.0, 0.0, 600.0])
    np.testing.assert_allclose(proportional_weights(sizes), [0.1, 0.3, 0.0, 0.6])
    np.testing.assert_allclose(temperature_weights(sizes, 1.0), proportional_weights(sizes), rtol=1e-12)
    np.testing.assert_allclose(temperature_weights(sizes, 2.0), np.sqrt(sizes) / np.sqrt(sizes).sum(), rtol=1e-12)
    np.testing.assert_allclose(temperature_weights(sizes, 1e9), [1 / 3, 1 / 3, 0.0, 1 / 3], rtol=1e-6)
    # Small T on huge sizes: w ∝ n^(100) overflows unless computed in log space.
    out = temperature_weights(np.array([1e12, 2e12]), 0.01)
    assert_on_simplex(out)
    np.testing.assert_allclose(out, [0.0, 1.0], atol=1e-30)
    with pytest.raises(ValueError, match="temperature"):
        temperature_weights(sizes, 0.0)
    with pytest.raises(ValueError, match="sizes"):
        proportional_weights(np.zeros(3))


def test_round_robin_cycles_one_hot() -> None:
    for step in range(12):
        w = round_robin_weights(step, 5)
        np.testing.assert_array_equal(w, np.eye(5)[step % 5])


def test_random_is_one_hot_deterministic_and_uniform() -> None:
    k = 4
    draws = [random_domain(step, k, seed=7) for step in range(4000)]
    again = [int(np.argmax(random_weights(step, k, seed=7))) for step in range(4000)]
    assert draws == again
    for step in (0, 1, 999):
        w = random_weights(step, k, seed=7)
        assert sorted(w.tolist()) == [0.0, 0.0, 0.0, 1.0]
    counts = np.bincount(draws, minlength=k)
    assert np.all(np.abs(counts - 1000) < 150), counts  # ~5 standard deviations
    other_seed = [random_domain(step, k, seed=8) for step in range(4000)]
    assert np.mean(np.array(draws) == np.array(other_seed)) < 0.35  # independent: agree ~1/4 of the time
    # The draw for a step does not depend on which steps were drawn before (no hidden counter).
    assert random_domain(3999, k, seed=7) == draws[3999]


# -------------------------------------------------------------------------------------------- registry

def _random_stats(rng: np.random.Generator, k: int) -> DomainStats:
    g = rng.uniform(-0.1, 1.0, k) * 1e-3
    s = rng.uniform(0.0, 5.0, k) * 1e-3
    loss = rng.uniform(1.0, 5.0, k)
    missing = rng.random(k) < 0.2
    g[missing] = s[missing] = loss[missing] = np.nan
    return DomainStats(grad_sq=g, variance=s, loss=loss)


@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_every_strategy_gives_valid_pure_weights(name: str) -> None:
    strategy = get_strategy(name)
    assert isinstance(strategy, Strategy)
    assert strategy.name == name
    assert strategy.adaptive == (name in {"pike", "balanced_pike", "conceptual_pike"})
    rng = np.random.default_rng(0)
    sizes = np.array([1000, 50, 20000, 300, 7])
    w = strategy.initial_weights(sizes)
    assert_on_simplex(w)
    changed = False
    for step in range(1, 40):
        stats = _random_stats(rng, sizes.size) if step % 3 == 0 else None
        frozen = w.copy()
        new = strategy.weights(step, w, stats, 32)
        np.testing.assert_array_equal(w, frozen)  # `previous` is not modified
        np.testing.assert_array_equal(strategy.weights(step, w, stats, 32), new)  # pure
        assert_on_simplex(new, getattr(strategy, "min_weight", 0.0))
        if name in {"round_robin", "random"}:
            assert sorted(new.tolist()) == [0.0] * (sizes.size - 1) + [1.0]
        if stats is None and strategy.adaptive:
            np.testing.assert_allclose(new, w, rtol=1e-15)  # adaptive weights move only on a refresh
        changed |= not np.allclose(new, w)
        w = new
    assert changed == (name not in {"uniform", "proportional", "temperature"})


def test_static_strategies_ignore_statistics() -> None:
    stats = DomainStats(grad_sq=np.array([1.0, 9.0]), variance=np.array([0.0, 0.0]), loss=np.array([1.0, 9.0]))
    for name in ("uniform", "proportional", "temperature"):
        strategy = get_strategy(name)
        w = strategy.initial_weights(np.array([10, 30]))
        np.testing.assert_allclose(strategy.weights(5, w, stats, 8), w)


def test_adaptive_initial_weights() -> None:
    sizes = np.array([10, 990])
    np.testing.assert_allclose(get_strategy("pike").initial_weights(sizes), [0.5, 0.5])
    np.testing.assert_allclose(get_strategy("pike", initial="proportional", min_weight=0.0).initial_weights(sizes),
                               [0.01, 0.99])
    floored = get_strategy("balanced_pike", initial="proportional", min_weight=0.2).initial_weights(sizes)
    np.testing.assert_allclose(floored, [0.2, 0.8])


def test_conceptual_strategy_keeps_missing_domains_and_floors() -> None:
    strategy = get_strategy("conceptual_pike", lr=0.1, min_weight=0.0)
    previous = np.array([0.2, 0.3, 0.5])
    stats = DomainStats(grad_sq=np.array([1.0, np.nan, 0.5]), variance=np.array([1.0, np.nan, 1.0]),
                        loss=np.array([2.0, np.nan, 2.0]))
    w = strategy.weights(3, previous, stats, 16)
    assert w[1] == pytest.approx(0.3, rel=1e-12)
    np.testing.assert_allclose(w[[0, 2]], conceptual_pike_weights([1.0, 0.5], [1.0, 1.0], 16, lr=0.1,
                                                                  smoothness=1.0, beta=1.0, gamma=1.0, total=0.7))
    floored = get_strategy("conceptual_pike", lr=0.1, min_weight=0.1).weights(3, previous, stats, 16)
    assert_on_simplex(floored, 0.1)


def test_unknown_strategy_lists_the_valid_names() -> None:
    with pytest.raises(ValueError, match="unknown mixing strategy 'doremi'.*balanced_pike.*uniform"):
        get_strategy("doremi")


@pytest.mark.parametrize(
    ("name", "options", "option"),
    [
        ("pike", dict(zeta=1.0), "zeta"),
        ("uniform", dict(seed=3), "seed"),
        ("random", dict(temperature=2.0), "temperature"),
        ("pike", dict(zeta1=0.0), "zeta1"),
        ("pike", dict(zeta1="1e-3"), "zeta1"),
        ("pike", dict(zeta2=-0.1), "zeta2"),
        ("pike", dict(min_weight=1.0), "min_weight"),
        ("pike", dict(min_weight=-0.01), "min_weight"),
        ("pike", dict(normalize="yes"), "normalize"),
        ("pike", dict(initial="zipf"), "initial"),
        ("balanced_pike", dict(tau=0.0), "tau"),
        ("balanced_pike", dict(tau=float("inf")), "tau"),
        ("conceptual_pike", dict(lr=-1.0), "lr"),
        ("conceptual_pike", dict(smoothness=0.0), "smoothness"),
        ("conceptual_pike", dict(beta=0.0), "beta"),
        ("conceptual_pike", dict(gamma=-1.0), "gamma"),
        ("temperature", dict(temperature=0.0), "temperature"),
        ("random", dict(seed=-1), "seed"),
        ("random", dict(seed=1.5), "seed"),
    ],
)
def test_bad_options_raise_naming_the_option(name, options, option) -> None:
    with pytest.raises(ValueError, match=f"'{option}'"):
        get_strategy(name, **options)


def test_unknown_option_lists_the_valid_ones() -> None:
    with pytest.raises(ValueError, match="valid options: zeta1, zeta2, min_weight, normalize, initial"):
        get_strategy("pike", zeta3=1.0)
    with pytest.raises(ValueError, match="takes no options"):
        get_strategy("round_robin", seed=1)


def test_min_weight_too_large_for_k_is_reported_when_weights_are_computed() -> None:
    strategy = get_strategy("pike", min_weight=0.3)  # fine for K ≤ 3
    with pytest.raises(ValueError, match="min_weight"):
        strategy.initial_weights(np.ones(4))


def test_domain_stats_are_checked() -> None:
    with pytest.raises(ValueError, match="variance"):
        DomainStats(grad_sq=np.ones(3), variance=np.ones(2), loss=np.ones(3))
    with pytest.raises(ValueError, match="variance"):
        DomainStats(grad_sq=np.ones(2), variance=np.array([1.0, -1.0]), loss=np.ones(2))
    with pytest.raises(ValueError, match="loss"):
        DomainStats(grad_sq=np.ones(2), variance=np.ones(2), loss=np.array([1.0, np.inf]))
    stats = DomainStats(grad_sq=[1.0, np.nan], variance=[0.5, np.nan], loss=[2.0, np.nan])
    assert stats.num_domains == 2
    with pytest.raises(ValueError):
        stats.grad_sq[0] = 3.0  # read-only


def test_stats_for_a_different_number_of_domains_are_rejected() -> None:
    stats = DomainStats(grad_sq=np.ones(2), variance=np.ones(2), loss=np.ones(2))
    with pytest.raises(ValueError, match="stats cover 2 domains"):
        get_strategy("pike").weights(1, np.full(3, 1 / 3), stats, 8)


# ----------------------------------------------------------------------------------------------- pull_toward
def test_pull_toward_is_a_geometric_mix_with_the_anchor() -> None:
    w, a = np.array([0.7, 0.2, 0.1]), np.array([0.2, 0.3, 0.5])
    np.testing.assert_allclose(pull_toward(w, a, 0.0), w)
    np.testing.assert_allclose(pull_toward(w, a, 1.0), a)
    half = pull_toward(w, a, 0.5)
    np.testing.assert_allclose(half, np.sqrt(w * a) / np.sqrt(w * a).sum())
    # Domains without a fresh estimate keep their weights; the others keep their total mass.
    part = pull_toward(w, a, 0.5, present=[True, True, False])
    assert part[2] == pytest.approx(0.1, rel=1e-12) and part.sum() == pytest.approx(1.0)
    np.testing.assert_allclose(part[:2] / part[:2].sum(), np.sqrt(w[:2] * a[:2]) / np.sqrt(w[:2] * a[:2]).sum())
    with pytest.raises(ValueError, match="pull"):
        pull_toward(w, a, 1.5)
    with pytest.raises(ValueError, match="anchor"):
        pull_toward(w, a[:2] / a[:2].sum(), 0.5)


def test_with_a_pull_constant_exponents_settle_instead_of_drifting() -> None:
    """log w → log a + (1 − λ)/λ · e (up to a constant): bounded, whereas λ = 0 piles all weight on one domain."""
    a, e, lam = np.full(3, 1 / 3), np.array([0.3, 0.0, -0.2]), 0.2
    w, free = a.copy(), a.copy()
    for _ in range(300):
        w = pull_toward(multiplicative_update(w, e), a, lam)
        free = multiplicative_update(free, e)
    expected = a * np.exp((1 - lam) / lam * e)
    np.testing.assert_allclose(w, expected / expected.sum(), rtol=1e-9)
    assert free[0] > 0.999


@given(st.lists(st.floats(0.02, 1.0), min_size=2, max_size=6), st.floats(0.0, 1.0), st.integers(0, 10_000))
@settings(max_examples=60, deadline=None)
def test_pull_toward_keeps_a_floor_that_both_vectors_respect(raw: list[float], lam: float, seed: int) -> None:
    k = len(raw)
    m = 0.5 / k / 2
    w = apply_floor(np.array(raw), m)
    a = apply_floor(np.random.default_rng(seed).uniform(0.01, 1, k), m)
    out = pull_toward(w, a, lam)
    assert out.sum() == pytest.approx(1.0) and np.all(out >= m * (1 - 1e-9))


# ------------------------------------------------------------------------------------------ cross terms
def test_gains_are_the_directional_derivative_of_the_weighted_objective() -> None:
    """L_k(θ) = ½‖θ − a_k‖²: ∇L_k = θ − a_k. One more sample of domain j moves θ along −∇L_j; the objective
    Σ_k c_k·L_k then falls at rate ⟨∇L_j, Σ_k c_k ∇L_k⟩, which is gains(G, inner, c)_j."""
    from pike_stream.strategies.pike import gains

    rng = np.random.default_rng(0)
    theta, targets = rng.normal(size=5), rng.normal(size=(3, 5))
    grads = theta - targets
    inner = grads @ grads.T
    for c in (np.ones(3), balanced_dual_weights(np.array([0.5, 2.0, 1.0]), 1.0)):
        def objective(point: np.ndarray, c: np.ndarray = c) -> float:
            return float(sum(ck * 0.5 * np.sum((point - a) ** 2) for ck, a in zip(c, targets)))

        eps = 1e-6
        rates = [(objective(theta) - objective(theta - eps * grads[j])) / eps for j in range(3)]
        np.testing.assert_allclose(gains(np.diag(inner), inner, c), rates, rtol=1e-4)
        np.testing.assert_allclose(gains(np.diag(inner), None, c), c * np.diag(inner))  # the paper's own term


def test_gains_count_a_missing_cross_term_as_zero_and_a_missing_domain_as_missing() -> None:
    from pike_stream.strategies.pike import gains

    inner = np.array([[9.0, 1.0, np.nan], [1.0, 9.0, 2.0], [np.nan, 2.0, 9.0]])
    np.testing.assert_allclose(gains(np.array([4.0, 5.0, np.nan]), inner), [5.0, 8.0, np.nan])


def test_cross_terms_favour_a_domain_that_lowers_the_others_losses() -> None:
    """Equal norms and variances; domains 0 and 1 share structure (positive inner product), 2 shares none."""
    stats = DomainStats(grad_sq=np.ones(3), variance=np.ones(3), loss=np.ones(3),
                        inner=np.array([[1.0, 0.6, 0.0], [0.6, 1.0, 0.0], [0.0, 0.0, 1.0]]))
    start = np.full(3, 1 / 3)
    for name in ("pike", "balanced_pike"):
        plain = get_strategy(name).weights(1, start, stats, 64)
        np.testing.assert_allclose(plain, start)
        crossed = get_strategy(name, cross_terms=True).weights(1, start, stats, 64)
        assert crossed[0] == pytest.approx(crossed[1]) and crossed[0] > 1 / 3 > crossed[2]
        with pytest.raises(ValueError, match="'cross_terms' needs the cross-domain inner products"):
            get_strategy(name, cross_terms=True).weights(1, start, DomainStats(np.ones(3), np.ones(3), np.ones(3)), 64)
    with pytest.raises(ValueError, match="cross_terms"):
        get_strategy("pike", cross_terms=1)
    with pytest.raises(ValueError, match=r"inner must be a \[3, 3\] matrix"):
        DomainStats(np.ones(3), np.ones(3), np.ones(3), inner=np.ones((2, 2)))
