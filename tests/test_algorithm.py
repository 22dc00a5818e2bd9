"""PiKE as a Composer algorithm: options, weights through a real Trainer, zero lag, resume, every strategy,
bad statistics, and the same controller in a plain PyTorch loop."""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
import textwrap
from dataclasses import dataclass, field

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from composer import Callback, Trainer
from composer.loggers import InMemoryLogger
from composer.models import ComposerModel
from streaming import MDSWriter
from transformers import GPT2Config, GPT2LMHeadModel

import pike_stream.algorithm as algorithm_module
import pike_stream.controller as controller_module
from pike_stream import Domain, PiKE, PiKEStreamingMixer
from pike_stream.algorithm import find_mixer
from pike_stream.controller import CONFLICT_MIN_UPDATES, MixingController
from pike_stream.probe import causal_lm_per_sample_loss
from pike_stream.strategies import STRATEGIES, get_strategy
from pike_stream.strategies.apportion import apportion
from pike_stream.strategies.static import random_domain

SIZES = {"web": 200, "code": 120, "math": 80}
NAMES = list(SIZES)
B = 12
SEQ_LEN = 16


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def textured_tokens(kind: str, n: int, seed: int) -> np.ndarray:
    """``n`` sequences that are hard to learn ("noise": uniform random tokens) or easy ("repeat": a random
    4-token motif repeated; "count": consecutive token ids), so the domains' gradients differ."""
    rng = np.random.default_rng(seed)
    if kind == "noise":
        return rng.integers(0, 1000, (n, SEQ_LEN))
    if kind == "repeat":
        return np.tile(rng.integers(0, 1000, (n, 4)), SEQ_LEN // 4)
    return (rng.integers(0, 1000, (n, 1)) + np.arange(SEQ_LEN)) % 1000


def write_textured_domain(out: str, name: str, tokens: np.ndarray) -> None:
    """A domain folder of ``tokens`` in the layout ``pike-stream convert`` writes (as tests/mds_data.py does)."""
    with MDSWriter(out=out, columns={"tokens": f"ndarray:uint16:{SEQ_LEN}"}, compression="zstd",
                   hashes=["sha1", "xxh64"], size_limit=1 << 12) as writer:
        for row in tokens.astype(np.uint16):
            writer.write({"tokens": row})
    with open(os.path.join(out, "index.json")) as f:
        index = json.load(f)
    manifest = {"format": "pike_stream.domain", "version": 1, "domain": name, "documents": len(tokens),
                "tokens": tokens.size, "samples": len(tokens), "seq_len": SEQ_LEN, "dtype": "uint16",
                "tokenizer": {"kind": "synthetic"}, "shards": [s["zip_data"]["basename"] for s in index["shards"]],
                "fingerprint": hashlib.sha256(json.dumps(index, sort_keys=True).encode()).hexdigest()}
    with open(os.path.join(out, "manifest.json"), "w") as f:
        json.dump(manifest, f)


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> str:
    root = str(tmp_path_factory.mktemp("domains"))
    for seed, (name, kind) in enumerate(zip(NAMES, ("noise", "repeat", "count"))):
        write_textured_domain(os.path.join(root, name), name, textured_tokens(kind, SIZES[name], seed))
    return root


def make_mixer(root: str) -> PiKEStreamingMixer:
    return PiKEStreamingMixer([Domain(n, local=os.path.join(root, n)) for n in NAMES], global_batch_size=B, seed=3,
                              read_ahead_workers=0)


def tiny_gpt2(dropout: float) -> GPT2LMHeadModel:
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=1024, n_positions=SEQ_LEN, n_embd=32, n_layer=1, n_head=2, resid_pdrop=dropout,
                        embd_pdrop=dropout, attn_pdrop=dropout, use_cache=False)
    return GPT2LMHeadModel(config)


