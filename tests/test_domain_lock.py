"""Opening one remote domain from several processes that each take themselves for the node's leader, into one
cache folder: the download of ``index.json`` is serialized by a lock file in the folder, so none fails.

mosaicml-streaming's leader downloads ``index.json`` through the fixed name ``index.json.tmp`` and renames it;
two leaders on one folder (ranks given by hand without ``LOCAL_RANK``, two runs sharing the default cache)
raced on that name. Every process here is a separate interpreter (``subprocess``, not a fork of pytest), and
every wait has a timeout.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from streaming.base.world import World

from pike_stream.mixer import domain as domain_module
from pike_stream.mixer.domain import Domain, DomainDataError, DomainSource
from tests.mds_data import write_domain
from tests.test_mixer_s3 import upload_folder

REPO = Path(__file__).resolve().parent.parent
PROCESSES = 3
ROUNDS = 4  # each round: every process opens the domain into a fresh, empty, shared folder at the same moment
ROUND_INTERVAL_S = 1.0
SLOW_RENAME_S = 0.2
WAIT_S = 120.0  # the longest any wait of the test lasts

# One process of the race: signals it is ready (imports done), waits for the start time, then for each round
# opens the domain into ``<cache>/round<r>`` at the same moment as the others; prints one JSON line per round.
# ``slow_rename_s`` widens the window the race needs (a leader descheduled between streaming's download of
# ``index.json.tmp`` and its rename) by pausing before that rename; the download and rename stay streaming's.
_OPENER = """
import hashlib, json, os, sys, time
from streaming.base.world import World
from pike_stream.mixer.domain import Domain, DomainSource
remote, cache, ready, go, rounds, interval, slow_rename_s, wait_s = sys.argv[1:9]
rename = os.rename
def slow_rename(src, dst):
    if str(src).endswith("index.json.tmp"):
        time.sleep(float(slow_rename_s))
    rename(src, dst)
os.rename = slow_rename
open(ready, "w").close()
deadline = time.monotonic() + float(wait_s)
while not os.path.exists(go):
    if time.monotonic() > deadline:
        sys.exit("no start time came")
    time.sleep(0.001)
start = float(open(go).read())
leader = World(num_nodes=1, ranks_per_node=1, workers_per_rank=1, worker=0)
for r in range(int(rounds)):
    folder = os.path.join(cache, f"round{r}")
    time.sleep(max(0.0, start + r * float(interval) - time.time()))
    try:
        source = DomainSource.open(Domain("en", remote=remote, local=folder), world=leader)
        index = hashlib.sha256(open(os.path.join(folder, "index.json"), "rb").read()).hexdigest()
        result = {"round": r, "samples": source.num_samples, "shards": len(source.shards), "index": index}
    except Exception as error:
        result = {"round": r, "error": f"{type(error).__name__}: {error}"}
    print(json.dumps(result), flush=True)
"""

# Holds the lock file given exclusively, then says so through a marker file, and sleeps.
_HOLDER = """
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o600)
fcntl.flock(fd, fcntl.LOCK_EX)
open(sys.argv[2], "w").close()
time.sleep(float(sys.argv[3]))
"""


def _spawn(script: str, *args: str) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    return subprocess.Popen([sys.executable, "-c", script, *args], cwd=REPO, env=env, close_fds=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for_files(paths: list[Path], procs: list[subprocess.Popen], what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not all(p.exists() for p in paths):
        dead = [proc for proc in procs if proc.poll() is not None]
        if dead:
            _, err = dead[0].communicate(timeout=WAIT_S)
            pytest.fail(f"a helper process exited (rc {dead[0].returncode}) before {what}:\n{err[-3000:]}")
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {WAIT_S:.0f}s waiting for {what}")
        time.sleep(0.05)


def _end(procs: list[subprocess.Popen]) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        try:
            proc.communicate(timeout=30)
        except (subprocess.TimeoutExpired, ValueError):
            pass


@pytest.fixture
def remote_en(s3_env, s3_bucket, tmp_path) -> tuple[str, Path]:
    """A domain ``en`` of several shards in the test's bucket: its ``s3://`` URL and its source folder."""
    source = tmp_path / "source" / "en"
    write_domain(str(source), "en", 120, samples_per_shard=10)
    upload_folder(s3_env.settings, s3_bucket, str(source), "corpus/en")
    return f"s3://{s3_bucket}/corpus/en", source


