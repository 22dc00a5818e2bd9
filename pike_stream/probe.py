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
parameter tensor at a time, in chunks of about 1/64 of the model (see :func:`_chunk_elements`), and never
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
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F

__all__ = ["ProbeResult", "probe_domains", "causal_lm_per_sample_loss"]

# Bounds of the slice of a gradient tensor reduced at once (to scalars and to the sketch); see _chunk_elements.
_MIN_CHUNK_ELEMENTS = 1 << 16
_MAX_CHUNK_ELEMENTS = 1 << 22

# Number of per-domain sums in the all-reduced statistics: G·has, S·has, has, loss·n, n, n·has.
_NUM_SUMS = 6


@dataclass(frozen=True)
class ProbeResult:
    """Per-domain statistics of one probe, combined over all data-parallel ranks.

    Attributes:
        grad_sq: ``[K]`` unbiased estimate of ``‖∇L_k‖²`` (``⟨g_A, g_B⟩``), averaged over the ranks that had
            at least two samples of domain k; NaN if no rank had.
        variance: ``[K]`` unbiased estimate of the per-sample gradient variance ``σ_k²``
            (``‖g_A − g_B‖² / (1/n_A + 1/n_B)``), averaged over the same ranks; NaN if no rank had an estimate.
        loss: ``[K]`` mean per-sample loss over all samples of domain k on all ranks; NaN if there were none.
        counts: ``[K]`` number of samples of each domain, summed over ranks.
        inner: ``[K, K]`` unbiased estimates of ``⟨∇L_i, ∇L_j⟩``: off the diagonal from the sketches of the
            domains' mean gradients (independent samples), on it ``grad_sq``; NaN for a domain without an
            estimate; None when sketching is off (``sketch_dim=0``).
    """

    grad_sq: np.ndarray
    variance: np.ndarray
    loss: np.ndarray
    counts: np.ndarray
    inner: np.ndarray | None


