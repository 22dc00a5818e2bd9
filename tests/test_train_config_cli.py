"""``pike-stream train CONFIG``: YAML values read by their declared type, and a user's config mistake is one
line on stderr (exit status 2), never a traceback. Run as the user runs it: a subprocess of the CLI."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from pike_stream.train.config import ConfigError, config_from_dict
from tests.mds_data import write_domain

DOMAINS = ("a", "b")
REPO = Path(__file__).resolve().parents[1]


def _config(root: Path, **loader: Any) -> dict[str, Any]:
    return {
        "run_name": "cli",
        "max_seq_len": 16,
        "global_train_batch_size": 4,
        "max_duration": "2ba",
        "model": {"n_layer": 1, "n_embd": 16, "n_head": 2, "vocab_size": 1000},
        "train_loader": {"domains": [{"name": n, "local": str(root / n)} for n in DOMAINS], **loader},
        "loggers": {"console": False},
    }


@pytest.fixture(scope="module")
def domains_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cli-domains")
    for code, name in enumerate(DOMAINS):
        write_domain(str(root / name), name, 40, code=code, seq_len=16)
    return root


def _train(tmp_path: Path, name: str, cfg: dict[str, Any], *overrides: str) -> subprocess.Popen:
    path = tmp_path / f"{name}.yaml"
    # Written as a user writes it: cache_limit: 1000000000 is a YAML int, lr: 1e-3 a YAML 1.1 string.
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    # This checkout's package, whatever is installed in the environment.
    path_env = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    env = {**os.environ, "PIKE_STREAM_HOME": str(tmp_path / "home"), "PYTHONPATH": path_env}
    return subprocess.Popen([sys.executable, "-m", "pike_stream", "train", str(path), *overrides], cwd=tmp_path,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _one_error_line(proc: subprocess.Popen) -> str:
    out, err = proc.communicate(timeout=240)
    assert proc.returncode == 2, f"exit status {proc.returncode}\nstdout:\n{out}\nstderr:\n{err}"
    assert "Traceback" not in err and "Traceback" not in out, err
    errors = [line for line in err.splitlines() if line.startswith("pike-stream train: error:")]
    assert len(errors) == 1, err
    return errors[0]


def test_config_mistakes_are_one_line_from_the_cli(domains_root, tmp_path):
    """``cache_limit: 1000000000`` (an int) and ``lr: 1e-3`` are accepted: the run gets as far as its data,
    whose seq_len (16) differs from max_seq_len (32): that one line is the error. A bad size is one line
    naming the key (as is every :class:`ConfigError`, checked in-process below)."""
    good_values = _config(domains_root, cache_limit=1_000_000_000)
    good_values["optimizer"] = {"lr": "1e-3"}
    cases = {
        "int-cache-limit": (good_values, ["max_seq_len=32"],
                            "max_seq_len=32, but the domains were converted with seq_len 16"),
        "bad-size": (_config(domains_root, cache_limit="10 parsecs"), [],
                     "train_loader.cache_limit: '10 parsecs' is not a size in bytes"),
        # An override of a variable reaches every value that interpolates it (resolved after the overrides).
        "variable-override": (_config(domains_root) | {"variables": {"seq": 16}, "max_seq_len": "${variables.seq}"},
                              ["variables.seq=32"], "max_seq_len=32, but the domains were converted with seq_len 16"),
        "missing-variable": (_config(domains_root) | {"max_seq_len": "${variables.seq}"}, [],
                             "max_seq_len: Interpolation key 'variables.seq' not found"),
    }
    procs = {name: _train(tmp_path, name, cfg, *overrides) for name, (cfg, overrides, _) in cases.items()}
    for name, (_, _, expected) in cases.items():
        line = _one_error_line(procs[name])
        assert expected in line, (name, line)


@pytest.mark.parametrize("value, expected", [(1_000_000_000, 1_000_000_000), ("10gb", 10 << 30), ("500mb", 500 << 20),
                                             ("2_000", 2000), (None, None)])
def test_cache_limit_is_read_as_a_byte_size(tmp_path, value, expected):
    assert config_from_dict(_config(tmp_path, cache_limit=value)).train_loader.cache_limit == expected


@pytest.mark.parametrize("loader, message", [
    ({"cache_limit": -5}, r"train_loader\.cache_limit: -5 is negative"),
    ({"cache_limit": [1]}, r"train_loader\.cache_limit: \[1\] is not a size in bytes"),
    ({"read_ahead_workers": -1}, r"train_loader\.read_ahead_workers: must be ≥ 0"),
    ({"shuffle_algo": "py1x"}, r"train_loader\.shuffle_algo: 'py1x' is not one of .*py1e"),
    ({"weights": {"a": -1, "b": 1}}, r"train_loader\.weights: must be finite and ≥ 0"),
    ({"weights": {"a": 0, "b": 0}}, r"train_loader\.weights: are all zero"),
    ({"read_ahead": -1}, r"train_loader\.read_ahead: must be ≥ 0, got -1"),
    ({"partitions": 0}, r"train_loader\.partitions: must be positive \(or null: no partitions\), got 0"),
    ({"partitions": 8, "allow_data_growth": True},
     r"train_loader\.partitions and train_loader\.allow_data_growth do not work together"),
])
def test_mixer_settings_are_checked_with_the_config(tmp_path, loader, message):
    with pytest.raises(ConfigError, match=message):
        config_from_dict(_config(tmp_path, **loader))


def test_a_node_count_the_partitions_do_not_allow_is_a_config_error_before_any_storage(tmp_path, monkeypatch):
    from pike_stream.train.builder import _check_batch_sizes

    cfg = config_from_dict(_config(tmp_path, partitions=4) | {"global_train_batch_size": 12})
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    with pytest.raises(ConfigError, match=r"^train_loader\.partitions=4 cannot be split evenly over this run's 3 "
                                          r"nodes \(6 ranks, 2 per node\).* \[1, 2, 4\]"):
        _check_batch_sizes(cfg, world_size=6)
    assert _check_batch_sizes(cfg, world_size=4) == 3  # 2 nodes of 2 ranks: allowed


def test_values_interpolate_variables_and_the_environment_as_in_llm_foundry_yamls(tmp_path, monkeypatch):
    from pike_stream.train.config import load_config

    monkeypatch.setenv("PIKE_TEST_DATA", str(tmp_path / "data"))
    cfg = _config(tmp_path) | {"variables": {"seq": 64, "lr": "2e-3", "data": "${oc.env:PIKE_TEST_DATA}"},
                               "max_seq_len": "${variables.seq}", "optimizer": {"lr": "${variables.lr}"},
                               "run_name": "seq-${variables.seq}"}
    cfg["train_loader"]["domains"][0]["local"] = "${variables.data}/a"
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    loaded = load_config(path)
    assert (loaded.max_seq_len, loaded.optimizer.lr, loaded.run_name) == (64, pytest.approx(2e-3), "seq-64")
    assert loaded.train_loader.domains[0].local == str(tmp_path / "data" / "a")
    assert load_config(path, ["variables.seq=128"]).max_seq_len == 128
    assert load_config(path, ["max_seq_len=32"]).max_seq_len == 32  # a value set directly wins
    with pytest.raises(ConfigError, match=r"^variables: expected a mapping of values for interpolations, got \[1\]$"):
        config_from_dict(_config(tmp_path) | {"variables": [1]})
    with pytest.raises(ConfigError, match=r"^max_seq_len: .*'\$\{variables\.seq'"):  # unclosed
        config_from_dict(_config(tmp_path) | {"max_seq_len": "${variables.seq"})


def test_model_sizes_must_be_positive(tmp_path):
    cfg = _config(tmp_path)
    cfg["model"]["n_head"] = 0  # was a ZeroDivisionError (a traceback from the CLI)
    with pytest.raises(ConfigError, match=r"model\.n_head: must be positive, got 0"):
        config_from_dict(cfg)


def test_floats_written_without_a_dot_are_floats(tmp_path):
    cfg = _config(tmp_path)
    cfg["optimizer"] = {"lr": "3e-4", "eps": "1e-8"}
    assert config_from_dict(cfg).optimizer.lr == pytest.approx(3e-4)
    cfg["optimizer"] = {"lr": "fast"}
    with pytest.raises(ConfigError, match=r"optimizer\.lr: expected float, got 'fast'"):
        config_from_dict(cfg)
