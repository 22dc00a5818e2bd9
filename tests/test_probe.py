"""Tests of pike_stream.probe: unbiased per-domain gradient statistics that leave the model untouched."""

from __future__ import annotations

import datetime
import socket
import weakref
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from pike_stream.probe import ProbeResult, causal_lm_per_sample_loss, probe_domains

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _squared_error(model: torch.nn.Module, batch: dict) -> torch.Tensor:
    """Per-sample ½(f(x) − y)²."""
    return 0.5 * (model(batch["x"]).squeeze(-1) - batch["y"]) ** 2


def _batch(domains: list[int], dim: int, seed: int) -> dict:
    """A regression batch with the given domain of each row, x ~ N(0, I), y ~ N(0, 1)."""
    generator = torch.Generator().manual_seed(seed)
    b = len(domains)
    return {
        "x": torch.randn(b, dim, generator=generator),
        "y": torch.randn(b, generator=generator),
        "domain": torch.tensor(domains, dtype=torch.long),
        "sample_id": torch.arange(b),
    }


def _mean_loss_gradient(model: torch.nn.Module, batch: dict, rows: list[int]) -> torch.Tensor:
    """Flattened gradient of the mean squared-error loss of ``rows``, computed directly."""
    sub = {"x": batch["x"][rows], "y": batch["y"][rows]}
    grads = torch.autograd.grad(_squared_error(model, sub).mean(), list(model.parameters()))
    return torch.cat([g.flatten() for g in grads]).double()


def _mlp(dim: int, seed: int) -> torch.nn.Module:
    """A small two-layer regression network, initialised from ``seed``."""
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(dim, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))


def test_estimates_follow_their_definition_on_halves_in_batch_order() -> None:
    """G = ⟨g_A, g_B⟩ and S = ‖g_A − g_B‖²/(1/n_A + 1/n_B), with A the first ⌊n/2⌋ samples in batch order."""
    model = _mlp(5, seed=0)
    domains = [1, 0, 1, 0, 0, 1, 1, 0, 1, 0, 0]  # domain 0: 6 samples (3 + 3); domain 1: 5 samples (2 + 3)
    batch = _batch(domains, dim=5, seed=1)
    result = probe_domains(model, batch, 2, _squared_error)
    for k in range(2):
        rows = [i for i, d in enumerate(domains) if d == k]
        n_a = len(rows) // 2
        g_a = _mean_loss_gradient(model, batch, rows[:n_a])
        g_b = _mean_loss_gradient(model, batch, rows[n_a:])
        n_b = len(rows) - n_a
        assert result.grad_sq[k] == pytest.approx(float(g_a @ g_b), rel=1e-5, abs=1e-9)
        expected_variance = float((g_a - g_b) @ (g_a - g_b)) / (1 / n_a + 1 / n_b)
        assert result.variance[k] == pytest.approx(expected_variance, rel=1e-5)
        with torch.no_grad():
            losses = _squared_error(model, {"x": batch["x"][rows], "y": batch["y"][rows]})
        assert result.loss[k] == pytest.approx(float(losses.mean()), rel=1e-6)
    assert result.counts.tolist() == [6, 5]


