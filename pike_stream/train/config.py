"""The training configuration: one keyword-only dataclass per component, read from YAML with checks.

YAML keys map one-to-one to dataclass fields (llm-foundry's names where it has them); a key that is not a
field is an error naming it and the closest valid key. Command-line overrides ``key=value`` use dotted keys
and YAML-typed values (``max_duration=20ba algorithms.pike.zeta1=0.5 train_loader.domains.0.split=val``).

Values may interpolate others with omegaconf's syntax, as llm-foundry YAMLs do: ``max_seq_len:
${variables.seq_len}``, where the top-level ``variables`` mapping holds free-form values that only
interpolations read. Interpolations are resolved after the overrides, so ``variables.seq_len=256`` changes
every value that refers to it.

Values are read by the field's declared type: a YAML ``1e-4`` (a string to YAML 1.1) is a float where a
float is expected; a :data:`ByteSize` (``cache_limit``) is a number of bytes or a size like ``10gb``.
Durations are Composer time strings in batches (``100ba``) or tokens (``1_000_000tok``); tokens are turned
into whole batches with :meth:`TrainConfig.batches`. Epochs are refused: the mixer is infinite (each domain
cycles through its own epochs at its own pace), so a training epoch does not exist.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from pike_stream.controller import (
    DEFAULT_CONFLICT_THRESHOLD,
    DEFAULT_EMA,
    DEFAULT_METRIC,
    DEFAULT_PROBE_SAMPLES,
    DEFAULT_PULL,
    DEFAULT_UPDATE_INTERVAL,
)
from pike_stream.mixer.batch_size import BatchRamp, steps_for_samples
from pike_stream.strategies import STRATEGIES
from pike_stream.strategies.checks import check_domain_weights

__all__ = [
    "AlgorithmsConfig",
    "ByteSize",
    "ConfigError",
    "DomainConfig",
    "EvalLoaderConfig",
    "LoggersConfig",
    "ModelConfig",
    "OptimizerConfig",
    "PiKEConfig",
    "RampupConfig",
    "SchedulerConfig",
    "TrainConfig",
    "TrainLoaderConfig",
    "apply_overrides",
    "check_pike",
    "check_train_loader",
    "config_from_dict",
    "load_config",
    "parse_duration",
    "pike_options",
    "section_from_dict",
]


class ConfigError(ValueError):
    """The training configuration is invalid; the message names the key (``a.b.c``) and what is wrong."""


# mosaicml-streaming's shuffle algorithms (``streaming.base.shuffle.algos``; a test keeps the two equal), named
# here so that reading a config does not import streaming and torch: a mistake is answered in a second.
_SHUFFLE_ALGOS = ("naive", "py1br", "py1e", "py1s", "py2s")

ByteSize = typing.NewType("ByteSize", int)
"""A size in bytes: an int, or a string like ``500mb``/``10gb`` (mosaicml-streaming's ``bytes_to_int``)."""


@dataclass(kw_only=True)
class ModelConfig:
    """A GPT-2-style causal language model built from a config (random initialisation, nothing downloaded).

    ``n_positions`` defaults to the run's ``max_seq_len``; ``vocab_size`` must cover the token ids of the
    data (258 for the byte tokenizer of ``pike-stream convert``).
    """

    n_layer: int = 2
    n_embd: int = 128
    n_head: int = 4
    vocab_size: int = 258
    n_positions: int | None = None
    n_inner: int | None = None
    dropout: float = 0.0
    init_std: float = 0.02
    tie_word_embeddings: bool = True


@dataclass(kw_only=True)
class OptimizerConfig:
    """Composer's ``DecoupledAdamW`` (the only optimizer offered: ``name: decoupled_adamw``)."""

    name: str = "decoupled_adamw"
    lr: float = 6.0e-4
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    eps: float = 1.0e-8
    weight_decay: float = 0.0


@dataclass(kw_only=True)
class SchedulerConfig:
    """Learning-rate schedule: ``cosine_with_warmup`` (to ``alpha_f``·lr at the end), ``constant_with_warmup``
    or ``constant``; ``t_warmup`` is a duration in batches or tokens."""

    name: str = "cosine_with_warmup"
    t_warmup: str = "0ba"
    alpha_f: float = 0.1


@dataclass(kw_only=True)
class DomainConfig:
    """One domain's data: ``remote`` (``s3://…``) and/or ``local`` folder, and an optional ``split`` sub-folder."""

    name: str
    remote: str | None = None
    local: str | None = None
    split: str | None = None


@dataclass(kw_only=True)
class TrainLoaderConfig:
    """The mixer: the domains (their order indexes the batches' ``domain`` field) and its I/O settings.

    ``weights`` are the initial weights ``{domain: w}`` (normalised); None lets the strategy choose them.
    ``cache_limit`` bounds the shard cache of remote domains on disk (bytes, or ``10gb``), shared by the ranks
    of a node. ``allow_batch_size_change`` resumes a checkpoint made with another ``global_train_batch_size``
    or ``rampup_batch_size``: the batches from the checkpoint's step on take this run's sizes.
    ``allow_domain_changes`` resumes a checkpoint made with other ``domains``: new ones start at their share of
    ``weights`` (or uniform), missing ones are retired with their place kept, so adding one back continues it.
    ``allow_data_growth`` resumes a checkpoint made when a domain had fewer shards (shards appended, none
    changed): its new samples start in its next domain epoch. ``partitions`` splits each domain into that many
    partitions so that each node reads only its own (about ``1/N`` of the corpus on ``N`` nodes; the node
    count must be one that splits it evenly: every power of two up to it for a power of two; as
    mosaicml-streaming's ``num_canonical_nodes``); None: every rank reads every shard.
    """

    domains: list[DomainConfig]
    weights: dict[str, float] | None = None
    read_ahead: int = 2
    read_ahead_workers: int = 4
    cache_limit: ByteSize | None = None
    shuffle_algo: str = "py1e"
    allow_batch_size_change: bool = False
    allow_domain_changes: bool = False
    allow_data_growth: bool = False
    partitions: int | None = None


@dataclass(kw_only=True)
class RampupConfig:
    """A batch-size ramp-up, as Megatron-LM's ``--rampup-batch-size START INCREMENT SAMPLES``: the global batch
    starts at ``start`` and grows by ``increment`` at equal intervals over the first ``samples`` samples,
    up to ``global_train_batch_size``."""

    start: int
    increment: int
    samples: int

    def ramp(self) -> BatchRamp:
        return BatchRamp(self.start, self.increment, self.samples)


@dataclass(kw_only=True)
class EvalLoaderConfig:
    """Per-domain validation: each domain is its own evaluator labelled by its name.

    ``device_batch_size`` samples per rank and batch; ``max_batches`` batches per domain and evaluation
    (the first ones of the split, in order: every evaluation sees the same samples).
    """

    domains: list[DomainConfig]
    device_batch_size: int = 8
    max_batches: int | None = 8


@dataclass(kw_only=True)
class PiKEConfig:
    """The PiKE algorithm and its mixing strategy (``uniform``, ``proportional``, ``temperature``,
    ``round_robin``, ``random``, ``pike``, ``balanced_pike``, …).

    The strategy's own options (``zeta1``, ``zeta2``, ``tau``, ``temperature``, …) sit beside these keys and
    are collected into ``strategy_options``; which ones exist depends on the strategy. The defaults are
    :mod:`pike_stream.controller`'s, which :class:`pike_stream.algorithm.PiKE` uses too;
    ``conflict_threshold: null`` turns the gradient-conflict warning off.
    """

    strategy: str = "pike"
    update_interval: int = DEFAULT_UPDATE_INTERVAL
    warmup_steps: int = 0
    probe_samples: int = DEFAULT_PROBE_SAMPLES
    ema: float = DEFAULT_EMA
    pull: float = DEFAULT_PULL
    metric: str = DEFAULT_METRIC
    allow_changes: bool = False
    sketch_dim: int = 256
    conflict_threshold: float | None = DEFAULT_CONFLICT_THRESHOLD
    strategy_options: dict[str, Any] = field(default_factory=dict)


@dataclass(kw_only=True)
class AlgorithmsConfig:
    """Composer algorithms; ``pike`` mixes the domains (absent: the train loader's weights stay fixed)."""

    pike: PiKEConfig | None = None


@dataclass(kw_only=True)
class TensorBoardConfig:
    """Composer's ``TensorboardLogger`` (needs the ``tensorboard`` package); ``log_dir`` defaults to
    ``<run_folder>/tensorboard``."""

    log_dir: str | None = None
    flush_interval: int = 100


@dataclass(kw_only=True)
class MLflowConfig:
    """Composer's ``MLFlowLogger`` (needs ``mlflow``, or ``mlflow-skinny`` with ``sqlalchemy`` and ``alembic``).
    ``tracking_uri`` defaults to a local database, ``sqlite:///<run_folder>/mlflow.db`` (no server, no
    network: ``mlflow ui --backend-store-uri`` that URI shows it); ``experiment_name`` to the run's name."""

    tracking_uri: str | None = None
    experiment_name: str | None = None
    tags: dict[str, str] | None = None
    log_system_metrics: bool = False


WANDB_MODES = ("offline", "online", "disabled")


@dataclass(kw_only=True)
class WandBConfig:
    """Composer's ``WandBLogger`` (needs ``wandb``). ``mode`` defaults to ``offline``: the run is written under
    ``<dir>/wandb/offline-run-*`` (``dir`` defaults to the run folder) with no network and no account, and
    ``wandb sync`` uploads it later; ``online`` needs ``WANDB_API_KEY``. ``project`` defaults to the run's name."""

    project: str | None = None
    entity: str | None = None
    group: str | None = None
    tags: list[str] | None = None
    mode: str = "offline"
    dir: str | None = None


@dataclass(kw_only=True)
class LoggersConfig:
    """Where metrics go besides ``<run_folder>/metrics.jsonl`` (always written; ``pike-stream report`` reads
    it): Composer's progress bar, its console logger every ``console_interval``, TensorBoard, MLflow and W&B."""

    progress_bar: bool = False
    console: bool = True
    console_interval: str = "10ba"
    tensorboard: TensorBoardConfig | None = None
    mlflow: MLflowConfig | None = None
    wandb: WandBConfig | None = None


@dataclass(kw_only=True)
class TrainConfig:
    """A training run (llm-foundry's top-level names where it has them).

    ``run_name`` names the run (and Composer's checkpoints; rerunning the same name with ``autoresume``
    continues it). ``max_duration``, ``eval_interval``, ``save_interval`` are durations in batches or tokens;
    without ``eval_interval`` the domains are evaluated once, at the end. ``run_folder`` (default
    ``runs/<run_name>``) receives ``metrics.jsonl``, the batch logs (``batch_log: true``), ``config.json``
    and the report. ``save_folder`` is a local folder or ``s3://bucket/prefix`` (may hold ``{run_name}``);
    ``load_path`` a checkpoint to start from. ``deterministic_mode`` asks torch for deterministic kernels
    (needed for bitwise-equal reruns on GPU; CPU runs are deterministic without it).
    """

    run_name: str
    seed: int = 17
    max_seq_len: int
    global_train_batch_size: int
    rampup_batch_size: RampupConfig | None = None
    device_train_microbatch_size: int | str | None = None
    max_duration: str
    eval_interval: str | None = None
    model: ModelConfig = field(default_factory=ModelConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    train_loader: TrainLoaderConfig
    eval_loader: EvalLoaderConfig | None = None
    algorithms: AlgorithmsConfig = field(default_factory=AlgorithmsConfig)
    loggers: LoggersConfig = field(default_factory=LoggersConfig)
    run_folder: str | None = None
    save_folder: str | None = None
    save_interval: str = "100ba"
    save_num_checkpoints_to_keep: int = -1
    save_overwrite: bool = False
    autoresume: bool = False
    load_path: str | None = None
    batch_log: bool = False
    precision: str | None = None
    deterministic_mode: bool = False

    def __post_init__(self) -> None:
        _check_semantics(self)

    @property
    def resolved_run_folder(self) -> str:
        return self.run_folder or os.path.join("runs", self.run_name)

    @property
    def batch_ramp(self) -> BatchRamp | None:
        return None if self.rampup_batch_size is None else self.rampup_batch_size.ramp()

    def batches(self, duration: str, key: str) -> int:
        """``duration`` (``Nba`` or ``Ntok``) in whole global batches (tokens rounded up; along the batch-size
        ramp, if any)."""
        amount, unit = parse_duration(duration, key, allow_zero=True)
        if unit == "ba":
            return amount
        return steps_for_samples(self.global_train_batch_size, self.batch_ramp, math.ceil(amount / self.max_seq_len))


# ------------------------------------------------------------------------------------------- durations
_DURATION = re.compile(r"^\s*(\d[\d_]*)\s*([a-z]+)\s*$")


def parse_duration(value: Any, key: str, *, allow_zero: bool = False) -> tuple[int, str]:
    """``(amount, unit)`` of a duration string in batches (``ba``) or tokens (``tok``)."""
    match = _DURATION.match(str(value))
    if not match:
        raise ConfigError(f"{key}: {value!r} is not a duration like 100ba or 1000000tok")
    amount, unit = int(match.group(1).replace("_", "")), match.group(2)
    if unit == "ep":
        raise ConfigError(f"{key}: {value!r} is in epochs, but the mixer is infinite (each domain cycles through "
                          f"its own epochs at its own pace, so a training epoch does not exist); give batches "
                          f"(e.g. 100ba) or tokens (e.g. 1000000tok)")
    if unit not in ("ba", "tok"):
        raise ConfigError(f"{key}: unit {unit!r} of {value!r} is not supported; use ba (batches) or tok (tokens)")
    if amount < 0 or (amount == 0 and not allow_zero):
        raise ConfigError(f"{key}: {value!r} must be positive")
    return amount, unit


_SCHEDULERS = ("cosine_with_warmup", "constant_with_warmup", "constant")


def _check_semantics(cfg: TrainConfig) -> None:
    """Checks that need no data or storage (those are in :mod:`pike_stream.train.checks`)."""
    if not cfg.run_name or not re.fullmatch(r"[A-Za-z0-9._-]+", cfg.run_name):
        raise ConfigError(f"run_name: {cfg.run_name!r} must be a non-empty name of letters, digits, '.', '_', '-'")
    for key in ("max_seq_len", "global_train_batch_size"):
        if getattr(cfg, key) <= 0:
            raise ConfigError(f"{key}: must be positive, got {getattr(cfg, key)}")
    partitions = cfg.train_loader.partitions
    if partitions is not None and partitions <= 0:
        raise ConfigError(f"train_loader.partitions: must be positive (or null: no partitions), got {partitions}")
    if partitions is not None and cfg.train_loader.allow_data_growth:
        raise ConfigError("train_loader.partitions and train_loader.allow_data_growth do not work together (a grown "
                          "domain would move every partition's boundaries); set one of them")
    if cfg.rampup_batch_size is not None:
        try:
            ramp = cfg.batch_ramp
            assert ramp is not None
            ramp.check(cfg.global_train_batch_size)
        except ValueError as error:
            raise ConfigError(f"rampup_batch_size: {str(error).removeprefix('batch ramp: ')}") from None
    mb = cfg.device_train_microbatch_size
    if isinstance(mb, str) and mb != "auto":
        raise ConfigError(f"device_train_microbatch_size: {mb!r} must be a positive integer or 'auto'")
    if isinstance(mb, int) and mb <= 0:
        raise ConfigError(f"device_train_microbatch_size: must be positive, got {mb}")
    parse_duration(cfg.max_duration, "max_duration")
    for key in ("eval_interval", "save_interval"):
        if getattr(cfg, key) is not None:
            parse_duration(getattr(cfg, key), key)
    parse_duration(cfg.loggers.console_interval, "loggers.console_interval")
    if cfg.optimizer.name != "decoupled_adamw":
        raise ConfigError(f"optimizer.name: {cfg.optimizer.name!r} is not supported; use decoupled_adamw")
    if len(cfg.optimizer.betas) != 2:
        raise ConfigError(f"optimizer.betas: give two numbers, got {cfg.optimizer.betas}")
    if cfg.scheduler.name not in _SCHEDULERS:
        raise ConfigError(f"scheduler.name: {cfg.scheduler.name!r} is not one of {', '.join(_SCHEDULERS)}")
    parse_duration(cfg.scheduler.t_warmup, "scheduler.t_warmup", allow_zero=True)
    for key in ("n_layer", "n_embd", "n_head", "vocab_size", "n_positions", "n_inner"):
        value = getattr(cfg.model, key)
        if value is not None and value <= 0:
            raise ConfigError(f"model.{key}: must be positive, got {value}")
    if not 0.0 <= cfg.model.dropout < 1.0:
        raise ConfigError(f"model.dropout: must be in [0, 1), got {cfg.model.dropout}")
    if cfg.optimizer.lr < 0 or cfg.optimizer.eps <= 0 or cfg.optimizer.weight_decay < 0:
        raise ConfigError(f"optimizer: lr and weight_decay must be ≥ 0 and eps > 0, got lr={cfg.optimizer.lr}, "
                          f"eps={cfg.optimizer.eps}, weight_decay={cfg.optimizer.weight_decay}")
    if len(cfg.optimizer.betas) == 2 and not all(0.0 <= b < 1.0 for b in cfg.optimizer.betas):
        raise ConfigError(f"optimizer.betas: must be in [0, 1), got {cfg.optimizer.betas}")
    if cfg.model.n_embd % cfg.model.n_head:
        raise ConfigError(f"model.n_embd ({cfg.model.n_embd}) must be divisible by model.n_head ({cfg.model.n_head})")
    check_train_loader(cfg.train_loader)
    if cfg.eval_loader is not None:
        _check_domains(cfg.eval_loader.domains, "eval_loader")
        if cfg.eval_loader.device_batch_size <= 0:
            raise ConfigError(f"eval_loader.device_batch_size: must be positive, got "
                              f"{cfg.eval_loader.device_batch_size}")
        if cfg.eval_loader.max_batches is not None and cfg.eval_loader.max_batches <= 0:
            raise ConfigError(f"eval_loader.max_batches: must be positive (or null for the whole split), got "
                              f"{cfg.eval_loader.max_batches}")
    if cfg.algorithms.pike is not None:
        check_pike(cfg.algorithms.pike)
    if cfg.autoresume and not cfg.save_folder:
        raise ConfigError("autoresume: true needs a save_folder to find the latest checkpoint in")


def _check_domains(domains: list[DomainConfig], where: str) -> None:
    names = [d.name for d in domains]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ConfigError(f"{where}.domains: duplicate domain names {duplicates}")
    for i, d in enumerate(domains):
        if not d.remote and not d.local:
            raise ConfigError(f"{where}.domains.{i} ({d.name!r}): give `remote` (e.g. s3://bucket/path) "
                              f"or `local` (a folder)")


def check_train_loader(loader: TrainLoaderConfig, where: str = "train_loader") -> None:
    """The checks of a train loader section that need no data or storage (``where``: its key, for errors)."""
    if not loader.domains:
        raise ConfigError(f"{where}.domains: list at least one domain")
    _check_domains(loader.domains, where)
    for key in ("read_ahead", "read_ahead_workers"):
        if getattr(loader, key) < 0:
            raise ConfigError(f"{where}.{key}: must be ≥ 0, got {getattr(loader, key)}")
    if loader.shuffle_algo not in _SHUFFLE_ALGOS:
        raise ConfigError(f"{where}.shuffle_algo: {loader.shuffle_algo!r} is not one of "
                          f"{', '.join(sorted(_SHUFFLE_ALGOS))}")
    if loader.weights is not None:
        try:
            check_domain_weights(loader.weights, [d.name for d in loader.domains], key=f"{where}.weights")
        except ValueError as exc:
            raise ConfigError(str(exc)) from None


def check_pike(pike: PiKEConfig, where: str = "algorithms.pike") -> None:
    """The checks of a PiKE section: a known strategy, options of that strategy, a positive interval."""
    if pike.strategy not in STRATEGIES:
        close = difflib.get_close_matches(pike.strategy, list(STRATEGIES), n=1)
        raise ConfigError(f"{where}.strategy: unknown strategy {pike.strategy!r}"
                          + (f" (did you mean {close[0]!r}?)" if close else "")
                          + f"; valid strategies: {', '.join(sorted(STRATEGIES))}")
    valid = [f.name for f in dataclasses.fields(STRATEGIES[pike.strategy])]
    for option in pike.strategy_options:
        if option not in valid:
            raise ConfigError(_unknown_key_message(f"{where}.{option}", option,
                                                   [f.name for f in dataclasses.fields(PiKEConfig)
                                                    if f.name != "strategy_options"] + valid,
                                                   f"strategy {pike.strategy!r}"))
    if pike.update_interval <= 0:
        raise ConfigError(f"{where}.update_interval: must be positive, got {pike.update_interval}")


def pike_options(pike: PiKEConfig) -> dict[str, Any]:
    """The keyword arguments of :class:`pike_stream.algorithm.PiKE` for a PiKE section (all but
    ``initial_weights``, which come from the train loader's ``weights``)."""
    return {"strategy": pike.strategy, "update_interval": pike.update_interval, "warmup_steps": pike.warmup_steps,
            "probe_samples": pike.probe_samples, "ema": pike.ema, "pull": pike.pull, "metric": pike.metric,
            "allow_changes": pike.allow_changes, "sketch_dim": pike.sketch_dim,
            "conflict_threshold": pike.conflict_threshold, **pike.strategy_options}


# ------------------------------------------------------------------------------------------- reading
def _unknown_key_message(path: str, key: str, valid: list[str], where: str) -> str:
    close = difflib.get_close_matches(key, valid, n=1, cutoff=0.5)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return f"{path}: unknown key {key!r} for {where}{hint} (valid keys: {', '.join(valid)})"


def _is_dataclass_type(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _convert(value: Any, tp: Any, path: str) -> Any:
    """``value`` as type ``tp`` (dataclasses built recursively), or a ConfigError naming ``path``."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(tp)
        if value is None:
            if type(None) in options:
                return None
            raise ConfigError(f"{path}: must not be null")
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _convert(value, option, path)
            except ConfigError as error:
                errors.append(error)
        raise errors[-1] if len(errors) == 1 else ConfigError(
            f"{path}: {value!r} is none of {' | '.join(_type_name(o) for o in options)}")
    if _is_dataclass_type(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected a mapping of {tp.__name__} keys, got {value!r}")
        return _build(tp, value, path)
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{path}: expected a list, got {value!r}")
        (item,) = typing.get_args(tp)
        return [_convert(v, item, f"{path}.{i}") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected a mapping, got {value!r}")
        key_tp, value_tp = typing.get_args(tp)
        return {_convert(k, key_tp, path): _convert(v, value_tp, f"{path}.{k}") for k, v in value.items()}
    if tp is Any:
        return value
    if tp is ByteSize:
        from pike_stream.mixer.mixer import parse_byte_size  # imports torch: only for a size that is given

        try:
            size = parse_byte_size(value)
        except ValueError as error:
            raise ConfigError(f"{path}: {error}") from None
        if size is None:  # a field typed `ByteSize | None` took null above
            raise ConfigError(f"{path}: must not be null")
        return ByteSize(size)
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads 1e-4 (no dot) as a string
            try:
                number = float(value.replace("_", ""))
            except ValueError:
                pass
            else:
                if math.isfinite(number):
                    return number
    elif tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
    raise ConfigError(f"{path}: expected {_type_name(tp)}, got {value!r}")


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _build(cls: type, data: dict[str, Any], path: str) -> Any:
    hints = typing.get_type_hints(cls)
    fields = [f for f in dataclasses.fields(cls)]
    names = [f.name for f in fields]
    kwargs: dict[str, Any] = {}
    extra: dict[str, Any] = {}
    for key, value in data.items():
        key = str(key)
        where = f"{path}.{key}" if path else key
        if key not in names:
            if cls is PiKEConfig and key != "strategy_options":
                extra[key] = value  # a strategy option: checked against the strategy in _check_semantics
                continue
            raise ConfigError(_unknown_key_message(where, key, names, f"{cls.__name__}"))
        kwargs[key] = _convert(value, hints[key], where)
    if extra:
        kwargs["strategy_options"] = {**kwargs.get("strategy_options", {}), **extra}
    missing = [f.name for f in fields if f.name not in kwargs and f.default is dataclasses.MISSING
               and f.default_factory is dataclasses.MISSING]
    if missing:
        raise ConfigError(f"{path or 'config'}: missing required key(s) {', '.join(missing)}")
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (TypeError, ValueError) as error:
        raise ConfigError(f"{path or 'config'}: {error}") from error


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """``data`` with each ``dotted.key=value`` applied (value parsed as YAML; list items by index)."""
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override {item!r} is not key=value (e.g. max_duration=20ba)")
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError as error:
            raise ConfigError(f"override {item!r}: the value is not valid YAML: {error}") from error
        parts = key.strip().split(".")
        node: Any = data
        for depth, part in enumerate(parts[:-1]):
            where = ".".join(parts[:depth + 1])
            if isinstance(node, list):
                node = node[_list_index(part, node, where)]
            else:
                if node.get(part) is None:
                    node[part] = {}
                node = node[part]
            if not isinstance(node, (dict, list)):
                raise ConfigError(f"override {item!r}: {where} is a value, not a mapping or list")
        last = parts[-1]
        if isinstance(node, list):
            node[_list_index(last, node, key)] = value
        else:
            node[last] = value
    return data


def _list_index(part: str, node: list[Any], where: str) -> int:
    if not part.isdigit() or int(part) >= len(node):
        raise ConfigError(f"override key {where}: {part!r} is not an index of a list of {len(node)} items")
    return int(part)


def _resolve_interpolations(data: dict[str, Any]) -> dict[str, Any]:
    """``data`` with omegaconf's ``${...}`` interpolations resolved and the top-level ``variables`` mapping
    (values for interpolations only) removed. Without any ``${`` it is returned as it is, omegaconf unused."""
    if not _has_interpolation(data):
        data = dict(data)
    else:
        from omegaconf import OmegaConf
        from omegaconf.errors import OmegaConfBaseException

        try:
            resolved = OmegaConf.to_container(OmegaConf.create(data), resolve=True)
        except OmegaConfBaseException as error:
            key = getattr(error, "full_key", None) or "config"
            message = str(getattr(error, "msg", None) or error).splitlines()[0]
            raise ConfigError(f"{key}: {message} (interpolations are omegaconf's: ${{key.path}}, e.g. "
                              f"${{variables.seq_len}})") from None
        assert isinstance(resolved, dict)
        data = {str(k): v for k, v in resolved.items()}
    variables = data.pop("variables", None)
    if variables is not None and not isinstance(variables, dict):
        raise ConfigError(f"variables: expected a mapping of values for interpolations, got {variables!r}")
    return data


def _has_interpolation(value: Any) -> bool:
    if isinstance(value, str):
        return "${" in value
    if isinstance(value, dict):
        return any(_has_interpolation(v) for v in value.values())
    if isinstance(value, list):
        return any(_has_interpolation(v) for v in value)
    return False


def load_config(path: str | os.PathLike[str], overrides: list[str] | None = None) -> TrainConfig:
    """Read a YAML training config, apply ``key=value`` overrides and check it.

    ``run_name`` defaults to the YAML file's stem, so rerunning the same file resumes the same run.
    """
    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f)
    except OSError as error:
        raise ConfigError(f"cannot read the config {path}: {error.strerror}; give the path of a YAML file "
                          f"(see yamls/)") from error
    except UnicodeDecodeError as error:
        raise ConfigError(f"cannot read the config {path}: it is not UTF-8 text (byte {error.start}); give the "
                          f"path of a YAML file (see yamls/)") from error
    except yaml.YAMLError as error:
        raise ConfigError(_yaml_error_message(path, error)) from error
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of settings at the top level")
    data.setdefault("run_name", Path(path).stem)
    return config_from_dict(apply_overrides(data, overrides or []))


def _yaml_error_message(path: str | os.PathLike[str], error: yaml.YAMLError) -> str:
    """One line for a YAML syntax error: the file, line and column, and what the parser expected."""
    mark = getattr(error, "problem_mark", None)
    problem = getattr(error, "problem", None) or getattr(error, "reason", None) or str(error)
    context = getattr(error, "context", None)
    where = f"{path}, line {mark.line + 1}, column {mark.column + 1}" if mark is not None else str(path)
    if context:
        context_mark = getattr(error, "context_mark", None)
        if context_mark is not None and (mark is None or context_mark.line != mark.line):
            context += f" started at line {context_mark.line + 1}"
        problem = f"{problem} ({context})"
    return " ".join(f"{where}: invalid YAML: {problem}; fix the syntax there (indentation, a missing ':', "
                    f"an unclosed bracket or quote)".split())


def section_from_dict(cls: type, data: dict[str, Any], where: str) -> Any:
    """One section of a config (a dataclass of this module, or one derived from it) from a mapping, with the
    same key and type checks as a whole config; errors name keys below ``where`` (e.g. ``train_loader``)."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping of {cls.__name__} keys, got {data!r}")
    return _build(cls, data, where)


def config_from_dict(data: dict[str, Any]) -> TrainConfig:
    """A checked :class:`TrainConfig` from a mapping with the YAML's keys (interpolations resolved)."""
    return _build(TrainConfig, _resolve_interpolations(data), "")