class TinyLM(ComposerModel):
    """A one-layer GPT-2 trained on the mean next-token cross-entropy; the network sits in ``.model``."""

    def __init__(self, dropout: float = 0.0) -> None:
        super().__init__()
        self.model = tiny_gpt2(dropout)

    def forward(self, batch: dict) -> torch.Tensor:
        return self.model(input_ids=batch["input_ids"]).logits

    def loss(self, outputs: torch.Tensor, batch: dict, *args, **kwargs) -> torch.Tensor:
        return F.cross_entropy(outputs[:, :-1].flatten(0, 1), batch["input_ids"][:, 1:].flatten())


class Recorder(Callback):
    """Records every batch and the weights in force at every step (``weights[i]`` composes ``batches[i]``)."""

    def __init__(self) -> None:
        self.batches: list[tuple[tuple[int, ...], tuple[int, ...]]] = []
        self.weights: list[np.ndarray] = []

    def fit_start(self, state, logger) -> None:
        self.mixer = find_mixer(state.train_dataloader)
        if not self.weights:  # a second fit() continues the record
            self.weights.append(np.array(list(self.mixer.weights.values())))

    def batch_start(self, state, logger) -> None:
        self.batches.append((tuple(state.batch["domain"].tolist()), tuple(state.batch["sample_id"].tolist())))

    def batch_end(self, state, logger) -> None:
        # PiKE has set the weights of the next batch (at AFTER_DATALOADER, or AFTER_TRAIN_BATCH with
        # probe_samples=0); a checkpoint of this step (BATCH_CHECKPOINT) holds them.
        self.weights.append(np.array(list(self.mixer.weights.values())))


class Replay(Callback):
    """Sets recorded weights at the same points PiKE would, without probing."""

    def __init__(self, weights: list[np.ndarray]) -> None:
        self.schedule = weights

    def fit_start(self, state, logger) -> None:
        self.mixer = find_mixer(state.train_dataloader)
        self.mixer.set_weights(self.schedule[0])

    def after_dataloader(self, state, logger) -> None:
        self.mixer.set_weights(self.schedule[int(state.timestamp.batch) + 1])


@dataclass
class Run:
    recorder: Recorder
    logger: InMemoryLogger
    trainer: Trainer
    params: list[torch.Tensor] = field(default_factory=list)

    def metric(self, name: str) -> list[tuple[int, float]]:
        return [(int(ts.batch), value) for ts, value in self.logger.data.get(name, [])]


def train(root: str, duration: str, *, algorithms=(), callbacks=(), dropout: float = 0.0, **kwargs) -> Run:
    model = TinyLM(dropout)
    recorder, logger = Recorder(), InMemoryLogger()
    kwargs.setdefault("device_train_microbatch_size", B)
    trainer = Trainer(model=model, train_dataloader=PiKE.data_spec(make_mixer(root)), max_duration=duration,
                      algorithms=list(algorithms), callbacks=[*callbacks, recorder], loggers=[logger],
                      optimizers=torch.optim.Adam(model.parameters(), lr=3e-3), device="cpu",
                      progress_bar=False, log_to_console=False, seed=17, **kwargs)
    trainer.fit()
    return Run(recorder, logger, trainer, [p.detach().clone() for p in model.parameters()])


def replay_counts(weights: list[np.ndarray], steps: int) -> list[list[int]]:
    """The per-domain counts of batches 0..steps-1 the mixer must compose if ``weights[t]`` is in force at t."""
    carry, out = np.zeros(len(NAMES)), []
    for t in range(steps):
        counts, carry = apportion(weights[t], B, carry)
        out.append([int(c) for c in counts])
    return out


def batch_counts(batches) -> list[list[int]]:
    return [np.bincount(domains, minlength=len(NAMES)).tolist() for domains, _ in batches]


PIKE_OPTIONS = dict(update_interval=2, warmup_steps=1, zeta1=2.0, zeta2=1.0)
STEPS = 20


@pytest.fixture(scope="module")
def pike_run(data_root: str) -> Run:
    """20 steps of PiKE (probes at batches 1, 3, …, 19) on a model with dropout."""
    return train(data_root, f"{STEPS}ba", algorithms=[PiKE(**PIKE_OPTIONS)], dropout=0.1)