def test_estimates_are_unbiased_for_linear_regression() -> None:
    """Over many batches at a fixed θ, mean G_k → ‖∇L_k‖² and mean S_k → σ_k², within 4 standard errors.

    Domain k: x ~ N(0, I_d), y = x·θ*_k + s_k·ε. With δ = θ − θ*_k the loss ½(x·θ − y)² has per-sample gradient
    x(x·δ − s_k ε), so ∇L_k = δ and σ_k² = E‖x(x·δ − s_k ε)‖² − ‖δ‖² = (d + 1)‖δ‖² + d·s_k² (Isserlis:
    E[‖x‖²(x·δ)²] = (d + 2)‖δ‖²).
    """
    dim, trials = 4, 500
    counts = [4, 5, 8]  # 5: unequal halves
    noise = torch.tensor([0.5, 1.0, 2.0])
    generator = torch.Generator().manual_seed(2024)
    theta = torch.randn(dim, generator=generator)
    targets = torch.randn(len(counts), dim, generator=generator)
    model = torch.nn.Linear(dim, 1, bias=False)
    with torch.no_grad():
        model.weight.copy_(theta)
    deltas_sq = ((theta - targets) ** 2).sum(dim=1).double()
    true_grad_sq = deltas_sq.numpy()
    true_variance = ((dim + 1) * deltas_sq + dim * noise.double() ** 2).numpy()

    domains = torch.cat([torch.full((n,), k) for k, n in enumerate(counts)])
    estimates = []
    for _ in range(trials):
        order = torch.randperm(domains.numel(), generator=generator)
        domain = domains[order]
        x = torch.randn(domain.numel(), dim, generator=generator)
        y = (x * targets[domain]).sum(dim=1) + noise[domain] * torch.randn(domain.numel(), generator=generator)
        result = probe_domains(model, {"x": x, "y": y, "domain": domain}, len(counts), _squared_error, sketch_dim=0)
        estimates.append((result.grad_sq, result.variance))
    grad_sq = np.array([e[0] for e in estimates])
    variance = np.array([e[1] for e in estimates])
    for values, truth in ((grad_sq, true_grad_sq), (variance, true_variance)):
        standard_error = values.std(axis=0, ddof=1) / np.sqrt(trials)
        assert np.all(np.abs(values.mean(axis=0) - truth) < 4 * standard_error), (values.mean(axis=0), truth)
        # The check has power: the standard error is a small fraction of the value being estimated.
        assert np.all(standard_error < 0.15 * truth)


def test_params_restrict_the_gradient_to_trainable_given_parameters() -> None:
    model = _mlp(5, seed=0)
    model[2].bias.requires_grad_(False)
    domains = [0, 0, 0, 0]
    batch = _batch(domains, dim=5, seed=1)
    result = probe_domains(model, batch, 1, _squared_error, params=list(model[2].parameters()))

    def last_weight_gradient(rows: list[int]) -> torch.Tensor:
        loss = _squared_error(model, {"x": batch["x"][rows], "y": batch["y"][rows]}).mean()
        return torch.autograd.grad(loss, [model[2].weight])[0].flatten().double()

    g_a, g_b = last_weight_gradient([0, 1]), last_weight_gradient([2, 3])
    assert result.grad_sq[0] == pytest.approx(float(g_a @ g_b), rel=1e-5)
    assert result.variance[0] == pytest.approx(float((g_a - g_b) @ (g_a - g_b)), rel=1e-5)  # n/4 = 1


def test_domains_with_fewer_than_two_samples_give_no_estimate() -> None:
    model = _mlp(3, seed=3)
    domains = [0, 3, 1, 0, 3, 0]  # domain 0: 3, domain 1: 1, domain 2: 0, domain 3: 2
    batch = _batch(domains, dim=3, seed=4)
    result = probe_domains(model, batch, 4, _squared_error)
    assert isinstance(result, ProbeResult)
    assert result.counts.tolist() == [3, 1, 0, 2]
    assert np.isfinite(result.grad_sq[[0, 3]]).all() and np.isfinite(result.variance[[0, 3]]).all()
    assert np.isnan(result.grad_sq[[1, 2]]).all() and np.isnan(result.variance[[1, 2]]).all()
    with torch.no_grad():
        single = _squared_error(model, {"x": batch["x"][[2]], "y": batch["y"][[2]]})
    assert result.loss[1] == pytest.approx(float(single[0]), rel=1e-6)
    assert np.isnan(result.loss[2]) and np.isfinite(result.loss[[0, 3]]).all()
    assert result.inner is not None
    assert np.isnan(result.inner[[1, 2], :]).all() and np.isnan(result.inner[:, [1, 2]]).all()
    np.testing.assert_array_equal(np.diag(result.inner)[[0, 3]], result.grad_sq[[0, 3]])


