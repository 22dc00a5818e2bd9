"""The llm-foundry plug-in (pike_stream/foundry.py): its config checks, and llm-foundry's own train command
training with the mixer and PiKE from yamls/foundry_pike.yaml, killed and resumed from S3.

The checks need no llm-foundry and run in every environment. The end-to-end test needs llm-foundry, which
lives in its own environment (``make test-foundry`` builds ``.venv-foundry`` from constraints-foundry.txt
and runs this file there); elsewhere it is skipped.
"""

from __future__ import annotations

import importlib.util
import os
import random
import re
import signal
import subprocess
import sys
import time
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from pike_stream.algorithm import PiKE
from pike_stream.cli import main as pike_stream_main
from pike_stream.foundry import ByteLevelTokenizer, FoundryPiKE, build_pike_dataloader
from pike_stream.storage import EmbeddedS3, s3_client
from pike_stream.train.config import ConfigError
from tests.checkpoints import flip_a_tensor_byte
from tests.test_train import REPO, _assert_same_batches, _env, _last_step, _metrics_by_step

__all__: list[str] = []

YAML = REPO / "yamls" / "foundry_pike.yaml"
SEQ_LEN = 32
STEPS = 24
# The YAML's six domains, each its own alphabet, so that PiKE has something to tell apart.
ALPHABETS = {"en": "abcdefghijklmnopqrstuvwxyz", "de": "abcdefghijklmnopqrstuvwxyzäöüß",
             "fr": "abcdefghijklmnopqrstuvwxyzéèêàç", "es": "abcdefghijklmnopqrstuvwxyzñáéíóú",
             "ru": "абвгдеёжзийклмнопрстуфхцчшщъыьэюя", "code": "abcdefxyz_()=:.0123456789"}


def _write_corpus(root: Path, domains: tuple[str, ...] = tuple(ALPHABETS)) -> Path:
    """Eight text documents of pseudo-words per domain: ``root/<domain>/doc<i>.txt``."""
    for name in domains:
        rng = random.Random(name)
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(8):
            words = ["".join(rng.choice(ALPHABETS[name]) for _ in range(rng.randint(2, 8))) for _ in range(150)]
            (folder / f"doc{i}.txt").write_text(" ".join(words) + "\n")
    return root


def _convert(corpus: Path, dest: str, domains: tuple[str, ...] = tuple(ALPHABETS)) -> None:
    """``pike-stream convert`` every domain to ``<dest>/<domain>/train`` (in this process: the same command)."""
    for name in domains:
        assert pike_stream_main(["convert", str(corpus / name), f"{dest}/{name}/train", "--domain", name,
                                 "--seq-len", str(SEQ_LEN), "--format", "text"]) == 0


@pytest.fixture(scope="module")
def local_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("foundry-data")
    _convert(_write_corpus(root / "corpus", ("en", "de")), str(root / "mds"), ("en", "de"))
    return root / "mds"


def _domains(data: Path) -> list[dict[str, str]]:
    return [{"name": n, "local": str(data / n), "split": "train"} for n in ("en", "de")]


# ------------------------------------------------------------------------------------------ checks
def test_the_dataloader_is_the_mixer_with_labels(local_data: Path) -> None:
    spec = build_pike_dataloader(tokenizer=ByteLevelTokenizer(), device_batch_size=6, domains=_domains(local_data),
                                 weights={"en": 2, "de": 1}, seed=3, max_seq_len=SEQ_LEN, read_ahead_workers=0)
    mixer = spec.dataloader.dataset
    try:
        batch = next(iter(spec.dataloader))
        assert mixer.global_batch_size == 6 and mixer.seed == 3
        assert batch["input_ids"].shape == (6, SEQ_LEN) and torch.equal(batch["labels"], batch["input_ids"])
        assert batch["domain"].tolist() == [0, 0, 0, 0, 1, 1]
        assert spec.get_num_tokens_in_batch(batch) == 6 * SEQ_LEN
    finally:
        mixer.close()