def probe_domains(
    model: torch.nn.Module,
    batch: Mapping[str, object],
    num_domains: int,
    per_sample_loss: Callable[[torch.nn.Module, dict], torch.Tensor],
    *,
    sketch_dim: int = 256,
    seed: int = 0,
    params: Sequence[torch.nn.Parameter] | None = None,
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

    Returns:
        The statistics, identical on every rank.
    """
    if num_domains < 1:
        raise ValueError(f"num_domains must be at least 1, got {num_domains}")
    if sketch_dim < 0:
        raise ValueError(f"sketch_dim must be non-negative, got {sketch_dim}")
    module = _unwrap_ddp(model)
    trainable = _trainable_parameters(module, params)
    domains = _domain_column(batch, num_domains)
    device = trainable[0].device
    chunk = _chunk_elements(trainable)

    with _model_state_restored(module, trainable):
        sums, sketches = _local_statistics(
            module, batch, domains, num_domains, per_sample_loss, trainable, sketch_dim, seed, chunk, device
        )
    sums, sketches = _all_reduce(sums, sketches)
    return _combine(sums, sketches)


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


def _unwrap_ddp(model: torch.nn.Module) -> torch.nn.Module:
    """The module inside a ``DistributedDataParallel`` wrapper, or ``model`` itself."""
    if isinstance(model, torch.nn.parallel.DistributedDataParallel):
        return model.module
    return model


def _trainable_parameters(
    module: torch.nn.Module, params: Sequence[torch.nn.Parameter] | None
) -> list[torch.nn.Parameter]:
    """The distinct parameters with ``requires_grad``, in the given (or the model's) order."""
    candidates = list(module.parameters()) if params is None else list(params)
    seen: set[int] = set()
    trainable = []
    for p in candidates:
        if p.requires_grad and id(p) not in seen:
            seen.add(id(p))
            trainable.append(p)
    if not trainable:
        source = "the given params" if params is not None else f"{type(module).__name__}'s parameters"
        raise ValueError(f"nothing to probe: none of {source} requires grad")
    return trainable


def _chunk_elements(params: Sequence[torch.nn.Parameter]) -> int:
    """Elements of a gradient tensor reduced at once: 1/64 of the model, within [2^16, 2^22].

    The reduction's temporaries are a few float32 chunks, so they stay a few percent of one gradient buffer,
    while a large model needs only a few hundred chunks (kernel launches) per domain. The value depends only
    on the parameter sizes, so it is the same on every rank and the sketch's hashes agree.
    """
    total = sum(p.numel() for p in params)
    return min(_MAX_CHUNK_ELEMENTS, max(_MIN_CHUNK_ELEMENTS, total // 64))


def _domain_column(batch: Mapping[str, object], num_domains: int) -> torch.Tensor:
    """``batch["domain"]`` checked to be a 1-D integer tensor of indices in ``[0, num_domains)``."""
    if not isinstance(batch, Mapping) or "domain" not in batch:
        raise KeyError("the batch has no 'domain' entry (a [batch] tensor of domain indices)")
    domains = batch["domain"]
    if not isinstance(domains, torch.Tensor) or domains.dim() != 1 or domains.is_floating_point():
        shape = tuple(domains.shape) if isinstance(domains, torch.Tensor) else type(domains).__name__
        raise ValueError(f"batch['domain'] must be a 1-D integer tensor, got {shape}")
    if domains.numel() and (int(domains.min()) < 0 or int(domains.max()) >= num_domains):
        raise ValueError(
            f"batch['domain'] holds indices in [{int(domains.min())}, {int(domains.max())}], "
            f"outside [0, {num_domains}) for num_domains={num_domains}"
        )
    return domains


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
) -> tuple[torch.Tensor, torch.Tensor]:
    """This rank's sums ``[K, 6]`` (G·has, S·has, has, loss·n, n, n·has; float64) and sketches ``[K, sketch_dim]``."""
    sums = torch.zeros(num_domains, _NUM_SUMS, dtype=torch.float64, device=device)
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
        dot, diff_sq = _reduce_pair(g_a, g_b, n_a, n - n_a, sketches[k], seed, chunk)
        del g_a, g_b
        sums[k, 0] = dot
        sums[k, 1] = diff_sq / (1.0 / n_a + 1.0 / (n - n_a))
        sums[k, 2] = 1.0
        sums[k, 3] = (loss_a + loss_b).to(device)
        sums[k, 5] = n
    if singletons:
        rows = torch.cat(singletons)
        with torch.no_grad():
            losses = _checked_loss(per_sample_loss, module, _sub_batch(batch, rows, batch_size), rows.numel())
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
    losses = _checked_loss(per_sample_loss, module, _sub_batch(batch, rows, batch_size), rows.numel())
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


def _sub_batch(batch: Mapping[str, object], rows: torch.Tensor, batch_size: int) -> dict:
    """The batch restricted to ``rows``: tensors with ``batch_size`` rows are sliced, other entries kept."""
    sub = {}
    for key, value in batch.items():
        if isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape[0] == batch_size:
            sub[key] = value.index_select(0, rows.to(value.device))
        else:
            sub[key] = value
    return sub


def _reduce_pair(
    g_a: Sequence[torch.Tensor | None],
    g_b: Sequence[torch.Tensor | None],
    n_a: int,
    n_b: int,
    sketch: torch.Tensor,
    seed: int,
    chunk: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``⟨g_A, g_B⟩`` and ``‖g_A − g_B‖²`` as float64 scalars; adds the sketch of ``n_A·g_A + n_B·g_B`` to
    ``sketch``.

    A parameter that one half's loss does not reach has a None gradient, i.e. zero. Each parameter tensor is
    processed in slices of ``chunk`` elements, in float32, so the temporaries stay small and low-precision
    gradients are summed accurately.
    """
    device = sketch.device
    dot = torch.zeros((), dtype=torch.float64, device=device)
    diff_sq = torch.zeros((), dtype=torch.float64, device=device)
    sketch_dim = sketch.numel()
    for index, (a, b) in enumerate(zip(g_a, g_b)):
        if a is None and b is None:
            continue
        ref = a if a is not None else b
        flat_a = a.reshape(-1) if a is not None else None
        flat_b = b.reshape(-1) if b is not None else None
        generator = _sketch_generator(seed, index, ref.device) if sketch_dim else None
        for start in range(0, ref.numel(), chunk):
            stop = min(start + chunk, ref.numel())
            chunk_a = flat_a[start:stop].float() if flat_a is not None else None
            chunk_b = flat_b[start:stop].float() if flat_b is not None else None
            if chunk_a is not None and chunk_b is not None:
                dot += torch.dot(chunk_a, chunk_b).to(device, torch.float64)
                diff = chunk_a - chunk_b
            else:
                diff = chunk_a if chunk_a is not None else chunk_b
            diff_sq += torch.dot(diff, diff).to(device, torch.float64)
            del diff
            if generator is not None:
                _sketch_chunk(chunk_a, chunk_b, n_a, n_b, sketch, generator, stop - start)
    return dot, diff_sq


def _sketch_generator(seed: int, index: int, device: torch.device) -> torch.Generator:
    """The hash stream of parameter ``index``: a generator seeded by (seed, index), the same on every rank.

    Seeding per parameter makes the hash of a coordinate independent of which other parameters had gradients.
    """
    generator = torch.Generator(device=device)
    generator.manual_seed((seed * 1_000_003 + index) % (1 << 63))
    return generator


def _sketch_chunk(
    chunk_a: torch.Tensor | None,
    chunk_b: torch.Tensor | None,
    n_a: int,
    n_b: int,
    sketch: torch.Tensor,
    generator: torch.Generator,
    length: int,
) -> None:
    """Add the count sketch of ``n_A·chunk_a + n_B·chunk_b`` to ``sketch``, with the chunk's hash from ``generator``.

    One draw ``r`` in ``[0, 2·sketch_dim)`` per coordinate gives its bucket ``r >> 1`` and its sign from ``r & 1``.
    """
    sketch_dim = sketch.numel()
    draw = torch.randint(0, 2 * sketch_dim, (length,), generator=generator, device=generator.device, dtype=torch.int32)
    if chunk_a is not None and chunk_b is not None:
        values = chunk_a.mul(n_a).add_(chunk_b, alpha=n_b)
    elif chunk_a is not None:
        values = chunk_a * n_a
    else:
        values = chunk_b * n_b
    signs = torch.bitwise_and(draw, 1).mul_(-2).add_(1)
    values.mul_(signs)
    del signs
    draw.bitwise_right_shift_(1)
    sketch.index_add_(0, draw.to(sketch.device), values.to(sketch.device))


def _all_reduce(sums: torch.Tensor, sketches: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Sum the per-rank statistics over the default process group in one all-reduce (no-op without one)."""
    num_domains = sums.shape[0]
    packed = torch.cat([sums.flatten(), sketches.flatten().to(torch.float64)])
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        packed = packed.to(_collective_device(packed.device))
        dist.all_reduce(packed, op=dist.ReduceOp.SUM)
    packed = packed.cpu().numpy()
    split = num_domains * _NUM_SUMS
    return packed[:split].reshape(num_domains, _NUM_SUMS), packed[split:].reshape(num_domains, -1)


def _collective_device(device: torch.device) -> torch.device:
    """Where the all-reduced tensor must live for the default group's backend.

    Gloo and MPI reduce CPU tensors, NCCL the current GPU's; a group with a backend per device type (e.g.
    ``cpu:gloo,cuda:nccl``) takes the tensor where it is.
    """
    backend = str(dist.get_backend())
    if backend in ("gloo", "mpi"):
        return torch.device("cpu")
    if backend == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return device


def _combine(sums: np.ndarray, sketches: np.ndarray) -> ProbeResult:
    """Turn the rank-summed sums and sketches into the per-domain averages and the inner-product matrix."""
    has = sums[:, 2]
    counts = sums[:, 4]
    sketched = sums[:, 5]  # samples behind each domain's sketch (those of ranks that estimated it)
    with np.errstate(invalid="ignore", divide="ignore"):
        grad_sq = np.where(has > 0, sums[:, 0] / has, np.nan)
        variance = np.where(has > 0, sums[:, 1] / has, np.nan)
        loss = np.where(counts > 0, sums[:, 3] / counts, np.nan)
    inner = None
    if sketches.shape[1] > 0:
        defined = (has > 0) & (sketched > 0)
        means = np.zeros_like(sketches)
        means[defined] = sketches[defined] / sketched[defined, None]  # sketches of the mean gradients
        inner = means @ means.T
        np.fill_diagonal(inner, grad_sq)
        inner[~defined, :] = np.nan
        inner[:, ~defined] = np.nan
    return ProbeResult(
        grad_sq=grad_sq,
        variance=variance,
        loss=loss,
        counts=np.rint(counts).astype(np.int64),
        inner=inner,
    )


def _language_model(model: torch.nn.Module) -> torch.nn.Module:
    """The network producing logits: a Composer model's wrapped ``.model``, else ``model`` (DDP unwrapped)."""
    model = _unwrap_ddp(model)
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