# ------------------------------------------------------------------------------------------ options
@pytest.mark.parametrize("options, option", [
    (dict(strategy="pikee"), "unknown mixing strategy"),
    (dict(zeta1=0.0), "zeta1"),
    (dict(zeta2=-1.0), "zeta2"),
    (dict(strategy="balanced_pike", tau=0.0), "tau"),
    (dict(min_weight=1.0), "min_weight"),
    (dict(min_weight=-0.1), "min_weight"),
    (dict(update_interval=0), "update_interval"),
    (dict(update_interval=2.5), "update_interval"),
    (dict(warmup_steps=-1), "warmup_steps"),
    (dict(ema=1.0), "ema"),
    (dict(ema=-0.5), "ema"),
    (dict(zeta3=1.0), "zeta3"),
    (dict(strategy="uniform", zeta1=1.0), "zeta1"),
    (dict(sketch_dim=-1), "sketch_dim"),
    (dict(conflict_threshold=1.5), "conflict_threshold"),
    (dict(initial_weights={"web": -1.0}), "initial_weights"),
    (dict(initial_weights={"web": 0.0}), "initial_weights"),
    (dict(per_sample_loss="mean"), "per_sample_loss"),
    (dict(metric="sgd"), "'metric'"),
    (dict(cross_terms=True, sketch_dim=0), "'cross_terms' needs the gradient sketch"),
])
def test_constructor_rejects_bad_options_naming_them(options: dict, option: str) -> None:
    with pytest.raises(ValueError, match=re.escape(option)):
        PiKE(**options)


def test_constructor_accepts_every_strategy_with_its_options() -> None:
    for name in STRATEGIES:
        assert PiKE(strategy=name).strategy.name == name
    pike = PiKE(strategy="balanced_pike", tau=2.0, zeta1=0.5, zeta2=0.0, min_weight=0.05, ema=0.9,
                conflict_threshold=None)
    assert (pike.strategy.tau, pike.strategy.zeta1, pike.strategy.min_weight) == (2.0, 0.5, 0.05)


# ------------------------------------------------------------------------------------------ the Trainer run
def test_trainer_run_moves_weights_only_on_update_steps_with_zero_lag(pike_run: Run) -> None:
    weights, batches = pike_run.recorder.weights, pike_run.recorder.batches
    assert len(batches) == STEPS and len(weights) == STEPS + 1
    np.testing.assert_allclose(weights[0], np.full(3, 1 / 3))
    controller = MixingController(get_strategy("pike"), NAMES, update_interval=2, warmup_steps=1)
    for t in range(STEPS):
        moved = not np.allclose(weights[t + 1], weights[t], rtol=0, atol=1e-12)
        assert moved == controller.probes_at(t), f"weights of batch {t + 1} vs {t}"
    assert np.abs(weights[-1] - weights[0]).max() > 0.05, "PiKE's weights barely moved"
    # Zero lag: the weights set while batch t was in hand composed batch t+1 (with the mixer's carried rounding).
    assert batch_counts(batches) == replay_counts(weights, STEPS)
    lagged = [weights[0]] + weights[:-1]
    assert batch_counts(batches) != replay_counts(lagged, STEPS)


