"""Faults on the training path, for real: wrong credentials, a missing bucket, a read-only key, and crashes.

Storage faults are checked before training starts and must name what to fix without ever printing the
secret key. Crashes are real ``SIGKILL``s of a training process at chosen points (inside a PiKE weight
update, in the middle of writing a checkpoint file, between a checkpoint and its ``latest`` pointer); the
same command rerun with ``autoresume`` must train on exactly the batches of an uninterrupted run.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from pike_stream.storage import EmbeddedS3, S3Settings, StorageError
from pike_stream.train.config import config_from_dict
from tests.test_train import (
    _assert_same_batches,
    _config,
    _env,
    _metrics_by_step,
    _resumed_step,
    _run,
    _train_command,
    _upload_domains,
    _write_yaml,
)

__all__: list[str] = []


def _env_with(settings: S3Settings, **extra: str) -> dict[str, str]:
    """A training subprocess's environment that uses ``settings`` for S3 (and nothing distributed)."""
    env = _env()
    env.update(settings.as_env())
    env.update(extra)
    return env


def _files_containing(folder: Path, secret: str) -> list[str]:
    """Files under ``folder`` whose bytes contain ``secret`` (checkpoints included: they are pickles)."""
    needle = secret.encode()
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")
                  if p.is_file() and not p.is_symlink() and needle in p.read_bytes())


# ------------------------------------------------------------------------------------------ credentials
@pytest.mark.slow  # a training process of its own: ~20 s of imports on a busy machine
def test_wrong_secret_stops_the_cli_before_training_without_showing_it(s3_server: EmbeddedS3, s3_bucket: str,
                                                                       tmp_path: Path) -> None:
    """The real command with a wrong ``AWS_SECRET_ACCESS_KEY``: exit 2, one line naming the variable and the
    key id, no traceback, no training, and the wrong secret (and the right one) nowhere in its output."""
    good = s3_server.settings
    wrong_secret = "pike-wrong-secret-4f1d9c0e7a"
    run_folder = tmp_path / "run"
    path = _write_yaml(tmp_path / "tiny.yaml", _config(s3_bucket, run_folder=str(run_folder)))
    done = subprocess.run(
        _train_command(path), cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        timeout=120, env=_env_with(S3Settings(good.endpoint_url, good.access_key_id, wrong_secret),
                                   PIKE_STREAM_HOME=str(tmp_path / "home")))
    assert done.returncode == 2, done.stdout[-4000:]
    error = [line for line in done.stdout.splitlines() if line.startswith("pike-stream train: error:")]
    assert len(error) == 1, done.stdout[-4000:]
    assert "AWS_SECRET_ACCESS_KEY" in error[0] and good.access_key_id in error[0]
    assert "Traceback" not in done.stdout
    assert wrong_secret not in done.stdout and good.secret_access_key not in done.stdout
    assert not (run_folder / "metrics.jsonl").exists(), "training must not have started"
    if run_folder.exists():
        assert _files_containing(run_folder, wrong_secret) == []


