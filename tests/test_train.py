"""pike_stream.train: config checks, overrides, and real training runs on the embedded S3 server.

The slow tests train a tiny GPT-2 (1 layer, 32 wide) on synthetic domains uploaded to S3 and check the
resume invariants end to end: a run killed with SIGKILL and rerun with the same command trains on exactly
the batches, weights and losses of an uninterrupted run; a 2-rank run resumed on 1 rank sees the same global
batches and weights; a resume against changed data or a changed global batch is refused.
"""

from __future__ import annotations

import inspect
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from pike_stream.storage import s3_client
from pike_stream.train.config import ConfigError, PiKEConfig, config_from_dict, load_config
from tests.mds_data import write_domain

REPO = Path(__file__).resolve().parents[1]
DOMAINS = ("a", "b", "c")
TRAIN_SAMPLES = 100  # small, so a run crosses domain epochs
DIST_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "NODE_RANK", "MASTER_ADDR", "MASTER_PORT")


# ------------------------------------------------------------------------------------------- helpers
def _config(bucket: str = "data", **changes: Any) -> dict[str, Any]:
    """A tiny run over the synthetic domains in ``bucket`` (``changes`` replace top-level keys)."""
    cfg = {
        "run_name": "tiny",
        "seed": 5,
        "max_seq_len": 16,
        "global_train_batch_size": 24,
        "device_train_microbatch_size": 4,
        "max_duration": "16ba",
        "eval_interval": "8ba",
        "model": {"n_layer": 1, "n_embd": 32, "n_head": 2, "vocab_size": 1000},
        "optimizer": {"lr": 3.0e-3},
        "scheduler": {"name": "cosine_with_warmup", "t_warmup": "2ba"},
        "train_loader": {"domains": [{"name": n, "remote": f"s3://{bucket}/{n}", "split": "train"} for n in DOMAINS],
                         "read_ahead_workers": 2},
        "eval_loader": {"device_batch_size": 4, "max_batches": 2,
                        "domains": [{"name": n, "remote": f"s3://{bucket}/{n}", "split": "val"} for n in DOMAINS]},
        "algorithms": {"pike": {"strategy": "pike", "update_interval": 3, "zeta1": 2.0, "zeta2": 0.1}},
        "loggers": {"console": False},
        "save_interval": "4ba",
        "batch_log": True,
    }
    cfg.update(changes)
    return cfg


def _write_yaml(path: Path, cfg: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def _upload_domains(root: Path, bucket: str, settings: Any, *, train_samples: int = TRAIN_SAMPLES,
                    only: tuple[str, ...] = DOMAINS) -> None:
    """Write the synthetic domains under ``root`` and upload them to ``s3://bucket/<domain>/{train,val}``."""
    client = s3_client(settings)
    for code, name in enumerate(DOMAINS, start=1):
        if name not in only:
            continue
        for split, n in (("train", train_samples), ("val", 16)):
            folder = root / name / split
            shutil.rmtree(folder, ignore_errors=True)
            write_domain(str(folder), name, n, code=code, seq_len=16)
            for path in folder.iterdir():
                client.upload_file(str(path), bucket, f"{name}/{split}/{path.name}")


def _s3_keys(settings: Any, bucket: str, prefix: str) -> list[str]:
    listing = s3_client(settings).list_objects_v2(Bucket=bucket, Prefix=prefix)
    return sorted(obj["Key"] for obj in listing.get("Contents", []))


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in DIST_ENV}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


def _train_command(yaml_path: Path, *overrides: str, ranks: int = 1) -> list[str]:
    if ranks == 1:
        return [sys.executable, "-m", "pike_stream.train", str(yaml_path), *overrides]
    return [sys.executable, "-m", "composer.cli.launcher", "-n", str(ranks), "-m", "pike_stream.train",
            str(yaml_path), *overrides]


def _run(command: list[str], cwd: Path, timeout: float = 300) -> str:
    done = subprocess.run(command, cwd=cwd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, timeout=timeout)
    assert done.returncode == 0, f"{' '.join(command)} failed ({done.returncode}):\n{done.stdout[-6000:]}"
    return done.stdout


