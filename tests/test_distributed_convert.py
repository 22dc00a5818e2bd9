"""Conversion on a Ray cluster (``converters.distributed.convert_on_ray``, ``pike-stream convert --ray-parts N``).

A real local Ray cluster (2 CPUs, no dashboard, a 100 MB object store) is started once for the module, before
the tests' S3 settings are in the environment, so its workers can reach the embedded S3 server only with the
settings ``convert_on_ray`` hands them. Checked: the N parts converted as Ray tasks and merged are byte for
byte the N parts converted one after another in this process and merged (every shard, index and manifest);
a failed part is one line naming the part and its error, and nothing is merged; the command line's options;
and no Ray process (gcs_server, raylet, ``ray::`` workers, Ray's Python helpers) outlives ``ray.shutdown()``,
whether the test or ``convert_on_ray`` itself started the cluster.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import pytest
import ray

from converters import ConversionError, convert, merge_parts
from converters.cli import main as convert_main
from converters.distributed import convert_on_ray
from pike_stream.storage import EmbeddedS3, s3_client

__all__: list[str] = []

WORDS = ["alpha", "βeta", "гамма", "δέλτα", "日本語", "naïve", "x", "façade", "🙂", "end."]
SESSION_MARK = "PIKE_STREAM_TEST_SESSION"  # set by conftest's no_leftover_processes, inherited by Ray's processes
OPTIONS: dict[str, Any] = {"domain": "web", "seq_len": 64, "fmt": "jsonl", "size_limit": 0.02}


def write_corpus(folder: Path, docs: int, seed: int = 0) -> Path:
    """Two JSONL files of ``docs`` multilingual documents in all (about 250 bytes each)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for name, count in (("a.jsonl", docs // 2), ("b.jsonl", docs - docs // 2)):
        with open(folder / name, "w", encoding="utf-8") as f:
            for _ in range(count):
                text = " ".join(rng.choice(WORDS, size=int(rng.integers(5, 70))))
                f.write(json.dumps({"text": text}, ensure_ascii=False) + "\n")
    return folder


def ray_processes(before: set[int]) -> list[str]:
    """This session's live Ray processes that were not running in ``before``: gcs_server, raylet, the ``ray::``
    workers and agents, and Ray's Python helpers (monitor, log monitor, dashboard). They all inherit the
    session's mark from the process that started the cluster."""
    mark = os.environ.get(SESSION_MARK)
    found = []
    for proc in psutil.process_iter(["name", "cmdline", "status"]):
        if proc.pid in before or proc.info["status"] == psutil.STATUS_ZOMBIE:
            continue
        name, args = proc.info["name"] or "", proc.info["cmdline"] or []
        if not (name in ("raylet", "gcs_server") or name.startswith("ray::")
                or any(arg.startswith("ray::") or "/site-packages/ray/" in arg for arg in args[:3])):
            continue
        try:
            if mark is not None and proc.environ().get(SESSION_MARK) != mark:
                continue
        except psutil.Error:
            continue
        found.append(f"pid {proc.pid} {name}: {' '.join(args)[:200]}")
    return found


def assert_no_ray_processes(before: set[int], grace_s: float = 10.0) -> None:
    deadline = time.monotonic() + grace_s  # ray.shutdown() has signalled them; give them a moment to go
    left = ray_processes(before)
    while left and time.monotonic() < deadline:
        time.sleep(0.2)
        left = ray_processes(before)
    assert not left, "Ray processes outlived ray.shutdown():\n" + "\n".join(left)


@ray.remote
def environment_variable(name: str) -> str | None:
    return os.environ.get(name)


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[set[int]]:
    """A local 2-CPU Ray cluster for the module; yields the pids that ran before it. Started before any
    test's S3 settings are set (module fixtures come before function ones)."""
    before = {proc.pid for proc in psutil.process_iter()}
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=100 * 2**20, configure_logging=False)
    try:
        if "AWS_ACCESS_KEY_ID" not in os.environ:  # then only convert_on_ray can hand the workers the key
            assert ray.get(environment_variable.remote("AWS_ACCESS_KEY_ID")) is None
        yield before
    finally:
        if ray.is_initialized():
            ray.shutdown()
    assert_no_ray_processes(before)


def download(client: Any, bucket: str, prefix: str) -> dict[str, bytes]:
    """Every object under ``prefix/``, by its name relative to it."""
    files = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=f"{prefix}/"):
        for obj in page.get("Contents", []):
            files[obj["Key"][len(prefix) + 1:]] = client.get_object(Bucket=bucket, Key=obj["Key"])["Body"].read()
    return files


def index_hashes(index: dict[str, Any]) -> list[tuple[str, dict[str, str]]]:
    """(shard file, its hashes) for every entry of an ``index.json``, in order."""
    return [(shard["zip_data"]["basename"], shard["zip_data"]["hashes"]) for shard in index["shards"]]