def test_probe_leaves_grads_modes_buffers_and_rng_unchanged() -> None:
    torch.manual_seed(5)
    model = torch.nn.Sequential(
        torch.nn.Linear(6, 16),
        torch.nn.BatchNorm1d(16),
        torch.nn.Dropout(0.3),
        torch.nn.Linear(16, 16),
        torch.nn.Dropout(0.3),
        torch.nn.Linear(16, 1),
    )
    model.train()
    model[4].eval()
    model[0].weight.grad = torch.randn_like(model[0].weight)
    model[3].weight.grad = torch.zeros_like(model[3].weight)
    grads_before = {name: (p.grad, None if p.grad is None else p.grad.clone()) for name, p in model.named_parameters()}
    modes_before = [m.training for m in model.modules()]
    buffers_before = {name: b.clone() for name, b in model.named_buffers()}
    seen_inside: list[tuple[torch.Tensor, int]] = []

    def loss_that_switches_to_train(module: torch.nn.Module, batch: dict) -> torch.Tensor:
        module.train()  # a loss may change modes; the probe must still restore them
        losses = _squared_error(module, batch)
        seen_inside.append((torch.get_rng_state(), int(module[1].num_batches_tracked)))
        return losses

    rng_before = torch.get_rng_state()
    result = probe_domains(model, _batch([0, 1] * 5, dim=6, seed=6), 2, loss_that_switches_to_train)
    assert np.isfinite(result.grad_sq).all()
    # The probe's forwards did draw dropout masks and update BatchNorm statistics ...
    assert not torch.equal(seen_inside[-1][0], rng_before)
    assert seen_inside[-1][1] > int(buffers_before["1.num_batches_tracked"])
    # ... and all of it was undone.
    assert torch.equal(torch.get_rng_state(), rng_before)
    assert [m.training for m in model.modules()] == modes_before
    for name, b in model.named_buffers():
        assert torch.equal(b, buffers_before[name]), name
    for name, p in model.named_parameters():
        grad_object, grad_value = grads_before[name]
        assert p.grad is grad_object, name
        if grad_value is not None:
            assert torch.equal(p.grad, grad_value), name


class _LiveStorageTracker(TorchDispatchMode):
    """Tracks the bytes of every tensor storage created while active, and the peak of those alive at once."""

    def __init__(self) -> None:
        super().__init__()
        self._live: dict[int, int] = {}
        self.current = 0
        self.peak = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        out = func(*args, **(kwargs or {}))
        if any(r.alias_info is not None for r in func._schema.returns):
            return out  # a view or an in-place op allocates nothing
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                self._track(t.untyped_storage())
        return out

    def _track(self, storage: torch.UntypedStorage) -> None:
        key = id(storage)
        if key in self._live:
            return
        self._live[key] = storage.nbytes()
        self.current += storage.nbytes()
        self.peak = max(self.peak, self.current)
        weakref.finalize(storage, self._release, key)

    def _release(self, key: int) -> None:
        self.current -= self._live.pop(key)


def test_memory_stays_within_two_gradient_buffers_whatever_the_number_of_domains() -> None:
    """Peak extra memory ≤ 2.5× the parameter bytes with 6 domains: K gradients kept, or a flattened copy, fail."""
    torch.manual_seed(7)
    width = 1024
    model = torch.nn.Sequential(*[torch.nn.Linear(width, width, bias=False) for _ in range(4)])
    param_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    num_domains = 6
    batch = {
        "x": torch.randn(2 * num_domains, width),
        "y": torch.randn(2 * num_domains),
        "domain": torch.arange(num_domains).repeat(2),
    }
    def loss(module: torch.nn.Module, sub_batch: dict) -> torch.Tensor:
        return 0.5 * (module(sub_batch["x"]).mean(dim=-1) - sub_batch["y"]) ** 2

    with _LiveStorageTracker() as tracker:
        result = probe_domains(model, batch, num_domains, loss)
    assert np.isfinite(result.grad_sq).all()
    assert tracker.peak >= 2 * param_bytes  # both halves' gradients were seen by the tracker
    assert tracker.peak <= 2.5 * param_bytes, tracker.peak / param_bytes


def _linear_score(model: torch.nn.Module, batch: dict) -> torch.Tensor:
    """Per-sample y·(w·x): its gradient is y·x, so domain gradients can be made equal or opposite exactly."""
    return model(batch["x"]).squeeze(-1) * batch["y"]


