"""A :class:`TrainConfig` → a ready ``composer.Trainer``: storage, mixer, model, PiKE, evaluators, loggers.

Everything that can be checked before training is checked here, each failure a clear error: storage
reachable (the domains' buckets, a writable ``save_folder``), domains present and consistent with
``max_seq_len`` and the model's vocabulary, the batch sizes compatible with the world size. What it decides
is logged (domains found and their sizes, the strategy and its options, where checkpoints go, whether and
from where the run resumes), so the log answers "what is it doing and why".
"""

from __future__ import annotations

import json
import logging
import os
import re
import zipfile
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch
from composer import Trainer
from composer.callbacks import LRMonitor
from composer.core import DataSpec, Evaluator
from composer.loggers import ConsoleLogger, LoggerDestination, ProgressBarLogger
from composer.optim import (
    ConstantScheduler,
    ConstantWithWarmupScheduler,
    CosineAnnealingWithWarmupScheduler,
    DecoupledAdamW,
)
from composer.utils import dist, get_device, reproducibility

from pike_stream.mixer import Domain, PiKEStreamingMixer
from pike_stream.mixer.mixer import ranks_per_node
from pike_stream.mixer.partitions import node_count_error
from pike_stream.step_statistics import split_batch
from pike_stream.storage import S3Settings, s3_client
from pike_stream.storage.client import explain_client_error
from pike_stream.train.checkpoint_check import CorruptCheckpointError, use_checkpoint_verification
from pike_stream.train.composer_compat import (
    check_latest_symlink_often,
    checkpoint_uploaders,
    close_orphaned_checkpoint_uploaders,
)
from pike_stream.train.config import (
    WANDB_MODES,
    ConfigError,
    DomainConfig,
    MLflowConfig,
    TensorBoardConfig,
    TrainConfig,
    WandBConfig,
    pike_options,
)
from pike_stream.train.evaluation import domain_evaluator
from pike_stream.train.logs import BatchLog, JSONLinesLogger
from pike_stream.train.model import CausalLM
from pike_stream.train.preflight import CONFIG_FILENAME, check_run_folder, prepare_storage
from pike_stream.train.records import METRICS_FILENAME

__all__ = ["CONFIG_FILENAME", "build_trainer", "check_run_folder", "prepare_storage"]

log = logging.getLogger(__name__)


def _domain(cfg: DomainConfig) -> Domain:
    return Domain(name=cfg.name, remote=cfg.remote, local=cfg.local, split=cfg.split)


