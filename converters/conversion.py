"""Corpus → one domain of tokenized, packed MDS shards with a manifest.

Documents are read in a fixed order (:mod:`converters.sources`), checked and tokenized, in a pool of
forked processes when ``workers > 1`` (:mod:`converters.encode`), followed by EOS, concatenated and cut into
``seq_len``-id samples (:mod:`converters.packing`) by a single writer. The final partial sample is dropped
and counted as ``dropped_tokens``. The same input and options give byte-identical shards and the same
fingerprint whatever the number of workers.

Shards hold one column ``tokens`` (MDS encoding ``ndarray:<dtype>:<seq_len>``; ``uint16`` when the
vocabulary fits, else ``int32``), are zstd-compressed and carry sha1 and xxh64 hashes. ``index.json`` and
then ``manifest.json`` are written last (:mod:`converters.output`), so an interrupted conversion never
looks complete.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
import warnings
from collections import Counter
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np
from streaming.base.format.mds.writer import MDSWriter
from tqdm import tqdm

from converters.encode import EXAMPLES_PER_REASON, EncoderPool
from converters.errors import ConversionError, SkippedDocumentsWarning
from converters.manifest import INDEX_NAME, MANIFEST_NAME, build_manifest
from converters.output import open_destination
from converters.packing import Packer
from converters.sources import Part, open_source
from converters.tokenizers import load_tokenizer, token_dtype
from pike_stream.streaming_compat import require_writer_internals

__all__ = ["DEFAULT_SIZE_LIMIT_MB", "COMPRESSION", "HASHES", "TokenWriter", "convert"]

DEFAULT_SIZE_LIMIT_MB = 8.0
COMPRESSION = "zstd"
HASHES = ["sha1", "xxh64"]


class _Rows:
    """The rows of the shard being built, kept as the ``(n, seq_len)`` blocks they came in; ``len`` is the number
    of rows (what streaming's writer records as the shard's ``samples``)."""

    def __init__(self) -> None:
        self.blocks: list[np.ndarray] = []
        self.count = 0

    def add(self, block: np.ndarray) -> None:
        self.blocks.append(block)
        self.count += len(block)

    def __len__(self) -> int:
        return self.count


class TokenWriter(MDSWriter):
    """streaming's ``MDSWriter`` for one fixed-size ``tokens`` column, with five changes.

    - Rows are written a block at a time (:meth:`write_rows`) and a shard is built from the blocks with numpy.
      For a column of static dtype and shape MDS stores each row's bytes with no per-sample header, so the
      shard is byte for byte what streaming's per-sample ``write`` makes, without a Python call per sample,
      which made writing, not tokenizing, the bottleneck.
    - A full shard is hashed, compressed and written on a thread while the next one fills
      (:meth:`flush_shard`); its failure is raised by the next flush or by ``finish``.
    - ``encode_sample`` is a direct ``tobytes()`` of the row, without re-parsing the encoding string.
    - An upload cancelled by an interrupted conversion is not reported as an error with a traceback.
    - ``index.json`` is uploaded only after every shard upload has finished; streaming's writer submits
      it once its queue is empty, while the last shards may still be uploading, so a reader could see
      an index whose shards are not there yet.
    """

    def __init__(self, *, seq_len: int, dtype: str, **kwargs: Any) -> None:
        super().__init__(columns={"tokens": f"ndarray:{dtype}:{seq_len}"}, **kwargs)
        require_writer_internals(self)  # the attributes below are streaming's private ones
        self._row = (np.dtype(dtype), (seq_len,))
        self._row_bytes = np.dtype(dtype).itemsize * seq_len
        self._finisher = ThreadPoolExecutor(max_workers=1, thread_name_prefix="shard-writer")
        self._finishing: Future | None = None

    def _reset_cache(self) -> None:
        self.new_samples = _Rows()  # type: ignore[assignment]
        self.new_shard_size = self.extra_bytes_per_shard

    def encode_sample(self, sample: dict[str, Any]) -> bytes:
        tokens = sample["tokens"]
        if (tokens.dtype, tokens.shape) != self._row:
            raise ValueError(f"expected a {self._row[0]} row of shape {self._row[1]}, "
                             f"got {tokens.dtype} {tokens.shape}")
        return tokens.tobytes()

    def write(self, sample: dict[str, Any]) -> None:
        self.write_rows(sample["tokens"][None])

    def write_rows(self, block: np.ndarray) -> None:
        """Write the rows of ``block`` (``(n, seq_len)``, the column's dtype) in order, starting a new shard
        whenever the next row would pass the size limit, as streaming's ``write`` does row by row."""
        if self.event.is_set():  # an upload failed: what streaming's write does
            self.cancel_future_jobs()
            raise ConversionError(f"uploading shards to {self.remote} failed (see the log above)")
        if (block.dtype, block.shape[1:]) != self._row or block.ndim != 2:
            raise ValueError(f"expected {self._row[0]} rows of shape {self._row[1]}, got {block.dtype} {block.shape}")
        row_size = self._row_bytes + self.extra_bytes_per_sample
        start = 0
        while start < len(block):
            room = (self.size_limit - self.new_shard_size) // row_size if self.size_limit else len(block)
            if room <= 0:
                if len(self.new_samples):
                    self.flush_shard()
                    self._reset_cache()
                    continue
                room = 1  # a row larger than the limit: a shard of its own
            take = block[start:start + room]
            self.new_samples.add(take)  # type: ignore[attr-defined]
            self.new_shard_size += len(take) * row_size
            start += len(take)

    def encode_joint_shard(self) -> bytes:
        """The MDS shard of the rows written since the last one: the row count, ``n + 1`` offsets, the
        column config, then the rows."""
        rows: _Rows = self.new_samples  # type: ignore[assignment]
        head = 4 + 4 * (len(rows) + 1) + len(self.config_data)
        offsets = (head + self._row_bytes * np.arange(len(rows) + 1, dtype=np.int64)).astype(np.uint32)
        return b"".join([np.uint32(len(rows)).tobytes(), offsets.tobytes(), self.config_data,
                         *(np.ascontiguousarray(b).tobytes() for b in rows.blocks)])

    def exception_callback(self, future: Future) -> None:
        """streaming's callback, but quiet for an upload cancelled by an interrupted conversion (streaming's
        own asks a cancelled future for its exception, which raises and logs a traceback)."""
        if not future.cancelled():
            super().exception_callback(future)

    def flush_shard(self) -> None:
        """streaming's ``flush_shard``, with the shard's hashing, compression and file write done on a thread
        (zstd and hashlib release the GIL) while the next shard fills. One shard at a time is finished there,
        in order, so memory holds at most the shard filling, the one waiting and the one being finished."""
        raw_name, zip_name = self._name_next_shard()
        raw = self.encode_joint_shard()
        self.wait_for_shards()
        slot, samples = len(self.shards), len(self.new_samples)
        self.shards.append(None)  # keeps the next shard's name; filled in when this one is written
        self._finishing = self._finisher.submit(self._finish_shard, raw, raw_name, zip_name, slot, samples)

    def _finish_shard(self, raw: bytes, raw_name: str, zip_name: str | None, slot: int, samples: int) -> None:
        raw_info, zip_info = self._process_file(raw, raw_name, zip_name)
        self.shards[slot] = {"samples": samples, "raw_data": raw_info, "zip_data": zip_info, **self.get_config()}
        future = self.executor.submit(self.cloud_writer.upload_file, zip_name or raw_name)
        future.add_done_callback(self.exception_callback)

    def wait_for_shards(self) -> None:
        """Until the shard being finished on the thread is written (raises what writing it raised)."""
        if self._finishing is not None:
            finishing, self._finishing = self._finishing, None
            finishing.result()

    def abandon(self) -> None:
        """After a failure: wait for the shard being written (whatever it raises), cancel pending uploads."""
        try:
            self.wait_for_shards()
        except Exception:  # the failure being handled is what the caller reports
            pass
        self._finisher.shutdown(wait=True)
        self.executor.shutdown(wait=True, cancel_futures=True)

    def _write_index(self) -> None:
        self.wait_for_shards()
        self._finisher.shutdown(wait=True)
        self.executor.shutdown(wait=True)
        if self.event.is_set():
            raise ConversionError(f"uploading shards to {self.remote} failed (see the log above); "
                                  f"no index was written")
        self.executor = ThreadPoolExecutor(max_workers=1)
        super()._write_index()


def convert(source: str | os.PathLike[str], out: str | os.PathLike[str], *, domain: str, seq_len: int,
            fmt: str | None = None, text_field: str = "text", tokenizer: str = "bytes", workers: int = 1,
            part: str | tuple[int, int] | Part | None = None, overwrite: bool = False,
            size_limit: float = DEFAULT_SIZE_LIMIT_MB, progress: bool = True) -> dict[str, Any]:
    """Convert ``source`` into the domain folder ``out`` (a local folder or ``s3://bucket/prefix``).

    Args:
        source: a file or folder (``text``, ``jsonl``, ``parquet``) or a ``save_to_disk`` dataset folder
            (``hf``).
        out: the domain folder to create; with ``part="i/N"`` the part goes to ``out/part-0000i``.
        domain: the domain's name, recorded in the manifest.
        seq_len: ids per sample.
        fmt: ``text`` (one document per file), ``jsonl`` (one per line; ``.gz``/``.zst`` decompressed),
            ``parquet`` or ``hf`` (one per row); None infers it from the source's names
            (:mod:`converters.formats`) and, with ``progress``, says what it inferred on stderr.
        text_field: the JSON field or dataset column holding the text.
        tokenizer: ``bytes`` or the path of a local HuggingFace tokenizer folder.
        workers: tokenizing processes (1: in this process).
        part: convert only part i of N of the input (``"i/N"``); join the parts with ``merge_parts``.
        overwrite: replace a non-empty output instead of refusing.
        size_limit: shard size limit in MB (uncompressed).
        progress: show a progress bar and a summary on stderr.

    Returns:
        The manifest written beside ``index.json``.

    Raises:
        ConversionError: bad input, options or output location; nothing is left that looks complete.
    """
    if not domain:
        raise ConversionError("--domain must name the domain")
    if seq_len < 1:
        raise ConversionError(f"--seq-len {seq_len}: need at least 1")
    if not size_limit > 0:
        raise ConversionError(f"--size-limit {size_limit}: need a positive number of MB")
    part = Part.parse(part)
    tok = load_tokenizer(tokenizer)
    dtype = token_dtype(tok.vocab_size)
    src = open_source(source, fmt, text_field=text_field, part=part)
    dest = root = open_destination(out)
    if part is not None:
        dest = root.child(part.folder)
    dest.prepare(overwrite)
    if part is not None:  # a merged index over the parts no longer describes them: withdraw it
        root.remove(MANIFEST_NAME)
        root.remove(INDEX_NAME)
    if progress and src.inferred:  # after the output checks, so that a refused output stays a one-line error
        print(f"pike-stream convert: {source} read as {src.layout.describe()}", file=sys.stderr)

    start = time.perf_counter()
    writer: TokenWriter | None = None
    interrupt = _SafePointInterrupt()
    try:
        interrupt.__enter__()
        with EncoderPool(tokenizer=tok, tokenizer_spec=tokenizer, text_field=text_field, workers=workers) as pool:
            writer = TokenWriter(seq_len=seq_len, dtype=dtype, out=dest.writer_out(), compression=COMPRESSION,
                                 hashes=HASHES, size_limit=int(size_limit * 2**20))
            packer = Packer(seq_len, dtype)
            documents = samples = input_bytes = 0
            skipped: Counter[str] = Counter()
            examples: dict[str, list[str]] = {}
            with tqdm(total=src.total_bytes, unit="B", unit_scale=True, unit_divisor=1024,
                      desc=f"convert {domain}", disable=not progress, file=sys.stderr, dynamic_ncols=True) as bar:
                for encoded in pool.map(src):
                    documents += encoded.documents
                    input_bytes += encoded.input_bytes
                    skipped.update(encoded.skipped)
                    for reason, origins in encoded.examples.items():
                        shown = examples.setdefault(reason, [])
                        shown.extend(origins[:EXAMPLES_PER_REASON - len(shown)])
                    block = packer.pack(encoded.tokens)
                    writer.write_rows(block)
                    samples += len(block)
                    bar.update(encoded.input_bytes)
                    rate = samples * seq_len / max(time.perf_counter() - start, 1e-9)
                    bar.set_postfix_str(f"{rate / 1e6:.2f}M tok/s", refresh=False)
                    interrupt.check()
        for reason, origins in sorted(examples.items()):
            warnings.warn(f"domain {domain}: skipped {skipped[reason]} document(s) as {reason}, "
                          f"e.g. {', '.join(origins)}", SkippedDocumentsWarning, stacklevel=2)
        if samples == 0:
            raise ConversionError(
                f"domain {domain!r}: {source} gave no sample of {seq_len} tokens ({documents} documents kept, "
                f"{packer.pending} tokens, skipped: {dict(skipped) or 'none'})")
        writer.finish()
        interrupt.check()
        index = {"version": 2, "shards": writer.shards}
        extra = {"part": {"index": part.index, "count": part.count}} if part else None
        manifest = build_manifest(domain=domain, index=index, seq_len=seq_len, dtype=dtype,
                                  tokenizer=tok.describe(), documents=documents, skipped=skipped,
                                  dropped_tokens=packer.pending, input_bytes=input_bytes, where=dest.url,
                                  extra=extra)
        interrupt.check()
        dest.commit(manifest)
    except BaseException:
        if writer is not None:
            writer.abandon()
        dest.abort()
        raise
    finally:
        interrupt.__exit__()
    if progress:
        print(_summary(manifest, dest.url, time.perf_counter() - start), file=sys.stderr)
    return manifest


class _SafePointInterrupt:
    """Ctrl-C (SIGINT) during a conversion raises ``KeyboardInterrupt`` at the next :meth:`check`, not wherever
    the main thread happens to be.

    A ``KeyboardInterrupt`` raised inside tqdm (the progress bar, and streaming's upload threads, take one
    shared lock) can leave that lock held, and the clean-up then waits forever for an upload thread blocked on
    it. Checks come after each unit of input (about 1 MB) and before the manifest is published. A second
    Ctrl-C interrupts at once. Outside the main thread this does nothing (signals go to the main thread).
    """

    def __init__(self) -> None:
        self._pending = False
        self._previous: Any = None

    def __enter__(self) -> _SafePointInterrupt:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self._pending:
            raise KeyboardInterrupt
        self._pending = True

    def check(self) -> None:
        if self._pending:
            raise KeyboardInterrupt

    def __exit__(self, *exc: object) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
            self._previous = None


def _summary(manifest: dict[str, Any], url: str, seconds: float) -> str:
    skipped = ", ".join(f"{reason} {n}" for reason, n in manifest["skipped"].items()) or "none"
    mb = manifest["input_bytes"] / 2**20
    return (f"domain {manifest['domain']}: {manifest['documents']:,} documents (skipped: {skipped}), "
            f"{manifest['tokens']:,} tokens in {manifest['samples']:,} samples of {manifest['seq_len']} "
            f"({manifest['dropped_tokens']:,} dropped), {len(manifest['shards'])} shard(s); "
            f"{mb:.2f} MB in {seconds:.1f} s = {mb / max(seconds, 1e-9):.2f} MB/s → {url}")
