"""Statistics from the training step itself (``probe_samples: 0``): the domain-grouped plan, the same estimates
as a probe of the training batch, an unchanged training step, DDP on two gloo ranks, exact resume."""

from __future__ import annotations

import contextlib
import copy
import datetime
import gc
import os
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from composer import Callback, Trainer

from pike_stream import PiKE
from pike_stream.probe import causal_lm_per_sample_loss, probe_domains
from pike_stream.step_statistics import DomainGroupedBatch, StepStatistics, plan_microbatches, split_batch
from tests.test_algorithm import (  # noqa: F401 - data_root is a fixture
    NAMES,
    RESUME_STEPS,
    TinyLM,
    assert_same_run,
    data_root,
    make_mixer,
    train,
)
from tests.test_probe import _batch, _free_port, _mlp, _squared_error

pytestmark = pytest.mark.usefixtures("one_torch_thread")

STEP_OPTIONS = dict(update_interval=2, warmup_steps=1, ema=0.5, zeta1=2.0, probe_samples=0)


# ------------------------------------------------------------------------------------------ the plan
@pytest.mark.parametrize("seed", range(20))
def test_the_plan_covers_every_row_once_grouped_by_domain_and_half(seed: int) -> None:
    rng = np.random.default_rng(seed)
    num_domains = int(rng.integers(1, 6))
    domains = torch.from_numpy(rng.integers(0, num_domains, int(rng.integers(1, 40))))
    size = int(rng.integers(1, 9))
    plan = plan_microbatches(domains, num_domains, size)
    rows = torch.cat([mb.rows for mb in plan])
    assert sorted(rows.tolist()) == list(range(len(domains)))
    assert all(0 < mb.rows.numel() <= size and bool((domains[mb.rows] == mb.domain).all()) for mb in plan)
    for k in range(num_domains):
        in_order = torch.nonzero(domains == k).flatten().tolist()
        n = len(in_order)
        halves = [[r for mb in plan if mb.domain == k and mb.half == h for r in mb.rows.tolist()] for h in (0, 1)]
        if n >= 2:  # halves in batch order, A then B, each closed by exactly one microbatch
            assert halves == [in_order[: n // 2], in_order[n // 2:]]
            assert [mb.half for mb in plan if mb.domain == k and mb.closes_half] == [0, 1]
        else:
            assert halves == [[], []]
    single = [i for i, mb in enumerate(plan) if mb.half < 0]
    assert single == list(range(len(plan) - len(single), len(plan))), "single samples come last"


def test_split_batch_follows_the_plan_only_for_a_marked_batch() -> None:
    batch = _batch([0, 1, 1, 0, 2, 1, 0], dim=3, seed=0)
    plain = split_batch(batch, 3)
    assert [len(mb["domain"]) for mb in plain] == [3, 3, 1]
    plan = plan_microbatches(batch["domain"], 3, 3)
    grouped = split_batch(DomainGroupedBatch(batch, plan), 3)
    assert [mb["domain"].tolist() for mb in grouped] == [[0], [0, 0], [1], [1, 1], [2]]
    assert all(type(mb) is dict and set(mb) == set(batch) for mb in grouped)
    assert torch.equal(grouped[1]["x"], batch["x"][[3, 6]])


# ------------------------------------------------------------------------------------------ one process
def _composer_like_step(model: torch.nn.Module, batch: dict, num_domains: int, microbatch_size: int,
                        sketch_dim: int = 16, ddp_sync_last: bool = False) -> StepStatistics:
    """One training step the way Composer runs it (microbatch loss × n/b, backward, events), with the
    statistics read along; under DDP the last microbatch synchronises (Composer's default)."""
    plan = plan_microbatches(batch["domain"], num_domains, microbatch_size)
    measured = StepStatistics(model, plan, num_domains, len(batch["domain"]), sketch_dim=sketch_dim, seed=5)
    for j, microbatch in enumerate(split_batch(DomainGroupedBatch(batch, plan), microbatch_size)):
        last = j == len(plan) - 1
        context = (model.no_sync() if isinstance(model, torch.nn.parallel.DistributedDataParallel)
                   and not (last and ddp_sync_last) else contextlib.nullcontext())
        with context:
            measured.before_forward(microbatch)
            loss = _squared_error(model, microbatch).mean()
            measured.after_loss(loss)
            (loss * len(microbatch["domain"]) / len(batch["domain"])).backward()
            measured.after_backward()
    return measured


@pytest.mark.parametrize("microbatch_size", [1, 2, 64])
def test_step_statistics_equal_a_probe_of_the_same_batch(microbatch_size: int) -> None:
    domains = [0, 1, 0, 2, 1, 3, 0, 0, 2, 1, 3, 3, 0, 1, 4]  # domain 4 has one sample: no estimate
    batch = _batch(domains, dim=4, seed=1)
    model = _mlp(4, seed=3)
    expected = probe_domains(model, batch, 6, _squared_error, sketch_dim=16, seed=5)
    full = torch.autograd.grad(_squared_error(model, batch).mean(), list(model.parameters()))
    measured = _composer_like_step(model, batch, 6, microbatch_size)
    got = measured.result()
    for name in ("grad_sq", "variance", "loss", "inner"):
        np.testing.assert_allclose(getattr(got, name), getattr(expected, name), rtol=1e-5, atol=1e-7,
                                   err_msg=name)
    assert got.counts.tolist() == expected.counts.tolist() == [5, 4, 2, 3, 1, 0]
    assert np.isnan(got.grad_sq[4:]).all() and np.isfinite(got.grad_sq[:4]).all()
    # The step trained on the full batch's gradient: the grouping changed nothing but the order of sums.
    for g, p in zip(full, model.parameters()):
        torch.testing.assert_close(p.grad, g, rtol=1e-5, atol=1e-7)


def test_a_trainer_that_splits_otherwise_is_a_clear_error(data_root: str) -> None:  # noqa: F811
    model = TinyLM()
    trainer = Trainer(model=model, train_dataloader=make_mixer(data_root).dataloader(), max_duration="2ba",
                      algorithms=[PiKE(probe_samples=0, update_interval=1)], device="cpu",
                      optimizers=torch.optim.SGD(model.parameters(), lr=0.1), device_train_microbatch_size=4,
                      progress_bar=False, log_to_console=False)
    with pytest.raises(RuntimeError, match=r"PiKE\.data_spec\(mixer\)"):
        trainer.fit()


class _FirstStep(Callback):
    """The model before training and batch 0, as PiKE saw them."""

    def fit_start(self, state, logger) -> None:
        self.model = copy.deepcopy(state.model)

    def after_dataloader(self, state, logger) -> None:
        if int(state.timestamp.batch) == 0:
            self.batch = {k: v.clone() for k, v in state.batch.items()}

    def after_train_batch(self, state, logger) -> None:
        self.grads = [p.grad.clone() for p in state.model.parameters()]


@pytest.mark.parametrize("microbatch_size", [1, 12])
def test_in_the_trainer_the_first_update_uses_the_probe_of_batch_zero(data_root: str,  # noqa: F811
                                                                      microbatch_size: int) -> None:
    first = _FirstStep()
    run = train(data_root, "1ba", algorithms=[PiKE(probe_samples=0, update_interval=1, sketch_dim=0)],
                callbacks=[first], device_train_microbatch_size=microbatch_size)
    expected = probe_domains(first.model, first.batch, len(NAMES), causal_lm_per_sample_loss, sketch_dim=0)
    for stat in ("grad_sq", "variance", "loss"):
        logged = [run.metric(f"pike/{stat}/{name}") for name in NAMES]
        assert all(len(values) == 1 and values[0][0] == 0 for values in logged), stat
        np.testing.assert_allclose([v[0][1] for v in logged], getattr(expected, stat), rtol=2e-4, err_msg=stat)
    # Training saw the same batch and gradient as a run whose PiKE probes a separate batch.
    plain = _FirstStep()
    probed = train(data_root, "1ba", algorithms=[PiKE(update_interval=1, sketch_dim=0)], callbacks=[plain],
                   device_train_microbatch_size=microbatch_size)
    assert probed.recorder.batches == run.recorder.batches
    for a, b in zip(first.grads, plain.grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("microbatch_size", [2, 12])
def test_the_probe_batch_is_never_drawn(data_root: str, microbatch_size: int) -> None:  # noqa: F811
    run = train(data_root, "6ba", algorithms=[PiKE(**STEP_OPTIONS)], device_train_microbatch_size=microbatch_size)
    mixer = run.recorder.mixer
    assert [d["probed"] for d in mixer.state_dict()["domains"].values()] == [0] * len(NAMES)
    assert [t for t, _ in run.metric(f"pike/grad_sq/{NAMES[0]}")] == [1, 3, 5]


def make_mixer_state_probe(root: str) -> object:
    """The probe cursors of a mixer that never drew a probe batch."""
    return make_mixer(root).state_dict()["probe"]


# ------------------------------------------------------------------------------------------ resume
@pytest.fixture(scope="module")
def uninterrupted_step_run(data_root: str):  # noqa: F811
    return train(data_root, f"{RESUME_STEPS}ba", algorithms=[PiKE(**STEP_OPTIONS)], device_train_microbatch_size=2)


@pytest.mark.parametrize("stop", [3, 4])  # on an update step; between updates
def test_checkpoint_resume_with_step_statistics_reproduces_the_run(data_root: str, tmp_path,  # noqa: F811
                                                                   uninterrupted_step_run, stop: int) -> None:
    folder = str(tmp_path / "checkpoints")
    head = train(data_root, f"{stop}ba", algorithms=[PiKE(**STEP_OPTIONS)], save_folder=folder,
                 save_interval=f"{stop}ba", device_train_microbatch_size=2)
    pike = PiKE(**STEP_OPTIONS)
    tail = train(data_root, f"{RESUME_STEPS}ba", algorithms=[pike], device_train_microbatch_size=2,
                 load_path=os.path.join(folder, f"ep0-ba{stop}-rank0.pt"))
    assert_same_run([head, tail], pike, uninterrupted_step_run)


def test_auto_microbatching_is_refused(data_root: str) -> None:  # noqa: F811
    with pytest.raises(ValueError, match="device_train_microbatch_size"):
        train(data_root, "1ba", algorithms=[PiKE(probe_samples=0)], device_train_microbatch_size="auto")


# ------------------------------------------------------------------------------------------ two gloo ranks
_RANK_DOMAINS = ([0, 1, 0, 2, 1, 0, 3, 1, 2, 0], [1, 0, 2, 2, 0, 1, 1, 0, 3, 0])  # equal per-rank batches


def _ddp_worker(rank: int, world_size: int, port: int, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size,
                            timeout=datetime.timedelta(seconds=60))
    try:
        batch = _batch(_RANK_DOMAINS[rank], dim=4, seed=40 + rank)
        model = torch.nn.parallel.DistributedDataParallel(_mlp(4, seed=9))
        expected = probe_domains(model, batch, 4, _squared_error, sketch_dim=16, seed=5)
        _squared_error(model, batch).mean().backward()  # DDP's own step: the synchronised full gradient
        synchronised = [p.grad.clone() for p in model.parameters()]
        model.zero_grad(set_to_none=True)
        got = _composer_like_step(model, batch, 4, microbatch_size=2, ddp_sync_last=True).result()
        np.savez(Path(out_dir) / f"rank{rank}.npz",
                 **{f"expected_{k}": getattr(expected, k) for k in ("grad_sq", "variance", "loss", "inner")},
                 **{f"got_{k}": getattr(got, k) for k in ("grad_sq", "variance", "loss", "inner")},
                 grad_error=max(float((p.grad - s).abs().max()) for p, s in zip(model.parameters(), synchronised)))
        # Teardown order matters in torch 2.7: if the DDP wrapper (its Reducer holds the process group) is the last
        # owner of the group, freeing it joins gloo's threads while holding the GIL, and a gloo thread still
        # releasing a finished all-reduce of p.grad waits for the GIL: a deadlock at exit, seen once in the full
        # suite. So: a last collective, the model freed while the group is still registered, the GIL given up
        # for a moment, then the group destroyed.
        dist.barrier()
        del model, synchronised
        gc.collect()
        time.sleep(0.2)
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_two_ddp_ranks_get_the_probes_statistics_and_ddps_gradient(tmp_path: Path) -> None:
    context = mp.spawn(_ddp_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=False)
    deadline = time.monotonic() + 180
    while not context.join(timeout=5):  # a hung rank fails the test instead of blocking the suite
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            pytest.fail("the two gloo ranks did not finish within 180 s")
    for rank in range(2):
        saved = np.load(tmp_path / f"rank{rank}.npz")
        for k in ("grad_sq", "variance", "loss", "inner"):
            np.testing.assert_allclose(saved[f"got_{k}"], saved[f"expected_{k}"], rtol=1e-5, atol=1e-7, err_msg=k)
        assert float(saved["grad_error"]) < 1e-6, "the step's gradients are not DDP's averaged ones"
