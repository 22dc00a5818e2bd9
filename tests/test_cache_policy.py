"""The shard read-ahead and the cache's eviction follow the weights (remote domains on the embedded S3).

A domain at weight 0 gets no read-ahead and its cached shards are the first evicted; a heavy domain gets more
read-ahead than ``read_ahead`` shards; a domain whose weight rises has its next shards fetched as soon as the
weights are set, before its next batch is taken.
"""

from __future__ import annotations

import os
import time

import numpy as np

from pike_stream import Domain, PiKEStreamingMixer
from tests.mds_data import write_domain
from tests.test_mixer import SIZES
from tests.test_mixer_s3 import upload_folder

READ_AHEAD = 2


def _mixer(s3_env, s3_bucket, tmp_path, **kwargs) -> PiKEStreamingMixer:
    for code, (name, n) in enumerate(SIZES.items()):
        folder = str(tmp_path / "source" / name)
        write_domain(folder, name, n, code=code, samples_per_shard=20)
        upload_folder(s3_env.settings, s3_bucket, folder, name)
    domains = [Domain(n, remote=f"s3://{s3_bucket}/{n}", local=str(tmp_path / "cache" / n)) for n in SIZES]
    return PiKEStreamingMixer(domains, global_batch_size=8, seed=1, read_ahead=READ_AHEAD, read_ahead_workers=2,
                              **kwargs)


def _shards_on_disk(tmp_path, name: str) -> int:
    folder = tmp_path / "cache" / name
    return sum(f.endswith(".mds") for f in os.listdir(folder)) if folder.exists() else 0


def _settle(mixer: PiKEStreamingMixer, timeout: float = 30) -> None:
    """Wait until the read-ahead has nothing in flight."""
    deadline = time.monotonic() + timeout
    while mixer.shards._pending:  # noqa: SLF001 - the test waits for background downloads to finish
        assert time.monotonic() < deadline, "the read-ahead did not finish"
        time.sleep(0.02)


def test_read_ahead_follows_the_weights(s3_env, s3_bucket, tmp_path):
    with _mixer(s3_env, s3_bucket, tmp_path, weights={"en": 1, "de": 0, "code": 0}) as mixer:
        for _ in range(3):
            mixer.next_batch()
        _settle(mixer)
        # en at weight 1 gets the whole read-ahead budget (read_ahead per domain, 3 domains): more than 2 ahead
        assert _shards_on_disk(tmp_path, "en") > READ_AHEAD + 1
        assert _shards_on_disk(tmp_path, "de") == _shards_on_disk(tmp_path, "code") == 0

        mixer.set_weights({"en": 0, "de": 1, "code": 0})  # de rises: fetched now, not when its batch is taken
        _settle(mixer)
        assert _shards_on_disk(tmp_path, "de") >= READ_AHEAD
        stalled = mixer.shards.stall_seconds
        mixer.next_batch()
        assert mixer.shards.stall_seconds == stalled, "de's first batch after the rise waited for a download"


def test_eviction_keeps_the_heavy_domains_and_drops_the_unused_first(s3_env, s3_bucket, tmp_path):
    with _mixer(s3_env, s3_bucket, tmp_path) as mixer:
        for _ in range(12):  # uniform: every domain's early shards are cached
            mixer.next_batch()
        _settle(mixer)
        assert _shards_on_disk(tmp_path, "code") > 0
        shard = max(os.path.getsize(tmp_path / "cache" / "en" / f) for f in os.listdir(tmp_path / "cache" / "en")
                    if f.endswith(".mds"))
        mixer.shards.cache_limit = 8 * shard  # tighter than what is cached now
        mixer.set_weights({"en": 0.8, "de": 0.2, "code": 0})
        for _ in range(20):
            mixer.next_batch()
        _settle(mixer)
        # code (weight 0: no use expected) went first; en, expected soonest, holds the most
        assert _shards_on_disk(tmp_path, "code") == 0
        assert _shards_on_disk(tmp_path, "en") > _shards_on_disk(tmp_path, "de") > 0


def test_a_node_downloads_only_shards_of_its_own_partitions(s3_env, s3_bucket, tmp_path):
    """With partitions, the read-ahead (and every read) of node 0 of 2 stays inside its block of partitions:
    no shard that holds none of its samples is ever downloaded, however the weights move."""
    with _mixer(s3_env, s3_bucket, tmp_path, partitions=4, rank=0, world_size=2, local_world_size=1) as mixer:
        mixes = [{"en": 1, "de": 1, "code": 1}, {"en": 0, "de": 0.2, "code": 0.8}, {"en": 0.9, "de": 0.1, "code": 0}]
        for step in range(60):  # beyond an epoch of de and code
            mixer.next_batch()
            if step % 10 == 9:
                mixer.set_weights(mixes[(step // 10) % len(mixes)])
        _settle(mixer)
        foreign_shards = 0
        for k, name in enumerate(SIZES):
            lo, hi = 0, int(mixer.part_orders[k].bounds[2])  # node 0 of 2 owns partitions 0 and 1
            starts = np.concatenate([[0], np.cumsum(mixer.sources[k].shard_sizes)])
            ranges = list(zip(starts[:-1].tolist(), starts[1:].tolist()))
            cached = sorted(int(f.split(".")[1]) for f in os.listdir(tmp_path / "cache" / name) if f.endswith(".mds"))
            assert cached, f"{name}: nothing cached"
            for shard in cached:
                first, end = ranges[shard]
                assert first < hi and end > lo, f"{name}: shard {shard} ({first}–{end}) holds no sample of [{lo}, {hi})"
            foreign_shards += sum(first >= hi for first, _ in ranges)
        assert foreign_shards > 0, "every shard holds some of node 0's samples: the test would prove nothing"