def test_trainer_run_logs_weights_statistics_and_probe_metrics(pike_run: Run) -> None:
    probed = list(range(1, STEPS, 2))
    for k, name in enumerate(NAMES):
        logged = pike_run.metric(f"pike/weight/{name}")
        assert [t for t, _ in logged] == list(range(STEPS))
        assert [w for _, w in logged] == pytest.approx([w[k] for w in pike_run.recorder.weights[:STEPS]])
        for stat in ("grad_sq", "variance", "loss"):
            values = pike_run.metric(f"pike/{stat}/{name}")
            assert [t for t, _ in values] == probed, stat
            assert all(math.isfinite(v) for _, v in values)
        assert all(v > 0 for _, v in pike_run.metric(f"pike/variance/{name}"))
    # Every pair's averaged cosine at every update; the lowest one once pairs were seen CONFLICT_MIN_UPDATES times.
    # A pair's cosine is logged where it is defined (both averaged G positive, Cauchy–Schwarz holds): web is
    # random tokens, whose mean gradient is about zero, so its pairs may have none; code and math do.
    logged = {pair: pike_run.metric(f"pike/cosine/{pair}") for pair in ("web|code", "web|math", "code|math")}
    assert logged["code|math"]
    for pair, values in logged.items():
        assert {t for t, _ in values} <= set(probed) and all(-1.0 <= c <= 1.0 for _, c in values), pair
    assert [t for t, _ in pike_run.metric("pike/min_cosine")] == probed[CONFLICT_MIN_UPDATES - 1:]
    assert all(s > 0 for _, s in pike_run.metric("pike/probe_seconds"))
    assert pike_run.metric("pike/updates")[-1] == (STEPS - 1, len(probed))
    assert pike_run.metric("pike/skipped_updates")[-1] == (STEPS - 1, 0)


def test_probe_changes_training_only_through_the_weights(data_root: str, pike_run: Run) -> None:
    """Replaying PiKE's weights without probing trains the very same model (dropout on: RNG untouched)."""
    replay = train(data_root, f"{STEPS}ba", callbacks=[Replay(pike_run.recorder.weights)], dropout=0.1)
    assert replay.recorder.batches == pike_run.recorder.batches
    assert all(torch.equal(a, b) for a, b in zip(replay.params, pike_run.params))


RESUME_OPTIONS = dict(update_interval=2, warmup_steps=1, ema=0.5, zeta1=2.0)
RESUME_STEPS = 12


@pytest.fixture(scope="module")
def uninterrupted(data_root: str) -> Run:
    """The run the resumed ones must reproduce (no dropout: Composer restores the RNG only at epoch starts,
    and the mixer's epoch never ends)."""
    return train(data_root, f"{RESUME_STEPS}ba", algorithms=[PiKE(**RESUME_OPTIONS)])


def assert_same_run(parts: list[Run], pike: PiKE, full: Run) -> None:
    """``parts`` (each resumed where the previous stopped) trained the same batches, weights and model as ``full``."""
    batches = [b for part in parts for b in part.recorder.batches]
    weights = [w for part in parts[:-1] for w in part.recorder.weights[:len(part.recorder.batches)]]
    assert batches == full.recorder.batches
    np.testing.assert_array_equal(np.array(weights + parts[-1].recorder.weights), np.array(full.recorder.weights))
    saved = full.trainer.state.algorithms[0].state_dict()
    assert pike.state_dict() == saved
    assert saved["updates"] == 6 and all(math.isfinite(v) for d in saved["domains"].values() for v in d.values())
    assert all(torch.equal(a, b) for a, b in zip(parts[-1].params, full.params))


@pytest.mark.parametrize("stop", [1, 4, 5])  # before the first update; between updates; on an update step
def test_checkpoint_resume_reproduces_the_uninterrupted_run(data_root: str, tmp_path, uninterrupted: Run,
                                                            stop: int) -> None:
    folder = str(tmp_path / "checkpoints")
    head = train(data_root, f"{stop}ba", algorithms=[PiKE(**RESUME_OPTIONS)], save_folder=folder,
                 save_interval=f"{stop}ba")
    pike = PiKE(**RESUME_OPTIONS)
    tail = train(data_root, f"{RESUME_STEPS}ba", algorithms=[pike],
                 load_path=os.path.join(folder, f"ep0-ba{stop}-rank0.pt"))
    assert len(tail.recorder.batches) == RESUME_STEPS - stop
    assert_same_run([head, tail], pike, uninterrupted)