def _check_batch_sizes(cfg: TrainConfig, world_size: int) -> int:
    """The per-rank batch size (the final one, with a ramp), after checking every global batch size of the run
    and the microbatch against the world."""
    ramp = cfg.batch_ramp
    sizes = [cfg.global_train_batch_size] if ramp is None else ramp.sizes(cfg.global_train_batch_size)
    for size in sizes:
        if size % world_size:
            where = (f"global_train_batch_size={size}" if ramp is None
                     else f"rampup_batch_size: the global batch of {size} on the ramp")
            raise ConfigError(f"{where} is not divisible by the {world_size} ranks of this run")
        micro = cfg.device_train_microbatch_size
        if isinstance(micro, int) and (size // world_size) % micro:
            raise ConfigError(f"device_train_microbatch_size={micro} does not divide the per-rank batch of "
                              f"{size // world_size} (a global batch of {size} over {world_size} ranks"
                              f"{'' if ramp is None else ', on the batch-size ramp'})")
    partitions = cfg.train_loader.partitions
    local = ranks_per_node(world_size)
    if partitions is not None and world_size % local == 0:
        message = node_count_error(partitions, world_size // local, world_size, local)
        if message:
            raise ConfigError(f"train_loader.{message}")
    return cfg.global_train_batch_size // world_size


def _check_data(cfg: TrainConfig, mixer: PiKEStreamingMixer) -> None:
    if mixer.seq_len != cfg.max_seq_len:
        raise ConfigError(f"max_seq_len={cfg.max_seq_len}, but the domains were converted with seq_len "
                          f"{mixer.seq_len}; set max_seq_len: {mixer.seq_len}")
    for source in mixer.sources:
        vocab = (source.manifest.get("tokenizer") or {}).get("vocab_size")
        if vocab is not None and int(vocab) > cfg.model.vocab_size:
            raise ConfigError(f"model.vocab_size={cfg.model.vocab_size} is smaller than the vocabulary of domain "
                              f"{source.name!r} ({vocab} ids, tokenizer {source.manifest['tokenizer'].get('kind')})")


def _scheduler(cfg: TrainConfig) -> Any:
    warmup = f"{cfg.batches(cfg.scheduler.t_warmup, 'scheduler.t_warmup')}ba"
    if cfg.scheduler.name == "cosine_with_warmup":
        return CosineAnnealingWithWarmupScheduler(t_warmup=warmup, alpha_f=cfg.scheduler.alpha_f)
    if cfg.scheduler.name == "constant_with_warmup":
        return ConstantWithWarmupScheduler(t_warmup=warmup)
    return ConstantScheduler()


def _pike(cfg: TrainConfig) -> Any:
    from pike_stream.algorithm import PiKE

    pike = cfg.algorithms.pike
    assert pike is not None
    try:
        algorithm = PiKE(initial_weights=cfg.train_loader.weights, **pike_options(pike))
    except (TypeError, ValueError) as error:
        raise ConfigError(f"algorithms.pike: {error}") from error
    log.info("mixing strategy %r, options %s; weights refreshed every %d steps (after %d warm-up steps)",
             pike.strategy, pike.strategy_options or "{} (defaults)", pike.update_interval, pike.warmup_steps)
    return algorithm


def _evaluators(cfg: TrainConfig, domain_names: list[str]) -> list[Evaluator]:
    if cfg.eval_loader is None:
        return []
    evaluators = []
    for d in cfg.eval_loader.domains:
        evaluator, dataset = domain_evaluator(
            _domain(d), device_batch_size=cfg.eval_loader.device_batch_size,
            max_batches=cfg.eval_loader.max_batches,
            domain_index=domain_names.index(d.name) if d.name in domain_names else -1)
        source = dataset.source
        if source.seq_len != cfg.max_seq_len:
            raise ConfigError(f"eval_loader domain {d.name!r} ({source.domain.where()}) has seq_len "
                              f"{source.seq_len}, the run has max_seq_len={cfg.max_seq_len}")
        log.info("evaluating domain %r on %d samples of %s", d.name, len(dataset), source.domain.where())
        evaluators.append(evaluator)
    return evaluators


def _beside_checkpoints(cfg: TrainConfig, name: str) -> tuple[str, str] | None:
    """``(bucket, key)`` of the object ``name`` beside the run's checkpoints on S3, or None for a local
    save_folder."""
    if not (cfg.save_folder and cfg.save_folder.startswith("s3://")):
        return None
    where = urlparse(cfg.save_folder.format(run_name=cfg.run_name))
    return where.netloc, "/".join(part for part in (where.path.strip("/"), name) if part)


def _remote_metrics(cfg: TrainConfig) -> tuple[str, str] | None:
    """``(bucket, key)`` of the run's metrics beside its checkpoints on S3, or None for a local save_folder."""
    return _beside_checkpoints(cfg, METRICS_FILENAME)


def _is_missing_object(error: BaseException) -> bool:
    """Whether an S3 error says the object (not the bucket, nor the key's access) does not exist."""
    return getattr(error, "response", {}).get("Error", {}).get("Code") in ("NoSuchKey", "404")


def _fetch_metrics(cfg: TrainConfig, run_folder: str) -> None:
    """A run folder without ``metrics.jsonl`` (a fresh clone, another node) gets the copy saved beside the
    checkpoints, so the resumed run's report covers all of it. Missing there too: nothing to fetch."""
    remote, local = _remote_metrics(cfg), os.path.join(run_folder, METRICS_FILENAME)
    if remote is None or os.path.exists(local):
        return
    bucket, key = remote
    settings = S3Settings.from_env()
    try:
        body = s3_client(settings).get_object(Bucket=bucket, Key=key)["Body"].read()
    except Exception as error:  # noqa: BLE001 - classified below
        if _is_missing_object(error):
            return
        raise explain_client_error(error, settings, bucket, "read the run's metrics", key) from error
    tmp = local + ".partial"
    with open(tmp, "wb") as f:
        f.write(body)
    os.replace(tmp, local)
    log.info("fetched the run's metrics (%d bytes) from s3://%s/%s", len(body), bucket, key)


def _metrics_uploader(cfg: TrainConfig) -> Callable[[Path], None] | None:
    """A function that copies ``metrics.jsonl`` beside the run's checkpoints on S3 (None: local save_folder)."""
    remote = _remote_metrics(cfg)
    if remote is None:
        return None
    bucket, key = remote

    def upload(path: Path) -> None:
        settings = S3Settings.from_env()
        try:
            s3_client(settings).put_object(Bucket=bucket, Key=key, Body=path.read_bytes())
        except Exception as error:  # noqa: BLE001 - the run goes on; its checkpoints are what matter
            log.warning("could not copy the run's metrics to s3://%s/%s: %s", bucket, key,
                        explain_client_error(error, settings, bucket, "write the run's metrics", key))

    return upload


def _loggers(cfg: TrainConfig, run_folder: str) -> list[LoggerDestination]:
    loggers: list[LoggerDestination] = [JSONLinesLogger(run_folder, upload=_metrics_uploader(cfg))]
    if cfg.loggers.progress_bar:
        loggers.append(ProgressBarLogger())
    if cfg.loggers.console:
        interval = cfg.batches(cfg.loggers.console_interval, "loggers.console_interval")
        loggers.append(ConsoleLogger(log_interval=f"{interval}ba"))
    if cfg.loggers.tensorboard is not None:
        loggers.append(_tensorboard_logger(cfg.loggers.tensorboard, run_folder))
    if cfg.loggers.mlflow is not None:
        loggers.append(_mlflow_logger(cfg.loggers.mlflow, cfg.run_name, run_folder))
    if cfg.loggers.wandb is not None:
        loggers.append(_wandb_logger(cfg.loggers.wandb, cfg.run_name, run_folder))
    return loggers


def _missing_package(key: str, package: str) -> ConfigError:
    return ConfigError(f"{key}: needs the `{package}` package (pip install {package}), or remove {key}")


def _tensorboard_logger(tb: TensorBoardConfig, run_folder: str) -> LoggerDestination:
    try:
        import tensorboard  # noqa: F401 - Composer's logger imports it only when the trainer starts
    except ImportError:
        raise _missing_package("loggers.tensorboard", "tensorboard") from None
    from composer.loggers import TensorboardLogger

    log_dir = tb.log_dir or os.path.join(run_folder, "tensorboard")
    log.info("TensorBoard: event files in %s (tensorboard --logdir %s)", log_dir, log_dir)
    return TensorboardLogger(log_dir=log_dir, flush_interval=tb.flush_interval)


def _mlflow_logger(ml: MLflowConfig, run_name: str, run_folder: str) -> LoggerDestination:
    try:
        import mlflow  # noqa: F401
    except ImportError:
        raise _missing_package("loggers.mlflow", "mlflow-skinny") from None
    from composer.loggers import MLFlowLogger

    uri = ml.tracking_uri or f"sqlite:///{Path(run_folder, 'mlflow.db').resolve()}"
    experiment = ml.experiment_name or run_name
    log.info("MLflow: experiment %r at %s", experiment, uri)
    return MLFlowLogger(experiment_name=experiment, run_name=run_name, tags=ml.tags, tracking_uri=uri,
                        synchronous=True, log_system_metrics=ml.log_system_metrics)


def _wandb_logger(wb: WandBConfig, run_name: str, run_folder: str) -> LoggerDestination:
    if wb.mode not in WANDB_MODES:
        raise ConfigError(f"loggers.wandb.mode: must be one of {', '.join(WANDB_MODES)}, got {wb.mode!r}")
    try:
        import wandb  # pyright: ignore[reportMissingImports] - optional, not in the main environment
    except ImportError:
        raise _missing_package("loggers.wandb", "wandb") from None
    from composer.loggers import WandBLogger
    from packaging.version import Version

    if Version(wandb.__version__) >= Version("0.19"):  # Composer 0.32 calls Run.get_url, which 0.19 removed
        raise ConfigError(f"loggers.wandb: Composer's WandBLogger needs wandb < 0.19, this environment has "
                          f"{wandb.__version__} (pip install 'wandb<0.19'), or remove loggers.wandb")

    folder = os.path.abspath(wb.dir or run_folder)
    os.makedirs(folder, exist_ok=True)
    log.info("W&B: project %r, mode %s, files under %s", wb.project or run_name, wb.mode, folder)
    return WandBLogger(project=wb.project or run_name, entity=wb.entity, group=wb.group, name=run_name,
                       tags=wb.tags, init_kwargs={"mode": wb.mode, "dir": folder})


def _save_config(cfg: TrainConfig, run_folder: str) -> None:
    path = os.path.join(run_folder, CONFIG_FILENAME)
    with open(path + ".partial", "w") as f:
        json.dump(asdict(cfg), f, indent=1)
    os.replace(path + ".partial", path)


_CHECKPOINT_NAME = re.compile(r"^ep(\d+)-ba(\d+)-rank0\.pt$")  # Composer's default checkpoint filename
_LATEST_NAME = "latest-rank0.pt"
_INTERRUPTED_FOLDER = ".interrupted"


def _recover_interrupted_checkpoints(folder: str) -> None:
    """Make a local checkpoint folder left by a crash mid-save resumable again, before ``autoresume`` reads it.

    Composer writes ``ep…-ba<n>-rank0.pt`` in place, then removes ``latest-rank0.pt`` and re-creates it. A
    crash in between leaves a half-written checkpoint past ``latest`` (Composer then refuses to start, as
    the file "may conflict with a future checkpoint"), or a whole checkpoint and no ``latest`` (autoresume
    would start from scratch and hit the same refusal). A Ctrl-C inside ``torch.save`` can even leave a
    well-formed archive without its last tensors (the writer closes the archive on the way out) with
    ``latest`` pointing at it. So the checkpoint ``latest`` names and every newer one (all of them if it is
    missing) must load (:func:`_is_complete_checkpoint`): incomplete ones are moved to
    ``<folder>/.interrupted/`` (kept, not deleted; Composer ignores hidden folders) and ``latest`` is pointed
    at the newest complete one (removed when none is left: training starts afresh).
    """
    if not os.path.isdir(folder):
        return
    checkpoints = sorted((int(m.group(2)), name) for name in os.listdir(folder)
                         if (m := _CHECKPOINT_NAME.match(name)))
    latest = os.path.join(folder, _LATEST_NAME)
    target = os.path.basename(os.path.realpath(latest)) if os.path.lexists(latest) else None
    pointed = next((batch for batch, name in checkpoints if name == target), -1)
    complete = [name for batch, name in checkpoints if batch < pointed]  # complete when latest moved past them
    for batch, name in checkpoints:
        if batch < pointed:
            continue
        path = os.path.join(folder, name)
        if _is_complete_checkpoint(path):
            complete.append(name)
            continue
        os.makedirs(os.path.join(folder, _INTERRUPTED_FOLDER), exist_ok=True)
        os.replace(path, os.path.join(folder, _INTERRUPTED_FOLDER, name))
        log.warning("checkpoint %s is incomplete (a crash while it was written): moved to %s/", path,
                    os.path.join(folder, _INTERRUPTED_FOLDER))
    newest = complete[-1] if complete else None
    if newest == target:
        return
    if os.path.lexists(latest):
        os.remove(latest)
    if newest is not None:
        os.symlink(newest, latest)
    log.warning("%s pointed to %s; the newest complete checkpoint is %s: resuming from it", latest,
                target or "nothing", newest or "none (training starts afresh)")


def _is_complete_checkpoint(path: str) -> bool:
    """Whether ``torch.load`` finds every record of the checkpoint at ``path``. Memory-mapped, so the tensors'
    data is not read; a zip check alone is not enough (see :func:`_recover_interrupted_checkpoints`)."""
    if not zipfile.is_zipfile(path):
        return False
    try:
        torch.load(path, map_location="cpu", weights_only=False, mmap=True)
    except Exception:  # noqa: BLE001 - whatever stops a load stops the resume
        return False
    return True


def _local_latest_checkpoint(cfg: TrainConfig) -> str | None:
    """With ``autoresume`` and a local save_folder: the checkpoint its ``latest`` pointer names, if any."""
    if not (cfg.autoresume and cfg.save_folder) or "://" in cfg.save_folder:
        return None
    latest = os.path.join(cfg.save_folder.format(run_name=cfg.run_name), _LATEST_NAME)
    return os.path.realpath(latest) if os.path.lexists(latest) else None


def _remote_latest_checkpoint(cfg: TrainConfig, rank: int) -> str | None:
    """With ``autoresume`` and an ``s3://`` save_folder: the URI of the checkpoint the run's ``latest`` pointer
    in the bucket names (its ``.symlink`` object holds the key), or None when the bucket holds none yet. Rank 0
    asks the bucket and every rank gets its answer.

    This replaces Composer's own autoresume for remote folders, which downloads the checkpoint into
    ``./s3:/…`` under rank 0's working directory, a path every node then uses: nodes sharing a file system
    collide there (one node removes the other's signal file), and a copy left by an earlier run in that
    folder is taken for the bucket's latest. Loading the URI instead downloads into a temporary folder per
    node, and the bucket is the only record that every node and every clone shares.
    """
    latest = _beside_checkpoints(cfg, _LATEST_NAME) if cfg.autoresume else None
    if latest is None:
        return None
    bucket, key = latest
    found: list[str | None] = [None]
    if rank == 0:
        settings = S3Settings.from_env()
        try:
            pointer = s3_client(settings).get_object(Bucket=bucket, Key=key + ".symlink")["Body"].read()
            found[0] = f"s3://{bucket}/{pointer.decode().strip().lstrip('/')}"  # Composer's: the checkpoint's key
        except Exception as error:  # noqa: BLE001 - classified below
            if not _is_missing_object(error):
                raise explain_client_error(error, settings, bucket, "find the latest checkpoint", key) from error
    dist.broadcast_object_list(found, src=0)
    return found[0]


def build_trainer(cfg: TrainConfig, *, preflight: bool = True) -> Trainer:
    """Check ``cfg`` against the storage, the data and the world, and build its Composer ``Trainer``.

    ``preflight=False``: the caller has run :func:`check_run_folder` and :func:`prepare_storage` already.
    """
    device = get_device(None)
    dist.initialize_dist(device)
    rank, world_size = dist.get_global_rank(), dist.get_world_size()
    per_rank = _check_batch_sizes(cfg, world_size)
    if preflight:
        check_run_folder(cfg)
        prepare_storage(cfg)
    if cfg.autoresume and cfg.save_folder and "://" not in cfg.save_folder:
        if rank == 0:
            _recover_interrupted_checkpoints(cfg.save_folder.format(run_name=cfg.run_name))
        dist.barrier()
    run_folder = cfg.resolved_run_folder
    os.makedirs(run_folder, exist_ok=True)
    if rank == 0:
        _fetch_metrics(cfg, run_folder)

    reproducibility.seed_all(cfg.seed)  # the same initial model on every rank and in every rerun
    domains = [_domain(d) for d in cfg.train_loader.domains]
    mixer = PiKEStreamingMixer(domains, cfg.global_train_batch_size, seed=cfg.seed,
                               weights=cfg.train_loader.weights, rank=rank, world_size=world_size,
                               shuffle_algo=cfg.train_loader.shuffle_algo, read_ahead=cfg.train_loader.read_ahead,
                               read_ahead_workers=cfg.train_loader.read_ahead_workers,
                               cache_limit=cfg.train_loader.cache_limit, batch_ramp=cfg.batch_ramp,
                               allow_batch_size_change=cfg.train_loader.allow_batch_size_change,
                               allow_domain_changes=cfg.train_loader.allow_domain_changes,
                               allow_data_growth=cfg.train_loader.allow_data_growth,
                               partitions=cfg.train_loader.partitions)
    _check_data(cfg, mixer)
    for source in mixer.sources:
        log.info("domain %r: %d samples (%d tokens) in %d shards at %s", source.name, source.num_samples,
                 source.num_samples * source.seq_len, len(source.shards), source.domain.where())

    model = CausalLM(cfg.model, cfg.max_seq_len)
    log.info("model: GPT-2 with %d layers, width %d, %d heads, vocabulary %d: %.2fM parameters",
             cfg.model.n_layer, cfg.model.n_embd, cfg.model.n_head, cfg.model.vocab_size, model.num_parameters / 1e6)
    beta1, beta2 = cfg.optimizer.betas  # two, checked by the config
    optimizer = DecoupledAdamW(model.parameters(), lr=cfg.optimizer.lr, betas=(beta1, beta2),
                               eps=cfg.optimizer.eps, weight_decay=cfg.optimizer.weight_decay)
    algorithms = [_pike(cfg)] if cfg.algorithms.pike is not None else []
    if not algorithms:
        log.info("no algorithms.pike: the weights stay %s", mixer.weights)
    evaluators = _evaluators(cfg, mixer.domain_names)
    callbacks: list[Any] = [LRMonitor()]
    if cfg.batch_log:
        callbacks.append(BatchLog(run_folder))

    max_batches = cfg.batches(cfg.max_duration, "max_duration")
    ramp = cfg.batch_ramp
    log.info("training %d steps of %d sequences (%d per rank on %d ranks)%s of %d tokens",
             max_batches, cfg.global_train_batch_size, per_rank, world_size,
             "" if ramp is None else (f", ramped up from {ramp.start} by {ramp.increment} over the first "
                                      f"{ramp.samples} samples,"), cfg.max_seq_len)
    if cfg.save_folder:
        log.info("checkpoints every %s to %s (keeping %s)%s", cfg.save_interval, cfg.save_folder,
                 "all" if cfg.save_num_checkpoints_to_keep < 0 else cfg.save_num_checkpoints_to_keep,
                 "; autoresume: continuing from the latest one there if any" if cfg.autoresume else "")
    remote_latest = _remote_latest_checkpoint(cfg, rank)
    load_path = remote_latest or cfg.load_path
    if remote_latest:
        log.info("autoresume: loading %s, the latest checkpoint of %s", remote_latest, cfg.save_folder)
    elif load_path:
        log.info("loading the checkpoint %s", load_path)

    use_checkpoint_verification()
    uploaders = checkpoint_uploaders()
    try:
        trainer = Trainer(
            run_name=cfg.run_name,
            model=model,
            train_dataloader=DataSpec(mixer.dataloader(), split_batch=split_batch),  # see PiKE.data_spec
            max_duration=f"{max_batches}ba",
            eval_dataloader=evaluators or None,
            # Without evaluators, Composer's default (an eval_interval would only draw its "has no effect" warning).
            eval_interval=(f"{cfg.batches(cfg.eval_interval or cfg.max_duration, 'eval_interval')}ba"
                           if evaluators else 1),
            optimizers=optimizer,
            schedulers=_scheduler(cfg),
            algorithms=algorithms,
            loggers=_loggers(cfg, run_folder),
            callbacks=callbacks,
            progress_bar=False,
            log_to_console=False,
            save_folder=cfg.save_folder,
            save_interval=f"{cfg.batches(cfg.save_interval, 'save_interval')}ba",
            save_num_checkpoints_to_keep=cfg.save_num_checkpoints_to_keep,
            # A run killed after uploading a checkpoint but before its `latest` pointer resumes from the one
            # before and writes the same checkpoints again (resumption is exact): let it replace them.
            save_overwrite=cfg.save_overwrite or cfg.autoresume,
            # Remote save_folder: resumed from the bucket above (load_path), not by Composer's autoresume.
            autoresume=cfg.autoresume and not (cfg.save_folder or "").startswith("s3://"),
            load_path=load_path,
            # The mixer resumes from its own state; Composer spinning the iterator forward would skip batches.
            spin_dataloaders=False,
            seed=cfg.seed,
            deterministic_mode=cfg.deterministic_mode,
            device=device,
            device_train_microbatch_size=cfg.device_train_microbatch_size or per_rank,
            precision=cfg.precision,
        )
    except BaseException as error:
        close_orphaned_checkpoint_uploaders(uploaders)  # Composer started them; no trainer is left to close them
        if isinstance(error, CorruptCheckpointError):  # name the checkpoint, not the temporary copy Composer loaded
            raise error.naming(load_path or _local_latest_checkpoint(cfg) or error.path) from None
        raise
    check_latest_symlink_often(trainer)
    if rank == 0:  # only once every check passed and the checkpoint (if any) was loaded
        _save_config(cfg, run_folder)
    step = int(trainer.state.timestamp.batch)
    if step:
        log.info("resumed at step %d of %d: mixer at step %d, weights %s", step, max_batches, mixer.step,
                 {n: round(w, 4) for n, w in mixer.weights.items()})
    return trainer
