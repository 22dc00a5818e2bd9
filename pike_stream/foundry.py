"""pike_stream as an llm-foundry plug-in: the mixer as a train dataloader, PiKE as an algorithm.

Registered through llm-foundry's entry-point registries (``[project.entry-points]`` in pyproject.toml), so
after ``pip install 'pike_stream[foundry]'`` an llm-foundry YAML names them, and llm-foundry's own train
command (``llmfoundry train run.yaml``, or its ``scripts/train/train.py`` under ``composer -n N``) builds
them beside its models, tokenizers, loggers and checkpointing::

    tokenizer: {name: pike_bytes}            # the byte tokenizer of `pike-stream convert` (or a real one)
    train_loader:                            # llmfoundry_dataloaders: pike_mixer
      name: pike_mixer
      domains: [{name: en, remote: s3://bucket/mds/en, split: train}, ...]
      weights: {en: 0.5, code: 0.5}          # optional initial weights; seed, read_ahead, cache_limit, ...
    algorithms:
      pike: {strategy: pike, update_interval: 10}   # llmfoundry_algorithms: pike
    callbacks:
      pike_batch_log: {folder: runs/x}       # optional: batches-rank<r>.jsonl, as batch_log: true writes
    loggers:
      pike_metrics: {folder: runs/x}         # optional: metrics.jsonl, which `pike-stream report` reads

The keys are those of the native YAML's ``train_loader`` and ``algorithms.pike`` sections, read and checked
by the same code (:mod:`pike_stream.train.config`), so a mistake is one line naming the key
(``train_loader.domains.0.remote: …``). The global batch is llm-foundry's ``global_train_batch_size``
(``device_batch_size`` × the world size); batches carry ``labels`` (= ``input_ids``: the shards hold packed
sequences without padding) for llm-foundry's models.

Not supported: FSDP and tensor parallelism (PiKE's probe needs the whole model on every rank: refused at
the start of training), dataloader workers (``num_workers`` must be 0: the mixer composes every batch in the
training process so a weight change shapes the very next batch; shard downloads run in its read-ahead
threads), and a fractional device batch (llm-foundry's data replication).

Nothing here imports llm-foundry: the registered objects are plain Composer and transformers objects.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from composer.callbacks import CheckpointSaver
from composer.core import DataSpec, State
from composer.utils import dist
from torch.utils.data import DataLoader
from transformers import PreTrainedTokenizer

from converters.tokenizers import ByteTokenizer
from pike_stream.algorithm import PiKE, _refuse_sharded_training, find_mixer
from pike_stream.mixer import Domain, PiKEStreamingMixer
from pike_stream.step_statistics import split_batch
from pike_stream.strategies.checks import check_domain_weights
from pike_stream.train.checkpoint_check import use_checkpoint_verification
from pike_stream.train.composer_compat import check_saver_latest_symlink_often
from pike_stream.train.config import (
    ConfigError,
    PiKEConfig,
    RampupConfig,
    TrainLoaderConfig,
    check_pike,
    check_train_loader,
    pike_options,
    section_from_dict,
)
from pike_stream.train.logs import BatchLog, JSONLinesLogger

__all__ = ["BatchLog", "ByteLevelTokenizer", "FoundryLoaderConfig", "FoundryPiKE", "JSONLinesLogger",
           "build_pike_dataloader"]

log = logging.getLogger(__name__)

LOADER_KEY = "train_loader"
PIKE_KEY = "algorithms.pike"

# The weights each mixer was configured with (train_loader.weights): PiKE starts from them, as in the
# native YAML. Keyed weakly by mixer, so nothing outlives its run.
_CONFIGURED_WEIGHTS: weakref.WeakKeyDictionary[PiKEStreamingMixer, dict[str, float] | None] = (
    weakref.WeakKeyDictionary())


@dataclass(kw_only=True)
class FoundryLoaderConfig(TrainLoaderConfig):
    """The native ``train_loader`` keys, plus what an llm-foundry run gives its dataloader itself.

    ``seed`` keys the domains' shuffles (llm-foundry's top-level ``seed`` is not passed to dataloaders);
    ``max_seq_len``, when given (``${variables.max_seq_len}``), must equal the domains' converted seq_len;
    ``num_workers`` must be 0; ``pin_memory`` is the DataLoader's. ``rampup_batch_size: {start, increment,
    samples}`` ramps the global batch up to llm-foundry's ``global_train_batch_size`` (Megatron-LM's
    ``--rampup-batch-size``, as the native YAML's top-level key of that name).
    """

    seed: int = 17
    rampup_batch_size: RampupConfig | None = None
    max_seq_len: int | None = None
    num_workers: int = 0
    pin_memory: bool = False


def _with_labels(batch: Any) -> dict[str, torch.Tensor]:
    """The mixer's batch with ``labels`` for llm-foundry's models (packed sequences: every token a target)."""
    return {**batch, "labels": batch["input_ids"]}


def _tokens_in_batch(batch: Mapping[str, torch.Tensor]) -> int:
    return int(batch["input_ids"].numel())


def _check_tokenizer(tokenizer: Any, mixer: PiKEStreamingMixer) -> None:
    """The run's tokenizer must be the one the domains were converted with (same size and EOS id)."""
    if tokenizer is None:
        return
    size, eos = len(tokenizer), getattr(tokenizer, "eos_token_id", None)
    for source in mixer.sources:
        described = source.manifest.get("tokenizer") or {}
        expected_size, expected_eos = described.get("vocab_size"), described.get("eos_id")
        if expected_size is None or expected_eos is None:
            continue  # converted by other means: nothing to compare
        if (int(expected_size), int(expected_eos)) != (size, eos):
            kind = described.get("kind")
            hint = ("tokenizer: {name: pike_bytes}" if kind == ByteTokenizer.kind
                    else f"the tokenizer it was converted with ({described.get('path', kind)})")
            raise ConfigError(f"tokenizer: domain {source.name!r} was converted with a {kind} tokenizer of "
                              f"{expected_size} ids (EOS {expected_eos}), the run's tokenizer "
                              f"({type(tokenizer).__name__}) has {size} ids (EOS {eos}); use {hint}")