def _last_step(run_folder: Path) -> int:
    path = run_folder / "batches-rank0.jsonl"
    if not path.exists():
        return -1
    steps = [json.loads(line)["step"] for line in path.read_text().splitlines() if line.endswith("}")]
    return max(steps, default=-1)


def _run_and_kill(command: list[str], cwd: Path, run_folder: Path, kill_at: int, timeout: float = 300,
                  delay: float = 0.0) -> None:
    """Start ``command``; SIGKILL its whole process group ``delay`` seconds after batch ``kill_at`` was logged."""
    log_path = cwd / "killed-run.log"
    with open(log_path, "w") as log_file:
        proc = subprocess.Popen(command, cwd=cwd, env=_env(), stdout=log_file, stderr=subprocess.STDOUT,
                                start_new_session=True)
        deadline = time.monotonic() + timeout
        try:
            while _last_step(run_folder) < kill_at:
                assert proc.poll() is None, f"training ended before step {kill_at}:\n{log_path.read_text()[-6000:]}"
                assert time.monotonic() < deadline, f"no step {kill_at} in {timeout} s:\n{log_path.read_text()[-6000:]}"
                time.sleep(0.02)
            time.sleep(delay)
        finally:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == -signal.SIGKILL


def _resumed_step(output: str) -> int:
    found = re.search(r"resumed at step (\d+) of", output)
    assert found, f"the rerun did not resume:\n{output[-6000:]}"
    return int(found.group(1))


