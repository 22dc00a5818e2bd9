"""Converters: corpus → packed MDS shards + manifest, read back through mosaicml-streaming.

Invariants: the shards decode to the input documents in order, EOS-separated, less only the dropped
tail; the output and its fingerprint are a function of input and options (not of worker count, storage
location or tokenizer folder); nothing half-written looks complete; every part of a split conversion
holds each document once and the merged parts read as one domain; bad input is skipped and counted, or
refused with a message naming the file and line.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from streaming import MDSWriter, StreamingDataset

import converters.sources
from converters import ConversionError, SkippedDocumentsWarning, convert, merge_parts
from converters.cli import main as convert_main
from converters.conversion import TokenWriter
from converters.corpus import build_corpus, convert_corpus
from converters.manifest import MANIFEST_FORMAT, fingerprint, index_shards
from converters.merge import main as merge_main
from converters.packing import Packer
from converters.sources import Part, open_source
from converters.tokenizers import ByteTokenizer
from converters.troff import troff_to_text

__all__: list[str] = []

REPO = Path(__file__).resolve().parents[1]
EOS = ByteTokenizer.eos_id
WORDS = ["alpha", "βeta", "гамма", "δέλτα", "日本語", "naïve", "x", "façade", "🙂", "end."]


def make_docs(n: int, seed: int = 0, max_words: int = 60) -> list[str]:
    """``n`` documents of multilingual words (multi-byte characters, so sequences cut inside them)."""
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, size=int(rng.integers(1, max_words)))) for _ in range(n)]


def write_text_dir(folder: Path, docs: list[str]) -> Path:
    """One file per document, in a nested layout whose sorted order is the documents' order."""
    for i, doc in enumerate(docs):
        path = folder / f"g{i // 10:02d}" / f"doc{i:04d}.txt"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(doc, encoding="utf-8")
    return folder


def write_jsonl(path: Path, rows: list[object]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write((row if isinstance(row, str) else json.dumps(row, ensure_ascii=False)) + "\n")
    return path


def byte_stream(docs: list[str]) -> np.ndarray:
    """What the byte tokenizer makes of ``docs``: their UTF-8 bytes, each followed by EOS."""
    return np.concatenate([np.append(np.frombuffer(d.encode(), np.uint8).astype(np.int64), EOS) for d in docs])


def read_samples(remote: str | Path, tmp_path: Path) -> np.ndarray:
    """All samples of a domain, in order, through streaming's reader (local folder or s3://)."""
    local = tempfile.mkdtemp(dir=tmp_path, prefix="cache-")
    ds = StreamingDataset(remote=str(remote), local=local, shuffle=False, batch_size=1)
    return np.stack([ds[i]["tokens"] for i in range(len(ds))])


def domain_files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def quiet(**kwargs: object) -> dict[str, object]:
    return {"progress": False, **kwargs}


# -- pure pieces ---------------------------------------------------------------------------------

_text = st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=40)


@settings(max_examples=200, deadline=None)
@given(docs=st.lists(_text, max_size=12), seq_len=st.integers(1, 37))
def test_packing_keeps_every_token_in_order(docs: list[str], seq_len: int) -> None:
    ids = ByteTokenizer().encode_documents(docs)
    packer = Packer(seq_len, "uint16")
    blocks = [packer.pack(chunk) for chunk in np.array_split(ids, 3)]
    assert all(b.shape[1:] == (seq_len,) and b.flags.c_contiguous for b in blocks)
    rows = [row for block in blocks for row in block]
    packed = np.concatenate(rows) if rows else np.zeros(0, np.uint16)
    assert len(rows) == len(ids) // seq_len and packer.pending == len(ids) % seq_len
    assert np.array_equal(packed, ids[:len(packed)])
    assert ByteTokenizer.decode(ids) == docs + [""]


@settings(max_examples=60, deadline=None)
@given(files=st.lists(st.lists(st.sampled_from(["", "{}", '{"text": "a"}', '{"text": "ĳ' + "b" * 30 + '"}']),
                               max_size=8), min_size=1, max_size=4),
       count=st.integers(1, 5), trailing_newline=st.booleans())