def test_a_resume_with_other_pike_options_is_refused_unless_allowed(data_root: str, tmp_path, caplog) -> None:
    folder = str(tmp_path / "checkpoints")
    train(data_root, "4ba", algorithms=[PiKE(**RESUME_OPTIONS)], save_folder=folder, save_interval="4ba")
    checkpoint = os.path.join(folder, "ep0-ba4-rank0.pt")
    changed = {**RESUME_OPTIONS, "zeta1": 0.5, "pull": 0.0}
    with pytest.raises(ValueError, match=r"options differ.*pull 0\.1 → 0\.0; zeta1 2\.0 → 0\.5.*allow_changes"):
        train(data_root, "8ba", algorithms=[PiKE(**changed)], load_path=checkpoint)
    with caplog.at_level(logging.WARNING, logger="pike_stream.controller"):
        run = train(data_root, "8ba", algorithms=[PiKE(**changed, allow_changes=True)], load_path=checkpoint)
    assert len(run.recorder.batches) == 4
    assert any("changed options" in r.getMessage() and "zeta1 2.0 → 0.5" in r.getMessage() for r in caplog.records)


def test_fit_called_twice_continues_like_one_fit(data_root: str, uninterrupted: Run) -> None:
    """The controller's state carries over to the next ``fit()``. (Composer would skip ``batch_in_epoch``
    batches of the mixer's continuing iterator on the second ``fit()``: ``spin_dataloaders=False`` stops that.)"""
    pike = PiKE(**RESUME_OPTIONS)
    run = train(data_root, "5ba", algorithms=[pike], spin_dataloaders=False)
    run.trainer.fit(duration=f"{RESUME_STEPS - 5}ba")
    run.params = [p.detach().clone() for p in run.trainer.state.model.parameters()]
    assert_same_run([run], pike, uninterrupted)


@pytest.mark.parametrize("probe_samples", [8, 0])
def test_adam_metric_skips_the_update_before_the_first_step_and_resumes_exactly(data_root: str, tmp_path, caplog,
                                                                                probe_samples: int) -> None:
    """metric: adam reads Adam's second moments: at step 0 there are none, so that update is skipped (the
    weights stay); later updates move them; a resume reproduces the run (the moments are in the checkpoint)."""
    options = dict(RESUME_OPTIONS, warmup_steps=0, metric="adam", probe_samples=probe_samples)
    with caplog.at_level(logging.INFO, logger="pike_stream.algorithm"):
        full = train(data_root, "8ba", algorithms=[PiKE(**options)])
    assert any("no second moments before its first step; the update at step 0 is skipped" in r.getMessage()
               for r in caplog.records)
    weights = np.array(full.recorder.weights)
    np.testing.assert_array_equal(weights[1], weights[0])
    assert not np.allclose(weights[-1], weights[0])
    assert [step for step, _ in full.metric("pike/updates")] == [2, 4, 6]
    assert full.trainer.state.algorithms[0].state_dict()["options"]["metric"] == "adam"
    folder = str(tmp_path / "checkpoints")
    head = train(data_root, "3ba", algorithms=[PiKE(**options)], save_folder=folder, save_interval="3ba")
    tail = train(data_root, "8ba", algorithms=[PiKE(**options)], load_path=os.path.join(folder, "ep0-ba3-rank0.pt"))
    assert head.recorder.batches + tail.recorder.batches == full.recorder.batches
    np.testing.assert_array_equal(np.array(head.recorder.weights[:3] + tail.recorder.weights), weights)
    assert all(torch.equal(a, b) for a, b in zip(tail.params, full.params))
    with pytest.raises(ValueError, match=r"options differ.*metric 'adam' → 'euclidean'"):
        train(data_root, "8ba", algorithms=[PiKE(**dict(options, metric="euclidean"))],
              load_path=os.path.join(folder, "ep0-ba3-rank0.pt"))