def _metrics_by_step(run_folder: Path, prefixes: tuple[str, ...]) -> dict[int, dict[str, Any]]:
    """``{step: {key: value}}`` for keys with these prefixes (timing values excluded)."""
    merged: dict[int, dict[str, Any]] = {}
    for line in (run_folder / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        keep = {k: v for k, v in record.items()
                if k.startswith(prefixes) and k != "pike/probe_seconds"}
        if keep:
            merged.setdefault(record["step"], {}).update(keep)
    return merged


def _assert_same_batches(reference: Path, resumed: Path, steps: int) -> None:
    from pike_stream.train import read_batch_log

    expected, got = read_batch_log(reference), read_batch_log(resumed)
    assert sorted(expected) == sorted(got) == list(range(steps))
    for step in range(steps):
        np.testing.assert_array_equal(got[step][0], expected[step][0], err_msg=f"domains of step {step}")
        np.testing.assert_array_equal(got[step][1], expected[step][1], err_msg=f"sample ids of step {step}")




# ------------------------------------------------------------------------------------------- config
def test_unknown_keys_are_named_with_the_closest_valid_key() -> None:
    with pytest.raises(ConfigError, match=r"max_durration.*did you mean 'max_duration'"):
        config_from_dict(_config(max_durration="10ba"))
    cfg = _config()
    cfg["model"]["n_layers"] = 2
    with pytest.raises(ConfigError, match=r"model\.n_layers: unknown key 'n_layers'.*did you mean 'n_layer'"):
        config_from_dict(cfg)
    cfg = _config()
    cfg["algorithms"]["pike"]["zeta_1"] = 1.0
    with pytest.raises(ConfigError, match=r"algorithms\.pike\.zeta_1.*strategy 'pike'.*did you mean 'zeta1'"):
        config_from_dict(cfg)


def test_strategy_options_belong_to_the_chosen_strategy() -> None:
    cfg = _config()
    cfg["algorithms"]["pike"] = {"strategy": "temperature", "temperature": 3.0}
    assert config_from_dict(cfg).algorithms.pike.strategy_options == {"temperature": 3.0}
    cfg["algorithms"]["pike"] = {"strategy": "uniform", "zeta1": 1.0}
    with pytest.raises(ConfigError, match=r"algorithms\.pike\.zeta1: unknown key 'zeta1' for strategy 'uniform'"):
        config_from_dict(cfg)


def test_unknown_strategy_is_refused_with_the_valid_ones() -> None:
    cfg = _config()
    cfg["algorithms"]["pike"]["strategy"] = "balanced_pik"
    with pytest.raises(ConfigError, match=r"unknown strategy 'balanced_pik' \(did you mean 'balanced_pike'\?\).*"
                                          r"round_robin"):
        config_from_dict(cfg)


@pytest.mark.parametrize("key", ["max_duration", "eval_interval", "save_interval"])
def test_epochs_are_refused_because_the_mixer_is_infinite(key: str) -> None:
    with pytest.raises(ConfigError, match=rf"{key}: '2ep' is in epochs, but the mixer is infinite"):
        config_from_dict(_config(**{key: "2ep"}))


def test_wrong_types_and_missing_keys_are_named() -> None:
    with pytest.raises(ConfigError, match=r"global_train_batch_size: expected int, got 'many'"):
        config_from_dict(_config(global_train_batch_size="many"))
    cfg = _config()
    del cfg["max_seq_len"]
    with pytest.raises(ConfigError, match="missing required key.*max_seq_len"):
        config_from_dict(cfg)
    cfg = _config()
    cfg["train_loader"]["domains"][1] = {"name": "b", "split": "train"}
    with pytest.raises(ConfigError, match=r"train_loader\.domains\.1 \('b'\): give `remote`.*or `local`"):
        config_from_dict(cfg)


def test_microbatch_and_world_size_must_divide_the_batch() -> None:
    from pike_stream.train.builder import _check_batch_sizes

    cfg = config_from_dict(_config(global_train_batch_size=24, device_train_microbatch_size=5))
    with pytest.raises(ConfigError, match=r"device_train_microbatch_size=5 does not divide the per-rank batch of 24"):
        _check_batch_sizes(cfg, 1)
    cfg = config_from_dict(_config(global_train_batch_size=24, device_train_microbatch_size=4))
    assert _check_batch_sizes(cfg, 2) == 12
    with pytest.raises(ConfigError, match=r"device_train_microbatch_size=4 does not divide the per-rank batch of 6"):
        _check_batch_sizes(cfg, 4)
    with pytest.raises(ConfigError, match=r"global_train_batch_size=24 is not divisible by the 5 ranks"):
        _check_batch_sizes(cfg, 5)
    ramp = {"start": 6, "increment": 6, "samples": 100}  # 6, 12, 18, 24
    cfg = config_from_dict(_config(global_train_batch_size=24, device_train_microbatch_size=3,
                                   rampup_batch_size=ramp))
    assert _check_batch_sizes(cfg, 2) == 12
    with pytest.raises(ConfigError, match=r"rampup_batch_size: the global batch of 6 on the ramp is not divisible "
                                          r"by the 4 ranks"):
        _check_batch_sizes(cfg, 4)
    with pytest.raises(ConfigError, match=r"device_train_microbatch_size=3 does not divide the per-rank batch of 2 "
                                          r"\(a global batch of 6 over 3 ranks, on the batch-size ramp\)"):
        _check_batch_sizes(cfg, 3)


def test_overrides_use_dotted_keys_and_yaml_values(tmp_path: Path) -> None:
    path = _write_yaml(tmp_path / "run.yaml", _config())
    cfg = load_config(path, ["max_duration=20ba", "algorithms.pike.zeta1=0.5", "optimizer.betas=[0.8, 0.9]",
                             "train_loader.domains.1.split=val", "batch_log=false", "eval_loader=null"])
    assert cfg.max_duration == "20ba"
    assert cfg.algorithms.pike.strategy_options["zeta1"] == 0.5
    assert cfg.optimizer.betas == [0.8, 0.9]
    assert cfg.train_loader.domains[1].split == "val" and cfg.train_loader.domains[0].split == "train"
    assert cfg.batch_log is False and cfg.eval_loader is None
    assert load_config(path).run_name == "tiny"
    with pytest.raises(ConfigError, match=r"model\.n_embed: unknown key 'n_embed'.*did you mean 'n_embd'"):
        load_config(path, ["model.n_embed=64"])
    with pytest.raises(ConfigError, match=r"override 'seed' is not key=value"):
        load_config(path, ["seed"])
    with pytest.raises(ConfigError, match=r"train_loader\.domains\.7.*not an index of a list of 3"):
        load_config(path, ["train_loader.domains.7.split=x"])


def test_run_name_defaults_to_the_yaml_stem(tmp_path: Path) -> None:
    cfg = _config()
    del cfg["run_name"]
    assert load_config(_write_yaml(tmp_path / "my-run.yaml", cfg)).run_name == "my-run"


def test_tokens_become_whole_batches() -> None:
    cfg = config_from_dict(_config(max_duration="10000tok"))  # 24 × 16 = 384 tokens per batch
    assert cfg.batches(cfg.max_duration, "max_duration") == 27
    assert cfg.batches("5ba", "x") == 5


def test_pike_defaults_are_the_algorithms() -> None:
    from pike_stream.algorithm import PiKE

    signature = inspect.signature(PiKE.__init__).parameters
    for field in ("strategy", "update_interval", "warmup_steps", "ema", "sketch_dim", "conflict_threshold"):
        assert getattr(PiKEConfig(), field) == signature[field].default, field


def test_every_shipped_yaml_is_a_valid_config() -> None:
    # foundry_*.yaml are llm-foundry's YAMLs (tests/test_foundry.py checks them)
    paths = sorted(p for p in (REPO / "yamls").glob("*.yaml") if not p.stem.startswith("foundry_"))
    assert {p.stem for p in paths} >= {"quickstart", "gpt2-125m"}
    strategies = set()
    for path in paths:
        cfg = load_config(path)
        assert path.read_text().startswith("#"), f"{path.name} should start with a comment saying what it is for"
        if cfg.algorithms.pike is not None and path.stem.startswith("bench-"):
            assert path.stem == f"bench-{cfg.algorithms.pike.strategy}".replace("_", "-")
            strategies.add(cfg.algorithms.pike.strategy)
    assert strategies == {"uniform", "proportional", "temperature", "round_robin", "random", "pike", "balanced_pike"}


def test_model_loss_is_the_mean_next_token_cross_entropy() -> None:
    import torch

    from pike_stream.probe import causal_lm_per_sample_loss
    from pike_stream.train.model import CausalLM

    cfg = config_from_dict(_config())
    torch.manual_seed(0)
    model = CausalLM(cfg.model, cfg.max_seq_len)
    batch = {"input_ids": torch.randint(0, 1000, (3, 16))}
    loss = model.loss(model(batch), batch)
    torch.testing.assert_close(loss, causal_lm_per_sample_loss(model, batch).mean())
    metric = model.get_metrics(is_train=False)["LanguageCrossEntropy"]
    model.update_metric(batch, model.eval_forward(batch), metric)
    torch.testing.assert_close(metric.compute(), loss)


# ------------------------------------------------------------------------------------------- storage, data
def test_missing_domain_names_the_domain_and_path(tmp_path: Path, in_process_dist: None) -> None:
    from pike_stream.mixer import DomainDataError
    from pike_stream.train.builder import build_trainer

    write_domain(str(tmp_path / "a"), "a", 30, code=1)
    cfg = _config(run_folder=str(tmp_path / "run"))
    cfg["train_loader"]["domains"] = [{"name": "a", "local": str(tmp_path / "a")},
                                      {"name": "b", "local": str(tmp_path / "nowhere")}]
    cfg["eval_loader"] = None
    with pytest.raises(DomainDataError, match=rf"domain 'b'.*{tmp_path / 'nowhere'}"):
        build_trainer(config_from_dict(cfg))


def test_unreachable_save_folder_is_refused_before_training(s3_bucket: str, tmp_path: Path) -> None:
    from pike_stream.storage import StorageError
    from pike_stream.train.builder import prepare_storage

    cfg = config_from_dict(_config(s3_bucket, save_folder="s3://no-such-bucket-here/ckpt"))
    with pytest.raises(StorageError, match="bucket 'no-such-bucket-here' does not exist"):
        prepare_storage(cfg)
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(ConfigError, match=rf"save_folder: cannot create {blocker}/ckpt"):
        prepare_storage(config_from_dict(_config(s3_bucket, save_folder=str(blocker / "ckpt"))))


# ------------------------------------------------------------------------------------------- runs
@pytest.mark.slow
def test_sigkill_and_rerun_reproduce_the_uninterrupted_run(s3_env: Any, s3_bucket: str, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch,
                                                           in_process_dist: None) -> None:
    from pike_stream.train import load_config, train

    monkeypatch.setenv("PIKE_STREAM_HOME", str(tmp_path / "home"))
    _upload_domains(tmp_path / "data", s3_bucket, s3_env.settings)
    path = _write_yaml(tmp_path / "tiny.yaml", _config(s3_bucket))

    reference = tmp_path / "reference"
    train(load_config(path, [f"run_folder={reference}", f"save_folder={reference / 'ckpt'}"]))

    # Checkpoints in a local folder: Composer writes them synchronously, so the kill can land anywhere
    # after one (an s3:// save_folder is resumed from in the next test).
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    command = _train_command(path, f"run_folder={resumed}", f"save_folder={resumed / 'ckpt'}", "autoresume=true")
    _run_and_kill(command, resumed, resumed, kill_at=10)
    output = _run(command, resumed)  # the same command: autoresume finds the latest checkpoint
    assert _resumed_step(output) in (4, 8)

    _assert_same_batches(reference, resumed, 16)
    prefixes = ("pike/", "loss/", "metrics/")
    expected, got = _metrics_by_step(reference, prefixes), _metrics_by_step(resumed, prefixes)
    assert got == expected  # weights, PiKE statistics, every training loss and every validation loss
    assert {k for k in expected[15] if k.startswith("loss/")} == {"loss/train/total"}
    assert {"metrics/a/LanguageCrossEntropy", "metrics/c/LanguagePerplexity"} <= set(expected[16])
    weights = [[m[f"pike/weight/{n}"] for n in DOMAINS] for _, m in sorted(expected.items()) if "pike/weight/a" in m]
    assert not np.allclose(weights[-1], 1 / 3), "PiKE never moved the weights: the test would prove little"
    assert "weights:" in output and (resumed / "weights.png").exists()
    # The audit replays the resumed run from its config and logged weights: the batches it logged, every step.
    audit = _run([sys.executable, "-m", "pike_stream", "audit", str(resumed)], resumed)
    assert "batch log: match" in audit and "holds" in audit
    # The same command once more: the run is finished; it says so, reports, and succeeds.
    again = _run(command, resumed)
    assert "already trained 16 of max_duration=16ba steps" in again and "weights:" in again
    assert _metrics_by_step(resumed, prefixes) == expected


@pytest.mark.slow
def test_kills_at_random_moments_resume_to_the_uninterrupted_run(s3_env: Any, s3_bucket: str, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch,
                                                                 in_process_dist: None) -> None:
    """Two SIGKILLs at random moments (a random step, then a random fraction of a second: mid-step, mid-
    evaluation or mid-upload of a checkpoint to S3), each followed by the same command. The seed is new on
    every run and printed; ``PIKE_STREAM_KILL_SEED=<seed>`` replays a failure."""
    import random

    from pike_stream.train import load_config, train

    seed = int(os.environ.get("PIKE_STREAM_KILL_SEED") or random.SystemRandom().randrange(2 ** 31))
    rng = random.Random(seed)
    first = rng.randint(3, 9)
    kills = [(first, rng.uniform(0, 0.4)), (rng.randint(first + 2, 17), rng.uniform(0, 0.4))]
    print(f"PIKE_STREAM_KILL_SEED={seed}: kills after steps {[k for k, _ in kills]}, "
          f"{[round(d, 2) for _, d in kills]} s later", file=sys.stderr)
    monkeypatch.setenv("PIKE_STREAM_HOME", str(tmp_path / "home"))
    _upload_domains(tmp_path / "data", s3_bucket, s3_env.settings)
    path = _write_yaml(tmp_path / "tiny.yaml", _config(s3_bucket, max_duration="24ba", eval_interval="8ba",
                                                       save_interval="3ba"))
    reference = tmp_path / "reference"
    train(load_config(path, [f"run_folder={reference}", f"save_folder={reference / 'ckpt'}"]))

    resumed = tmp_path / "resumed"
    resumed.mkdir()
    command = _train_command(path, f"run_folder={resumed}", f"save_folder=s3://{s3_bucket}/ckpt/random-kills",
                             "autoresume=true")
    for step, delay in kills:
        _run_and_kill(command, resumed, resumed, kill_at=step, delay=delay)
    _run(command, resumed)
    _assert_same_batches(reference, resumed, 24)
    prefixes = ("pike/", "loss/", "metrics/")
    assert _metrics_by_step(resumed, prefixes) == _metrics_by_step(reference, prefixes), f"seed {seed}"


@pytest.mark.slow
def test_checkpoints_on_s3_resume_exactly_and_refuse_changed_data(s3_env: Any, s3_bucket: str, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch,
                                                                  in_process_dist: None) -> None:
    from pike_stream.mixer import MixerStateError
    from pike_stream.train import build_trainer, load_config, train

    monkeypatch.setenv("PIKE_STREAM_HOME", str(tmp_path / "home"))
    _upload_domains(tmp_path / "data", s3_bucket, s3_env.settings)
    # A constant learning rate: stopping after 4 batches and continuing to 8 is then the same run as 8 at once.
    cfg = _config(s3_bucket, max_duration="8ba", eval_interval="4ba")
    cfg["scheduler"] = {"name": "constant_with_warmup", "t_warmup": "2ba"}
    path = _write_yaml(tmp_path / "tiny.yaml", cfg)
    reference, resumed = tmp_path / "reference", tmp_path / "resumed"
    train(load_config(path, [f"run_folder={reference}", f"save_folder=s3://{s3_bucket}/ckpt/reference"]))

    run = [f"run_folder={resumed}", f"save_folder=s3://{s3_bucket}/ckpt/resumed", "autoresume=true"]
    train(load_config(path, [*run, "max_duration=4ba"]))
    assert "ckpt/resumed/latest-rank0.pt.symlink" in _s3_keys(s3_env.settings, s3_bucket, "ckpt/resumed/")
    # Composer keeps local copies of remote checkpoints in a fresh temporary folder per process, so
    # this resume reads the checkpoint from S3.
    trainer = build_trainer(load_config(path, run))
    assert int(trainer.state.timestamp.batch) == 4
    trainer.fit()
    trainer.close()
    _assert_same_batches(reference, resumed, 8)
    prefixes = ("pike/", "loss/", "metrics/")
    assert _metrics_by_step(resumed, prefixes) == _metrics_by_step(reference, prefixes)

    with pytest.raises(MixerStateError, match="global_batch_size=24, this run has 12"):
        # save_overwrite: past the check of the run folder's config.json, to the checkpoint's own refusal
        build_trainer(load_config(path, [*run, "max_duration=12ba", "global_train_batch_size=12",
                                         "save_overwrite=true"]))
    _upload_domains(tmp_path / "data", s3_bucket, s3_env.settings, train_samples=TRAIN_SAMPLES + 5, only=("b",))
    monkeypatch.setenv("PIKE_STREAM_HOME", str(tmp_path / "home2"))  # no cached index of the old data
    with pytest.raises(MixerStateError, match=r"the data of domain\(s\) \['b'\] changed since the checkpoint"):
        build_trainer(load_config(path, [*run, "max_duration=12ba"]))


@pytest.mark.slow
def test_two_ranks_resumed_on_one_rank_see_the_same_global_batches(s3_env: Any, s3_bucket: str,
                                                                   tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PIKE_STREAM_HOME", str(tmp_path / "home"))
    _upload_domains(tmp_path / "data", s3_bucket, s3_env.settings)
    # One PiKE refresh (after step 2) before the first checkpoint: every weight after a resume comes from
    # the checkpoint, not from a probe on the new world (whose per-rank estimates differ by design).
    cfg = _config(s3_bucket, max_duration="14ba", eval_loader=None)
    cfg["algorithms"]["pike"].update(update_interval=1000, warmup_steps=2)
    path = _write_yaml(tmp_path / "tiny.yaml", cfg)

    reference = tmp_path / "reference"
    reference.mkdir()
    _run(_train_command(path, f"run_folder={reference}", f"save_folder={reference / 'ckpt'}", ranks=2), reference)

    resumed = tmp_path / "resumed"
    resumed.mkdir()
    overrides = (f"run_folder={resumed}", f"save_folder={resumed / 'ckpt'}", "autoresume=true")
    _run_and_kill(_train_command(path, *overrides, ranks=2), resumed, resumed, kill_at=10)
    assert (resumed / "batches-rank1.jsonl").exists()
    output = _run(_train_command(path, *overrides, ranks=1), resumed)
    assert _resumed_step(output) in (4, 8)

    _assert_same_batches(reference, resumed, 14)
    expected = _metrics_by_step(reference, ("pike/weight/",))
    got = _metrics_by_step(resumed, ("pike/weight/",))
    assert got == expected
    assert expected[13] != expected[0], "the PiKE refresh did not move the weights: the test would prove little"


@pytest.mark.slow
def test_sigkill_with_checkpoints_on_s3_and_autoresume(s3_env: Any, s3_bucket: str, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch,
                                                       in_process_dist: None) -> None:
    """Checkpoints on the embedded S3: SIGKILL once a checkpoint has reached the bucket, rerun the same
    command, and the run continues with exactly the uninterrupted run's batches, weights and losses."""
    from pike_stream.train import load_config, train

    monkeypatch.setenv("PIKE_STREAM_HOME", str(tmp_path / "home"))
    _upload_domains(tmp_path / "data", s3_bucket, s3_env.settings)
    # Long enough that the kill lands mid-run although the first upload to S3 takes a while.
    path = _write_yaml(tmp_path / "tiny.yaml", _config(s3_bucket, max_duration="48ba", eval_interval="16ba"))
    reference = tmp_path / "reference"
    train(load_config(path, [f"run_folder={reference}", f"save_folder={reference / 'ckpt'}"]))

    resumed = tmp_path / "resumed"
    resumed.mkdir()
    command = _train_command(path, f"run_folder={resumed}", f"save_folder=s3://{s3_bucket}/ckpt/killed",
                             "autoresume=true")
    with open(resumed / "killed-run.log", "w") as log_file:
        proc = subprocess.Popen(command, cwd=resumed, env=_env(), stdout=log_file, stderr=subprocess.STDOUT,
                                start_new_session=True)
        deadline = time.monotonic() + 400
        try:
            # Kill once the first checkpoint's `latest` pointer is in the bucket (Composer uploads it last).
            while "ckpt/killed/latest-rank0.pt.symlink" not in _s3_keys(s3_env.settings, s3_bucket, "ckpt/killed/"):
                assert proc.poll() is None, (resumed / "killed-run.log").read_text()[-6000:]
                assert time.monotonic() < deadline, "no checkpoint reached S3 in 400 s"
                time.sleep(0.2)
        finally:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    killed_at = _last_step(resumed)
    output = _run(command, resumed, timeout=400)
    assert 4 <= _resumed_step(output) <= killed_at + 1
    _assert_same_batches(reference, resumed, 48)
    prefixes = ("pike/", "loss/", "metrics/")
    assert _metrics_by_step(resumed, prefixes) == _metrics_by_step(reference, prefixes)