def build_pike_dataloader(tokenizer: Any = None, device_batch_size: int | float | None = None,
                          **cfg: Any) -> DataSpec:
    """llm-foundry's ``train_loader: {name: pike_mixer, …}``: a :class:`PiKEStreamingMixer` over the domains,
    as a Composer ``DataSpec`` whose dataloader's ``.dataset`` is the mixer (Composer checkpoints its state,
    and :class:`FoundryPiKE` finds it there).

    Called by llm-foundry as ``fn(**train_loader_without_name, tokenizer=…, device_batch_size=…)``, before it
    builds the Trainer: from here on Composer checks every checkpoint it loads against its CRC-32s
    (:mod:`pike_stream.train.checkpoint_check`), as the native trainer does.
    """
    use_checkpoint_verification()
    loader = section_from_dict(FoundryLoaderConfig, cfg, LOADER_KEY)
    check_train_loader(loader, LOADER_KEY)
    if loader.num_workers != 0:
        raise ConfigError(f"{LOADER_KEY}.num_workers: must be 0, got {loader.num_workers}: the mixer composes every "
                          f"batch in the training process so that a weight change shapes the next batch (shard "
                          f"downloads run in read-ahead threads: {LOADER_KEY}.read_ahead_workers)")
    if (isinstance(device_batch_size, bool) or not isinstance(device_batch_size, (int, float))
            or device_batch_size <= 0 or device_batch_size != int(device_batch_size)):
        raise ConfigError(f"global_train_batch_size: the mixer needs a whole, positive batch per rank, got "
                          f"{device_batch_size!r} (llm-foundry's data replication is not supported)")
    rank, world_size = dist.get_global_rank(), dist.get_world_size()
    domains = [Domain(name=d.name, remote=d.remote, local=d.local, split=d.split) for d in loader.domains]
    try:
        mixer = PiKEStreamingMixer(domains, int(device_batch_size) * world_size, seed=loader.seed,
                                   weights=loader.weights, rank=rank, world_size=world_size,
                                   shuffle_algo=loader.shuffle_algo, read_ahead=loader.read_ahead,
                                   read_ahead_workers=loader.read_ahead_workers, cache_limit=loader.cache_limit,
                                   allow_batch_size_change=loader.allow_batch_size_change,
                                   allow_domain_changes=loader.allow_domain_changes,
                                   allow_data_growth=loader.allow_data_growth, partitions=loader.partitions,
                                   batch_ramp=None if loader.rampup_batch_size is None
                                   else loader.rampup_batch_size.ramp())
    except (TypeError, ValueError) as error:
        raise ConfigError(f"{LOADER_KEY}: {error}") from error
    if loader.max_seq_len is not None and loader.max_seq_len != mixer.seq_len:
        mixer.close()
        raise ConfigError(f"{LOADER_KEY}.max_seq_len={loader.max_seq_len}, but the domains were converted with "
                          f"seq_len {mixer.seq_len}; set max_seq_len: {mixer.seq_len}")
    try:
        _check_tokenizer(tokenizer, mixer)
    except ConfigError:
        mixer.close()
        raise
    _CONFIGURED_WEIGHTS[mixer] = loader.weights
    for source in mixer.sources:
        log.info("domain %r: %d samples (%d tokens) in %d shards at %s", source.name, source.num_samples,
                 source.num_samples * source.seq_len, len(source.shards), source.domain.where())
    dataloader = DataLoader(mixer, batch_size=None, num_workers=0, pin_memory=loader.pin_memory,
                            collate_fn=_with_labels)
    # split_batch: the domain-grouped microbatches of PiKE's probe_samples: 0 (pike_stream.step_statistics).
    return DataSpec(dataloader, split_batch=split_batch, get_num_tokens_in_batch=_tokens_in_batch)