def test_sketch_inner_products_match_gradient_geometry() -> None:
    dim = 20_000
    torch.manual_seed(8)
    model = torch.nn.Linear(dim, 1, bias=False)
    generator = torch.Generator().manual_seed(9)
    x = torch.randn(4, dim, generator=generator)
    y = torch.randn(4, generator=generator)
    other = torch.randn(4, dim, generator=generator)
    batch = {
        # domain 0: four samples; domain 1: the same samples (identical gradient); domain 2: y negated
        # (opposite gradient); domain 3: independent inputs (nearly orthogonal gradient in 20 000 dimensions)
        "x": torch.cat([x, x, x, other]),
        "y": torch.cat([y, y, -y, y]),
        "domain": torch.arange(4).repeat_interleave(4),
    }
    result = probe_domains(model, batch, 4, _linear_score, sketch_dim=256, seed=1)
    inner = result.inner
    assert inner is not None and inner.shape == (4, 4)
    np.testing.assert_array_equal(np.diag(inner), result.grad_sq)
    np.testing.assert_allclose(inner, inner.T, rtol=1e-12)
    mean_gradients = (batch["y"][:, None] * batch["x"]).view(4, 4, dim).mean(dim=1).double()
    exact = (mean_gradients @ mean_gradients.T).numpy()
    # Identical and opposite gradients have identical and opposite sketches.
    assert inner[0, 2] == pytest.approx(-inner[0, 1], rel=1e-6)
    assert inner[1, 2] == pytest.approx(-inner[0, 1], rel=1e-6)
    # A count sketch with D buckets errs by about ‖a‖‖b‖/√D = ‖a‖‖b‖ · 0.0625 on ⟨a, b⟩.
    scale = np.sqrt(np.outer(np.diag(exact), np.diag(exact)))
    off = ~np.eye(4, dtype=bool)
    np.testing.assert_allclose(inner[off] / scale[off], exact[off] / scale[off], atol=0.25)
    reseeded = probe_domains(model, batch, 4, _linear_score, sketch_dim=256, seed=2).inner
    assert reseeded is not None and reseeded[0, 3] != inner[0, 3]  # the hash depends on the seed
    assert probe_domains(model, batch, 4, _linear_score, sketch_dim=0).inner is None


def test_cross_domain_inner_products_are_unbiased_where_a_noisy_cosine_is_not() -> None:
    """On ½(w·x − y)² with known per-domain regressions, the average over many probes of the cross-domain
    inner product matches ⟨∇L_i, ∇L_j⟩ computed in closed form, within its standard error; the plain cosine
    of the two noisy batch gradients is pulled towards zero."""
    dim, n, probes = 8, 6, 400
    w = torch.zeros(dim)
    targets = torch.stack([torch.linspace(1.0, 2.0, dim), torch.linspace(1.0, 2.0, dim).flip(0) * 0.5 + 0.5])
    model = torch.nn.Linear(dim, 1, bias=False)
    with torch.no_grad():
        model.weight.copy_(w)
    # L_k(w) = E ½(w·x − t_k·x − ε)², x ~ N(0, I), ε ~ N(0, 1): ∇L_k(w) = w − t_k.
    true = float(torch.dot(w - targets[0], w - targets[1]))
    estimates, naive = [], []
    for seed in range(probes):
        generator = torch.Generator().manual_seed(1000 + seed)
        x = torch.randn(2 * n, dim, generator=generator)
        y = torch.cat([x[:n] @ targets[0], x[n:] @ targets[1]]) + torch.randn(2 * n, generator=generator)
        batch = {"x": x, "y": y, "domain": torch.arange(2).repeat_interleave(n)}
        result = probe_domains(model, batch, 2, _squared_error, sketch_dim=64, seed=seed)
        estimates.append(result.inner[0, 1])
        g = [_mean_loss_gradient(model, batch, list(range(k * n, (k + 1) * n))) for k in range(2)]
        naive.append(float(torch.nn.functional.cosine_similarity(g[0], g[1], dim=0)))
    estimates = np.array(estimates)
    stderr = estimates.std(ddof=1) / np.sqrt(probes)
    assert abs(estimates.mean() - true) < 4 * stderr, (estimates.mean(), true, stderr)
    true_cosine = true / float(torch.linalg.norm(w - targets[0]) * torch.linalg.norm(w - targets[1]))
    assert np.mean(naive) < true_cosine - 0.05  # the cosine of noisy gradients is biased low in magnitude


