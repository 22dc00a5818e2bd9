"""Experiment tracking: TensorBoard, MLflow (a local file store) and W&B (offline) chosen in the YAML receive
the run's metrics, the PiKE weights among them, with no server and no network; a tracker that is not installed
is one line naming the key and the package."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from pike_stream.train.config import ConfigError
from tests.mds_data import write_domain
from tests.test_train import DOMAINS, _config, _write_yaml

__all__: list[str] = []


def _local_config(root: Path, **changes: Any) -> dict[str, Any]:
    for code, name in enumerate(DOMAINS, start=1):
        for split, n in (("train", 60), ("val", 8)):
            write_domain(str(root / "data" / name / split), name, n, code=code, seq_len=16)
    cfg = _config(max_duration="6ba", eval_interval="6ba", save_interval="6ba", **changes)
    cfg["train_loader"]["domains"] = [{"name": n, "local": str(root / "data" / n), "split": "train"} for n in DOMAINS]
    cfg["eval_loader"]["domains"] = [{"name": n, "local": str(root / "data" / n), "split": "val"} for n in DOMAINS]
    cfg["algorithms"]["pike"]["update_interval"] = 2
    return cfg


def test_tensorboard_and_mlflow_receive_the_runs_metrics(tmp_path: Path, in_process_dist: None) -> None:
    from mlflow import MlflowClient
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    from pike_stream.train import load_config, train

    cfg = _local_config(tmp_path)
    cfg["loggers"] = {"console": False, "tensorboard": {}, "mlflow": {"experiment_name": "pike-test",
                                                                      "tags": {"corpus": "synthetic"}}}
    run = tmp_path / "run"
    train(load_config(_write_yaml(tmp_path / "tiny.yaml", cfg), [f"run_folder={run}",
                                                                 f"save_folder={run / 'ckpt'}"]))

    steps: dict[str, list[int]] = {}  # every event file Composer wrote, under <log_dir>/<run_name>
    for path in sorted((run / "tensorboard").rglob("events.out.tfevents.*")):
        for event in EventFileLoader(str(path)).Load():
            for value in event.summary.value:
                steps.setdefault(value.tag, []).append(event.step)
    assert {"loss/train/total", "pike/weight/a", "metrics/a/LanguageCrossEntropy"} <= set(steps), sorted(steps)
    assert sorted(steps["loss/train/total"]) == list(range(6))  # Composer logs batch b at step b - 1

    client = MlflowClient(f"sqlite:///{(run / 'mlflow.db').resolve()}")
    experiment = client.get_experiment_by_name("pike-test")
    (found,) = client.search_runs([experiment.experiment_id])
    assert found.info.status == "FINISHED" and found.data.tags["corpus"] == "synthetic"
    history = client.get_metric_history(found.info.run_id, "loss/train/total")
    assert [m.step for m in history] == list(range(6))
    assert {"pike/weight/a", "pike/weight/b", "pike/weight/c"} <= set(found.data.metrics)


def test_a_wandb_mode_that_does_not_exist_is_named(tmp_path: Path, in_process_dist: None) -> None:
    from pike_stream.train import build_trainer, load_config

    cfg = _local_config(tmp_path)
    cfg["loggers"] = {"console": False, "wandb": {"mode": "ofline"}}
    with pytest.raises(ConfigError,
                       match=r"^loggers\.wandb\.mode: must be one of offline, online, disabled, got 'ofline'"):
        build_trainer(load_config(_write_yaml(tmp_path / "tiny.yaml", cfg), [f"run_folder={tmp_path / 'run'}"]))


@pytest.mark.parametrize("key, package", [("tensorboard", "tensorboard"), ("mlflow", "mlflow-skinny"),
                                          ("wandb", "wandb")])
def test_a_tracker_that_is_not_installed_is_one_line(tmp_path: Path, in_process_dist: None,
                                                     monkeypatch: pytest.MonkeyPatch, key: str, package: str) -> None:
    import sys

    from pike_stream.train import build_trainer, load_config

    cfg = _local_config(tmp_path)
    cfg["loggers"] = {"console": False, key: {}}
    monkeypatch.setitem(sys.modules, key, None)  # `import key` now raises ImportError, as when not installed
    with pytest.raises(ConfigError, match=rf"^loggers\.{key}: needs the `{package}` package"):
        build_trainer(load_config(_write_yaml(tmp_path / "tiny.yaml", cfg), [f"run_folder={tmp_path / 'run'}"]))


def test_a_wandb_that_composer_cannot_drive_is_one_line(tmp_path: Path, in_process_dist: None,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    import sys
    import types

    from pike_stream.train import build_trainer, load_config

    cfg = _local_config(tmp_path)
    cfg["loggers"] = {"console": False, "wandb": {}}
    monkeypatch.setitem(sys.modules, "wandb", types.SimpleNamespace(__version__="0.31.0"))
    with pytest.raises(ConfigError, match=r"^loggers\.wandb: Composer's WandBLogger needs wandb < 0\.19, this "
                                          r"environment has 0\.31\.0"):
        build_trainer(load_config(_write_yaml(tmp_path / "tiny.yaml", cfg), [f"run_folder={tmp_path / 'run'}"]))
