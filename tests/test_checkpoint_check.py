"""The checkpoint check Composer runs before loading (``pike_stream.train.checkpoint_check``), on real
``torch.save`` archives. The end-to-end refusals (a local and an S3 checkpoint) are in ``test_mistakes.py``."""

from __future__ import annotations

import io
import os
import zipfile
from pathlib import Path

import pytest
import torch

from pike_stream.train.checkpoint_check import (
    VERIFIER,
    CorruptCheckpointError,
    use_checkpoint_verification,
    verify_checkpoint,
)
from pike_stream.train.composer_compat import CHECKPOINT_VALIDATION_VARIABLE
from tests.checkpoints import flip_a_tensor_byte


def _saved(path: Path) -> bytes:
    torch.save({"state": {"w": torch.arange(4096, dtype=torch.float32), "b": torch.ones(3)}}, path)
    return path.read_bytes()


def test_torch_load_alone_takes_a_checkpoint_with_a_flipped_byte(tmp_path: Path) -> None:
    """Why the check exists: the damaged archive loads, with one weight changed."""
    path = tmp_path / "ck.pt"
    path.write_bytes(flip_a_tensor_byte(_saved(path)))
    loaded = torch.load(path, weights_only=False)["state"]["w"]
    assert int((loaded != torch.arange(4096, dtype=torch.float32)).sum()) == 1


def test_an_intact_checkpoint_passes_and_a_flipped_byte_is_named(tmp_path: Path) -> None:
    path = tmp_path / "ck.pt"
    data = _saved(path)
    assert verify_checkpoint(path) is True
    path.write_bytes(flip_a_tensor_byte(data))
    with pytest.raises(CorruptCheckpointError) as caught:
        verify_checkpoint(str(path), [(0, 10)])
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        largest = max((i for i in archive.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
    assert caught.value.record == largest.filename
    assert str(caught.value).startswith(f"checkpoint {path} is corrupt: its record {largest.filename} fails")
    assert str(caught.value.naming("s3://b/ck.pt")).startswith("checkpoint s3://b/ck.pt is corrupt")


def test_a_damaged_record_header_is_corrupt_and_a_file_that_is_not_a_zip_is_left_to_the_loader(
        tmp_path: Path) -> None:
    path = tmp_path / "ck.pt"
    data = bytearray(_saved(path))
    with zipfile.ZipFile(io.BytesIO(bytes(data))) as archive:
        first = archive.infolist()[1]
    data[first.header_offset:first.header_offset + 4] = b"XXXX"  # its local header's signature
    path.write_bytes(bytes(data))
    with pytest.raises(CorruptCheckpointError):
        verify_checkpoint(path)
    legacy = tmp_path / "legacy.pt"
    torch.save(torch.ones(3), legacy, _use_new_zipfile_serialization=False)
    assert verify_checkpoint(legacy) is True


def test_composer_calls_the_check_and_a_users_own_validation_function_is_kept(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from composer.utils.checkpoint import safe_torch_load

    path = tmp_path / "ck.pt"
    path.write_bytes(flip_a_tensor_byte(_saved(path)))
    monkeypatch.delenv(CHECKPOINT_VALIDATION_VARIABLE, raising=False)
    assert use_checkpoint_verification() is True and os.environ[CHECKPOINT_VALIDATION_VARIABLE] == VERIFIER
    with pytest.raises(CorruptCheckpointError):
        safe_torch_load(str(path))
    monkeypatch.setenv(CHECKPOINT_VALIDATION_VARIABLE, "mine.check")
    assert use_checkpoint_verification() is False and os.environ[CHECKPOINT_VALIDATION_VARIABLE] == "mine.check"


def test_composer_loading_a_corrupt_checkpoint_names_it_and_not_its_temporary_copy(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Composer checks the copy it made in a temporary folder (``rank0_checkpoint``); the error names the file the
    load was asked for, formatted for rank 0 (``composer_compat.checkpoint_being_loaded``)."""
    from composer.core import State
    from composer.devices import DeviceCPU
    from composer.loggers import Logger
    from composer.models import ComposerClassifier
    from composer.utils.checkpoint import load_checkpoint

    from pike_stream.train.composer_compat import checkpoint_being_loaded

    path = tmp_path / "ep0-ba4-rank0.pt"
    path.write_bytes(flip_a_tensor_byte(_saved(path)))
    monkeypatch.setenv(CHECKPOINT_VALIDATION_VARIABLE, VERIFIER)
    state = State(model=ComposerClassifier(torch.nn.Linear(2, 2), num_classes=2), rank_zero_seed=0, run_name="r",
                  device=DeviceCPU())
    with pytest.raises(CorruptCheckpointError) as caught:
        load_checkpoint(str(tmp_path / "ep0-ba4-rank{rank}.pt"), state, Logger(state), progress_bar=False)
    assert caught.value.path == str(path)
    assert str(caught.value).startswith(f"checkpoint {path} is corrupt: its record ")
    assert checkpoint_being_loaded() is None  # outside Composer's loader