def test_rejects_bad_inputs_with_clear_errors() -> None:
    model = _mlp(3, seed=10)
    batch = _batch([0, 1, 2], dim=3, seed=11)
    with pytest.raises(ValueError, match=r"outside \[0, 2\)"):
        probe_domains(model, batch, 2, _squared_error)
    with pytest.raises(KeyError, match="domain"):
        probe_domains(model, {"x": batch["x"], "y": batch["y"]}, 3, _squared_error)
    with pytest.raises(ValueError, match="expected a tensor of shape"):
        probe_domains(model, _batch([0, 0], dim=3, seed=12), 1, lambda m, b: _squared_error(m, b).sum())
    with pytest.raises(ValueError, match="do not require grad"):
        probe_domains(model, _batch([0, 0], dim=3, seed=12), 1, lambda m, b: _squared_error(m, b).detach())
    frozen = _mlp(3, seed=13).requires_grad_(False)
    with pytest.raises(ValueError, match="requires grad"):
        probe_domains(frozen, batch, 3, _squared_error)


def _tiny_gpt2() -> torch.nn.Module:
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(14)
    return GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=300, n_positions=64))


class _LogitsOnly(torch.nn.Module):
    """A module whose forward returns the logits tensor itself."""

    def __init__(self, lm: torch.nn.Module) -> None:
        super().__init__()
        self.lm = lm

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.lm(input_ids=input_ids).logits


def _manual_causal_lm_loss(lm: torch.nn.Module, input_ids: torch.Tensor) -> torch.Tensor:
    """Mean over positions t of −log softmax(logits[t])[input_ids[t + 1]], one sequence and position at a time."""
    with torch.no_grad():
        log_probs = torch.log_softmax(lm(input_ids=input_ids).logits.double(), dim=-1)
    b, seq_len = input_ids.shape
    return torch.stack(
        [-torch.stack([log_probs[i, t, input_ids[i, t + 1]] for t in range(seq_len - 1)]).mean() for i in range(b)]
    )


def test_causal_lm_per_sample_loss_matches_manual_cross_entropy() -> None:
    lm = _tiny_gpt2().eval()
    input_ids = torch.randint(0, 300, (3, 12), generator=torch.Generator().manual_seed(15))
    manual = _manual_causal_lm_loss(lm, input_ids)
    batch = {"input_ids": input_ids, "domain": torch.zeros(3, dtype=torch.long), "sample_id": torch.arange(3)}
    for model in (lm, _LogitsOnly(lm)):
        with torch.no_grad():
            losses = causal_lm_per_sample_loss(model, batch)
        assert losses.shape == (3,)
        np.testing.assert_allclose(losses.double().numpy(), manual.numpy(), rtol=1e-5)
    with pytest.raises(ValueError, match="input_ids"):
        causal_lm_per_sample_loss(lm, {"input_ids": input_ids[:, :1]})


@pytest.mark.slow
def test_causal_lm_per_sample_loss_unwraps_a_composer_huggingface_model() -> None:
    """Slow only because importing Composer takes seconds."""
    from composer.models import HuggingFaceModel

    lm = _tiny_gpt2().eval()
    input_ids = torch.randint(0, 300, (3, 12), generator=torch.Generator().manual_seed(15))
    with torch.no_grad():
        wrapped = HuggingFaceModel(lm, tokenizer=None, use_logits=True)
        losses = causal_lm_per_sample_loss(wrapped, {"input_ids": input_ids})
    np.testing.assert_allclose(losses.double().numpy(), _manual_causal_lm_loss(lm, input_ids).numpy(), rtol=1e-5)


def test_probe_on_gpt2_with_dropout_is_finite_and_invisible() -> None:
    lm = _tiny_gpt2().train()  # GPT-2's default dropout is on
    generator = torch.Generator().manual_seed(16)
    domains = torch.tensor([0, 1, 0, 1, 2, 2, 0, 1])
    input_ids = torch.randint(0, 300, (8, 16), generator=generator)
    batch = {"input_ids": input_ids, "domain": domains, "sample_id": torch.arange(8)}
    rng_before = torch.get_rng_state()
    result = probe_domains(lm, batch, 3, causal_lm_per_sample_loss, sketch_dim=64)
    assert torch.equal(torch.get_rng_state(), rng_before)
    assert lm.training and all(p.grad is None for p in lm.parameters())
    assert result.counts.tolist() == [3, 3, 2]
    assert np.isfinite(result.grad_sq).all() and (result.variance > 0).all()
    assert result.loss == pytest.approx([np.log(300)] * 3, rel=0.1)  # an untrained model is near uniform
    assert result.inner is not None and np.isfinite(result.inner).all()


