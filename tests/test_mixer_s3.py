"""The mixer reading from the embedded S3 server (real SeaweedFS), cold cache, and corrupt remote shards."""

from __future__ import annotations

import os

import pytest

from pike_stream import Domain, PiKEStreamingMixer
from pike_stream.mixer import ShardIntegrityError
from pike_stream.storage import s3_client
from tests.mds_data import write_domain
from tests.test_mixer import SIZES, B, run


def upload_folder(settings, bucket: str, folder: str, prefix: str) -> None:
    client = s3_client(settings)
    for name in sorted(os.listdir(folder)):
        client.upload_file(os.path.join(folder, name), bucket, f"{prefix}/{name}")


@pytest.fixture
def remote_domains(s3_env, s3_bucket, tmp_path):
    local_root = tmp_path / "source"
    for code, (name, n) in enumerate(SIZES.items()):
        write_domain(str(local_root / name), name, n, code=code)
        upload_folder(s3_env.settings, s3_bucket, str(local_root / name), f"corpus/{name}")
    return s3_bucket, str(local_root)


def test_cold_cache_from_s3_matches_local(remote_domains, tmp_path):
    bucket, local_root = remote_domains
    cache = tmp_path / "cache"
    remote = PiKEStreamingMixer([Domain(n, remote=f"s3://{bucket}/corpus/{n}", local=str(cache / n)) for n in SIZES],
                                global_batch_size=B, seed=7)
    assert not any(f.endswith(".mds") for n in SIZES for f in os.listdir(cache / n))  # nothing read yet
    local = PiKEStreamingMixer([Domain(n, local=os.path.join(local_root, n)) for n in SIZES],
                               global_batch_size=B, seed=7)
    assert run(remote, 0, 30) == run(local, 0, 30)
    fetched = [f for f in os.listdir(cache / "en") if f.endswith(".mds")]
    assert fetched, "shards were downloaded into the local cache"


def test_corrupt_remote_shard_is_reported(remote_domains, s3_env, tmp_path):
    bucket, local_root = remote_domains
    shard = sorted(f for f in os.listdir(os.path.join(local_root, "de")) if f.endswith(".zstd"))[0]
    data = bytearray(open(os.path.join(local_root, "de", shard), "rb").read())
    data[len(data) // 2] ^= 0xFF  # flip one byte in the bucket's copy
    s3_client(s3_env.settings).put_object(Bucket=bucket, Key=f"corpus/de/{shard}", Body=bytes(data))
    mixer = PiKEStreamingMixer([Domain("de", remote=f"s3://{bucket}/corpus/de", local=str(tmp_path / "de"))],
                               global_batch_size=B, seed=7, read_ahead=0, read_ahead_workers=0)
    corrupt = rf"domain 'de': shard {shard} is corrupt: xxh64 expected \w+, got \w+"
    with pytest.raises(ShardIntegrityError, match=corrupt):
        for _ in range(200):
            mixer.next_batch()
