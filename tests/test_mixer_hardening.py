"""The mixer's reads under real faults (embedded S3 server stopped, objects deleted, wrong keys, ranks sharing
a small cache), its shutdown, and malformed saved states."""

from __future__ import annotations

import copy
import json
import os
import shutil
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context

import numpy as np
import pytest

from pike_stream import Domain, MixerStateError, PiKEStreamingMixer
from pike_stream.mixer import ShardFetchError
from pike_stream.storage import EmbeddedS3, s3_client
from tests.mds_data import decode_ids, write_domain
from tests.test_mixer import SIZES, B, make_mixer, run
from tests.test_mixer_s3 import upload_folder


def _remote_mixer(bucket: str, cache, names=tuple(SIZES), prefix: str = "", **kwargs) -> PiKEStreamingMixer:
    kwargs.setdefault("global_batch_size", B)
    kwargs.setdefault("seed", 7)
    return PiKEStreamingMixer([Domain(n, remote=f"s3://{bucket}/{prefix}{n}", local=str(cache / n)) for n in names],
                              **kwargs)


def _upload_domains(server: EmbeddedS3, bucket: str, source, sizes=SIZES, samples_per_shard: int = 10) -> None:
    for code, (name, n) in enumerate(sizes.items()):
        write_domain(str(source / name), name, n, code=code, samples_per_shard=samples_per_shard)
        upload_folder(server.settings, bucket, str(source / name), name)


@pytest.fixture
def outage_server(fresh_s3_server, monkeypatch, tmp_path):
    """A server of the test's own holding the SIZES domains in bucket ``data``; restarted ones are stopped."""
    for name, value in fresh_s3_server.env().items():
        monkeypatch.setenv(name, value)
    fresh_s3_server.create_bucket("data")
    _upload_domains(fresh_s3_server, "data", tmp_path / "source")
    yield fresh_s3_server
    restarted = EmbeddedS3.attach(fresh_s3_server.data_dir, check_s3=False)
    if restarted is not None:
        restarted.stop(grace_s=0.0)


def _readahead_threads(besides: set[threading.Thread] = frozenset()) -> list[threading.Thread]:
    """Read-ahead threads alive now, less ``besides`` (those of mixers that earlier tests left unclosed)."""
    return [t for t in threading.enumerate() if t.name.startswith("pike-readahead") and t not in besides]


# ------------------------------------------------------------------------------------ what is retried
def test_wrong_secret_fails_at_once_naming_the_setting(s3_env, s3_bucket, tmp_path, monkeypatch):
    """A 403 (the key changed after the index was read) is not retried for retry_seconds: one clear line."""
    _upload_domains(s3_env, s3_bucket, tmp_path / "source")
    mixer = _remote_mixer(s3_bucket, tmp_path / "cache", retry_seconds=60, read_ahead=0, read_ahead_workers=0)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret-0123456789")
    started = time.monotonic()
    with pytest.raises(ShardFetchError) as caught:
        mixer.next_batch()
    assert time.monotonic() - started < 5, "a rejected key must not be retried"
    message = str(caught.value)
    assert "\n" not in message and "not-the-secret" not in message
    assert message.startswith("domain 'en': cannot fetch shard shard.") and "AWS_SECRET_ACCESS_KEY" in message
    assert not caught.value.transient and mixer.step == 0


def test_missing_shard_object_fails_at_once_naming_domain_and_shard(s3_env, s3_bucket, tmp_path):
    _upload_domains(s3_env, s3_bucket, tmp_path / "source")
    client = s3_client(s3_env.settings)
    shards = sorted(f for f in os.listdir(tmp_path / "source" / "de") if f.endswith(".zstd"))
    for shard in shards:
        client.delete_object(Bucket=s3_bucket, Key=f"de/{shard}")
    mixer = _remote_mixer(s3_bucket, tmp_path / "cache", retry_seconds=60)
    started = time.monotonic()
    with pytest.raises(ShardFetchError, match=rf"^domain 'de': cannot fetch shard shard\.\d+\.mds from "
                                              rf"s3://{s3_bucket}/de: object s3://{s3_bucket}/de/shard\.\d+\.mds\.zstd "
                                              rf"does not exist .*check the domain's remote") as caught:
        for _ in range(5):
            mixer.next_batch()
    assert time.monotonic() - started < 5 and not caught.value.transient
    mixer.close()


def test_which_s3_errors_are_transient():
    from botocore.exceptions import ClientError, EndpointConnectionError, NoCredentialsError, ReadTimeoutError

    from pike_stream.storage.client import is_transient_error

    def client_error(code: str, status: int) -> ClientError:
        return ClientError({"Error": {"Code": code, "Message": ""}, "ResponseMetadata": {"HTTPStatusCode": status}},
                           "GetObject")

    for transient in (client_error("SlowDown", 503), client_error("ServiceUnavailable", 503),
                      client_error("InternalError", 500), client_error("TooManyRequests", 429),
                      EndpointConnectionError(endpoint_url="http://127.0.0.1:1"),
                      ReadTimeoutError(endpoint_url="http://127.0.0.1:1"), ConnectionResetError()):
        assert is_transient_error(transient), transient
    for permanent in (client_error("AccessDenied", 403), client_error("SignatureDoesNotMatch", 403),
                      client_error("NoSuchKey", 404), client_error("404", 404), NoCredentialsError(),
                      FileNotFoundError("x"), TypeError("bug"), ValueError("bug")):
        assert not is_transient_error(permanent), permanent