def test_cross_terms_move_the_weights_otherwise_and_resume_exactly(data_root: str, tmp_path,
                                                                  uninterrupted: Run) -> None:
    options = dict(RESUME_OPTIONS, cross_terms=True)
    full = train(data_root, f"{RESUME_STEPS}ba", algorithms=[PiKE(**options)])
    assert not np.allclose(full.recorder.weights[-1], uninterrupted.recorder.weights[-1]), "the cross terms count"
    folder = str(tmp_path / "checkpoints")
    head = train(data_root, "5ba", algorithms=[PiKE(**options)], save_folder=folder, save_interval="5ba")
    pike = PiKE(**options)
    tail = train(data_root, f"{RESUME_STEPS}ba", algorithms=[pike], load_path=os.path.join(folder, "ep0-ba5-rank0.pt"))
    assert_same_run([head, tail], pike, full)


@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_every_strategy_runs_in_the_trainer(data_root: str, name: str) -> None:
    steps = 6
    run = train(data_root, f"{steps}ba", algorithms=[PiKE(strategy=name, update_interval=2)])
    weights, batches = run.recorder.weights, run.recorder.batches
    assert batch_counts(batches) == replay_counts(weights, steps)
    strategy = get_strategy(name)
    initial = strategy.initial_weights(np.array(list(SIZES.values()), dtype=float))
    np.testing.assert_allclose(weights[0], initial)
    if name == "round_robin":
        assert [set(d) for d, _ in batches] == [{t % 3} for t in range(steps)]
    elif name == "random":
        assert [set(d) for d, _ in batches] == [{random_domain(t, 3, 0)} for t in range(steps)]
    elif strategy.adaptive:
        assert not np.allclose(weights[-1], initial), f"{name} never moved the weights"
    else:
        np.testing.assert_allclose(np.array(weights), np.tile(initial, (steps + 1, 1)))


def test_initial_weights_compose_batch_zero_and_must_name_the_mixers_domains(data_root: str) -> None:
    initial = {"web": 0.5, "code": 0.25, "math": 0.25}
    run = train(data_root, "2ba", algorithms=[PiKE(strategy="uniform", initial_weights=initial)])
    assert batch_counts(run.recorder.batches) == [[6, 3, 3], [6, 3, 3]]
    with pytest.raises(ValueError, match=r"initial_weights.*unknown: \['books'\].*missing: \['math'\]"):
        train(data_root, "1ba", algorithms=[PiKE(initial_weights={"web": 1, "code": 1, "books": 1})])


def test_non_finite_loss_skips_every_update_and_counts_it(data_root: str, caplog) -> None:
    def poisoned_loss(model, batch):
        return causal_lm_per_sample_loss(model, batch) * float("nan")

    with caplog.at_level(logging.WARNING, logger="pike_stream.algorithm"):
        run = train(data_root, "6ba", algorithms=[PiKE(update_interval=2, per_sample_loss=poisoned_loss)])
    np.testing.assert_allclose(np.array(run.recorder.weights), np.full((7, 3), 1 / 3))
    assert run.metric("pike/skipped_updates") == [(0, 1), (2, 2), (4, 3)]
    assert run.metric("pike/updates")[-1] == (4, 0)
    assert not run.metric("pike/grad_sq/web")
    skips = [r.getMessage() for r in caplog.records if "skipped" in r.getMessage()]
    assert len(skips) == 3 and "loss is non-finite for web" in skips[0]


def test_conflict_warning_names_the_domains_at_most_once_per_interval(data_root: str, caplog) -> None:
    steps = CONFLICT_MIN_UPDATES + 3
    with caplog.at_level(logging.WARNING, logger="pike_stream.algorithm"):
        run = train(data_root, f"{steps}ba", algorithms=[PiKE(update_interval=1, conflict_threshold=1.0)])
    assert len(run.metric("pike/min_cosine")) == steps - CONFLICT_MIN_UPDATES + 1
    warnings = [r.getMessage() for r in caplog.records if "conflict" in r.getMessage()]
    assert len(warnings) == 1, "one warning per CONFLICT_WARNING_EVERY updates"
    assert re.search(rf"domains '(web|code|math)' and '(web|code|math)' conflict at step {CONFLICT_MIN_UPDATES - 1}",
                     warnings[0])