def race(remote: str, tmp_path: Path, processes: int, rounds: int, interval_s: float,
         slow_rename_s: float) -> list[dict]:
    """Run ``processes`` openers for ``rounds`` rounds on fresh folders under ``tmp_path/cache``; their results."""
    cache, sync = tmp_path / "cache", tmp_path / "sync"
    cache.mkdir()
    sync.mkdir()
    ready = [sync / f"ready{i}" for i in range(processes)]
    go = sync / "go"
    procs: list[subprocess.Popen] = []
    try:
        for i in range(processes):
            procs.append(_spawn(_OPENER, remote, str(cache), str(ready[i]), str(go), str(rounds), str(interval_s),
                                str(slow_rename_s), str(WAIT_S)))
        _wait_for_files(ready, procs, "every process to import pike_stream")
        (sync / "go.tmp").write_text(repr(time.time() + 0.5))
        os.replace(sync / "go.tmp", go)
        results = []
        for proc in procs:
            out, err = proc.communicate(timeout=WAIT_S + rounds * interval_s)
            assert proc.returncode == 0, err[-3000:]
            results += [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    finally:
        _end(procs)
    assert len(results) == processes * rounds, results
    return results


@pytest.mark.slow  # three interpreters importing torch, four rounds: about 30 s
def test_local_leaders_opening_one_cache_folder_at_once(remote_en, tmp_path):
    remote, source = remote_en
    index = json.loads((source / "index.json").read_bytes())
    expected = (120, len(index["shards"]), hashlib.sha256((source / "index.json").read_bytes()).hexdigest())
    results = race(remote, tmp_path, PROCESSES, ROUNDS, ROUND_INTERVAL_S, SLOW_RENAME_S)
    errors = [result for result in results if "error" in result]
    assert not errors, f"{len(errors)} of {len(results)} opens failed: {errors}"
    assert {(r["samples"], r["shards"], r["index"]) for r in results} == {expected}
    for r in range(ROUNDS):
        folder = tmp_path / "cache" / f"round{r}"
        assert not (folder / "index.json.tmp").exists()
        lock = folder / domain_module.INDEX_LOCK_BASENAME
        assert lock.stat().st_mode & 0o777 == 0o600


def test_index_lock_held_elsewhere_times_out_with_one_clear_line(remote_en, tmp_path):
    remote, _ = remote_en
    folder = tmp_path / "cache" / "en"
    folder.mkdir(parents=True)
    lock, held = folder / domain_module.INDEX_LOCK_BASENAME, tmp_path / "held"
    domain = Domain("en", remote=remote, local=str(folder), download_timeout=2.0, download_retry=1)
    leader = World(num_nodes=1, ranks_per_node=1, workers_per_rank=1, worker=0)
    holder = _spawn(_HOLDER, str(lock), str(held), str(WAIT_S))
    try:
        _wait_for_files([held], [holder], "the holder to take the lock")
        started = time.monotonic()
        with pytest.raises(DomainDataError) as raised:
            DomainSource.open(domain, world=leader)
        waited = time.monotonic() - started
    finally:
        _end([holder])
    message = str(raised.value)
    assert "\n" not in message
    assert "'en'" in message and str(lock) in message and "download_timeout" in message, message
    assert 2.0 <= waited < 30.0, waited
    assert not (folder / "index.json").exists()
    # The holder is gone, and with it its lock: the domain opens.
    assert DomainSource.open(domain, world=leader).num_samples == 120
