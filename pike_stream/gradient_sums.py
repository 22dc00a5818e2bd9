"""Per-domain gradient sums and their reduction to statistics, shared by the two ways PiKE measures domains:
a probe batch (:mod:`pike_stream.probe`) and the training step's own microbatches
(:mod:`pike_stream.step_statistics`).

Each rank reduces the two half-gradients ``g_A`` and ``g_B`` of every domain to scalars (:func:`reduce_pair`:
``⟨g_A, g_B⟩``, ``‖g_A − g_B‖²`` and a count sketch of their sum), one parameter tensor at a time; the
per-domain sums of all ranks are added with one all-reduce (:func:`all_reduce_sums`) and turned into the
unbiased estimates of :class:`ProbeResult` (:func:`combine_sums`). :mod:`pike_stream.probe` explains why
the estimates are unbiased.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

from pike_stream.metric import ParamScale

__all__ = ["NUM_SUMS", "ProbeResult", "all_reduce_sums", "chunk_elements", "combine_sums", "domain_column",
           "reduce_pair", "rows_of", "trainable_parameters", "unwrap_ddp"]

# Bounds of the slice of a gradient tensor reduced at once (to scalars and to the sketch); see chunk_elements.
_MIN_CHUNK_ELEMENTS = 1 << 16
_MAX_CHUNK_ELEMENTS = 1 << 22

NUM_SUMS = 6
"""Per-domain sums all-reduced for every domain: G·has, S·has, has, loss·n, n, n·has (see :func:`combine_sums`)."""


def unwrap_ddp(model: torch.nn.Module) -> torch.nn.Module:
    """The module inside a ``DistributedDataParallel`` wrapper, or ``model`` itself."""
    if isinstance(model, torch.nn.parallel.DistributedDataParallel):
        return model.module
    return model


def trainable_parameters(
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


def domain_column(batch: Mapping[str, object], num_domains: int) -> torch.Tensor:
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


def chunk_elements(params: Sequence[torch.nn.Parameter]) -> int:
    """Elements of a gradient tensor reduced at once: 1/64 of the model, within [2^16, 2^22].

    The reduction's temporaries are a few float32 chunks, so they stay a few percent of one gradient buffer,
    while a large model needs only a few hundred chunks (kernel launches) per domain. The value depends only
    on the parameter sizes, so it is the same on every rank and the sketch's hashes agree.
    """
    total = sum(p.numel() for p in params)
    return min(_MAX_CHUNK_ELEMENTS, max(_MIN_CHUNK_ELEMENTS, total // 64))


def reduce_pair(
    g_a: Sequence[torch.Tensor | None],
    g_b: Sequence[torch.Tensor | None],
    n_a: int,
    n_b: int,
    sketch: torch.Tensor,
    seed: int,
    chunk: int,
    metric: Sequence[ParamScale | None] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``⟨g_A, g_B⟩`` and ``‖g_A − g_B‖²`` as float64 scalars; adds the sketch of ``n_A·g_A + n_B·g_B`` to
    ``sketch``.

    A parameter that one half's loss does not reach has a None gradient, i.e. zero. Each parameter tensor is
    processed in slices of ``chunk`` elements, in float32, so the temporaries stay small and low-precision
    gradients are summed accurately. With ``metric`` (one entry per parameter, :mod:`pike_stream.metric`)
    every slice is first multiplied by its ``√P``, so all three are taken in the inner product
    ``⟨a, b⟩_P``; a None entry leaves the parameter out.
    """
    device = sketch.device
    dot = torch.zeros((), dtype=torch.float64, device=device)
    diff_sq = torch.zeros((), dtype=torch.float64, device=device)
    sketch_dim = sketch.numel()
    for index, (a, b) in enumerate(zip(g_a, g_b)):
        scale = metric[index] if metric is not None else None
        if (a is None and b is None) or (metric is not None and scale is None):
            continue
        ref = a if a is not None else b
        assert ref is not None
        flat_a = a.reshape(-1) if a is not None else None
        flat_b = b.reshape(-1) if b is not None else None
        generator = _sketch_generator(seed, index, ref.device) if sketch_dim else None
        for start in range(0, ref.numel(), chunk):
            stop = min(start + chunk, ref.numel())
            chunk_a = flat_a[start:stop].float() if flat_a is not None else None
            chunk_b = flat_b[start:stop].float() if flat_b is not None else None
            if scale is not None:  # out of place: .float() of a float32 gradient is the gradient itself
                root = scale.root(start, stop).to(ref.device)
                chunk_a = chunk_a * root if chunk_a is not None else None
                chunk_b = chunk_b * root if chunk_b is not None else None
            if chunk_a is not None and chunk_b is not None:
                dot += torch.dot(chunk_a, chunk_b).to(device, torch.float64)
                diff = chunk_a - chunk_b
            else:
                diff = chunk_a if chunk_a is not None else chunk_b
                assert diff is not None
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
        assert chunk_b is not None
        values = chunk_b * n_b
    signs = torch.bitwise_and(draw, 1).mul_(-2).add_(1)
    values.mul_(signs)
    del signs
    draw.bitwise_right_shift_(1)
    sketch.index_add_(0, draw.to(sketch.device), values.to(sketch.device))


def all_reduce_sums(sums: torch.Tensor, sketches: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Sum the per-rank statistics over the default process group in one all-reduce (no-op without one)."""
    num_domains = sums.shape[0]
    packed = torch.cat([sums.flatten(), sketches.flatten().to(torch.float64)])
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        packed = packed.to(_collective_device(packed.device))
        dist.all_reduce(packed, op=dist.ReduceOp.SUM)
    packed = packed.cpu().numpy()
    split = num_domains * NUM_SUMS
    return packed[:split].reshape(num_domains, NUM_SUMS), packed[split:].reshape(num_domains, -1)


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


def combine_sums(sums: np.ndarray, sketches: np.ndarray) -> ProbeResult:
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


def rows_of(batch: Mapping[str, object], rows: torch.Tensor, batch_size: int) -> dict:
    """The batch restricted to ``rows``: tensors with ``batch_size`` rows are sliced, other entries kept."""
    sub = {}
    for key, value in batch.items():
        if isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape[0] == batch_size:
            sub[key] = value.index_select(0, rows.to(value.device))
        else:
            sub[key] = value
    return sub
