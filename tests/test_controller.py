"""The mixing controller (no Composer, no torch): schedule, averaging, no stale estimates, skipped updates,
persisting conflicts and its state."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from pike_stream.controller import (
    CONFLICT_MIN_UPDATES,
    STATE_FORMAT,
    MixingController,
    min_cosine,
)
from pike_stream.probe import ProbeResult
from pike_stream.strategies import get_strategy

NAMES = ["web", "code", "math"]
B = 12


def probe(grad_sq, variance, loss, counts, inner=None) -> ProbeResult:
    return ProbeResult(np.array(grad_sq, float), np.array(variance, float), np.array(loss, float),
                       np.array(counts), None if inner is None else np.array(inner, float))


def test_the_controller_needs_neither_composer_nor_torch_to_import() -> None:
    import subprocess

    code = ("import sys; import pike_stream.controller; "
            "print(sorted(m for m in ('composer', 'torch') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_controller_schedule_is_a_function_of_the_step() -> None:
    controller = MixingController(get_strategy("pike"), NAMES, update_interval=3, warmup_steps=2)
    assert [t for t in range(12) if controller.probes_at(t)] == [2, 5, 8, 11]
    static = MixingController(get_strategy("proportional"), NAMES, update_interval=1)
    assert not any(static.probes_at(t) for t in range(5))


def test_controller_averages_fresh_estimates_and_never_reuses_a_stale_one() -> None:
    controller = MixingController(get_strategy("pike"), NAMES, update_interval=1, ema=0.5)
    w = np.full(3, 1 / 3)
    first = controller.next_weights(0, w, B, probe([1.0, 2.0, np.nan], [4.0, 4.0, np.nan], [3.0, 2.0, np.nan],
                                                   [6, 5, 0]))
    assert first.skipped is None and np.isnan(first.stats.grad_sq[2])
    assert first.weights[2] == pytest.approx(1 / 3) and first.weights[1] > first.weights[0]  # math: never estimated
    # code has no fresh estimate now: the strategy sees NaN for it (it keeps its share), not its old average.
    second = controller.next_weights(1, first.weights, B, probe([3.0, np.nan, 5.0], [8.0, np.nan, 2.0],
                                                                [1.0, 2.5, 1.0], [6, 1, 5]))
    np.testing.assert_allclose(second.stats.grad_sq, [2.0, np.nan, 5.0])   # average; missing; first as is
    np.testing.assert_allclose(second.stats.variance, [6.0, np.nan, 2.0])
    np.testing.assert_allclose(second.stats.loss, [2.0, 2.25, 1.0])        # the loss was measured (one sample)
    assert second.weights[1] == pytest.approx(first.weights[1], rel=1e-12)
    # The average of code is kept, and resumes when code is estimated again.
    np.testing.assert_allclose(controller.estimates.grad_sq, [2.0, 2.0, 5.0])
    third = controller.next_weights(2, second.weights, B, probe([2.0, 4.0, 5.0], [6.0, 6.0, 2.0],
                                                                [2.0, 2.0, 1.0], [6, 6, 6]))
    np.testing.assert_allclose(third.stats.grad_sq, [2.0, 3.0, 5.0])
    assert controller.updates == 3 and controller.skipped_updates == 0


def test_a_domain_without_estimates_is_not_pushed_down_by_its_last_one() -> None:
    """The defect this replaces: one negative estimate, carried, pushed an unprobed domain down at every update."""
    controller = MixingController(get_strategy("pike", zeta1=0.5, zeta2=0.0, min_weight=0.0), NAMES,
                                  update_interval=1, ema=0.0)
    w = controller.next_weights(0, np.full(3, 1 / 3), B, probe([1.0, 1.0, -3.0], [1.0, 1.0, 1.0], [1.0] * 3,
                                                                [4, 4, 4])).weights
    after_negative = w[2]
    for t in range(1, 20):
        w = controller.next_weights(t, w, B, probe([1.0, 1.0, np.nan], [1.0, 1.0, np.nan], [1.0, 1.0, np.nan],
                                                   [6, 6, 0])).weights
    assert w[2] == pytest.approx(after_negative, rel=1e-9)


@pytest.mark.parametrize("bad, reason", [
    (dict(loss=[1.0, np.nan, 1.0]), "loss is non-finite for code"),
    (dict(grad_sq=[np.inf, 1.0, 1.0]), "grad_sq is non-finite for web"),
    (dict(variance=[1.0, 1.0, np.nan]), "variance is non-finite for math"),
])
def test_controller_skips_non_finite_statistics(bad: dict, reason: str) -> None:
    controller = MixingController(get_strategy("pike"), NAMES, update_interval=1)
    fields = dict(grad_sq=[1.0, 2.0, 3.0], variance=[1.0, 1.0, 1.0], loss=[1.0, 1.0, 1.0], counts=[4, 4, 4])
    w = np.array([0.5, 0.3, 0.2])
    update = controller.next_weights(0, w, B, probe(**{**fields, **bad}))
    assert reason in update.skipped and update.stats is None
    np.testing.assert_array_equal(update.weights, w)
    assert controller.skipped_updates == 1 and controller.updates == 0
    assert np.isnan(controller.estimates.grad_sq).all()


def test_controller_accepts_missing_estimates_when_no_rank_needed_to_have_one() -> None:
    """4 samples over 4 ranks may be one per rank: NaN G and S are 'missing', not bad; 5 samples are not."""
    controller = MixingController(get_strategy("pike"), NAMES, update_interval=1)
    w = np.full(3, 1 / 3)
    fields = dict(grad_sq=[1.0, np.nan, 3.0], variance=[1.0, np.nan, 1.0], loss=[1.0, 1.0, 1.0])
    assert controller.next_weights(0, w, B, probe(**fields, counts=[8, 4, 8]), world_size=4).skipped is None
    assert "grad_sq" in controller.next_weights(0, w, B, probe(**fields, counts=[8, 5, 8]), world_size=4).skipped


def test_min_cosine_picks_the_lowest_defined_pair() -> None:
    cosine = [[1.0, 0.2, -0.5], [0.2, 1.0, np.nan], [-0.5, np.nan, 1.0]]
    assert min_cosine(np.array(cosine)) == (-0.5, 0, 2)
    assert min_cosine(np.full((3, 3), np.nan)) is None


def test_a_conflict_is_reported_only_once_it_persists() -> None:
    """web and math have opposite gradients at every probe; web and code are orthogonal. The averaged cosine
    is the averaged inner product over the averaged norms; no conflict is reported before CONFLICT_MIN_UPDATES."""
    controller = MixingController(get_strategy("pike"), NAMES, update_interval=1, conflict_threshold=-0.3)
    g = np.array([4.0, 1.0, 9.0])
    inner = [[4.0, 0.0, -6.0], [0.0, 1.0, 0.0], [-6.0, 0.0, 9.0]]  # cosine(web, math) = −6/√(4·9) = −1
    w = np.full(3, 1 / 3)
    for t in range(CONFLICT_MIN_UPDATES):
        update = controller.next_weights(t, w, B, probe(g, [1.0] * 3, [1.0] * 3, [4, 4, 4], inner))
        if t < CONFLICT_MIN_UPDATES - 1:
            assert update.conflict is None and update.min_cosine is None
    assert update.min_cosine == pytest.approx(-1.0) and update.conflict == ("web", "math")
    np.testing.assert_allclose(controller.cosines[0, 1], 0.0, atol=1e-12)


def test_a_cosine_that_breaks_cauchy_schwarz_is_undefined_not_a_conflict() -> None:
    """A pure-noise domain has a mean gradient of about zero: its averaged G is tiny next to the noise in the
    inner products, and their ratio leaves [−1, 1]. That is no cosine, so no conflict either."""
    controller = MixingController(get_strategy("pike"), NAMES, update_interval=1, conflict_threshold=-0.2)
    inner = [[4.0, 0.5, -3.0], [0.5, 1.0, 0.1], [-3.0, 0.1, 0.01]]  # |−3| > √(4·0.01): noise-dominated
    for t in range(CONFLICT_MIN_UPDATES + 2):
        update = controller.next_weights(t, np.full(3, 1 / 3), B,
                                         probe([4.0, 1.0, 0.01], [1.0] * 3, [1.0] * 3, [4, 4, 4], inner))
    assert np.isnan(controller.cosines[0, 2]) and controller.cosines[0, 1] == pytest.approx(0.25)
    assert update.conflict is None and update.min_cosine == pytest.approx(0.25)


def test_one_noisy_probe_does_not_make_a_conflict() -> None:
    """Per-probe inner products that scatter around a positive mean average to a positive cosine, although
    single probes are strongly negative: what a minimum over noisy cosines took for a conflict."""
    controller = MixingController(get_strategy("pike"), NAMES, update_interval=1, conflict_threshold=-0.2)
    rng = np.random.default_rng(0)
    w = np.full(3, 1 / 3)
    negative_probes = 0
    for t in range(40):
        cross = 0.3 + rng.normal(0, 1.5, size=3)  # true inner products 0.3, true norms 1: cosine 0.3
        negative_probes += int(np.min(cross) < -0.2)
        inner = [[1.0, cross[0], cross[1]], [cross[0], 1.0, cross[2]], [cross[1], cross[2], 1.0]]
        update = controller.next_weights(t, w, B, probe([1.0] * 3, [1.0] * 3, [1.0] * 3, [4, 4, 4], inner))
    assert negative_probes > 20
    assert update.conflict is None and update.min_cosine > -0.2


def test_a_domain_up_weighted_while_it_was_learned_returns_once_it_is_learned() -> None:
    """A domain whose gradient is large for a while (being learned) then as small as the others' gains weight;
    with the pull it returns to the initial mixture within a few times 1/pull updates, without it keeps its gain."""
    def run(pull: float) -> tuple[float, float]:
        controller = MixingController(get_strategy("pike", zeta1=0.3, zeta2=0.0), NAMES, update_interval=1,
                                      ema=0.0, pull=pull)
        w, peak = np.full(3, 1 / 3), 0.0
        for t in range(80):
            learning = t < 20
            update = controller.next_weights(t, w, B, probe([5.0 if learning else 1.0, 1.0, 1.0], [1.0] * 3,
                                                            [2.0] * 3, [4, 4, 4]))
            w = update.weights
            peak = max(peak, w[0])
        return peak, w[0]

    peak, end = run(0.2)
    assert peak > 0.45 and end == pytest.approx(1 / 3, abs=1e-3)
    peak0, end0 = run(0.0)
    assert end0 > 0.9  # the running sum keeps everything the domain gained


def test_the_anchor_is_the_first_mixture_and_is_saved() -> None:
    controller = MixingController(get_strategy("pike"), NAMES, update_interval=1, warmup_steps=2)
    start = np.array([0.5, 0.3, 0.2])
    controller.next_weights(0, start, B)  # warm-up: no probe, the weights stay
    controller.next_weights(1, start, B)
    np.testing.assert_array_equal(controller.anchor, start)
    state = controller.state_dict()
    assert state["anchor"] == {"web": 0.5, "code": 0.3, "math": 0.2}
    restored = MixingController(get_strategy("pike"), NAMES, update_interval=1, warmup_steps=2)
    restored.load_state_dict(state)
    np.testing.assert_array_equal(restored.anchor, start)
    with pytest.raises(ValueError, match="anchor"):
        restored.load_state_dict({**state, "anchor": {"web": 0.5, "code": 0.5}})
    # A version-2 state (before the anchor) takes the weights at the resume as the anchor.
    old = {k: v for k, v in state.items() if k not in ("anchor", "options")} | {"version": 2}
    resumed = MixingController(get_strategy("pike"), NAMES)
    resumed.load_state_dict(old)
    assert resumed.anchor is None
    resumed.next_weights(5, [0.2, 0.2, 0.6], B)
    np.testing.assert_array_equal(resumed.anchor, [0.2, 0.2, 0.6])


def test_controller_state_round_trip_continues_identically() -> None:
    def updates(controller: MixingController, start: int, w: np.ndarray) -> list[tuple]:
        out = []
        for t in range(start, start + 12):
            rng = np.random.default_rng(t)
            g, inner = rng.uniform(0.5, 2, 3), rng.normal(0, 0.2, (3, 3))
            inner = inner + inner.T
            np.fill_diagonal(inner, g)  # as the probe gives it
            stats = probe(g, rng.uniform(1, 5, 3), rng.uniform(1, 3, 3), [4, 1, 4], inner)
            update = controller.next_weights(t, w, B, stats)
            w = update.weights
            out.append((w, update.min_cosine, update.conflict))
        return out

    def make() -> MixingController:
        return MixingController(get_strategy("balanced_pike", tau=2.0), NAMES, update_interval=1, ema=0.7,
                                conflict_threshold=0.5)
    reference = make()
    w = updates(reference, 0, np.full(3, 1 / 3))[-1][0]
    state = reference.state_dict()
    assert state["format"] == STATE_FORMAT and set(state["domains"]) == set(NAMES)
    restored = make()
    restored.load_state_dict(state)
    expected, got = updates(reference, 12, w), updates(restored, 12, w)
    for (w1, c1, p1), (w2, c2, p2) in zip(expected, got):
        np.testing.assert_array_equal(w1, w2)
        assert (c1, p1) == (c2, p2)
    assert any(c is not None for _, c, _ in expected)
    with pytest.raises(ValueError, match="covers domains"):
        MixingController(get_strategy("pike"), ["web", "code", "books"], update_interval=1).load_state_dict(state)
    with pytest.raises(ValueError, match="version"):
        make().load_state_dict({**state, "version": 99})


def test_a_state_saved_with_other_options_is_refused_unless_changes_are_allowed(caplog) -> None:
    saved = MixingController(get_strategy("pike", zeta1=0.2), NAMES, update_interval=5).state_dict()
    assert saved["options"]["zeta1"] == 0.2 and saved["options"]["update_interval"] == 5
    with pytest.raises(ValueError, match="update_interval 5 → 10; zeta1 0.2 → 0.1"):
        MixingController(get_strategy("pike"), NAMES, update_interval=10).load_state_dict(saved)
    with pytest.raises(ValueError, match="strategy 'pike' → 'balanced_pike'"):
        MixingController(get_strategy("balanced_pike", zeta1=0.2), NAMES, update_interval=5).load_state_dict(saved)
    MixingController(get_strategy("pike", zeta1=0.2), NAMES, update_interval=5).load_state_dict(saved)  # same: fine
    with caplog.at_level("WARNING", logger="pike_stream.controller"):
        MixingController(get_strategy("pike"), NAMES, update_interval=10, allow_changes=True).load_state_dict(saved)
    assert "changed options" in caplog.text and "zeta1 0.2 → 0.1" in caplog.text


@pytest.mark.parametrize("strategy", ["pike", "balanced_pike", "uniform"])
def test_a_state_saved_before_the_metric_and_cross_terms_options_resumes_as_it_ran(strategy: str) -> None:
    saved = MixingController(get_strategy(strategy), NAMES).state_dict()
    del saved["options"]["metric"]
    saved["options"].pop("cross_terms", None)
    MixingController(get_strategy(strategy), NAMES).load_state_dict(saved)
    with pytest.raises(ValueError, match="metric 'euclidean' → 'adam'"):
        MixingController(get_strategy(strategy), NAMES, metric="adam").load_state_dict(saved)
    if strategy != "uniform":
        with pytest.raises(ValueError, match="cross_terms False → True"):
            MixingController(get_strategy(strategy, cross_terms=True), NAMES).load_state_dict(saved)


@pytest.mark.parametrize("field", ["strategy", "updates", "skipped_updates", "domains"])
def test_a_malformed_state_names_the_missing_field(field: str) -> None:
    state = MixingController(get_strategy("pike"), NAMES).state_dict()
    del state[field]
    with pytest.raises(ValueError, match=f"field '{field}' is missing"):
        MixingController(get_strategy("pike"), NAMES).load_state_dict(state)


def test_a_version_1_state_resumes_with_fresh_conflict_averages() -> None:
    state = {"format": STATE_FORMAT, "version": 1, "strategy": "pike", "updates": 7, "skipped_updates": 1,
             "domains": {n: {"grad_sq": 1.0, "variance": 2.0, "loss": 3.0} for n in NAMES}}
    controller = MixingController(get_strategy("pike"), NAMES)
    controller.load_state_dict(state)
    assert controller.updates == 7 and np.isnan(controller.cosines).all()
    np.testing.assert_array_equal(controller.estimates.variance, [2.0] * 3)


@pytest.mark.parametrize("option, value", [("update_interval", 0), ("warmup_steps", -1), ("ema", 1.0),
                                           ("probe_samples", 1), ("probe_samples", -2), ("pull", 1.5),
                                           ("pull", -0.1), ("metric", "sgd"), ("metric", None)])
def test_bad_schedule_options_name_the_option(option: str, value) -> None:
    with pytest.raises(ValueError, match=option):
        MixingController(get_strategy("pike"), NAMES, **{option: value})