def test_wrong_secret_is_named_by_build_trainer(s3_server: EmbeddedS3, s3_bucket: str, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    from pike_stream.train.builder import prepare_storage

    good = s3_server.settings
    for name, value in S3Settings(good.endpoint_url, good.access_key_id, "another-wrong-secret-77").as_env().items():
        monkeypatch.setenv(name, value)
    with pytest.raises(StorageError, match="AWS_SECRET_ACCESS_KEY") as info:
        prepare_storage(config_from_dict(_config(s3_bucket, run_folder=str(tmp_path / "run"))))
    assert "another-wrong-secret-77" not in str(info.value) and "another-wrong-secret-77" not in repr(info.value)


def test_missing_data_bucket_is_named_before_training(s3_env: EmbeddedS3, tmp_path: Path) -> None:
    from pike_stream.train.builder import prepare_storage

    cfg = config_from_dict(_config("no-such-data-bucket", run_folder=str(tmp_path / "run")))
    with pytest.raises(StorageError, match="bucket 'no-such-data-bucket' does not exist"):
        prepare_storage(cfg)


def test_read_only_key_with_an_s3_save_folder_is_refused_before_training(s3_server: EmbeddedS3, s3_bucket: str,
                                                                          tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """The read-only key may read the domains' bucket but not write checkpoints there: refused up front,
    naming the key, the bucket and the variables to change; nothing written to the bucket."""
    from pike_stream.storage import s3_client
    from pike_stream.train.builder import prepare_storage

    reader = s3_server.read_only_settings
    for name, value in reader.as_env().items():
        monkeypatch.setenv(name, value)
    cfg = config_from_dict(_config(s3_bucket, run_folder=str(tmp_path / "run"), save_folder=f"s3://{s3_bucket}/ckpt"))
    with pytest.raises(StorageError) as info:
        prepare_storage(cfg)
    message = str(info.value)
    assert "read-only" in message and repr(s3_bucket) in message and reader.access_key_id in message
    assert "AWS_ACCESS_KEY_ID" in message and reader.secret_access_key not in message
    assert s3_client(s3_server.settings).list_objects_v2(Bucket=s3_bucket).get("KeyCount", 0) == 0
    # The same key with a local save_folder is fine: reading the data is all it needs.
    prepare_storage(config_from_dict(_config(s3_bucket, save_folder=str(tmp_path / "ckpt"))))


# ------------------------------------------------------------------------------------------ crash points
# A training process that SIGKILLs itself at one precise point, then runs `pike-stream train` as usual.
# The points are reached through the real code path (the hook runs the original, then kills), so what is
# left on disk is exactly what a machine failure at that instant leaves.
CRASHING_TRAIN = '''
import os
import signal
import sys

POINT, AT = sys.argv[1], int(sys.argv[2])


def die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


if __name__ == "__main__":
    if POINT == "weight_update":  # PiKE has probed batch AT; the new weights are not set yet
        import pike_stream.algorithm as algorithm

        probe_domains = algorithm.probe_domains

        def probe(*args, seed, **kwargs):
            result = probe_domains(*args, seed=seed, **kwargs)
            if seed == AT:
                die()
            return result

        algorithm.probe_domains = probe
    elif POINT == "torn_checkpoint":  # the checkpoint after AT batches is half on disk
        from composer.utils import checkpoint

        write = checkpoint._write_checkpoint_file

        def torn(state_dict, filename):
            write(state_dict, filename)
            if f"-ba{AT}-" in os.path.basename(filename):
                os.truncate(filename, os.path.getsize(filename) // 2)
                die()

        checkpoint._write_checkpoint_file = torn
    elif POINT == "before_latest":  # the checkpoint after AT batches is whole; `latest` was removed, not yet re-made
        symlink = os.symlink

        def no_latest(src, dst, *args, **kwargs):
            if os.path.basename(dst).startswith("latest") and f"-ba{AT}-" in str(src):
                die()
            return symlink(src, dst, *args, **kwargs)

        os.symlink = no_latest
    else:
        raise SystemExit(f"unknown crash point {POINT}")
    from pike_stream.train.cli import main

    sys.exit(main(sys.argv[3:]))
'''


def _crash(script: Path, point: str, at: int, yaml_path: Path, overrides: list[str], cwd: Path) -> str:
    """Run training that SIGKILLs itself at ``point`` of batch/checkpoint ``at``; return its output."""
    done = subprocess.run([sys.executable, str(script), point, str(at), str(yaml_path), *overrides], cwd=cwd,
                          env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=300)
    assert done.returncode == -9, f"expected a SIGKILL at {point} {at}, got {done.returncode}:\n{done.stdout[-6000:]}"
    return done.stdout


@pytest.mark.slow
def test_crashes_in_an_update_and_in_checkpoint_writes_resume_exactly(s3_env: EmbeddedS3, s3_bucket: str,
                                                                       tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch,
                                                                       in_process_dist: None) -> None:  # noqa: F811
    """One run killed three times, each rerun with the same command and ``autoresume``:

    1. inside a PiKE weight update (batch 5 probed, its new weights not yet set) → resumes from step 4;
    2. while writing the checkpoint of step 8 (the file half written) → resumes from step 4 again;
    3. after the checkpoint of step 12 but before ``latest`` points to it → resumes from a whole checkpoint;
    then it finishes. Its batches, weights, PiKE statistics and losses equal an uninterrupted run's, and the
    secret key appears in none of its files or outputs.
    """
    from pike_stream.train import load_config, train

    monkeypatch.setenv("PIKE_STREAM_HOME", str(tmp_path / "home"))
    _upload_domains(tmp_path / "data", s3_bucket, s3_env.settings)
    cfg = _config(s3_bucket)
    cfg["algorithms"]["pike"].update(update_interval=4, warmup_steps=1)  # updates at 1, 5, 9, 13
    path = _write_yaml(tmp_path / "tiny.yaml", cfg)

    reference = tmp_path / "reference"
    train(load_config(path, [f"run_folder={reference}", f"save_folder={reference / 'ckpt'}"]))
    updates = sorted(s for s, m in _metrics_by_step(reference, ("pike/",)).items() if "pike/updates" in m)
    assert updates == [1, 5, 9, 13]

    script = tmp_path / "crashing_train.py"
    script.write_text(CRASHING_TRAIN)
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    overrides = [f"run_folder={resumed}", f"save_folder={resumed / 'ckpt'}", "autoresume=true"]
    outputs = [_crash(script, "weight_update", 5, path, overrides, resumed)]
    outputs.append(_crash(script, "torn_checkpoint", 8, path, overrides, resumed))
    assert _resumed_step(outputs[-1]) == 4
    outputs.append(_crash(script, "before_latest", 12, path, overrides, resumed))
    assert _resumed_step(outputs[-1]) == 4
    outputs.append(_run(_train_command(path, *overrides), resumed))
    assert _resumed_step(outputs[-1]) == 12, "the whole checkpoint of step 12 is the one to resume from"
    assert [p.name for p in (resumed / "ckpt" / ".interrupted").iterdir()] == ["ep0-ba8-rank0.pt"]

    _assert_same_batches(reference, resumed, 16)
    prefixes = ("pike/", "loss/", "metrics/")
    assert _metrics_by_step(resumed, prefixes) == _metrics_by_step(reference, prefixes)

    secret = s3_env.settings.secret_access_key
    assert secret and all(secret not in output for output in outputs)
    assert _files_containing(resumed, secret) == [] and _files_containing(reference, secret) == []
    assert json.loads((resumed / "config.json").read_text())["run_folder"] == str(resumed)


def _checkpoint(path: Path, drop_last_records: int = 0) -> None:
    """A torch.save archive of several tensors; with ``drop_last_records`` its last tensor records are left out
    of an otherwise well-formed archive, as a Ctrl-C inside ``torch.save`` leaves it (the writer closes the
    archive on the way out)."""
    import zipfile

    import torch

    torch.save({"state": {f"t{i}": torch.full((64,), float(i)) for i in range(8)}}, path)
    if not drop_last_records:
        return
    with zipfile.ZipFile(path) as whole:
        entries = [(info, whole.read(info)) for info in whole.infolist()]
    data = sorted((i for i, (info, _) in enumerate(entries) if "/data/" in info.filename),
                  key=lambda i: int(entries[i][0].filename.rsplit("/", 1)[1]))
    dropped = set(data[-drop_last_records:])
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as torn:
        for i, (info, content) in enumerate(entries):
            if i not in dropped:
                torn.writestr(info, content)


def test_a_well_formed_but_torn_checkpoint_that_latest_points_to_is_set_aside(tmp_path: Path) -> None:
    """Seen when Ctrl-C hit ``torch.save``: ``latest`` named a valid zip that lacked its last tensors, and the
    rerun failed with ``PytorchStreamReader failed locating file data/53``."""
    import os
    import zipfile

    from pike_stream.train.builder import _recover_interrupted_checkpoints

    folder = tmp_path / "ckpt"
    folder.mkdir()
    _checkpoint(folder / "ep0-ba2-rank0.pt")
    _checkpoint(folder / "ep0-ba4-rank0.pt", drop_last_records=3)
    assert zipfile.is_zipfile(folder / "ep0-ba4-rank0.pt"), "a zip check alone would take it"
    os.symlink("ep0-ba4-rank0.pt", folder / "latest-rank0.pt")
    _recover_interrupted_checkpoints(str(folder))
    assert os.readlink(folder / "latest-rank0.pt") == "ep0-ba2-rank0.pt"
    assert [p.name for p in (folder / ".interrupted").iterdir()] == ["ep0-ba4-rank0.pt"]
    _recover_interrupted_checkpoints(str(folder))  # nothing more to do
    assert os.readlink(folder / "latest-rank0.pt") == "ep0-ba2-rank0.pt"

    only = tmp_path / "only"
    only.mkdir()
    _checkpoint(only / "ep0-ba2-rank0.pt", drop_last_records=1)
    os.symlink("ep0-ba2-rank0.pt", only / "latest-rank0.pt")
    _recover_interrupted_checkpoints(str(only))
    assert not os.path.lexists(only / "latest-rank0.pt"), "no complete checkpoint: training starts afresh"
