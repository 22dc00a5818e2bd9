"""Text → token ids: the built-in byte-level tokenizer, or a local HuggingFace tokenizer folder.

Both append the end-of-document id (EOS) after every document, so packed sequences keep document
boundaries visible to the model.

The byte-level tokenizer needs no download: ids 0–255 are the UTF-8 bytes of the text, 256 is EOS and
257 is PAD (reserved for readers that pad; conversion never emits it), so the vocabulary has 258 ids.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from converters.errors import ConversionError

__all__ = ["Tokenizer", "ByteTokenizer", "HFTokenizer", "load_tokenizer", "token_dtype"]


class Tokenizer(Protocol):
    """What conversion needs from a tokenizer."""

    vocab_size: int
    eos_id: int

    def describe(self) -> dict[str, Any]:
        """The manifest's ``tokenizer`` entry."""
        ...

    def encode_documents(self, texts: list[str]) -> np.ndarray:
        """All documents' ids, each followed by EOS, as one 1-D array of ``token_dtype(vocab_size)``."""
        ...


def token_dtype(vocab_size: int) -> str:
    """``uint16`` when every id fits in it, else ``int32`` (the numpy dtype name of the shards)."""
    return "uint16" if vocab_size <= 1 << 16 else "int32"


class ByteTokenizer:
    """UTF-8 bytes as ids 0–255, EOS = 256, PAD = 257."""

    kind = "bytes"
    vocab_size = 258
    eos_id = 256
    pad_id = 257

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "vocab_size": self.vocab_size, "eos_id": self.eos_id, "pad_id": self.pad_id}

    def encode_documents(self, texts: list[str]) -> np.ndarray:
        # Documents never hold NUL (such documents are skipped as binary), so NUL can stand in for EOS
        # while the whole batch is encoded by one C-level call.
        if not texts:
            return np.zeros(0, dtype=np.uint16)
        data = ("\x00".join(texts) + "\x00").encode("utf-8")
        ids = np.frombuffer(data, dtype=np.uint8).astype(np.uint16)
        ids[ids == 0] = self.eos_id
        return ids

    @classmethod
    def decode(cls, ids: np.ndarray | list[int]) -> list[str]:
        """The documents of an id sequence, split at EOS (the text after the last EOS is the last item).

        Bytes cut in the middle of a UTF-8 character (at a sequence edge) decode to U+FFFD.
        """
        arr = np.asarray(ids)
        pieces = np.split(arr, np.flatnonzero(arr == cls.eos_id))
        docs = [pieces[0]] + [piece[1:] for piece in pieces[1:]]
        return [bytes(doc[doc < 256].astype(np.uint8)).decode("utf-8", errors="replace") for doc in docs]


class HFTokenizer:
    """A tokenizer folder loaded with ``transformers.AutoTokenizer`` (local files only, no download)."""

    kind = "hf"

    def __init__(self, path: str) -> None:
        try:
            from transformers import AutoTokenizer
        except ImportError:
            raise ConversionError(f"--tokenizer {path}: needs the `transformers` package") from None
        if not Path(path).is_dir():
            raise ConversionError(f"--tokenizer {path}: not a folder (give `bytes` or a local tokenizer folder)")
        try:
            self._tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
        except (OSError, ValueError) as exc:
            raise ConversionError(f"--tokenizer {path}: cannot load a tokenizer from it ({exc})") from None
        if self._tok.eos_token_id is None:
            raise ConversionError(f"--tokenizer {path}: the tokenizer defines no EOS token (eos_token)")
        self.path = path
        self.vocab_size = len(self._tok)
        self.eos_id = int(self._tok.eos_token_id)

    def describe(self) -> dict[str, Any]:
        vocab = json.dumps(sorted(self._tok.get_vocab().items(), key=lambda kv: kv[1]), ensure_ascii=False)
        return {"kind": self.kind, "path": self.path, "vocab_size": self.vocab_size, "eos_id": self.eos_id,
                "vocab_sha256": hashlib.sha256(vocab.encode("utf-8")).hexdigest()}

    def encode_documents(self, texts: list[str]) -> np.ndarray:
        dtype = token_dtype(self.vocab_size)
        if not texts:
            return np.zeros(0, dtype=dtype)
        backend = getattr(self._tok, "backend_tokenizer", None) if self._tok.is_fast else None
        if backend is not None:  # the Rust tokenizer directly, without offsets: the same ids, faster
            encode = getattr(backend, "encode_batch_fast", backend.encode_batch)
            batches = [enc.ids for enc in encode(texts, add_special_tokens=False)]
        else:
            batches = self._tok(texts, add_special_tokens=False, verbose=False)["input_ids"]
        out = np.empty(sum(len(ids) + 1 for ids in batches), dtype=dtype)
        pos = 0
        for ids in batches:
            out[pos:pos + len(ids)] = ids
            pos += len(ids)
            out[pos] = self.eos_id
            pos += 1
        return out


def load_tokenizer(spec: str) -> ByteTokenizer | HFTokenizer:
    """``"bytes"`` for the byte-level tokenizer, else the path of a local HuggingFace tokenizer folder."""
    return ByteTokenizer() if spec == "bytes" else HFTokenizer(str(spec))