# ------------------------------------------------------------------------------------ close()
def test_close_stops_read_ahead_threads_while_they_retry(outage_server, tmp_path, caplog):
    others = set(_readahead_threads())
    mixer = _remote_mixer("data", tmp_path / "cache", read_ahead=3, read_ahead_workers=4, retry_seconds=120)
    mixer.next_batch()
    outage_server.stop(grace_s=0.0)
    failures: list[BaseException] = []

    def train() -> None:
        try:
            for _ in range(10_000):
                mixer.next_batch()
        except BaseException as error:  # noqa: BLE001 - the test checks which
            failures.append(error)

    reader = threading.Thread(target=train, daemon=True)
    reader.start()
    deadline = time.monotonic() + 30
    while not any(r.threadName.startswith("pike-readahead") and "retrying" in r.getMessage()
                  for r in caplog.records):
        assert time.monotonic() < deadline, "no read-ahead thread retried a download"
        time.sleep(0.05)
    assert _readahead_threads(others)
    started = time.monotonic()
    mixer.close()
    assert time.monotonic() - started < 2.5, "close() must not wait out the retries"
    reader.join(timeout=2.5)
    assert not reader.is_alive(), "a read waiting for a shard must end when the mixer is closed"
    assert not _readahead_threads(others)
    assert len(failures) == 1 and isinstance(failures[0], RuntimeError) and "closed" in str(failures[0])
    with pytest.raises(RuntimeError, match="closed"):
        mixer.next_batch()
    mixer.close()  # idempotent


def test_mixer_is_a_context_manager(tmp_path):
    others = set(_readahead_threads())
    write_domain(str(tmp_path / "en"), "en", 60, samples_per_shard=10)
    with PiKEStreamingMixer([Domain("en", local=str(tmp_path / "en"))], global_batch_size=B,
                            read_ahead=2, read_ahead_workers=2) as mixer:
        mixer.next_batch()
        assert _readahead_threads(others)
    assert not _readahead_threads(others)


# ------------------------------------------------------------------------------------ a failed step
def test_a_step_whose_read_failed_is_retried_exactly(outage_server, tmp_path):
    """Storage down past retry_seconds: the step fails without moving the cursors; after a restart, taking it
    again gives the batch of the uninterrupted run, and so do the following steps."""
    reference = run(make_mixer(str(tmp_path / "source")), 0, 30)  # the files uploaded, read locally
    mixer = _remote_mixer("data", tmp_path / "cache", read_ahead=0, read_ahead_workers=0, retry_seconds=1)
    got = run(mixer, 0, 3)
    outage_server.stop(grace_s=0.0)
    step, failed = 3, None
    while failed is None:
        assert step < 30, "the run never needed a shard it did not have"
        try:
            got += run(mixer, step, step + 1)
            step += 1
        except ShardFetchError as error:
            failed = error
    assert failed.transient and "retry_seconds" in str(failed) and "S3_ENDPOINT_URL" in str(failed)
    assert mixer.step == step, "a failed step must not move the cursors"
    EmbeddedS3(outage_server.data_dir, read_only_identity=True).start()
    got += run(mixer, step, 30)
    assert got == reference


# ------------------------------------------------------------------------------------ malformed states
def _break(state: dict, path: str, value=...) -> dict:
    broken = copy.deepcopy(state)
    *parents, last = path.split(".")
    node = broken
    for part in parents:
        node = node[part]
    if value is ...:
        del node[last]
    else:
        node[last] = value
    return broken


@pytest.mark.parametrize("path, value, message", [
    ("global_batch_size", ..., "field global_batch_size is missing"),
    ("seed", "7", "field seed must be int"),
    ("shuffle", ..., "field shuffle is missing"),
    ("domains", ..., "field domains is missing"),
    ("domain_order", ..., "field domain_order is missing"),
    ("step", ..., "field step is missing"),
    ("step", -1, "step is -1"),
    ("domains.de", ..., r"domains \['code', 'en'\] differ"),
    ("domains.de", [1, 2], "field domains.de must be dict"),
    ("domains.de.consumed", ..., "field domains.de.consumed is missing"),
    ("domains.de.consumed", "12", "field domains.de.consumed must be int"),
    ("domains.en.carry", None, "field domains.en.carry must be float"),
    ("domains.code.weight", ..., "field domains.code.weight is missing"),
    ("domains.code.weight", float("nan"), "domains.code.weight is nan"),
    ("domains.en.probed", ..., "field domains.en.probed is missing"),
    ("domains.en.fingerprint", ..., "field domains.en.fingerprint is missing"),
])
def test_malformed_state_names_the_field(data_root_shared, path, value, message):
    mixer = make_mixer(data_root_shared)
    run(mixer, 0, 3)
    state = json.loads(json.dumps(mixer.state_dict()))
    with pytest.raises(MixerStateError, match=message):
        make_mixer(data_root_shared).load_state_dict(_break(state, path, value))


