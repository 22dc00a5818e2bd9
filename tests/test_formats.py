"""Source formats: inferred from the input's names, checked against its content, read streaming.

Invariants: the same documents convert to the same shards (the same fingerprint) whatever they ship in
(plain, gzip or zstd JSON lines, Parquet, a saved dataset); leaving ``--format`` out reads what the names
announce and says so in one line; a format the content contradicts, a folder mixing formats or a corrupt
file is one error naming the file, with nothing written; every part of a split conversion of a compressed
or Parquet input holds each document once, in order.
"""

from __future__ import annotations

import gzip
import json
import tracemalloc
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard

from converters import ConversionError, convert, merge_parts
from converters.cli import main as convert_main
from converters.formats import file_label, resolve_layout
from converters.readers import iter_lines
from converters.sources import Part, open_source
from tests.test_converters import byte_stream, make_docs, quiet, read_samples, write_jsonl, write_text_dir

__all__: list[str] = []


def jsonl_bytes(docs: list[str], field: str = "text") -> bytes:
    return "".join(json.dumps({field: d, "id": i}, ensure_ascii=False) + "\n" for i, d in enumerate(docs)).encode()


def write_gz(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(data))
    return path


def write_zst(path: Path, data: bytes, frames: int = 1) -> Path:
    """``data`` as ``frames`` concatenated zstd frames (as ``pzstd`` writes), without content sizes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    step = -(-len(data) // frames)
    compressor = zstandard.ZstdCompressor(write_content_size=False)
    path.write_bytes(b"".join(compressor.compress(data[i:i + step]) for i in range(0, len(data), step)))
    return path


def write_parquet(path: Path, docs: list[str], field: str = "text", row_group_size: int = 7) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    table = pa.table({"id": list(range(len(docs))), field: docs})
    pq.write_table(table, path, row_group_size=row_group_size)
    return path


DOCS = make_docs(60, seed=21)


@pytest.fixture()
def sources(tmp_path: Path) -> dict[str, Path]:
    """The same 60 documents in every format the converter reads."""
    from datasets import Dataset

    data = jsonl_bytes(DOCS)
    folder = tmp_path / "src"
    hf = folder / "saved"
    Dataset.from_dict({"text": DOCS}).save_to_disk(str(hf))
    return {
        "jsonl": write_jsonl(folder / "a.jsonl", [{"text": d} for d in DOCS]),
        "json": write_jsonl(folder / "a.json", [{"text": d} for d in DOCS]),
        "jsonl.gz": write_gz(folder / "a.jsonl.gz", data),
        "jsonl.zst": write_zst(folder / "a.jsonl.zst", data, frames=3),
        "parquet": write_parquet(folder / "a.parquet", DOCS),
        "hf": hf,
    }


def test_every_format_converts_the_same_documents_to_the_same_shards(tmp_path: Path,
                                                                       sources: dict[str, Path]) -> None:
    fingerprints = {}
    for label, src in sources.items():
        manifest = convert(src, tmp_path / f"out-{label}", domain="d", seq_len=16, **quiet())
        assert manifest["documents"] == len(DOCS), label
        fingerprints[label] = manifest["fingerprint"]
    assert len(set(fingerprints.values())) == 1, fingerprints
    stream = byte_stream(DOCS)
    samples = read_samples(tmp_path / "out-jsonl.zst", tmp_path)
    assert (samples.reshape(-1) == stream[:samples.size]).all()


@pytest.mark.parametrize("label, said", [
    ("jsonl", "read as jsonl (1 file)"), ("jsonl.gz", "read as jsonl.gz (1 file)"),
    ("jsonl.zst", "read as jsonl.zst (1 file)"), ("parquet", "read as parquet (1 file)"),
    ("hf", "read as hf (a dataset saved with save_to_disk)"),
])
def test_the_cli_infers_the_format_and_says_so_in_one_line(tmp_path: Path, sources: dict[str, Path],
                                                          capsys: pytest.CaptureFixture[str], label: str,
                                                          said: str) -> None:
    out = tmp_path / "out"
    assert convert_main([str(sources[label]), str(out), "--domain", "d", "--seq-len", "16"]) == 0
    err = capsys.readouterr().err
    assert [line for line in err.splitlines() if "read as" in line] == [f"pike-stream convert: {sources[label]} {said}"]
    assert json.loads((out / "manifest.json").read_text())["documents"] == len(DOCS)


def test_a_folder_is_read_as_the_one_format_its_files_announce(tmp_path: Path) -> None:
    texts = write_text_dir(tmp_path / "texts", DOCS[:12])
    assert resolve_layout(texts, None, "text").fmt == "text"
    shards = tmp_path / "shards"
    data = jsonl_bytes(DOCS)
    write_zst(shards / "part-1.jsonl.zst", data[: len(data) // 2 // 100 * 100].rsplit(b"\n", 1)[0] + b"\n")
    write_zst(shards / "sub" / "part-2.jsonl.zst", jsonl_bytes(DOCS[:5]))
    layout = resolve_layout(shards, None, "text")
    assert (layout.fmt, layout.label, [p.name for p in layout.files]) == (
        "jsonl", "jsonl.zst", ["part-1.jsonl.zst", "part-2.jsonl.zst"])
    assert layout.describe() == "jsonl.zst (2 files)"


def test_a_folder_mixing_formats_is_an_error_naming_two_files(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "mixed" / "a.jsonl", [{"text": "one"}])
    write_parquet(tmp_path / "mixed" / "b.parquet", ["two"])
    with pytest.raises(ConversionError, match=r"mixes formats: .*a\.jsonl is jsonl, .*b\.parquet is parquet"):
        convert(tmp_path / "mixed", tmp_path / "out", domain="d", seq_len=8, **quiet())
    assert not (tmp_path / "out").exists()
    # --format picks its own files out of the folder
    assert convert(tmp_path / "mixed", tmp_path / "out", domain="d", seq_len=2, fmt="parquet",
                   **quiet())["documents"] == 1


@pytest.mark.parametrize("make, fmt, message", [
    (lambda p: write_jsonl(p / "rows.jsonl", [{"text": "x" * 50}]), "text",
     r"rows\.jsonl: --format text would read this jsonl file as one document, but its first line is a JSON "
     r"object with 'text'; pass --format jsonl"),
    (lambda p: write_gz(p / "rows.jsonl.gz", jsonl_bytes(["x" * 50])), "text",
     r"rows\.jsonl\.gz: --format text would read this jsonl\.gz file as one document"),
    (lambda p: write_parquet(p / "rows.parquet", ["x" * 50]), "text",
     r"rows\.parquet: --format text would read this Parquet file as one document; pass --format parquet"),
    (lambda p: (p / "notes.jsonl").write_text("plain prose, not JSON\n") and p / "notes.jsonl", None,
     r"notes\.jsonl: read as jsonl \(inferred from its name\), but its first line is not a JSON object"),
    (lambda p: (p / "notes.txt").write_text("plain prose\n") and p / "notes.txt", "jsonl",
     r"notes\.txt: --format jsonl, but its first line is not a JSON object"),
    (lambda p: (p / "fake.parquet").write_text("not parquet") and p / "fake.parquet", None,
     r"fake\.parquet: read as parquet \(inferred from its name\), but it is not a Parquet file"),
    (lambda p: write_parquet(p / "rows.parquet", ["x"], field="body"), None,
     r"rows\.parquet: no column 'text' \(columns: \['id', 'body'\]\); choose one with --text-field"),
])
def test_a_format_the_content_contradicts_is_one_error_naming_the_file(tmp_path: Path, make, fmt: str | None,
                                                                       message: str) -> None:
    src = make(tmp_path)
    with pytest.raises(ConversionError, match=message):
        convert(src, tmp_path / "out", domain="d", seq_len=8, fmt=fmt, **quiet())
    assert not (tmp_path / "out").exists()


def test_a_saved_dataset_refuses_another_format(sources: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(ConversionError, match=r"saved\s.*is a dataset saved with save_to_disk, not jsonl"):
        convert(sources["hf"], tmp_path / "out", domain="d", seq_len=8, fmt="jsonl", **quiet())


@pytest.mark.parametrize("label", ["jsonl.gz", "jsonl.zst"])
def test_a_corrupt_compressed_file_is_an_error_naming_it_and_nothing_is_left(tmp_path: Path,
                                                                             label: str) -> None:
    data = jsonl_bytes(make_docs(3000, seed=22))
    src = (write_gz if label == "jsonl.gz" else write_zst)(tmp_path / f"rows.{label}", data)
    raw = src.read_bytes()
    src.write_bytes(raw[: len(raw) * 2 // 3])  # truncated mid-stream, as an interrupted download leaves it
    with pytest.raises(ConversionError, match=rf"rows\.{label.replace('.', '[.]')}: cannot read it as"):
        convert(src, tmp_path / "out", domain="d", seq_len=8, **quiet())
    assert not (tmp_path / "out").exists() or not (tmp_path / "out" / "manifest.json").exists()


@pytest.mark.parametrize("label", ["jsonl.gz", "jsonl.zst", "parquet"])
def test_parts_of_a_compressed_or_parquet_input_hold_each_document_once_in_order(tmp_path: Path,
                                                                                label: str) -> None:
    docs = make_docs(200, seed=23)
    if label == "parquet":
        files = [write_parquet(tmp_path / "in" / f"{i}.parquet", docs[i * 100:(i + 1) * 100], row_group_size=13)
                 for i in range(2)]
    else:
        write = write_gz if label == "jsonl.gz" else write_zst
        files = [write(tmp_path / "in" / f"{i}.{label}", jsonl_bytes(docs[i * 100:(i + 1) * 100]))
                 for i in range(2)]
    assert len(files) == 2

    def texts(part: Part | None) -> list[str]:
        out = []
        for unit in open_source(tmp_path / "in", None, part=part):
            for payload in unit.payloads:
                out.append(payload if label == "parquet" else json.loads(payload)["text"])
        return out

    assert texts(None) == docs
    for count in (2, 3, 7):
        parts = [texts(Part(i, count)) for i in range(count)]
        assert sum(parts, []) == docs and all(parts), (count, [len(p) for p in parts])

    out = tmp_path / "out"
    for i in range(3):
        convert(tmp_path / "in", out, domain="p", seq_len=16, part=f"{i}/3", **quiet(size_limit=0.002))
    merged = merge_parts(out)
    whole = convert(tmp_path / "in", tmp_path / "whole", domain="p", seq_len=16, **quiet())
    assert merged["documents"] == whole["documents"] == len(docs)


def test_compressed_lines_are_read_streaming_not_all_in_memory(tmp_path: Path) -> None:
    data = jsonl_bytes(make_docs(60_000, seed=24, max_words=100))  # about 22 MB of words in many scripts
    src = write_zst(tmp_path / "big.jsonl.zst", data, frames=4)
    assert len(data) > 20 * 2**20
    tracemalloc.start()
    try:
        count = sum(1 for _ in iter_lines(src))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert count == data.count(b"\n")
    assert peak < 4 * 2**20, f"reading held {peak / 2**20:.1f} MB at once"


def test_file_labels_follow_the_suffix_case_insensitively() -> None:
    assert [file_label(Path(n)) for n in ("a.jsonl", "A.JSONL.GZ", "b.json.zst", "c.parquet", "d.txt", "e.gz")] \
        == ["jsonl", "jsonl.gz", "jsonl.zst", "parquet", "text", "text"]