def test_jsonl_parts_hold_each_line_once_in_order(files: list[list[str]], count: int,
                                                   trailing_newline: bool) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        for i, lines in enumerate(files):
            text = "\n".join(lines) + ("\n" if trailing_newline and lines else "")
            Path(tmp, f"f{i}.jsonl").write_text(text, encoding="utf-8")

        def lines_of(part: Part | None) -> list[tuple[str, str, bytes]]:
            return [(unit.path, unit.origin(i), payload) for unit in open_source(tmp, "jsonl", part=part)
                    for i, payload in enumerate(unit.payloads)]

        whole = lines_of(None)
        expected = [(f"f{i}.jsonl", str(n + 1)) for i, lines in enumerate(files)
                    for n in range(len(lines) - (lines[-1:] == [""] and not trailing_newline))]
        assert [(Path(p).name, o.rsplit(":", 1)[1]) for p, o, _ in whole] == expected
        assert sum((lines_of(Part(i, count)) for i in range(count)), []) == whole


@settings(max_examples=40, deadline=None)
@given(sizes=st.lists(st.integers(0, 50), min_size=1, max_size=12), count=st.integers(1, 6))
def test_text_parts_hold_each_file_once_in_order(sizes: list[int], count: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        for i, size in enumerate(sizes):
            Path(tmp, f"{i:03d}.txt").write_bytes(b"a" * size)

        def names(part: Part | None) -> list[str]:
            return [n for unit in open_source(tmp, "text", part=part) for n in unit.names]

        assert sum((names(Part(i, count)) for i in range(count)), []) == names(None)
        assert [Path(n).name for n in names(None)] == [f"{i:03d}.txt" for i in range(len(sizes))]


def test_fingerprint_covers_content_not_tokenizer_location() -> None:
    tok = {"kind": "hf", "path": "/a", "vocab_size": 10, "eos_id": 1}
    base = fingerprint(8, "uint16", tok, ["h1", "h2"])
    assert base == fingerprint(8, "uint16", {**tok, "path": "/elsewhere"}, ["h1", "h2"])
    for other in (fingerprint(9, "uint16", tok, ["h1", "h2"]), fingerprint(8, "int32", tok, ["h1", "h2"]),
                  fingerprint(8, "uint16", {**tok, "eos_id": 2}, ["h1", "h2"]),
                  fingerprint(8, "uint16", tok, ["h2", "h1"]), fingerprint(8, "uint16", tok, ["h1"])):
        assert other != base


@pytest.mark.parametrize("dtype", ["uint16", "int32"])
def test_token_writer_stores_what_streaming_would(tmp_path: Path, dtype: str) -> None:
    writer = TokenWriter(seq_len=5, dtype=dtype, out=str(tmp_path / "w"))
    row = np.array([0, 1, 256, 65535, 7], dtype=dtype)
    assert writer.encode_sample({"tokens": row}) == MDSWriter.encode_sample(writer, {"tokens": row})
    with pytest.raises(ValueError, match="expected a"):
        writer.encode_sample({"tokens": row[:4]})
    writer.finish()


@settings(max_examples=40, deadline=None)
@given(rows=st.integers(0, 300), seq_len=st.integers(1, 40), limit_rows=st.integers(1, 50),
       cuts=st.lists(st.integers(0, 300), max_size=6), compression=st.sampled_from([None, "zstd"]))
def test_token_writer_blocks_make_the_shards_streaming_makes_row_by_row(rows: int, seq_len: int, limit_rows: int,
                                                                       cuts: list[int], compression: str | None
                                                                       ) -> None:
    """Rows written a block at a time, cut anywhere, give byte for byte the shards and index of streaming's
    writer fed the same rows one at a time, with shard boundaries where the size limit puts them."""
    data = np.random.default_rng(rows * 41 + seq_len).integers(0, 65536, (rows, seq_len)).astype(np.uint16)
    with tempfile.TemporaryDirectory() as tmp:
        # A limit of limit_rows rows a shard. The shard header holds the options (the limit's digits too).
        options: dict[str, Any] = {"compression": compression, "hashes": ["sha1", "xxh64"], "size_limit": 1000}
        for attempt in range(3):
            probe = MDSWriter(out=os.path.join(tmp, f"probe{attempt}"), **options,
                              columns={"tokens": f"ndarray:uint16:{seq_len}"})
            options["size_limit"] = (probe.extra_bytes_per_shard
                                     + limit_rows * (2 * seq_len + probe.extra_bytes_per_sample))
            probe.finish()
        reference = MDSWriter(out=os.path.join(tmp, "ref"), columns={"tokens": f"ndarray:uint16:{seq_len}"},
                              **options)
        for row in data:
            reference.write({"tokens": row})
        reference.finish()
        writer = TokenWriter(seq_len=seq_len, dtype="uint16", out=os.path.join(tmp, "new"), **options)
        for block in np.split(data, sorted(set(c for c in cuts if c <= rows))):
            writer.write_rows(block)
        writer.finish()
        names = sorted(os.listdir(os.path.join(tmp, "ref")))
        assert names == sorted(os.listdir(os.path.join(tmp, "new")))
        assert len(names) == 1 + (-(-rows // limit_rows) if rows else 0)
        for name in names:
            assert Path(tmp, "new", name).read_bytes() == Path(tmp, "ref", name).read_bytes(), name


def test_token_writer_refuses_rows_of_another_shape_or_dtype(tmp_path: Path) -> None:
    writer = TokenWriter(seq_len=4, dtype="uint16", out=str(tmp_path / "w"))
    for bad in (np.zeros((2, 5), np.uint16), np.zeros((2, 4), np.int32), np.zeros(4, np.uint16)):
        with pytest.raises(ValueError, match="expected uint16 rows of shape"):
            writer.write_rows(bad)
    writer.finish()
    assert json.loads((tmp_path / "w" / "index.json").read_text())["shards"] == []


def test_troff_to_text_keeps_what_a_reader_reads() -> None:
    source = "\n".join([
        '.\\" a comment line', ".TH LS 1 2024-01-01", ".de XX", "hidden macro body", "..",
        ".SH NAME", "ls \\- list \\fBdirectory\\fP contents \\(em fast", ".SH SEE ALSO",
        ".BR dir (1),", '.B "two words"', '.IP "\\(bu" 4', "caf\\[u00E9] \\*(lqquoted\\*(rq \\s-1SMALL\\s0",
        "text with \\\" a trailing comment", ".sp", ".TS", "allbox;", "l l.", "a\tb", "_", ".TE",
        ".if n \\{\\", "shown\\}", ".so man1/other.1",
    ])
    assert troff_to_text(source).splitlines() == [
        "NAME", "ls - list directory contents — fast", "", "SEE ALSO", "dir(1),", "two words", "", "•",
        "café “quoted” SMALL", "text with", "", "a\tb", "shown"]
    assert troff_to_text(".so man3/printf.3\n") == ""


# -- conversion ----------------------------------------------------------------------------------

def test_round_trip_text_folder(tmp_path: Path) -> None:
    docs = make_docs(40)
    src = write_text_dir(tmp_path / "src", docs)
    manifest = convert(src, tmp_path / "out", domain="books", seq_len=64, **quiet(size_limit=0.004))

    samples = read_samples(tmp_path / "out", tmp_path)
    stream = byte_stream(docs)
    assert samples.dtype == np.uint16 and samples.shape == (len(stream) // 64, 64)
    assert np.array_equal(samples.reshape(-1), stream[:samples.size])
    assert manifest["dropped_tokens"] == len(stream) - samples.size < 64
    assert manifest["format"] == MANIFEST_FORMAT and manifest["version"] == 1
    assert (manifest["domain"], manifest["documents"], manifest["samples"], manifest["tokens"], manifest["dtype"]) \
        == ("books", 40, len(samples), samples.size, "uint16")
    assert manifest["tokenizer"] == {"kind": "bytes", "vocab_size": 258, "eos_id": 256, "pad_id": 257}
    assert manifest["input_bytes"] == sum(len(d.encode()) for d in docs)
    index = json.loads((tmp_path / "out" / "index.json").read_text())
    assert len(index["shards"]) > 1 and index["shards"][0]["compression"] == "zstd"
    assert index["shards"][0]["column_encodings"] == ["ndarray:uint16:64"]
    assert set(index["shards"][0]["raw_data"]["hashes"]) == {"sha1", "xxh64"}
    assert manifest["shards"] == index_shards(index, "")[0]
    assert json.loads((tmp_path / "out" / "manifest.json").read_text()) == manifest
    decoded = ByteTokenizer.decode(samples.reshape(-1))[:-1]  # the last item is the cut document
    assert decoded == docs[:len(decoded)] and len(decoded) >= len(docs) - 2


def test_round_trip_jsonl_with_a_text_field(tmp_path: Path) -> None:
    docs = make_docs(30, seed=1)
    src = write_jsonl(tmp_path / "in" / "a.jsonl", [{"body": d, "id": i} for i, d in enumerate(docs)])
    manifest = convert(src, tmp_path / "out", domain="web", seq_len=32, fmt="jsonl", text_field="body", **quiet())
    samples = read_samples(tmp_path / "out", tmp_path)
    assert np.array_equal(samples.reshape(-1), byte_stream(docs)[:samples.size])
    assert manifest["documents"] == 30 and manifest["skipped"] == {}


def test_output_is_deterministic_and_independent_of_workers(tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(converters.sources, "UNIT_DOCS", 7)  # many units, so order across workers matters
    src = write_jsonl(tmp_path / "in.jsonl", [{"text": d} for d in make_docs(120, seed=2)])
    outputs = {}
    for name, workers in (("a", 1), ("b", 1), ("c", 2)):
        manifest = convert(src, tmp_path / name, domain="d", seq_len=48, fmt="jsonl", workers=workers,
                           **quiet(size_limit=0.003))
        outputs[name] = (manifest["fingerprint"], domain_files(tmp_path / name))
    assert outputs["a"] == outputs["b"] == outputs["c"]
    assert len([f for f in outputs["a"][1] if f.startswith("shard.")]) > 2

    changed = tmp_path / "changed.jsonl"
    changed.write_text(src.read_text().replace("alpha", "alphA", 1))
    assert convert(changed, tmp_path / "e", domain="d", seq_len=48, fmt="jsonl", **quiet())["fingerprint"] \
        != outputs["a"][0]


def test_bad_documents_are_skipped_counted_and_named(tmp_path: Path) -> None:
    src = tmp_path / "src"
    good = make_docs(5, seed=3)
    write_text_dir(src, good)
    (src / "z_empty.txt").write_bytes(b"")
    (src / "z_blank.txt").write_bytes(b" \n\t ")
    (src / "z_binary.bin").write_bytes(b"\x7fELF\x00\x01")
    (src / "z_latin1.txt").write_bytes("café".encode("latin-1"))
    with pytest.warns(SkippedDocumentsWarning) as caught:
        manifest = convert(src, tmp_path / "out", domain="mixed", seq_len=16, **quiet())
    assert manifest["documents"] == 5
    assert manifest["skipped"] == {"binary": 1, "empty": 2, "invalid_utf8": 1}
    messages = " ".join(str(w.message) for w in caught)
    for name in ("z_empty.txt", "z_blank.txt", "z_binary.bin", "z_latin1.txt"):
        assert name in messages
    samples = read_samples(tmp_path / "out", tmp_path)
    assert np.array_equal(samples.reshape(-1), byte_stream(good)[:samples.size])


def test_jsonl_missing_field_warns_with_file_and_line(tmp_path: Path) -> None:
    rows = [{"text": "first document " * 4}, {"title": "no text"}, "", {"text": None}, '{"text": "bad \\ud800"}',
            {"text": "NUL \u0000 inside"}, {"text": "   "}, {"text": "last document " * 4}]
    src = write_jsonl(tmp_path / "rows.jsonl", rows)
    with pytest.warns(SkippedDocumentsWarning) as caught:
        manifest = convert(src, tmp_path / "out", domain="j", seq_len=8, fmt="jsonl", **quiet())
    messages = sorted(str(w.message).replace(str(src), "F") for w in caught)
    assert messages == [f"domain j: skipped {n} document(s) as {reason}, e.g. {where}" for n, reason, where in [
        (1, "binary", "F:6"), (1, "empty", "F:7"), (1, "invalid_utf8", "F:5"), (2, "missing_field", "F:2, F:4")]]
    assert manifest["documents"] == 2
    assert manifest["skipped"] == {"missing_field": 2, "invalid_utf8": 1, "binary": 1, "empty": 1}


@pytest.mark.parametrize("line, message, workers", [
    ("{not json", r"rows\.jsonl:3: invalid JSON", 1),
    ("{not json", r"rows\.jsonl:3: invalid JSON", 2),
    ('["a list"]', r"rows\.jsonl:3: expected a JSON object, found list", 1),
    ('{"text": 42}', r"rows\.jsonl:3: field 'text' is a int, expected a string", 1),
])
def test_malformed_jsonl_is_an_error_naming_file_and_line(tmp_path: Path, line: str, message: str,
                                                          workers: int) -> None:
    src = write_jsonl(tmp_path / "rows.jsonl", [{"text": "fine " * 20}, {"text": "fine " * 20}, line])
    with pytest.raises(ConversionError, match=message):
        convert(src, tmp_path / "out", domain="j", seq_len=8, fmt="jsonl", workers=workers, **quiet())
    assert not (tmp_path / "out").exists() and not list(tmp_path.rglob("index.json"))


def test_a_domain_without_samples_is_an_error_naming_domain_and_source(tmp_path: Path) -> None:
    src = tmp_path / "tiny"
    src.mkdir()
    (src / "a.txt").write_text("short")
    (src / "b.txt").write_bytes(b"")
    with pytest.raises(ConversionError, match=r"domain 'tiny-domain': .*tiny gave no sample of 64 tokens"):
        with pytest.warns(SkippedDocumentsWarning):
            convert(src, tmp_path / "out", domain="tiny-domain", seq_len=64, **quiet())
    assert not (tmp_path / "out").exists() and not list(tmp_path.rglob("index.json"))
    with pytest.raises(ConversionError, match=r"no input: .*empty holds no files"):
        (tmp_path / "empty").mkdir()
        convert(tmp_path / "empty", tmp_path / "out", domain="e", seq_len=8, **quiet())
    with pytest.raises(ConversionError, match=r"input .*missing does not exist"):
        convert(tmp_path / "missing", tmp_path / "out", domain="e", seq_len=8, **quiet())


def test_existing_output_is_refused_unless_overwrite(tmp_path: Path) -> None:
    src = write_text_dir(tmp_path / "src", make_docs(10, seed=4))
    out = tmp_path / "out"
    out.mkdir()
    (out / "precious.txt").write_text("keep me")
    with pytest.raises(ConversionError, match=r"out is not empty; pass --overwrite"):
        convert(src, out, domain="d", seq_len=16, **quiet())
    assert (out / "precious.txt").read_text() == "keep me"
    manifest = convert(src, out, domain="d", seq_len=16, **quiet(overwrite=True))
    assert not (out / "precious.txt").exists() and (out / "index.json").exists()
    assert json.loads((out / "manifest.json").read_text()) == manifest


def test_parts_merge_into_one_readable_domain(tmp_path: Path) -> None:
    docs = make_docs(90, seed=5)
    src = write_jsonl(tmp_path / "in.jsonl", [{"text": d} for d in docs])
    out = tmp_path / "out"
    parts = [convert(src, out, domain="p", seq_len=32, fmt="jsonl", part=f"{i}/3", **quiet(size_limit=0.002))
             for i in range(3)]
    assert [m["part"] for m in parts] == [{"index": i, "count": 3} for i in range(3)]
    assert sum(m["documents"] for m in parts) == 90 and all(m["documents"] > 0 for m in parts)
    assert not (out / "index.json").exists()
    with pytest.raises(ConversionError, match="part-00001 is not empty"):
        convert(src, out, domain="p", seq_len=32, fmt="jsonl", part="1/3", **quiet())

    assert merge_main([str(out)]) == 0
    merged = json.loads((out / "manifest.json").read_text())
    assert merged["parts"] == 3 and merged["documents"] == 90
    assert merged["samples"] == sum(m["samples"] for m in parts)
    assert merged["shards"] == [f"part-{i:05d}/{s}" for i, m in enumerate(parts) for s in m["shards"]]
    samples = read_samples(out, tmp_path)
    assert len(samples) == merged["samples"]
    per_part = [read_samples(out / f"part-{i:05d}", tmp_path) for i in range(3)]
    assert np.array_equal(samples, np.concatenate(per_part))
    first = 0
    for manifest, part_samples in zip(parts, per_part):  # each part: its run of documents, its own cut tail
        stream = byte_stream(docs[first:first + manifest["documents"]])
        assert np.array_equal(part_samples.reshape(-1), stream[:part_samples.size])
        assert manifest["dropped_tokens"] == len(stream) - part_samples.size
        first += manifest["documents"]
    assert merge_parts(out, progress=False)["fingerprint"] == merged["fingerprint"]  # merging again is stable

    convert(src, out, domain="p", seq_len=32, fmt="jsonl", part="1/3", **quiet(overwrite=True))
    assert not (out / "index.json").exists() and not (out / "manifest.json").exists()  # the merge is stale


def test_merge_refuses_missing_or_incomplete_parts(tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "in.jsonl", [{"text": d} for d in make_docs(40, seed=6)])
    out = tmp_path / "out"
    for i in (0, 2):
        convert(src, out, domain="p", seq_len=16, fmt="jsonl", part=f"{i}/3", **quiet())
    with pytest.raises(ConversionError, match=r"part\(s\) 1/3 missing"):
        merge_parts(out, progress=False)
    (out / "part-00001").mkdir()
    (out / "part-00001" / "shard.00000.mds.zstd").write_bytes(b"half")
    with pytest.raises(ConversionError, match=r"part-00001 has no manifest.json: that part is incomplete"):
        merge_parts(out, progress=False)
    assert not (out / "index.json").exists()


def test_killed_conversion_leaves_nothing_complete_and_rerun_matches(tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "big.jsonl", [{"text": d} for d in make_docs(4000, seed=7, max_words=80)])
    out = tmp_path / "out"
    args = [str(src), str(out), "--domain", "k", "--seq-len", "8", "--format", "jsonl", "--size-limit", "0.002"]
    staging = tmp_path / ".out.partial"
    proc = subprocess.Popen([sys.executable, "-m", "pike_stream", "convert", *args], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while len(list(staging.glob("shard.*.mds.zstd"))) < 3:
            assert proc.poll() is None, "the conversion ended before it could be killed midway"
            assert time.monotonic() < deadline, "the conversion wrote no shard within 120 s"
            time.sleep(0.005)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not list(tmp_path.rglob("index.json")) and not list(tmp_path.rglob("manifest.json"))
    assert not out.exists() or not any(out.iterdir())

    assert convert_main([*args, "--overwrite"]) == 0
    convert(src, tmp_path / "clean", domain="k", seq_len=8, fmt="jsonl", **quiet(size_limit=0.002))
    assert domain_files(out) == domain_files(tmp_path / "clean")
    assert not staging.exists()


def test_a_shard_that_cannot_be_written_fails_the_conversion_and_leaves_nothing(tmp_path: Path,
                                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """Shards are hashed, compressed and written on a thread: its failure (here a full disk on the third shard)
    is the conversion's error, the output stays empty, and no writer thread is left behind."""
    import errno
    import threading

    src = write_jsonl(tmp_path / "big.jsonl", [{"text": d} for d in make_docs(2000, seed=3, max_words=80)])
    real = TokenWriter._process_file
    written: list[str] = []

    def full_disk(self: TokenWriter, raw: bytes, raw_name: str, zip_name: str | None) -> tuple[dict, dict | None]:
        if len(written) == 2:
            raise OSError(errno.ENOSPC, "No space left on device", raw_name)
        written.append(raw_name)
        return real(self, raw, raw_name, zip_name)

    monkeypatch.setattr(TokenWriter, "_process_file", full_disk)
    threads = threading.active_count()
    with pytest.raises(OSError, match="No space left"):
        convert(src, tmp_path / "out", domain="k", seq_len=8, fmt="jsonl", **quiet(size_limit=0.002))
    assert written == ["shard.00000.mds", "shard.00001.mds"]
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
    assert not list(tmp_path.rglob("index.json")) and not list(tmp_path.rglob("*.zstd"))
    assert threading.active_count() == threads


def test_hf_dataset_source(tmp_path: Path) -> None:
    datasets = pytest.importorskip("datasets")
    docs = make_docs(25, seed=8)
    rows = docs[:10] + [None] + docs[10:]
    datasets.Dataset.from_dict({"content": rows, "n": list(range(26))}).save_to_disk(str(tmp_path / "ds"))
    with pytest.warns(SkippedDocumentsWarning, match=r"missing_field.*ds row 10"):
        manifest = convert(tmp_path / "ds", tmp_path / "out", domain="hf", seq_len=24, fmt="hf",
                           text_field="content", **quiet())
    assert manifest["documents"] == 25 and manifest["skipped"] == {"missing_field": 1}
    samples = read_samples(tmp_path / "out", tmp_path)
    assert np.array_equal(samples.reshape(-1), byte_stream(docs)[:samples.size])
    with pytest.raises(ConversionError, match=r"no column 'text' \(columns: \['content', 'n'\]\)"):
        convert(tmp_path / "ds", tmp_path / "out2", domain="hf", seq_len=24, fmt="hf", **quiet())
    datasets.DatasetDict({"train": datasets.Dataset.from_dict({"text": docs}),
                          "test": datasets.Dataset.from_dict({"text": docs})}).save_to_disk(str(tmp_path / "dd"))
    with pytest.raises(ConversionError, match=r"holds the splits \['test', 'train'\]; point SOURCE at one"):
        convert(tmp_path / "dd", tmp_path / "out3", domain="hf", seq_len=24, fmt="hf", **quiet())


def _save_word_tokenizer(folder: Path, words: list[str], eos: str | None) -> Path:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"[UNK]": 0, "</s>": 1, **{w: i + 2 for i, w in enumerate(words)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", **({"eos_token": eos} if eos else {}))
    fast.save_pretrained(str(folder))
    return folder


def test_local_hf_tokenizer(tmp_path: Path) -> None:
    docs = make_docs(30, seed=9)
    src = write_jsonl(tmp_path / "in.jsonl", [{"text": d} for d in docs])
    tok_dir = _save_word_tokenizer(tmp_path / "tok", WORDS, eos="</s>")
    manifest = convert(src, tmp_path / "out", domain="w", seq_len=8, fmt="jsonl", tokenizer=str(tok_dir), **quiet())
    assert manifest["tokenizer"]["kind"] == "hf" and manifest["tokenizer"]["eos_id"] == 1
    assert manifest["tokenizer"]["vocab_size"] == len(WORDS) + 2 and manifest["dtype"] == "uint16"
    ids = {w: i + 2 for i, w in enumerate(WORDS)}
    expected = np.array([t for d in docs for t in [ids[w] for w in d.split()] + [1]])
    samples = read_samples(tmp_path / "out", tmp_path)
    assert np.array_equal(samples.reshape(-1), expected[:samples.size])

    moved = shutil.copytree(tok_dir, tmp_path / "elsewhere" / "tok")
    again = convert(src, tmp_path / "out2", domain="w", seq_len=8, fmt="jsonl", tokenizer=str(moved),
                    **quiet(workers=2))
    assert again["fingerprint"] == manifest["fingerprint"]

    no_eos = _save_word_tokenizer(tmp_path / "no_eos", WORDS, eos=None)
    with pytest.raises(ConversionError, match=r"no_eos: the tokenizer defines no EOS token"):
        convert(src, tmp_path / "out3", domain="w", seq_len=8, fmt="jsonl", tokenizer=str(no_eos), **quiet())
    with pytest.raises(ConversionError, match=r"--tokenizer .*nowhere: not a folder"):
        convert(src, tmp_path / "out3", domain="w", seq_len=8, fmt="jsonl", tokenizer=str(tmp_path / "nowhere"))


def test_cli_reports_errors_and_options(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = write_text_dir(tmp_path / "src", make_docs(8, seed=10))
    assert convert_main([str(src), str(tmp_path / "out"), "--domain", "c", "--seq-len", "16", "--part", "x"]) == 1
    assert "--part 'x': expected i/N" in capsys.readouterr().err
    assert convert_main([str(src), str(tmp_path / "out"), "--domain", "c", "--seq-len", "16", "--part", "0/1",
                         "--size-limit", "0.5"]) == 0
    err = capsys.readouterr().err
    assert "domain c: 8 documents (skipped: none)" in err and "MB/s" in err
    index = json.loads((tmp_path / "out" / "part-00000" / "index.json").read_text())
    assert index["shards"][0]["size_limit"] == int(0.5 * 2**20)


# -- S3 ------------------------------------------------------------------------------------------

def test_s3_upload_reads_back_and_matches_local(tmp_path: Path, s3_bucket: str) -> None:
    docs = make_docs(40, seed=11)
    src = write_jsonl(tmp_path / "in.jsonl", [{"text": d} for d in docs])
    url = f"s3://{s3_bucket}/domains/web"
    manifest = convert(src, url, domain="web", seq_len=32, fmt="jsonl", **quiet(size_limit=0.002))
    local = convert(src, tmp_path / "local", domain="web", seq_len=32, fmt="jsonl", **quiet(size_limit=0.002))
    assert manifest == local

    samples = read_samples(url, tmp_path)
    assert np.array_equal(samples.reshape(-1), byte_stream(docs)[:samples.size])
    import boto3

    keys = [o["Key"] for o in boto3.client("s3", endpoint_url=os.environ["S3_ENDPOINT_URL"])
            .list_objects_v2(Bucket=s3_bucket)["Contents"]]
    assert sorted(keys) == sorted(f"domains/web/{n}" for n in [*manifest["shards"], "index.json", "manifest.json"])

    with pytest.raises(ConversionError, match=r"s3://.*/domains/web is not empty; pass --overwrite"):
        convert(src, url, domain="web", seq_len=32, fmt="jsonl", **quiet())
    assert convert(src, url, domain="web", seq_len=64, fmt="jsonl", **quiet(overwrite=True))["seq_len"] == 64


def test_s3_parts_merge(tmp_path: Path, s3_bucket: str) -> None:
    docs = make_docs(50, seed=12)
    src = write_jsonl(tmp_path / "in.jsonl", [{"text": d} for d in docs])
    url = f"s3://{s3_bucket}/merged"
    for i in range(2):
        convert(src, url, domain="m", seq_len=16, fmt="jsonl", part=f"{i}/2", **quiet())
    merged = merge_parts(url, progress=False)
    samples = read_samples(url, tmp_path)
    assert len(samples) == merged["samples"] and merged["documents"] == 50
    local = tmp_path / "local"
    for i in range(2):
        convert(src, local, domain="m", seq_len=16, fmt="jsonl", part=f"{i}/2", **quiet())
    assert merge_parts(local, progress=False)["fingerprint"] == merged["fingerprint"]
    assert np.array_equal(samples, read_samples(local, tmp_path))


def test_s3_settings_errors_name_the_setting_not_the_secret(tmp_path: Path, s3_bucket: str,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    src = write_text_dir(tmp_path / "src", make_docs(5, seed=13))
    secret = "wrong-secret-value-1234"
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
    with pytest.raises(ConversionError, match=r"refused the credentials .*AWS_ACCESS_KEY_ID and "
                                              r"AWS_SECRET_ACCESS_KEY") as refused:
        convert(src, f"s3://{s3_bucket}/x", domain="d", seq_len=8, **quiet())
    assert secret not in str(refused.value)
    monkeypatch.setenv("S3_ENDPOINT_URL", "http://127.0.0.1:9")  # nothing listens on the discard port
    with pytest.raises(ConversionError, match=r"cannot reach the S3 endpoint http://127.0.0.1:9 .*S3_ENDPOINT_URL"):
        convert(src, f"s3://{s3_bucket}/x", domain="d", seq_len=8, **quiet())


def test_s3_missing_bucket_is_named(tmp_path: Path, s3_env: object) -> None:
    src = write_text_dir(tmp_path / "src", make_docs(5, seed=14))
    with pytest.raises(ConversionError, match=r"bucket 'no-such-bucket-here' does not exist"):
        convert(src, "s3://no-such-bucket-here/x", domain="d", seq_len=8, **quiet())


# -- benchmark corpus ----------------------------------------------------------------------------

def test_corpus_code_domain_builds_and_converts(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    record = build_corpus(tmp_path, langs=(), max_mb_per_domain=0.2, code=True)
    code = record["domains"]["code"]
    assert 0 < code["bytes"] <= 0.2 * 2**20 and code["val_documents"] >= 1
    train = [json.loads(line) for line in (tmp_path / "raw" / "code" / "train.jsonl").read_text().splitlines()]
    val = [json.loads(line) for line in (tmp_path / "raw" / "code" / "val.jsonl").read_text().splitlines()]
    assert len(train) + len(val) == code["documents"] and len(train) == code["train_documents"]
    sources = [row["source"] for row in train + val]
    assert len(set(sources)) == len(sources) and all(s.startswith("stdlib:") for s in sources)
    assert record == json.loads((tmp_path / "raw" / "corpus.json").read_text())

    manifests = convert_corpus(tmp_path, seq_len=64, log=print)
    assert set(manifests) == {"code/train", "code/val"}
    assert manifests["code/train"]["documents"] == len(train)
    table = capsys.readouterr().out
    assert "code" in table and "train" in table and "tokens" in table
    assert build_corpus(tmp_path / "again", langs=(), max_mb_per_domain=0.2) == record  # deterministic


@pytest.mark.slow
def test_corpus_man_pages_from_debian_packages(tmp_path: Path) -> None:
    if shutil.which("apt-get") is None or shutil.which("dpkg-deb") is None:
        pytest.skip("needs apt-get and dpkg-deb")
    try:
        record = build_corpus(tmp_path, langs=("de",), max_mb_per_domain=0.1, code=False)
    except ConversionError as exc:
        pytest.skip(f"cannot fetch Debian packages here: {exc}")
    de = record["domains"]["de"]
    assert de["packages"].keys() == {"manpages-de"} and de["documents"] > 5
    text = (tmp_path / "raw" / "de" / "train.jsonl").read_text()
    assert "\\fB" not in text and ".SH" not in text and "BESCHREIBUNG" in text


def test_encoder_workers_end_on_sigterm_whatever_handler_the_parent_has() -> None:
    """Importing Composer installs a Python SIGTERM handler (sys.exit). Workers forked with it could block on
    the task queue's lock after Pool.terminate()'s SIGTERM, and the conversion then hung in terminate():
    workers must be born with SIGTERM's default action."""
    import psutil

    from converters.encode import EncoderPool
    from converters.tokenizers import load_tokenizer

    previous = signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    try:
        with EncoderPool(tokenizer=load_tokenizer("bytes"), tokenizer_spec="bytes", text_field="text",
                         workers=2) as pool:
            workers = pool._pool._pool
            for worker in workers:
                caught = int(Path(f"/proc/{worker.pid}/status").read_text().split("SigCgt:")[1].split()[0], 16)
                assert not caught & (1 << (signal.SIGTERM - 1)), "a worker inherited a SIGTERM handler"
            pids = [w.pid for w in workers]
        assert not [p for p in pids if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
        assert signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL  # the parent's handler is back
    finally:
        signal.signal(signal.SIGTERM, previous)
