"""Faults injected for real: a storage server killed mid-run, corrupt bytes on disk."""

from __future__ import annotations

import os
import threading
import time

import pytest

from pike_stream import Domain, PiKEStreamingMixer
from pike_stream.mixer import ShardIntegrityError
from pike_stream.storage import EmbeddedS3
from tests.mds_data import write_domain
from tests.test_mixer import SIZES, B, run
from tests.test_mixer_s3 import upload_folder


@pytest.mark.parametrize("read_ahead", [0, 2], ids=["no-read-ahead", "read-ahead-threads"])
def test_storage_outage_mid_run_loses_nothing(fresh_s3_server, monkeypatch, tmp_path, caplog, read_ahead):
    """Kill the S3 server while the mixer still has shards to fetch, restart it 4 s later: the mixer waits
    (retrying with backoff, warning with the domain and shard) and its batches equal an uninterrupted run's,
    also while read-ahead threads are fetching the next steps' shards."""
    server = fresh_s3_server
    for name, value in server.env().items():
        monkeypatch.setenv(name, value)
    server.create_bucket("outage")
    source = tmp_path / "source"
    for code, (name, n) in enumerate(SIZES.items()):
        write_domain(str(source / name), name, n, code=code, samples_per_shard=10)
        upload_folder(server.settings, "outage", str(source / name), name)
    local = PiKEStreamingMixer([Domain(n, local=str(source / n)) for n in SIZES], global_batch_size=B, seed=7)
    remote = PiKEStreamingMixer([Domain(n, remote=f"s3://outage/{n}", local=str(tmp_path / "cache" / n))
                                 for n in SIZES], global_batch_size=B, seed=7, read_ahead=read_ahead,
                                read_ahead_workers=read_ahead)
    head = run(remote, 0, 3)
    server.stop(grace_s=0.0)  # SIGKILL: the shards not fetched yet are unreachable now
    restarted = threading.Event()

    def restart() -> None:
        time.sleep(4)
        EmbeddedS3(server.data_dir, read_only_identity=True).start()
        restarted.set()

    threading.Thread(target=restart, daemon=True).start()
    started = time.monotonic()
    tail = run(remote, 3, 40)
    assert restarted.is_set() and time.monotonic() - started > 3, "the run must have waited for the server"
    assert head + tail == run(local, 0, 40)
    assert any("cannot fetch shard" in r.getMessage() and "retrying" in r.getMessage() for r in caplog.records)
    remote.close()
    EmbeddedS3.attach(server.data_dir).stop(grace_s=0.0)


def test_corrupt_local_shard_is_reported(tmp_path):
    """A local domain whose compressed shard changed after conversion: the hash check names domain and shard."""
    write_domain(str(tmp_path / "en"), "en", 60, samples_per_shard=20)
    shard = sorted(f for f in os.listdir(tmp_path / "en") if f.endswith(".zstd"))[1]
    path = tmp_path / "en" / shard
    data = bytearray(path.read_bytes())
    data[-5] ^= 0x01
    path.write_bytes(bytes(data))
    mixer = PiKEStreamingMixer([Domain("en", local=str(tmp_path / "en"))], global_batch_size=B, seed=0,
                               read_ahead=0, read_ahead_workers=0)
    with pytest.raises(ShardIntegrityError, match=rf"domain 'en': shard {shard} is corrupt: xxh64 expected"):
        for _ in range(20):
            mixer.next_batch()
    assert path.exists(), "a local domain's own files are never deleted"


def test_truncated_index_and_missing_shard(tmp_path):
    """A truncated index.json fails at construction; a deleted shard fails when needed; both name domain and file."""
    from pike_stream import DomainDataError
    from pike_stream.mixer import ShardFetchError

    write_domain(str(tmp_path / "en"), "en", 60, samples_per_shard=20)
    index = tmp_path / "en" / "index.json"
    text = index.read_text()
    index.write_text(text[: len(text) // 2])
    with pytest.raises(DomainDataError, match="domain 'en': unreadable index.json"):
        PiKEStreamingMixer([Domain("en", local=str(tmp_path / "en"))], global_batch_size=B)

    index.write_text(text)
    shard = sorted(f for f in os.listdir(tmp_path / "en") if f.endswith(".zstd"))[2]
    os.remove(tmp_path / "en" / shard)
    mixer = PiKEStreamingMixer([Domain("en", local=str(tmp_path / "en"))], global_batch_size=B,
                               read_ahead=0, read_ahead_workers=0)
    with pytest.raises(ShardFetchError, match=rf"domain 'en': cannot fetch shard {shard[:-5]}"):
        for _ in range(20):
            mixer.next_batch()
