"""mosaicml-streaming's private attributes that pike_stream relies on (pike_stream/streaming_compat.py): the
installed version has each and it still does what is relied on; a version without one is one error naming
the attribute, not a silent change of behaviour."""

from __future__ import annotations

from pathlib import Path

import pytest
from streaming.base.format.mds.writer import MDSWriter
from streaming.base.stream import Stream

from converters.conversion import TokenWriter
from pike_stream.streaming_compat import (
    MDS_WRITER_INTERNALS,
    StreamingCompatError,
    download_stream_file,
    require_writer_internals,
    set_stream_downloader,
)

__all__: list[str] = []


def test_stream_download_file_fetches_a_file_beside_the_index(tmp_path: Path) -> None:
    remote = tmp_path / "remote" / "train"
    remote.mkdir(parents=True)
    (remote / "manifest.json").write_text('{"x": 1}')
    stream = Stream(remote=str(tmp_path / "remote"), local=str(tmp_path / "local"), split="train",
                    download_retry=1, download_timeout=10)
    stream.apply_default({"split": None, "download_retry": 1, "download_timeout": 10, "validate_hash": None,
                          "keep_zip": False})  # as pike_stream.mixer.domain opens a stream
    (tmp_path / "local" / "train").mkdir(parents=True)
    download_stream_file(stream, "manifest.json", ".manifest.tmp")
    assert (tmp_path / "local" / "train" / ".manifest.tmp").read_text() == '{"x": 1}'
    with pytest.raises(FileNotFoundError):
        download_stream_file(stream, "absent.json", ".absent.tmp")


def test_a_stream_without_the_private_download_is_named() -> None:
    with pytest.raises(StreamingCompatError, match=r"has no Stream\._download_file, which pike_stream relies on"):
        download_stream_file(object(), "manifest.json", "x")


def test_stream_downloads_with_the_downloader_set(tmp_path: Path) -> None:
    class Recording:
        def __init__(self) -> None:
            self.calls: list[tuple[str | None, str, float]] = []
            self.cleaned = 0

        def download(self, remote: str | None, local: str, timeout: float) -> None:
            self.calls.append((remote, local, timeout))
            if len(self.calls) == 1:
                raise OSError("first attempt fails")
            Path(local).write_text("fetched")

        def clean_up(self) -> None:
            self.cleaned += 1

    stream = Stream(remote="s3://bucket/data", local=str(tmp_path / "local"), split="train",
                    download_retry=2, download_timeout=7)
    (tmp_path / "local" / "train").mkdir(parents=True)
    downloader = Recording()
    set_stream_downloader(stream, downloader)
    download_stream_file(stream, "shard.00000.mds", "shard.00000.mds")
    local = str(tmp_path / "local" / "train" / "shard.00000.mds")
    assert downloader.calls == [("s3://bucket/data/train/shard.00000.mds", local, 7)] * 2
    assert downloader.cleaned == 1 and Path(local).read_text() == "fetched"


def test_a_stream_without_the_private_downloader_is_named() -> None:
    with pytest.raises(StreamingCompatError, match=r"has no Stream\._downloader, which pike_stream relies on"):
        set_stream_downloader(object(), None)


def test_mds_writer_has_what_the_token_writer_overrides_and_uses(tmp_path: Path) -> None:
    writer = MDSWriter(out=str(tmp_path / "out"), columns={"tokens": "ndarray:uint16:4"})
    require_writer_internals(writer)
    assert callable(writer._write_index) and callable(writer.exception_callback)
    assert hasattr(writer.executor, "shutdown") and hasattr(writer.event, "is_set")
    writer.finish()
    # TokenWriter overrides two of them: still methods streaming's writer calls by these names.
    for name in ("_write_index", "exception_callback"):
        assert getattr(TokenWriter, name) is not getattr(MDSWriter, name)
        assert name in MDS_WRITER_INTERNALS


def test_a_writer_without_an_internal_is_named() -> None:
    class Old:
        _write_index = executor = event = None

    with pytest.raises(StreamingCompatError, match=r"has no MDSWriter\.exception_callback"):
        require_writer_internals(Old())