# --- two processes on gloo -------------------------------------------------------------------------------------

_RANK_DOMAINS = (
    # domain:  0 on both ranks, 1 on both, 2 with two samples on rank 0 and one on rank 1, 3 nowhere,
    #          4 one sample per rank, 5 on both
    [0, 1, 0, 2, 1, 5, 4, 0, 2, 1, 5, 5],
    [1, 0, 5, 1, 0, 2, 4, 1, 5, 0, 0],
)
_NUM_DOMAINS = 6


def _rank_batch(rank: int) -> dict:
    return _batch(_RANK_DOMAINS[rank], dim=4, seed=100 + rank)


def _distributed_worker(rank: int, world_size: int, port: int, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=world_size,
        timeout=datetime.timedelta(seconds=60),
    )
    try:
        all_reduce_calls = []
        original_all_reduce = dist.all_reduce

        def counting_all_reduce(*args, **kwargs):  # type: ignore[no-untyped-def]
            all_reduce_calls.append(args[0].numel())
            return original_all_reduce(*args, **kwargs)

        dist.all_reduce = counting_all_reduce
        model = torch.nn.parallel.DistributedDataParallel(_mlp(4, seed=17))
        result = probe_domains(model, _rank_batch(rank), _NUM_DOMAINS, _squared_error, sketch_dim=32)
        dist.all_reduce = original_all_reduce
        # The probe bypassed DDP: a training step through the wrapper still synchronises gradients.
        _squared_error(model, _rank_batch(rank)).mean().backward()
        synchronised = torch.cat([p.grad.flatten() for p in model.parameters()])
        np.savez(
            Path(out_dir) / f"rank{rank}.npz",
            grad_sq=result.grad_sq,
            variance=result.variance,
            loss=result.loss,
            counts=result.counts,
            inner=result.inner,
            all_reduce_calls=np.array(all_reduce_calls),
            synchronised=synchronised.numpy(),
        )
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_gloo_ranks_average_as_documented(tmp_path: Path) -> None:
    """Ranks average G and S over the ranks with an estimate; loss, counts and sketches are those of the union."""
    mp.spawn(_distributed_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    ranks = [np.load(tmp_path / f"rank{r}.npz") for r in range(2)]
    model = _mlp(4, seed=17)
    local = [probe_domains(model, _rank_batch(r), _NUM_DOMAINS, _squared_error, sketch_dim=32) for r in range(2)]
    both = {key: torch.cat([_rank_batch(0)[key], _rank_batch(1)[key]]) for key in ("x", "y", "domain")}
    union = probe_domains(model, both, _NUM_DOMAINS, _squared_error, sketch_dim=32)

    for key in ("grad_sq", "variance", "loss", "counts", "inner"):
        np.testing.assert_array_equal(ranks[0][key], ranks[1][key], err_msg=key)
    got = ranks[0]
    assert got["all_reduce_calls"].tolist() == [_NUM_DOMAINS * 6 + _NUM_DOMAINS * 32]  # one small collective
    for key in ("grad_sq", "variance"):
        on_both = [0, 1, 5]
        expected = (getattr(local[0], key)[on_both] + getattr(local[1], key)[on_both]) / 2
        np.testing.assert_allclose(got[key][on_both], expected, rtol=1e-6, err_msg=key)
        np.testing.assert_allclose(got[key][2], getattr(local[0], key)[2], rtol=1e-6, err_msg=key)  # rank 0 only
        assert np.isnan(got[key][[3, 4]]).all(), key
    np.testing.assert_allclose(got["loss"], union.loss, rtol=1e-6)
    np.testing.assert_array_equal(got["counts"], union.counts)
    # Sketches are linear: the summed per-rank sketches are the sketch of the union's summed gradient.
    assert union.inner is not None
    on_both = np.ix_([0, 1, 5], [0, 1, 5])
    off = ~np.eye(3, dtype=bool)
    np.testing.assert_allclose(got["inner"][on_both][off], union.inner[on_both][off], rtol=1e-5)
    np.testing.assert_allclose(ranks[0]["synchronised"], ranks[1]["synchronised"], rtol=1e-6)