@pytest.mark.parametrize("options, warning", [
    (dict(probe_samples=0, min_weight=0.05), "takes statistics from the training batch"),
    (dict(probe_samples=0, min_weight=0.3), None),
    (dict(), None),
])
def test_a_probe_that_cannot_estimate_every_domain_is_announced(data_root: str, caplog, options: dict,
                                                                warning: str | None) -> None:
    """With B = 12 and probe_samples = 0, a domain on a floor of 0.05 gets 0.6 samples a batch: no estimate."""
    with caplog.at_level(logging.WARNING, logger="pike_stream.algorithm"):
        train(data_root, "1ba", algorithms=[PiKE(**options)])
    found = [r.getMessage() for r in caplog.records if "PiKE: probe_samples=0" in r.getMessage()]
    assert (warning in found[0]) if warning else not found


def test_a_pure_noise_domain_loses_weight(data_root: str) -> None:
    """web is uniformly random tokens, code and math are learnable. While the model learns web's token
    frequencies its gradient is large and web gains a little; once that is learned its samples are noise
    (small G, large S) and PiKE, estimating every domain on a probe batch at every update, moves web well below
    its uniform share and keeps it there; the pull back to the initial mixture bounds how far it falls, and
    slows the fall. (Steps 5x the default, so that 60 steps show it.)"""
    run = train(data_root, "60ba", algorithms=[PiKE(update_interval=4, warmup_steps=4, zeta1=0.5, zeta2=0.5)])
    web = np.array(run.recorder.weights)[:, NAMES.index("web")]
    assert web[-1] < 0.25
    assert (web[40:] < 1 / 3).all() and (np.diff(web[30:]) <= 1e-12).mean() > 0.9
    assert run.metric("pike/skipped_updates")[-1][1] == 0


def test_no_mixer_is_a_clear_error_at_fit_start() -> None:
    data = torch.utils.data.TensorDataset(torch.zeros(8, SEQ_LEN, dtype=torch.long))
    trainer = Trainer(model=TinyLM(), train_dataloader=torch.utils.data.DataLoader(data, batch_size=4),
                      max_duration="1ba", algorithms=[PiKE()], device="cpu", progress_bar=False,
                      optimizers=torch.optim.SGD(TinyLM().parameters(), lr=0.1))
    with pytest.raises(ValueError, match="PiKEStreamingMixer.*found a DataLoader over a TensorDataset"):
        trainer.fit()


def test_find_mixer_refuses_the_bare_mixer(data_root: str) -> None:
    mixer = make_mixer(data_root)
    assert find_mixer(mixer.dataloader()) is mixer
    with pytest.raises(ValueError, match=r"mixer\.dataloader\(\)"):
        find_mixer(mixer)


# ------------------------------------------------------------------------------------------ plain PyTorch
def test_plain_pytorch_loop_example_from_the_docstring_runs(data_root: str) -> None:
    example = controller_module.__doc__.split("    from pike_stream.controller import MixingController", 1)[1]
    code = textwrap.dedent("    from pike_stream.controller import MixingController"
                           + example.split("\nWhat the controller owns", 1)[0])
    model = tiny_gpt2(dropout=0.0)
    mixer = make_mixer(data_root)
    namespace = {"model": model, "mixer": mixer, "num_steps": 3,
                 "optimizer": torch.optim.Adam(model.parameters(), lr=1e-3)}
    exec(compile(code, "pike_stream.controller docstring", "exec"), namespace)
    assert mixer.step == 3
    assert not np.allclose(list(mixer.weights.values()), 1 / 3)  # step 0 was probed and moved them


@pytest.mark.parametrize("probe_samples, world_size, expected", [(8, 1, 8), (8, 2, 8), (8, 3, 9), (8, 8, 16),
                                                                 (2, 1, 2), (3, 2, 4)])
def test_the_probe_batch_gives_every_rank_two_samples_of_every_domain(monkeypatch, probe_samples: int,
                                                                      world_size: int, expected: int) -> None:
    monkeypatch.setattr(algorithm_module.dist, "get_world_size", lambda: world_size)
    assert PiKE(probe_samples=probe_samples)._probe_size() == expected