def _follow_foundry_log_level() -> None:
    """pike_stream's log lines at llm-foundry's level (its ``python_log_level`` sets only its own loggers),
    at most INFO, unless the user set pike_stream's level already."""
    ours = logging.getLogger("pike_stream")
    if ours.level == logging.NOTSET:
        foundry = logging.getLogger("llmfoundry").getEffectiveLevel()
        if foundry < logging.WARNING:
            ours.setLevel(max(foundry, logging.INFO))


class FoundryPiKE(PiKE):
    """llm-foundry's ``algorithms: {pike: {…}}``: :class:`~pike_stream.algorithm.PiKE` built from the native
    YAML's ``algorithms.pike`` keys (checked as there; errors name ``algorithms.pike.<key>``).

    Its initial weights are the train loader's ``weights`` (as in the native YAML; an ``initial_weights`` key
    here overrides them). It also has Composer upload a remote checkpoint's ``latest`` pointer as soon as the
    checkpoint is there, as the native trainer does, so a run killed after a checkpoint resumes from it.
    """

    def __init__(self, **options: Any) -> None:
        options = dict(options)
        initial = options.pop("initial_weights", None)
        pike = section_from_dict(PiKEConfig, options, PIKE_KEY)
        check_pike(pike, PIKE_KEY)
        if initial is not None:
            try:
                initial = check_domain_weights(initial, key=f"{PIKE_KEY}.initial_weights")
            except ValueError as error:
                raise ConfigError(str(error)) from None
        try:
            super().__init__(initial_weights=initial, **pike_options(pike))
        except (TypeError, ValueError) as error:
            raise ConfigError(f"{PIKE_KEY}: {error}") from error
        _follow_foundry_log_level()

    def _fit_start(self, state: State) -> None:
        _refuse_sharded_training(state)
        for callback in getattr(state, "callbacks", []):
            if isinstance(callback, CheckpointSaver):
                check_saver_latest_symlink_often(callback)
        mixer = _mixer_or_none(state)
        configured = _CONFIGURED_WEIGHTS.get(mixer) if mixer is not None else None
        if self.initial_weights is None and configured is not None:
            self.initial_weights = dict(configured)
        super()._fit_start(state)
        step = int(state.timestamp.batch)
        if step and self.mixer is not None:
            log.info("PiKE: resumed at step %d: mixer at step %d, weights %s", step, self.mixer.step,
                     {n: round(w, 4) for n, w in self.mixer.weights.items()})


def _mixer_or_none(state: State) -> PiKEStreamingMixer | None:
    try:
        return find_mixer(state.train_dataloader)
    except ValueError:
        return None  # PiKE's own check says what is wrong


class ByteLevelTokenizer(PreTrainedTokenizer):
    """llm-foundry's ``tokenizer: {name: pike_bytes}``: the byte-level tokenizer of ``pike-stream convert``
    (``--tokenizer bytes``, its default) as a transformers tokenizer, so a run over such shards needs no
    download: ids 0–255 are UTF-8 bytes, 256 is EOS, 257 is PAD (258 ids; a model's ``vocab_size`` ≥ 258)."""

    model_input_names = ["input_ids", "attention_mask"]
    vocab_files_names: dict[str, str] = {}

    def __init__(self, **kwargs: Any) -> None:
        self._vocab = {f"<0x{b:02X}>": b for b in range(256)}
        self._vocab["<|endoftext|>"] = ByteTokenizer.eos_id
        self._vocab["<|pad|>"] = ByteTokenizer.pad_id
        self._tokens = {i: t for t, i in self._vocab.items()}
        kwargs.setdefault("eos_token", "<|endoftext|>")
        kwargs.setdefault("pad_token", "<|pad|>")
        kwargs.setdefault("model_max_length", int(1e30))
        super().__init__(**kwargs)

    @property
    def vocab_size(self) -> int:
        return ByteTokenizer.vocab_size

    def get_vocab(self) -> dict[str, int]:
        return dict(self._vocab)

    def _tokenize(self, text: str, **kwargs: Any) -> list[str]:
        return [f"<0x{b:02X}>" for b in text.encode("utf-8")]

    def _convert_token_to_id(self, token: str) -> int:
        return self._vocab[token]

    def _convert_id_to_token(self, index: int) -> str:
        return self._tokens[int(index)]

    def convert_tokens_to_string(self, tokens: list[str]) -> str:
        data = bytes(self._vocab[t] for t in tokens if self._vocab.get(t, 256) < 256)
        return data.decode("utf-8", errors="replace")

    def save_vocabulary(self, save_directory: str, filename_prefix: str | None = None) -> tuple[str, ...]:
        return ()  # the vocabulary is fixed: nothing to save beside tokenizer_config.json
