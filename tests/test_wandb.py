"""W&B chosen in the YAML (``loggers.wandb``, offline by default): the run's metrics, the PiKE weights among
them, are written under the run folder with no account and no network, and no W&B process is left behind.

Composer 0.32's ``WandBLogger`` needs wandb < 0.19, which needs protobuf < 6; the main environment pins
protobuf 7 (mlflow, tensorboard), so this runs in ``.venv-foundry``, where llm-foundry pins wandb 0.18
(``make test`` runs this file there next); elsewhere it is skipped.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
from pathlib import Path

import pytest

from tests.test_loggers import _local_config
from tests.test_train import _write_yaml

pytestmark = pytest.mark.skipif(importlib.util.find_spec("wandb") is None,
                                reason="needs wandb < 0.19, which lives in .venv-foundry: `make test` runs this "
                                       "file there next")


def test_wandb_offline_writes_the_runs_metrics_under_the_run_folder(tmp_path: Path, in_process_dist: None,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    import wandb

    from pike_stream.train import load_config, train

    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("WANDB_DISABLE_GIT", "true")
    cfg = _local_config(tmp_path)
    cfg["loggers"] = {"console": False, "wandb": {"project": "pike-test", "tags": ["synthetic"]}}
    run = tmp_path / "run"
    train(load_config(_write_yaml(tmp_path / "tiny.yaml", cfg), [f"run_folder={run}",
                                                                 f"save_folder={run / 'ckpt'}"]))
    (offline,) = (run / "wandb").glob("offline-run-*")
    (log,) = offline.glob("run-*.wandb")  # the run's records (protobuf), what `wandb sync` uploads
    records = log.read_bytes()
    for key in ("loss/train/total", "pike/weight/a", "pike/weight/c", "metrics/a/LanguageCrossEntropy"):
        assert key.encode() in records, f"{key} is not in {log}"
    assert json.loads((offline / "files" / "wandb-metadata.json").read_text())["args"] is not None
    # W&B keeps one service process per Python process (``--pid``: it ends with it); nothing else is left.
    services = subprocess.run(["pgrep", "-af", "wandb-core"], capture_output=True, text=True).stdout.splitlines()
    assert all(f"--pid {os.getpid()}" in line for line in services), services
    wandb.teardown()
    left = subprocess.run(["pgrep", "-af", "wandb-core"], capture_output=True, text=True).stdout
    assert not left, f"a W&B process is still running: {left}"