@pytest.mark.slow
def test_parts_on_ray_are_the_parts_converted_here(tmp_path: Path, ray_cluster: set[int], s3_env: EmbeddedS3,
                                                   s3_bucket: str) -> None:
    src = write_corpus(tmp_path / "corpus", docs=1200, seed=1)
    assert sum(f.stat().st_size for f in src.iterdir()) > 200_000
    on_ray = convert_on_ray(src, f"s3://{s3_bucket}/ray", parts=3, progress=False, **OPTIONS)
    assert ray.is_initialized()  # the cluster convert_on_ray found is left as it was

    parts_here = [convert(src, f"s3://{s3_bucket}/here", part=f"{i}/3", progress=False, **OPTIONS) for i in range(3)]
    here = merge_parts(f"s3://{s3_bucket}/here", progress=False)
    assert on_ray["fingerprint"] == here["fingerprint"]
    assert on_ray == here
    assert on_ray["parts"] == 3 and on_ray["documents"] == 1200
    assert all(part["documents"] > 0 for part in parts_here)

    client = s3_client(s3_env.settings)
    ray_files, here_files = download(client, s3_bucket, "ray"), download(client, s3_bucket, "here")
    shards = [name for name in ray_files if name.endswith(".mds.zstd")]
    assert len(shards) == len(on_ray["shards"]) >= 6  # several shards in each part
    assert sorted(ray_files) == sorted(here_files)
    assert sorted(ray_files) == sorted([*on_ray["shards"], "index.json", "manifest.json",
                                        *(f"part-{i:05d}/{name}" for i in range(3)
                                          for name in ("index.json", "manifest.json"))])
    for name in sorted(ray_files):
        assert ray_files[name] == here_files[name], f"{name} differs"

    for folder in ["", *(f"part-{i:05d}/" for i in range(3))]:
        ray_index = json.loads(ray_files[f"{folder}index.json"])
        here_index = json.loads(here_files[f"{folder}index.json"])
        assert index_hashes(ray_index) == index_hashes(here_index)
        for shard, hashes in index_hashes(ray_index):
            assert hashlib.sha1(ray_files[folder + shard]).hexdigest() == hashes["sha1"], shard


@pytest.mark.slow
def test_a_failed_part_is_one_line_naming_it(tmp_path: Path, ray_cluster: set[int]) -> None:
    src = write_corpus(tmp_path / "corpus", docs=120, seed=2)
    out = tmp_path / "out"
    (out / "part-00001").mkdir(parents=True)
    (out / "part-00001" / "keep.txt").write_text("not ours")
    with pytest.raises(ConversionError) as failed:
        convert_on_ray(src, out, parts=3, progress=False, domain="d", seq_len=16)
    assert re.fullmatch(r"part 1/3 of the Ray conversion failed: output \S*/out/part-00001 is not empty; "
                        r"pass --overwrite to replace it", str(failed.value))
    assert not (out / "manifest.json").exists()
    assert (out / "part-00001" / "keep.txt").read_text() == "not ours"

    # Errors every part meets: the first part to fail cancels the other, which may fail too before it ends.
    either = r"part [01]/2 of the Ray conversion failed: {}( \(part 1/2 failed too\))?"
    with pytest.raises(ConversionError) as missing:
        convert_on_ray(tmp_path / "nowhere", tmp_path / "out2", parts=2, progress=False, domain="d", seq_len=16)
    assert re.fullmatch(either.format(r"input \S*/nowhere does not exist"), str(missing.value))
    with pytest.raises(ConversionError) as bad_option:
        convert_on_ray(src, tmp_path / "out3", parts=2, progress=False, domain="d", seq_len=0)
    assert re.fullmatch(either.format("--seq-len 0: need at least 1"), str(bad_option.value))
    with pytest.raises(ConversionError) as not_an_option:  # not the converter's error: its type is named
        convert_on_ray(src, tmp_path / "out4", parts=2, progress=False, domain="d", seq_len=16, colour="red")
    assert re.fullmatch(either.format(r"TypeError: \S*convert\(\) got an unexpected keyword argument 'colour'"),
                        str(not_an_option.value))

    with pytest.raises(ConversionError, match=r"^convert_on_ray sets part itself"):
        convert_on_ray(src, out, parts=2, part="0/2", domain="d", seq_len=16)
    with pytest.raises(ConversionError, match=r"^--ray-parts 0: need a whole number of parts, at least 1$"):
        convert_on_ray(src, out, parts=0, domain="d", seq_len=16)
    assert ray.is_initialized()


def test_cli_options(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = write_corpus(tmp_path / "corpus", docs=20, seed=3)
    base = [str(src), str(tmp_path / "out"), "--domain", "c", "--seq-len", "16"]
    assert convert_main([*base, "--part", "0/2", "--ray-parts", "2"]) == 1
    assert capsys.readouterr().err == ("pike-stream convert: error: --ray-parts N converts all N parts itself: "
                                       "not with --part i/N\n")
    assert convert_main([*base, "--ray-address", "auto"]) == 1
    assert capsys.readouterr().err == "pike-stream convert: error: --ray-address needs --ray-parts N\n"
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_shutdown_leaves_no_ray_process_and_cli_runs_its_own_cluster(tmp_path: Path, ray_cluster: set[int],
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    ray.shutdown()  # the module's cluster, started by the fixture
    assert_no_ray_processes(ray_cluster)

    src = write_corpus(tmp_path / "corpus", docs=100, seed=4)
    out = tmp_path / "out"
    assert convert_main([str(src), str(out), "--domain", "c", "--seq-len", "32", "--ray-parts", "2"]) == 0
    assert not ray.is_initialized()  # the cluster convert_on_ray started, it ended
    assert_no_ray_processes(ray_cluster)
    err = capsys.readouterr().err
    assert "part 0/2 done: " in err and "part 1/2 done: " in err and "merged 2 part(s) of domain c" in err
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["parts"] == 2 and manifest["documents"] == 100
    again = [convert(src, tmp_path / "here", part=f"{i}/2", domain="c", seq_len=32, progress=False) for i in range(2)]
    assert again and merge_parts(tmp_path / "here", progress=False) == manifest
