"""Node restarts: two nodes simulated on this machine, each its own ``composer`` launcher (world size 2,
one rank per node, its own node-local shard cache), one embedded S3 server holding the data and the
checkpoints, and the run folder shared as a cluster's file system would be.

Invariant: whatever happens to the nodes — both killed at once and restarted, one killed alone (the other
then fails at its next collective), the rest of the run on a single node — the
global batches and the mixture weights are those of an uninterrupted run.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from pike_stream.storage import s3_client
from tests.test_train import (
    DOMAINS,
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

STEPS = 36  # long enough that every kill lands before the run ends, however far uploads lag


class Node:
    """One simulated node: a ``composer`` launcher for global rank ``rank`` of a world of ``world``, in a
    working folder and data home (shard cache) of its own."""

    def __init__(self, root: Path, rank: int, world: int, port: int, yaml_path: Path, overrides: list[str]) -> None:
        self.folder = root / f"node{rank}"
        self.folder.mkdir(parents=True, exist_ok=True)
        self.command = [sys.executable, "-m", "composer.cli.launcher", "--nproc", "1", "--world_size", str(world),
                        "--node_rank", str(rank), "--master_addr", "127.0.0.1", "--master_port", str(port),
                        "-m", "pike_stream.train", str(yaml_path), *overrides]
        self.env = {**_env(), "PIKE_STREAM_HOME": str(self.folder / "home")}
        self.log = self.folder / "launch.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with open(self.log, "a") as log:
            log.write(f"\n--- start {' '.join(self.command)}\n")
            log.flush()
            self.proc = subprocess.Popen(self.command, cwd=self.folder, env=self.env, stdout=log,
                                         stderr=subprocess.STDOUT, start_new_session=True)

    def kill(self) -> None:
        assert self.proc is not None
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait()

    def tail(self) -> str:
        return self.log.read_text()[-5000:]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _new_steps(run_folder: Path, offset: int) -> list[int]:
    """The steps rank 0 logged past byte ``offset`` of its batch log (this start's, not an earlier one's)."""
    path = run_folder / "batches-rank0.jsonl"
    if not path.exists():
        return []
    with open(path, "rb") as f:
        f.seek(offset)
        return [json.loads(line)["step"] for line in f.read().decode().splitlines() if line.endswith("}")]


def _log_size(run_folder: Path) -> int:
    path = run_folder / "batches-rank0.jsonl"
    return path.stat().st_size if path.exists() else 0


def _wait_for_step(nodes: list[Node], run_folder: Path, offset: int, step: int, checkpoint: Any,
                   timeout: float = 300) -> None:
    """Until this start has logged batch ``step`` and ``checkpoint()`` is true (a checkpoint is on S3)."""
    deadline = time.monotonic() + timeout
    while max(_new_steps(run_folder, offset), default=-1) < step or not checkpoint():
        for node in nodes:
            assert node.proc.poll() is None, f"{node.folder.name} ended before step {step}:\n{node.tail()}"
        assert time.monotonic() < deadline, f"no step {step} in {timeout} s:\n{nodes[0].tail()}"
        time.sleep(0.05)


def _finish(nodes: list[Node], timeout: float = 300) -> None:
    for node in nodes:
        try:
            code = node.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            node.kill()
            raise AssertionError(f"{node.folder.name} did not finish in {timeout} s:\n{node.tail()}") from None
        assert code == 0, f"{node.folder.name} failed ({code}):\n{node.tail()}"


@pytest.mark.slow
def test_node_restarts_and_a_single_node_resume_keep_the_global_batches(s3_env: Any, s3_bucket: str,
                                                                         tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PIKE_STREAM_HOME", str(tmp_path / "home"))
    _upload_domains(tmp_path / "data", s3_bucket, s3_env.settings)
    # One PiKE refresh (after step 2) before the first checkpoint: every later weight comes from a checkpoint,
    # so the single-node end of the run (whose probe would differ by design) is comparable too.
    cfg = _config(s3_bucket, max_duration=f"{STEPS}ba", eval_loader=None, save_interval="3ba")
    cfg["algorithms"]["pike"].update(update_interval=1000, warmup_steps=2)
    path = _write_yaml(tmp_path / "tiny.yaml", cfg)

    reference = tmp_path / "reference"
    reference.mkdir()
    _run(_train_command(path, f"run_folder={reference}", f"save_folder={reference / 'ckpt'}", ranks=2), reference)

    shared = tmp_path / "shared-run"
    overrides = [f"run_folder={shared}", f"save_folder=s3://{s3_bucket}/ckpt/nodes", "autoresume=true"]

    def uploaded_after(step: int) -> Any:
        """Whether the bucket's ``latest`` pointer names a checkpoint of a step after ``step``."""
        def check() -> bool:
            try:
                body = s3_client(s3_env.settings).get_object(Bucket=s3_bucket,
                                                            Key="ckpt/nodes/latest-rank0.pt.symlink")["Body"]
            except ClientError:
                return False
            found = re.search(r"-ba(\d+)-rank0\.pt$", body.read().decode())
            return bool(found) and int(found.group(1)) > step
        return check

    def nodes(world: int) -> list[Node]:
        port = _free_port()
        return [Node(tmp_path, rank, world, port, path, overrides) for rank in range(world)]

    # 1. Both nodes killed at once (a rack loses power).
    pair, offset = nodes(2), _log_size(shared)
    for node in pair:
        node.start()
    try:
        _wait_for_step(pair, shared, offset, 5, uploaded_after(0))
    finally:
        for node in pair:
            node.kill()

    # 2. Both restarted: they resume from the checkpoint on S3; then node 1 alone is killed.
    pair, offset = nodes(2), _log_size(shared)
    for node in pair:
        node.start()
    try:
        _wait_for_step(pair, shared, offset, 20, uploaded_after(12))
        pair[1].kill()
        # The survivor fails at its next collective; it must end by itself, not hang.
        try:
            code = pair[0].proc.wait(timeout=180)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"node 0 still runs 180 s after node 1 died:\n{pair[0].tail()}") from None
        assert code != 0
    finally:
        for node in pair:
            node.kill()
    assert "resumed at step" in pair[0].log.read_text()

    # 3. The rest of the run on one node (the other did not come back).
    alone = tmp_path / "node-alone"
    alone.mkdir()
    output = _run(_train_command(path, *overrides, ranks=1), alone)
    assert _resumed_step(output) >= 15

    _assert_same_batches(reference, shared, STEPS)
    expected = _metrics_by_step(reference, ("pike/weight/",))
    assert _metrics_by_step(shared, ("pike/weight/",)) == expected
    assert expected[STEPS - 1] != expected[0], "the PiKE refresh did not move the weights: the test would prove little"
    # Each node filled its own cache.
    for rank in (0, 1):
        assert any((tmp_path / f"node{rank}" / "home").rglob("*.mds*")), f"node {rank} cached no shard"



