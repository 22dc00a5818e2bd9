"""Per-domain gradient statistics of a model on one batch: the inputs PiKE needs.

PiKE weighs each domain k by its gradient norm ``‖∇L_k‖²`` and its per-sample gradient variance ``σ_k²``
(``σ_k² = E‖∇ℓ(x) − ∇L_k‖²`` over samples x of domain k, the trace of the per-sample gradient covariance).
:func:`probe_domains` estimates both, without bias, from the samples of each domain in one batch:

* split the ``n`` samples of domain k (batch order) into halves A and B of sizes ``n_A = ⌊n/2⌋`` and
  ``n_B = n − n_A``, and take the mean-loss gradients ``g_A`` and ``g_B``;
* ``G_k = ⟨g_A, g_B⟩`` estimates ``‖∇L_k‖²``: the halves hold different i.i.d. samples, so ``g_A`` and ``g_B``
  are independent with mean ``∇L_k`` and ``E⟨g_A, g_B⟩ = ⟨E g_A, E g_B⟩ = ‖∇L_k‖²``. (``‖g_A‖²`` would be
  biased upward by ``σ_k²/n_A``.)
* ``S_k = ‖g_A − g_B‖² / (1/n_A + 1/n_B)`` estimates ``σ_k²``: ``g_A − g_B`` has mean zero and, by
  independence, ``E‖g_A − g_B‖² = σ_k²/n_A + σ_k²/n_B``. For equal halves this is ``(n/4)·‖g_A − g_B‖²``.

Data-parallel ranks each estimate from their own slice of the global batch; the estimates are averaged with
one all-reduce of ``6·K + K·sketch_dim`` numbers, so no gradient vector crosses the network.

Inner products between domains (is the "low conflict" assumption of PiKE true?) come from a seeded count
sketch: every parameter coordinate is hashed to one of ``sketch_dim`` buckets with a random sign, and a
domain's sketch is the signed sum of its summed-loss gradient ``n_A·g_A + n_B·g_B`` per bucket. A sketch is
linear in the gradient, so the per-rank sketches add up to the sketch of the global batch's gradient, and
the inner product of two sketches is an unbiased estimate (over the hash draw) of the inner product of the
two gradients. For two *different* domains i ≠ j the mean gradients ``ḡ_i`` and ``ḡ_j`` come from disjoint,
independent samples, so ``E⟨ḡ_i, ḡ_j⟩ = ⟨∇L_i, ∇L_j⟩`` as well: :attr:`ProbeResult.inner` is unbiased for
the true cross-domain inner products. (A cosine of two noisy mini-batch gradients is not: its denominator
holds the noise ``σ²/n``, which pulls it towards zero, and the minimum over many pairs sits below zero by
chance. The controller divides *averaged* inner products by averaged unbiased ``G``; see
:class:`~pike_stream.controller.MixingController`.)

Memory: domains are probed one after another, and at most two gradient-sized buffers (``g_A`` and ``g_B`` as
autograd returns them) are alive at a time, whatever the number of domains; they are reduced to scalars one
parameter tensor at a time, in chunks of about 1/64 of the model (see :func:`chunk_elements`), and never
flattened into one vector. The cost is about one extra forward and backward pass over the batch.

The probe leaves the model as it found it: ``.grad`` is never touched (gradients come from
``torch.autograd.grad``), and the train/eval mode of every submodule, the values of its buffers (e.g.
BatchNorm running statistics) and the torch RNG states (CPU and the CUDA devices of the parameters) are
restored afterwards, so a probe does not change the training run it observes.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence

import torch
import torch.nn.functional as F

from pike_stream.gradient_sums import (
    NUM_SUMS,
    ProbeResult,
    all_reduce_sums,
    chunk_elements,
    combine_sums,
    domain_column,
    reduce_pair,
    rows_of,
    trainable_parameters,
    unwrap_ddp,
)
from pike_stream.metric import ParamScale

__all__ = ["ProbeResult", "probe_domains", "causal_lm_per_sample_loss"]


def probe_domains(
    model: torch.nn.Module,
    batch: Mapping[str, object],
    num_domains: int,
    per_sample_loss: Callable[[torch.nn.Module, dict], torch.Tensor],
    *,
    sketch_dim: int = 256,
    seed: int = 0,
    params: Sequence[torch.nn.Parameter] | None = None,
    metric: Sequence[ParamScale | None] | None = None,
) -> ProbeResult:
    """Estimate ``‖∇L_k‖²``, ``σ_k²``, the loss and cross-domain gradient inner products of every domain from
    one batch.

    Every rank of an initialised ``torch.distributed`` process group must call this with its own slice of the
    batch; with no process group it is the single-process probe.

    Args:
        model: the network (a ``DistributedDataParallel`` wrapper is unwrapped, so the probe's forward and
            backward passes stay out of DDP's gradient synchronisation).
        batch: a dict whose ``"domain"`` entry is an integer tensor ``[b]`` of domain indices in
            ``[0, num_domains)``; every tensor entry with ``b`` rows is sliced along with it to make the
            sub-batches given to ``per_sample_loss``, other entries are passed unchanged.
        num_domains: K, the number of domains.
        per_sample_loss: ``(model, sub_batch) -> Tensor[n]``, the differentiable loss of each sample of the
            sub-batch (e.g. :func:`causal_lm_per_sample_loss`).
        sketch_dim: buckets of the count sketch used for the cross-domain inner products; 0 turns it off.
        seed: seed of the sketch's hash; must be the same on every rank.
        params: the parameters to differentiate (default: all of the model's); those without
            ``requires_grad`` are left out. Every rank must pass them in the same order.
        metric: one entry per (trainable) parameter: measure every statistic in Adam's inner product
            (:func:`~pike_stream.metric.adam_metric`); None: the Euclidean one.

    Returns:
        The statistics, identical on every rank.
    """
    if num_domains < 1:
        raise ValueError(f"num_domains must be at least 1, got {num_domains}")
    if sketch_dim < 0:
        raise ValueError(f"sketch_dim must be non-negative, got {sketch_dim}")
    module = unwrap_ddp(model)
    trainable = trainable_parameters(module, params)
    if metric is not None and len(metric) != len(trainable):
        raise ValueError(f"metric has {len(metric)} entries for {len(trainable)} trainable parameters")
    domains = domain_column(batch, num_domains)
    device = trainable[0].device
    chunk = chunk_elements(trainable)

    with _model_state_restored(module, trainable):
        sums, sketches = _local_statistics(
            module, batch, domains, num_domains, per_sample_loss, trainable, sketch_dim, seed, chunk, device, metric
        )
    sums, sketches = all_reduce_sums(sums, sketches)
    return combine_sums(sums, sketches)


def causal_lm_per_sample_loss(model: torch.nn.Module, batch: Mapping[str, object]) -> torch.Tensor:
    """Mean next-token cross-entropy of each sequence in ``batch["input_ids"]`` (``[b, seq_len]`` → ``[b]``).

    Every position after the first is a target (packed sequences without padding). ``model`` may be a
    HuggingFace causal LM (its output has ``.logits``), a Composer model wrapping one in ``.model`` (such as
    ``composer.models.HuggingFaceModel``), or a module whose forward maps ``input_ids`` to logits
    ``[b, seq_len, vocab]``. The cross-entropy is computed in float32 whatever the logits' dtype.
    """
    input_ids = batch.get("input_ids") if isinstance(batch, Mapping) else None
    if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2 or input_ids.shape[1] < 2:
        shape = tuple(input_ids.shape) if isinstance(input_ids, torch.Tensor) else type(input_ids).__name__
        raise ValueError(f"batch['input_ids'] must be a [batch, seq_len >= 2] tensor, got {shape}")
    network = _language_model(model)
    if _is_huggingface_model(network):
        output = network(input_ids=input_ids, use_cache=False)
    else:
        output = network(input_ids)
    logits = _logits_of(output, network)
    if logits.shape[:2] != input_ids.shape:
        raise ValueError(
            f"logits of {type(network).__name__} have shape {tuple(logits.shape)}; expected "
            f"[{input_ids.shape[0]}, {input_ids.shape[1]}, vocab]"
        )
    token_loss = F.cross_entropy(
        logits[:, :-1].transpose(1, 2).float(), input_ids[:, 1:], reduction="none"
    )  # [b, seq_len - 1]
    return token_loss.mean(dim=1)


@contextlib.contextmanager
def _model_state_restored(module: torch.nn.Module, params: Sequence[torch.nn.Parameter]) -> Iterator[None]:
    """Restore, on exit, every submodule's mode, the buffers' values and the torch RNG states.

    The probe's forward passes may draw dropout masks and update buffers such as BatchNorm running
    statistics; restoring them makes probing invisible to the training run. CUDA RNG states are saved only
    for the devices of the parameters, so no other device gets a CUDA context.
    """
    modes = [(m, m.training) for m in module.modules()]
    buffers = [(b, b.detach().clone()) for b in module.buffers()]
    cpu_rng = torch.get_rng_state()
    cuda_devices = sorted({p.device.index for p in params if p.device.type == "cuda"})
    cuda_rng = [(index, torch.cuda.get_rng_state(index)) for index in cuda_devices]
    try:
        yield
    finally:
        for m, training in modes:
            m.training = training
        with torch.no_grad():
            for b, saved in buffers:
                b.copy_(saved)
        torch.set_rng_state(cpu_rng)
        for index, state in cuda_rng:
            torch.cuda.set_rng_state(state, index)


def _local_statistics(
    module: torch.nn.Module,
    batch: Mapping[str, object],
    domains: torch.Tensor,
    num_domains: int,
    per_sample_loss: Callable[[torch.nn.Module, dict], torch.Tensor],
    params: Sequence[torch.nn.Parameter],
    sketch_dim: int,
    seed: int,
    chunk: int,
    device: torch.device,
    metric: Sequence[ParamScale | None] | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """This rank's sums ``[K, 6]`` (G·has, S·has, has, loss·n, n, n·has; float64) and sketches ``[K, sketch_dim]``."""
    sums = torch.zeros(num_domains, NUM_SUMS, dtype=torch.float64, device=device)
    sketches = torch.zeros(num_domains, sketch_dim, dtype=torch.float32, device=device)
    batch_size = domains.shape[0]
    singletons = []
    for k in range(num_domains):
        rows = torch.nonzero(domains == k).flatten()
        n = rows.numel()
        if n == 0:
            continue
        sums[k, 4] = n
        if n == 1:
            singletons.append(rows)
            continue
        n_a = n // 2
        with torch.enable_grad():
            loss_a, g_a = _half_gradient(module, batch, rows[:n_a], batch_size, per_sample_loss, params)
            loss_b, g_b = _half_gradient(module, batch, rows[n_a:], batch_size, per_sample_loss, params)
        dot, diff_sq = reduce_pair(g_a, g_b, n_a, n - n_a, sketches[k], seed, chunk, metric)
        del g_a, g_b
        sums[k, 0] = dot
        sums[k, 1] = diff_sq / (1.0 / n_a + 1.0 / (n - n_a))
        sums[k, 2] = 1.0
        sums[k, 3] = (loss_a + loss_b).to(device)
        sums[k, 5] = n
    if singletons:
        rows = torch.cat(singletons)
        with torch.no_grad():
            losses = _checked_loss(per_sample_loss, module, rows_of(batch, rows, batch_size), rows.numel())
        sums[domains[rows].to(device), 3] += losses.to(device=device, dtype=torch.float64)
    return sums, sketches


def _half_gradient(
    module: torch.nn.Module,
    batch: Mapping[str, object],
    rows: torch.Tensor,
    batch_size: int,
    per_sample_loss: Callable[[torch.nn.Module, dict], torch.Tensor],
    params: Sequence[torch.nn.Parameter],
) -> tuple[torch.Tensor, tuple[torch.Tensor | None, ...]]:
    """Summed loss (detached, float64) and mean-loss gradient of the samples at ``rows``."""
    losses = _checked_loss(per_sample_loss, module, rows_of(batch, rows, batch_size), rows.numel())
    if not losses.requires_grad:
        name = getattr(per_sample_loss, "__name__", repr(per_sample_loss))
        raise ValueError(f"per_sample_loss {name} returned losses that do not require grad "
                         f"(detached, or computed under no_grad?)")
    grads = torch.autograd.grad(losses.mean(), params, allow_unused=True)
    return losses.detach().sum(dtype=torch.float64), grads


def _checked_loss(
    per_sample_loss: Callable[[torch.nn.Module, dict], torch.Tensor],
    module: torch.nn.Module,
    sub_batch: dict,
    n: int,
) -> torch.Tensor:
    """``per_sample_loss(module, sub_batch)``, checked to be one loss per sample."""
    losses = per_sample_loss(module, sub_batch)
    if not isinstance(losses, torch.Tensor) or losses.shape != (n,):
        shape = tuple(losses.shape) if isinstance(losses, torch.Tensor) else type(losses).__name__
        name = getattr(per_sample_loss, "__name__", repr(per_sample_loss))
        raise ValueError(f"per_sample_loss {name} returned {shape} for {n} samples; expected a tensor of shape ({n},)")
    return losses


def _language_model(model: torch.nn.Module) -> torch.nn.Module:
    """The network producing logits: a Composer model's wrapped ``.model``, else ``model`` (DDP unwrapped)."""
    model = unwrap_ddp(model)
    composer_models = sys.modules.get("composer.models")
    if composer_models is not None and isinstance(model, composer_models.ComposerModel):
        inner = getattr(model, "model", None)
        if not isinstance(inner, torch.nn.Module):
            raise TypeError(
                f"{type(model).__name__} is a ComposerModel without a wrapped network in `.model`; "
                "pass a per_sample_loss written for it instead of causal_lm_per_sample_loss"
            )
        return inner
    return model


def _is_huggingface_model(module: torch.nn.Module) -> bool:
    """Whether ``module`` is a transformers ``PreTrainedModel`` (checked without importing transformers)."""
    transformers = sys.modules.get("transformers")
    return transformers is not None and isinstance(module, transformers.PreTrainedModel)


def _logits_of(output: object, network: torch.nn.Module) -> torch.Tensor:
    """The logits in a model output: the tensor itself, its ``.logits``, or its ``["logits"]``."""
    if isinstance(output, torch.Tensor):
        return output
    logits = getattr(output, "logits", None)
    if logits is None and isinstance(output, Mapping):
        logits = output.get("logits")
    if not isinstance(logits, torch.Tensor):
        raise TypeError(
            f"{type(network).__name__} returned {type(output).__name__}, which is neither a logits tensor nor "
            "an output with .logits"
        )
    return logits