def test_the_dataloader_ramps_the_batch_up_as_the_native_yaml(local_data: Path) -> None:
    from pike_stream.mixer.batch_size import BatchRamp, batch_size_at

    ramp = {"start": 2, "increment": 2, "samples": 24}
    spec = build_pike_dataloader(tokenizer=ByteLevelTokenizer(), device_batch_size=6, domains=_domains(local_data),
                                 rampup_batch_size=ramp, read_ahead_workers=0)
    mixer = spec.dataloader.dataset
    try:
        assert mixer.batch_ramp == BatchRamp(**ramp)
        sizes, samples = [], 0
        for batch, _ in zip(spec.dataloader, range(12)):
            sizes.append(len(batch["input_ids"]))
            assert sizes[-1] == batch_size_at(6, mixer.batch_ramp, samples)
            samples += sizes[-1]
        assert sizes[0] == 2 and sizes[-1] == 6 and sorted(sizes) == sizes and len(set(sizes)) == 3
    finally:
        mixer.close()
    with pytest.raises(ConfigError, match=r"^train_loader: .*batch"):
        build_pike_dataloader(tokenizer=None, device_batch_size=6, domains=_domains(local_data),
                              rampup_batch_size={"start": 4, "increment": 4, "samples": 24}, read_ahead_workers=0)


@pytest.mark.parametrize("changes, message", [
    ({"domain": []}, r"train_loader\.domain: unknown key 'domain'.*did you mean 'domains'"),
    ({"domains": [{"name": "en"}]}, r"train_loader\.domains\.0 \('en'\): give `remote`"),
    ({"weights": {"en": 1, "fr": 1}}, r"train_loader\.weights"),
    ({"shuffle_algo": "py9"}, r"train_loader\.shuffle_algo: 'py9' is not one of"),
    ({"num_workers": 2}, r"train_loader\.num_workers: must be 0"),
    ({"read_ahead": "two"}, r"train_loader\.read_ahead: expected int"),
    ({"max_seq_len": 64}, r"train_loader\.max_seq_len=64, but the domains were converted with seq_len 32"),
])
def test_dataloader_mistakes_name_the_yaml_key(local_data: Path, changes: dict, message: str) -> None:
    cfg = {"domains": _domains(local_data), "read_ahead_workers": 0, **changes}
    with pytest.raises(ConfigError, match=message):
        build_pike_dataloader(tokenizer=None, device_batch_size=4, **cfg)


def test_a_tokenizer_other_than_the_datas_is_refused(local_data: Path) -> None:
    class Other:
        eos_token_id = 0

        def __len__(self) -> int:
            return 50257

    with pytest.raises(ConfigError, match=r"^tokenizer: domain 'en' was converted with a bytes tokenizer of 258 ids "
                                          r"\(EOS 256\).*50257 ids.*tokenizer: \{name: pike_bytes\}"):
        build_pike_dataloader(tokenizer=Other(), device_batch_size=4, domains=_domains(local_data),
                              read_ahead_workers=0)
    with pytest.raises(ConfigError, match=r"^global_train_batch_size: .*whole, positive batch per rank, got 2\.5"):
        build_pike_dataloader(tokenizer=None, device_batch_size=2.5, domains=_domains(local_data))


