"""Tests of pike_stream.metric: Adam's inner product, read from real optimizers, and the probe measured in it."""

from __future__ import annotations

import pytest
import torch
from composer.optim import DecoupledAdamW

from pike_stream.gradient_sums import reduce_pair
from pike_stream.metric import adam_metric
from pike_stream.probe import probe_domains

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _squared_error(model: torch.nn.Module, batch: dict) -> torch.Tensor:
    return 0.5 * (model(batch["x"]).squeeze(-1) - batch["y"]) ** 2


def _regression(seed: int, rows: int = 12, dim: int = 6) -> tuple[torch.nn.Sequential, dict]:
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(dim, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
    generator = torch.Generator().manual_seed(seed + 1)
    batch = {"x": torch.randn(rows, dim, generator=generator), "y": torch.randn(rows, generator=generator),
             "domain": torch.arange(rows) % 2}
    return model, batch


def _train(model: torch.nn.Module, batch: dict, optimizer: torch.optim.Optimizer, steps: int) -> None:
    for _ in range(steps):
        optimizer.zero_grad()
        _squared_error(model, batch).mean().backward()
        optimizer.step()


def _preconditioner(scales, params) -> list[torch.Tensor]:
    """P of every parameter, from its scale's √P (all of them have one)."""
    assert all(scale is not None for scale in scales)
    return [scale.root(0, p.numel()).reshape(p.shape) ** 2 for scale, p in zip(scales, params)]


@pytest.mark.parametrize("make", [
    lambda params: torch.optim.Adam(params, lr=0.01, betas=(0.0, 0.99), eps=1e-3),
    lambda params: torch.optim.AdamW(params, lr=0.01, betas=(0.0, 0.9), eps=1e-4, weight_decay=0.0),
    lambda params: DecoupledAdamW(params, lr=0.01, betas=(0.0, 0.95), eps=1e-3, weight_decay=0.0),
    lambda params: torch.optim.Adam(params, lr=0.01, betas=(0.0, 0.99), eps=1e-3, amsgrad=True),
], ids=["Adam", "AdamW", "DecoupledAdamW", "Adam-amsgrad"])
def test_the_preconditioner_is_the_one_of_the_optimizers_own_step(make) -> None:
    """With β1 = 0 and no weight decay an Adam step is exactly −lr·P·g: the P read from the state after a step
    (which holds that step's second moment) reproduces the step the optimizer took."""
    model, batch = _regression(seed=0)
    params = list(model.parameters())
    optimizer = make(params)
    _train(model, batch, optimizer, steps=3)
    before = [p.detach().clone() for p in params]
    optimizer.zero_grad()
    _squared_error(model, batch).mean().backward()
    grads = [p.grad.detach().clone() for p in params if p.grad is not None]
    optimizer.step()
    scales = adam_metric(optimizer, params)
    assert scales is not None and all(scale is not None for scale in scales)
    for p, p0, g, precondition in zip(params, before, grads, _preconditioner(scales, params)):
        torch.testing.assert_close(p.detach() - p0, -0.01 * precondition * g, rtol=1e-4, atol=1e-8)


def test_group_learning_rates_and_parameters_without_a_step_are_weighed_as_the_step_moves_them() -> None:
    model, batch = _regression(seed=1)
    first, second = model[0], model[2]
    frozen = torch.nn.Parameter(torch.ones(3))  # in no optimizer
    optimizer = torch.optim.Adam([{"params": first.parameters(), "lr": 0.02},
                                  {"params": second.parameters(), "lr": 0.005}], betas=(0.0, 0.99))
    params = list(first.parameters()) + list(second.parameters()) + [frozen]
    assert adam_metric(optimizer, params) is None, "no second moments before the first step"
    _train(model, batch, optimizer, steps=2)
    scales = adam_metric([optimizer], params)
    assert scales is not None
    assert [scale.rel_lr if scale else None for scale in scales] == [1.0, 1.0, 0.25, 0.25, None]


def test_an_optimizer_without_second_moments_is_refused_by_name() -> None:
    model, _ = _regression(seed=2)
    with pytest.raises(ValueError, match=r"metric: adam.*Adam-family optimizer.*got SGD; use metric: euclidean"):
        adam_metric(torch.optim.SGD(model.parameters(), lr=0.1), list(model.parameters()))


def test_probe_statistics_in_adams_inner_product_follow_their_definition() -> None:
    """G = ⟨g_A, P·g_B⟩ and S = ‖g_A − g_B‖²_P/(1/n_A + 1/n_B); the cross-domain inner products of the sketch
    are those of P^½·g; a parameter left out (None) adds nothing."""
    model, batch = _regression(seed=3, rows=16)
    params = list(model.parameters())
    optimizer = torch.optim.Adam(params, lr=0.01)
    _train(model, batch, optimizer, steps=4)
    scales = adam_metric(optimizer, params)
    assert scales is not None
    precondition = torch.cat([p.flatten() for p in _preconditioner(scales, params)]).double()
    result = probe_domains(model, batch, 2, _squared_error, sketch_dim=0, metric=scales)

    def gradient(rows: list[int]) -> torch.Tensor:
        sub = {"x": batch["x"][rows], "y": batch["y"][rows]}
        grads = torch.autograd.grad(_squared_error(model, sub).mean(), params)
        return torch.cat([g.flatten() for g in grads]).double()

    for k in range(2):
        rows = [i for i in range(16) if i % 2 == k]
        g_a, g_b = gradient(rows[:4]), gradient(rows[4:])
        assert result.grad_sq[k] == pytest.approx(float(g_a @ (precondition * g_b)), rel=1e-5)
        assert result.variance[k] == pytest.approx(float((g_a - g_b) @ (precondition * (g_a - g_b))) * 2, rel=1e-5)
    euclidean = probe_domains(model, batch, 2, _squared_error, sketch_dim=0)
    assert abs(result.grad_sq[0] / euclidean.grad_sq[0] - 1) > 0.1, "P must matter on this model"

    only_last = [None, None, scales[2], scales[3]]
    partial = probe_domains(model, batch, 2, _squared_error, sketch_dim=0, metric=only_last)
    last = precondition[-params[2].numel() - params[3].numel():]
    rows = [i for i in range(16) if i % 2 == 0]
    g_a, g_b = gradient(rows[:4])[-last.numel():], gradient(rows[4:])[-last.numel():]
    assert partial.grad_sq[0] == pytest.approx(float(g_a @ (last * g_b)), rel=1e-5)
    with pytest.raises(ValueError, match="metric has 3 entries for 4 trainable parameters"):
        probe_domains(model, batch, 2, _squared_error, metric=scales[:3])


def test_reduce_pair_in_adams_inner_product_is_the_euclidean_one_of_root_p_times_the_gradients() -> None:
    """Dot, squared difference and the sketch (hence the cross-domain inner products) alike, in chunks, with a
    half that does not reach a parameter (None)."""
    model, batch = _regression(seed=4)
    params = list(model.parameters())
    optimizer = torch.optim.Adam(params, lr=0.01)
    _train(model, batch, optimizer, steps=3)
    scales = adam_metric(optimizer, params)
    assert scales is not None
    roots = [scale.root(0, p.numel()).reshape(p.shape) for scale, p in zip(scales, params) if scale is not None]
    generator = torch.Generator().manual_seed(0)
    g_a: list[torch.Tensor | None] = [torch.randn(p.shape, generator=generator) for p in params]
    g_b = [torch.randn(p.shape, generator=generator) for p in params]
    g_a[1] = None
    results = []
    for a, b, metric in ((g_a, g_b, scales),
                         ([None if g is None else g * r for g, r in zip(g_a, roots)],
                          [g * r for g, r in zip(g_b, roots)], None)):
        sketch = torch.zeros(32)
        dot, diff_sq = reduce_pair(a, b, 3, 4, sketch, seed=7, chunk=5, metric=metric)
        results.append((float(dot), float(diff_sq), sketch))
    assert results[0][0] == pytest.approx(results[1][0], rel=1e-6)
    assert results[0][1] == pytest.approx(results[1][1], rel=1e-6)
    torch.testing.assert_close(results[0][2], results[1][2])
    assert g_b[0].abs().sum() > 0 and all(g is None or g.abs().sum() > 0 for g in g_a), "inputs left unchanged"
