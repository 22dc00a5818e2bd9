"""Load: many domains, weights changing every step, two ranks — memory, descriptors, threads and state stay flat.

The numbers are the benchmark's (``bench/bench_load.py``, results in ``bench/results/load.json``) scaled
down to run in well under a minute: 64 domains of 3 small shards each, so every domain goes through about
twenty epochs and every shard is opened and reread many times.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.bench_load import run_load

__all__: list[str] = []

RSS_GROWTH_MB = 50  # after warm-up: caches are full, nothing may keep growing
STATE_BYTES = 16 * 1024  # a checkpoint's mixer state for 64 domains, whatever the step


@pytest.mark.slow
def test_64_domains_two_ranks_nothing_grows_after_warmup(tmp_path: Path) -> None:
    result = run_load(str(tmp_path), domains=64, samples=60, samples_per_shard=20, steps=600, batch=128,
                      warmup=100, every=50)
    s = result["summary"]
    assert s["samples_consumed"] == 600 * 128
    assert s["rss_growth_mb"] < RSS_GROWTH_MB and s["rss_range_mb"] < RSS_GROWTH_MB, s
    assert s["fds_range"][0] == s["fds_range"][1], f"open file descriptors changed after warm-up: {s['fds_range']}"
    # The read-ahead pools may start a thread late (they start them as work arrives), within their limit; no
    # other thread may start after warm-up. (The process's own thread count is not asserted: under
    # pytest-xdist it also counts threads that earlier tests in this worker left to finish.)
    assert 0 < s["readahead_threads_max"] <= s["readahead_threads_limit"], s
    assert s["threads_started_after_warmup"] == [], f"threads started after warm-up: {s}"
    assert s["state_bytes_max"] < STATE_BYTES, s
    sizes = {r["state_bytes"] for r in result["series"] if r["step"] >= 100}
    # Only the widths of the numbers change (counters gain digits, carries print with more or fewer):
    # a few bytes per domain, not a record per step or per sample.
    assert max(sizes) - min(sizes) < 3 * 64, f"the state grows with the step: {sorted(sizes)}"