@pytest.mark.parametrize("options, message", [
    ({"strategy": "balanced_pik"}, r"algorithms\.pike\.strategy: unknown strategy 'balanced_pik' \(did you mean"),
    ({"zeta_1": 0.5}, r"algorithms\.pike\.zeta_1: unknown key 'zeta_1' for strategy 'pike'.*did you mean 'zeta1'"),
    ({"update_interval": 0}, r"algorithms\.pike\.update_interval: must be positive"),
    ({"ema": "high"}, r"algorithms\.pike\.ema: expected float"),
    ({"ema": 1.5}, r"^algorithms\.pike: .*ema"),
    ({"initial_weights": {"en": -1}}, r"algorithms\.pike\.initial_weights"),
])
def test_algorithm_mistakes_name_the_yaml_key(options: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        FoundryPiKE(**options)


def test_the_algorithm_takes_the_native_keys() -> None:
    pike = FoundryPiKE(strategy="pike", update_interval=4, warmup_steps=1, probe_samples=4, zeta1=0.5)
    assert (pike.update_interval, pike.warmup_steps, pike.probe_samples) == (4, 1, 4)
    assert pike.strategy.name == "pike" and pike.strategy.zeta1 == 0.5


@pytest.mark.parametrize("setting, what", [("fsdp_config", "FSDP"), ("tp_config", "tensor parallelism")])
def test_pike_refuses_sharded_training(setting: str, what: str) -> None:
    state = types.SimpleNamespace(fsdp_config=None, tp_config=None, callbacks=[], train_dataloader=None)
    setattr(state, setting, {"sharding_strategy": "FULL_SHARD"})
    for algorithm in (PiKE(), FoundryPiKE()):
        with pytest.raises(ValueError, match=rf"PiKE does not support {what} \({setting} is set\).*train with DDP"):
            algorithm._fit_start(state)


def test_the_byte_tokenizer_is_the_converters() -> None:
    from converters.tokenizers import ByteTokenizer

    tokenizer = ByteLevelTokenizer()
    text = "naïve café: Привет, 1 + 1 = 2"
    expected = ByteTokenizer().encode_documents([text]).tolist()
    assert tokenizer(text)["input_ids"] + [tokenizer.eos_token_id] == expected
    assert (len(tokenizer), tokenizer.eos_token_id, tokenizer.pad_token_id) == (258, 256, 257)
    assert tokenizer.decode(expected[:-1]) == text


# ------------------------------------------------------------------------------------------ llm-foundry
_NEEDS_FOUNDRY = pytest.mark.skipif(importlib.util.find_spec("llmfoundry") is None,
                                    reason="needs llm-foundry, which lives in .venv-foundry: `make test` runs "
                                           "this file there next")


@_NEEDS_FOUNDRY
def test_every_shipped_foundry_yaml_names_registered_parts_with_valid_keys() -> None:
    """yamls/foundry_*.yaml, resolved as llm-foundry resolves them: the sections pike_stream reads pass its checks
    and every name they use is in llm-foundry's registries."""
    from llmfoundry import registry
    from omegaconf import OmegaConf

    from pike_stream.foundry import FoundryLoaderConfig
    from pike_stream.train.config import check_train_loader, section_from_dict

    paths = sorted((REPO / "yamls").glob("foundry_*.yaml"))
    assert [p.name for p in paths] == ["foundry_pike.yaml"]
    for path in paths:
        assert path.read_text().startswith("#"), f"{path.name} should start with a comment saying what it is for"
        cfg = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
        loader = dict(cfg["train_loader"])
        assert loader.pop("name") in registry.dataloaders
        check_train_loader(section_from_dict(FoundryLoaderConfig, loader, "train_loader"))
        assert cfg["tokenizer"]["name"] in registry.tokenizers
        assert set(cfg["algorithms"]) == {"pike"} and "pike" in registry.algorithms
        FoundryPiKE(**cfg["algorithms"]["pike"])
        assert all(name in registry.callbacks for name in cfg["callbacks"])
        assert all(name in registry.loggers for name in cfg["loggers"])
        assert cfg["model"]["vocab_size"] >= len(ByteLevelTokenizer())


def _train_command(*overrides: str) -> list[str]:
    """llm-foundry's own train command (its ``llmfoundry train`` console script) on yamls/foundry_pike.yaml."""
    return [sys.executable, "-m", "llmfoundry.cli.cli", "train", str(YAML), *overrides]


def _overrides(bucket: str, run_folder: Path, checkpoints: str) -> list[str]:
    """The YAML, shrunk to a test: a 1-layer MPT 32 wide, 24 steps of 12 sequences, PiKE every 4 steps,
    checkpoints every 8 steps to S3."""
    return [f"variables.data=s3://{bucket}/mds", f"variables.max_seq_len={SEQ_LEN}",
            f"variables.run_folder={run_folder}",
            f"save_folder=s3://{bucket}/{checkpoints}", f"max_duration={STEPS}ba", "save_interval=8ba",
            "model.d_model=32", "model.n_heads=2", "model.n_layers=1", "model.expansion_ratio=2",
            "global_train_batch_size=12", "device_train_microbatch_size=6", "console_log_interval=4ba",
            "algorithms.pike.update_interval=4", "algorithms.pike.warmup_steps=1"]


def _start(command: list[str], cwd: Path, log: Path) -> subprocess.Popen:
    cwd.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as out:
        return subprocess.Popen(command, cwd=cwd, env=_env(), stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)


def _finish(proc: subprocess.Popen, log: Path, timeout: float = 400) -> str:
    try:
        proc.wait(timeout=timeout)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    output = log.read_text()
    assert proc.returncode == 0, f"llm-foundry training failed ({proc.returncode}):\n{output[-6000:]}"
    return output


def _latest_checkpoint_step(settings: object, bucket: str, prefix: str) -> int | None:
    """The step of the checkpoint the run's ``latest`` pointer on S3 names (None: no pointer yet)."""
    try:
        body = s3_client(settings).get_object(Bucket=bucket, Key=f"{prefix}/latest-rank0.pt.symlink")["Body"]
    except Exception:  # noqa: BLE001 - not there yet
        return None
    found = re.search(r"-ba(\d+)-", body.read().decode())
    return int(found.group(1)) if found else None


def _exists(settings: object, bucket: str, key: str) -> bool:
    try:
        s3_client(settings).head_object(Bucket=bucket, Key=key)
    except Exception:  # noqa: BLE001 - not there (yet)
        return False
    return True


def _kill_after_a_checkpoint(proc: subprocess.Popen, log: Path, run_folder: Path, settings: object, bucket: str,
                             prefix: str, first: int = 8, timeout: float = 400) -> int:
    """SIGKILL ``proc``'s process group mid-run, two steps after a checkpoint whose ``latest`` pointer is on
    S3; return that checkpoint's step.

    Composer uploads checkpoints from a process pool it starts at the first save (its imports take longer
    than this tiny run's remaining steps on a busy machine), so the trainer (only it: not its uploaders) is
    held with SIGSTOP two steps after the first checkpoint until that checkpoint is in the bucket.
    """
    deadline = time.monotonic() + timeout
    held = False
    try:
        while True:
            assert proc.poll() is None, f"training ended before it was killed:\n{log.read_text()[-6000:]}"
            assert time.monotonic() < deadline, f"no checkpoint on S3 in {timeout} s:\n{log.read_text()[-6000:]}"
            step, saved = _last_step(run_folder), _latest_checkpoint_step(settings, bucket, prefix)
            if saved is not None and step >= saved + 2:
                break
            if not held and step >= first + 2:
                held = True
                os.kill(proc.pid, signal.SIGSTOP)
                try:
                    while not _exists(settings, bucket, f"{prefix}/ep0-ba{first}-rank0.pt"):
                        assert time.monotonic() < deadline, "the first checkpoint never reached S3"
                        time.sleep(0.1)
                finally:
                    os.kill(proc.pid, signal.SIGCONT)
            time.sleep(0.05)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    step = _last_step(run_folder)
    assert step < STEPS - 1, f"the run finished (step {step}) before it was killed"
    # What the bucket names now is what the rerun resumes from (a later checkpoint may have landed meanwhile).
    latest = _latest_checkpoint_step(settings, bucket, prefix)
    assert latest is not None and latest <= step + 1
    return latest


@pytest.mark.slow
@_NEEDS_FOUNDRY
def test_llm_foundry_trains_with_pike_and_resumes_exactly_after_a_kill(s3_env: EmbeddedS3, s3_bucket: str,
                                                                       tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """yamls/foundry_pike.yaml run by llm-foundry's train command (its MPT model, tokenizer registry, loggers,
    Composer checkpoints on S3): once uninterrupted, and once SIGKILLed mid-run and rerun with the same
    command (autoresume from the bucket). Both train on exactly the same batches with the same PiKE weights,
    statistics and losses."""
    from llmfoundry import registry

    import pike_stream.foundry as foundry

    assert registry.dataloaders.get("pike_mixer") is foundry.build_pike_dataloader
    assert registry.algorithms.get("pike") is foundry.FoundryPiKE
    assert registry.tokenizers.get("pike_bytes") is foundry.ByteLevelTokenizer
    assert registry.callbacks.get("pike_batch_log") is foundry.BatchLog
    assert registry.loggers.get("pike_metrics") is foundry.JSONLinesLogger

    monkeypatch.setenv("PIKE_STREAM_HOME", str(tmp_path / "home"))
    _convert(_write_corpus(tmp_path / "corpus"), f"s3://{s3_bucket}/mds")

    # The uninterrupted run and the one to be killed train side by side.
    reference, resumed = tmp_path / "reference", tmp_path / "resumed"
    ref_proc = _start(_train_command(*_overrides(s3_bucket, reference / "run", "reference")), reference,
                      tmp_path / "reference.log")
    command = _train_command(*_overrides(s3_bucket, resumed / "run", "resumed"))
    killed = _start(command, resumed, tmp_path / "killed.log")
    try:
        saved = _kill_after_a_checkpoint(killed, tmp_path / "killed.log", resumed / "run", s3_env.settings,
                                         s3_bucket, "resumed")
        output = _finish(_start(command, resumed, tmp_path / "resumed.log"), tmp_path / "resumed.log")
        _finish(ref_proc, tmp_path / "reference.log")
    finally:
        for proc in (ref_proc, killed):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()

    found = re.search(r"PiKE: resumed at step (\d+): mixer at step (\d+)", output)
    assert found, f"the rerun did not resume:\n{output[-6000:]}"
    assert int(found.group(1)) == int(found.group(2)) == saved
    _assert_same_batches(reference / "run", resumed / "run", STEPS)
    pike = _metrics_by_step(reference / "run", ("pike/",))
    assert sorted(s for s, m in pike.items() if "pike/updates" in m) == [1, 5, 9, 13, 17, 21]
    assert _metrics_by_step(resumed / "run", ("pike/",)) == pike
    losses = ("loss/train/", "metrics/train/")
    assert _metrics_by_step(resumed / "run", losses) == _metrics_by_step(reference / "run", losses)
    weights = [m["pike/weight/ru"] for m in pike.values() if "pike/weight/ru" in m]
    assert len(set(weights)) > 1, "PiKE never moved the weights"

    # A byte of the finished run's latest checkpoint flipped in the bucket: llm-foundry's autoresume must refuse
    # it (the plug-in has Composer check every checkpoint's CRC-32s), not resume from wrong weights.
    client = s3_client(s3_env.settings)
    key = client.get_object(Bucket=s3_bucket, Key="reference/latest-rank0.pt.symlink")["Body"].read().decode()
    body = client.get_object(Bucket=s3_bucket, Key=key)["Body"].read()
    client.put_object(Bucket=s3_bucket, Key=key, Body=flip_a_tensor_byte(body))
    before = sorted(o["Key"] for o in client.list_objects_v2(Bucket=s3_bucket, Prefix="reference/")["Contents"])
    longer = _train_command(*_overrides(s3_bucket, reference / "run", "reference"), f"max_duration={STEPS + 8}ba")
    rerun = _start(longer, reference, tmp_path / "corrupt.log")
    try:
        rerun.wait(timeout=400)
    finally:
        if rerun.poll() is None:
            os.killpg(rerun.pid, signal.SIGKILL)
            rerun.wait()
    output = (tmp_path / "corrupt.log").read_text()
    assert rerun.returncode != 0, output[-6000:]
    # llm-foundry prints the error in a rich traceback, prefixed per rank and wrapped at 80 columns: a path is cut
    # anywhere, and the space at a break is kept or dropped (dropped when the word before it ends at the edge), so
    # the lines are joined as they are and every space of the pattern is optional. The error names the file
    # autoresume downloaded, not Composer's temporary copy of it.
    flat = "".join(line.removeprefix("[rank0]: ") for line in output.splitlines())
    named = re.search(r"CorruptCheckpointError: checkpoint (\S+?) is corrupt: its record \S+? fails the CRC-32 "
                      r"check".replace(" ", " ?"), flat)
    assert named, output[-6000:]
    assert named.group(1).endswith(f"/{s3_bucket}/reference/latest-rank0.pt"), named.group(1)
    assert Path(named.group(1)).is_file(), named.group(1)
    after = sorted(o["Key"] for o in client.list_objects_v2(Bucket=s3_bucket, Prefix="reference/")["Contents"])
    assert after == before, "nothing was trained or saved past the damaged checkpoint"


@pytest.mark.slow
@_NEEDS_FOUNDRY
def test_llm_foundry_on_two_ranks_trains_on_the_batches_its_logged_weights_define(s3_env: EmbeddedS3, s3_bucket: str,
                                                                                  tmp_path: Path,
                                                                                  monkeypatch: pytest.MonkeyPatch
                                                                                  ) -> None:
    """llm-foundry's train command on two ranks under Composer's launcher (gloo on CPU), as
    ``composer -n 2 -m llmfoundry.cli.cli train yamls/foundry_pike.yaml``: each rank trains on its half of
    every global batch, PiKE refreshes the weights on both ranks alike, and the two halves together are, at
    every step, the batch a one-rank mixer composes from the weights rank 0 logged (as ``pike-stream audit``
    replays a native run). Ranks that disagreed on a weight would compose different global batches."""
    from pike_stream.mixer import Domain, PiKEStreamingMixer
    from pike_stream.train import read_batch_log
    from pike_stream.train.records import read_metrics

    monkeypatch.setenv("PIKE_STREAM_HOME", str(tmp_path / "home"))
    _convert(_write_corpus(tmp_path / "corpus"), f"s3://{s3_bucket}/mds")
    steps, run = 12, tmp_path / "two-ranks" / "run"
    overrides = [*_overrides(s3_bucket, run, "two-ranks"), f"max_duration={steps}ba", f"save_interval={steps}ba"]
    command = [sys.executable, "-m", "composer.cli.launcher", "-n", "2", "-m", "llmfoundry.cli.cli", "train",
               str(YAML), *overrides]
    _finish(_start(command, tmp_path / "two-ranks", tmp_path / "two-ranks.log"), tmp_path / "two-ranks.log")

    assert sorted(p.name for p in run.glob("batches-rank*.jsonl")) == ["batches-rank0.jsonl", "batches-rank1.jsonl"]
    names = list(ALPHABETS)
    weights = {int(r["step"]): np.array([r[f"pike/weight/{n}"] for n in names])
               for r in read_metrics(run) if "pike/weight/en" in r}
    assert sorted(weights) == list(range(steps))
    assert not np.allclose(weights[0], weights[steps - 1]), "PiKE never moved the weights: the test would prove little"
    logged = read_batch_log(run)
    assert sorted(logged) == list(range(steps))
    domains = [Domain(name=n, remote=f"s3://{s3_bucket}/mds/{n}", split="train") for n in names]
    with PiKEStreamingMixer(domains, 12, seed=17, rank=0, world_size=1, read_ahead=0) as mixer:
        for step in range(steps):
            mixer.set_weights(weights[step])
            domain, sample = mixer.compose()
            np.testing.assert_array_equal(logged[step][0], domain, err_msg=f"domains of step {step}")
            np.testing.assert_array_equal(logged[step][1], sample, err_msg=f"sample ids of step {step}")