@pytest.fixture(scope="module")
def data_root_shared(tmp_path_factory) -> str:
    root = tmp_path_factory.mktemp("domains")
    for code, (name, n) in enumerate(SIZES.items()):
        write_domain(str(root / name), name, n, code=code)
    return str(root)


# ------------------------------------------------------------------------------------ a shared, limited cache
CACHE_SIZES = {"en": 1500, "de": 1000, "code": 500}  # 60 shards of 50 samples
CACHE_STEPS = 300


def _weights(step: int) -> np.ndarray:
    """Weights set after batch ``step``: new ones every 7 steps, sometimes one-hot."""
    rng = np.random.default_rng(step // 7)
    return np.eye(3)[rng.integers(3)] + 0.05 if step // 7 % 4 == 3 else rng.dirichlet(np.ones(3))


def _shard_bytes(folders: list[str]) -> int:
    total = 0
    for folder in folders:
        for entry in os.scandir(folder):
            if entry.name.endswith((".mds", ".mds.zstd")):
                try:
                    total += entry.stat().st_size
                except FileNotFoundError:
                    pass
    return total


def _rank_run(bucket: str, cache: str, rank: int, cache_limit: int | None, read_ahead: int) -> dict:
    """One rank of a 2-rank run on a shared cache folder (in its own process)."""
    folders = [os.path.join(cache, n) for n in CACHE_SIZES]
    domains = [Domain(n, remote=f"s3://{bucket}/{n}", local=f) for n, f in zip(CACHE_SIZES, folders)]
    with PiKEStreamingMixer(domains, B, seed=3, rank=rank, world_size=2, read_ahead=read_ahead,
                            read_ahead_workers=2 if read_ahead else 0, cache_limit=cache_limit) as mixer:
        peak = _shard_bytes(folders)
        batches = []
        for step in range(CACHE_STEPS):
            batch = mixer.next_batch()
            code, sample = decode_ids(batch["input_ids"].numpy())
            assert code.tolist() == batch["domain"].tolist() and sample.tolist() == batch["sample_id"].tolist()
            batches.append((batch["domain"].tolist(), batch["sample_id"].tolist()))
            peak = max(peak, _shard_bytes(folders))
            mixer.set_weights(_weights(step))
    return {"batches": batches, "peak": peak, "end": _shard_bytes(folders)}


def test_ranks_sharing_a_small_cache(s3_env, s3_bucket, tmp_path):
    """Two processes (ranks 0 and 1, read-ahead 1 and 0) on one cache folder with a limit of a fifth of the
    data, which already holds every shard: no read fails, the disk stays within the limit plus the shards in
    use, and the batches are those of a run without a limit."""
    source = tmp_path / "source"
    _upload_domains(s3_env, s3_bucket, source, CACHE_SIZES, samples_per_shard=50)
    cache = tmp_path / "cache"
    for name in CACHE_SIZES:  # a previous run left every shard in the cache
        os.makedirs(cache / name)
        for f in os.listdir(source / name):
            if f.endswith(".zstd") or f == "index.json":  # with its index, so no rank downloads it again
                shutil.copy(source / name / f, cache / name / f)
    index = [json.load(open(source / n / "index.json"))["shards"] for n in CACHE_SIZES]
    shard_max = max(s["raw_data"]["bytes"] + s["zip_data"]["bytes"] for shards in index for s in shards)
    total = sum(s["raw_data"]["bytes"] for shards in index for s in shards)
    limit = total // 5
    # In use at a time, per rank: its read-ahead window (1 shard per domain), the shards of the batch it
    # reads and one being fetched; a shard is briefly on disk twice (compressed and not) while decompressed.
    slack = ((3 + B // 2 + 1) + (0 + B // 2 + 1)) * shard_max

    with ProcessPoolExecutor(2, mp_context=get_context("fork")) as pool:  # fork: no second import of torch
        futures = [pool.submit(_rank_run, s3_bucket, str(cache), rank, limit, read_ahead)
                   for rank, read_ahead in ((0, 1), (1, 0))]
        results = [f.result(timeout=240) for f in futures]

    reference = PiKEStreamingMixer([Domain(n, local=str(source / n)) for n in CACHE_SIZES], B, seed=3,
                                   read_ahead=0, read_ahead_workers=0)
    for step in range(CACHE_STEPS):
        domain, sample = reference.compose()
        for rank, result in enumerate(results):
            assert result["batches"][step] == (domain[rank::2].tolist(), sample[rank::2].tolist()), (rank, step)
        reference.set_weights(_weights(step))
    for result in results:
        assert result["peak"] <= limit + slack, (result["peak"], limit, slack, total)
        assert result["end"] <= limit + slack