@pytest.mark.slow
def test_two_nodes_with_partitions_read_their_own_shards_and_train_on_one_nodes_batches(
        s3_env: Any, s3_bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``train_loader.partitions: 2`` on two nodes (a ``composer`` launcher each, one rank each, so
    ``LOCAL_WORLD_SIZE`` 1): the global batches of a one-rank run, whose cache holds every shard, and each
    node's cache holds only its partitions' shards. (That a node without partitions reads every shard is
    ``tests/test_partitions_nodes.py``'s control.)"""
    monkeypatch.setenv("PIKE_STREAM_HOME", str(tmp_path / "home"))
    _upload_domains(tmp_path / "data", s3_bucket, s3_env.settings)
    steps = 12  # 288 samples: about one epoch of the 3 domains of 100
    cfg = _config(s3_bucket, max_duration=f"{steps}ba", eval_loader=None, save_interval="6ba", algorithms={})
    cfg["train_loader"] |= {"partitions": 2, "weights": {"a": 0.5, "b": 0.3, "c": 0.2}}
    path = _write_yaml(tmp_path / "partitioned.yaml", cfg)

    reference = tmp_path / "reference"
    reference.mkdir()
    _run(_train_command(path, f"run_folder={reference}", f"save_folder={reference / 'ckpt'}"), reference)

    def cached(home: Path) -> set[str]:
        return {f"{p.parent.parent.name}/{p.name}" for p in home.rglob("shard.*.mds")}

    def two_nodes(name: str, *extra: str) -> tuple[Path, list[set[str]]]:
        """Train on two nodes: the run folder, and the shards (domain/file) each node cached."""
        run, port = tmp_path / name, _free_port()
        pair = [Node(tmp_path / f"{name}-nodes", rank, 2, port, path,
                     [f"run_folder={run}", f"save_folder={run / 'ckpt'}", *extra]) for rank in (0, 1)]
        try:
            for node in pair:
                node.start()
            _finish(pair)
        finally:
            for node in pair:
                if node.proc is not None and node.proc.poll() is None:
                    node.kill()
        return run, [cached(node.folder / "home") for node in pair]

    run, parted = two_nodes("partitioned")
    _assert_same_batches(reference, run, steps)
    total = cached(tmp_path / "home")  # the one-rank reference's
    assert len(total) >= 3 * len(DOMAINS) and set().union(*parted) == total
    for node, shards in enumerate(parted):
        assert shards and len(shards) < 0.75 * len(total), (node, len(shards), len(total))
    assert len(parted[0] & parted[1]) <= len(DOMAINS), "the nodes share more than a boundary shard per domain"
