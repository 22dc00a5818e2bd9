"""pike_stream.report: plots and a markdown table from a run's metrics.jsonl."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pike_stream.report import main, summarize, write_report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _write_metrics(folder: Path) -> Path:
    """A small run: two mixed domains, a validation-only one, two evaluations, two PiKE refreshes."""
    records = []
    for step in range(6):
        w = 0.5 + 0.04 * step
        records.append({"step": step, "pike/weight/en": w, "pike/weight/code": 1 - w})
        records.append({"step": step, "loss/train/total": 5.0 - 0.1 * step})
    records.insert(3, {"step": 0, "pike/min_cosine": 0.25, "pike/grad_sq/en": 1.0})
    records.append({"step": 3, "pike/min_cosine": -0.05})
    for step, base in ((3, 4.0), (6, 3.0)):
        records.append({"step": step, "metrics/en/LanguageCrossEntropy": base,
                        "metrics/en/LanguagePerplexity": 2.718281828 ** base,
                        "metrics/code/LanguageCrossEntropy": base + 0.5,
                        "metrics/fr/LanguageCrossEntropy": base + 1.0})
    records.append({"step": 5, "pike/weight/en": 0.9, "pike/weight/code": 0.1})  # a re-logged step: last wins
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "metrics.jsonl", "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in records)
    return folder


def test_summary_holds_the_final_values(tmp_path: Path) -> None:
    from pike_stream.train.records import read_metrics

    summary = summarize(read_metrics(_write_metrics(tmp_path / "run")))
    assert summary.domains == ["en", "code", "fr"]
    assert summary.final_weights() == {"en": 0.9, "code": 0.1}
    assert [step for step, _ in summary.weights["en"]] == list(range(6))
    assert summary.final_val_loss() == {"en": 3.0, "code": 3.5, "fr": 4.0}
    assert summary.min_cosine == [(0, 0.25), (3, -0.05)]
    assert summary.train_loss[-1] == (5, pytest.approx(4.5))


def test_report_files_are_written(tmp_path: Path) -> None:
    run = _write_metrics(tmp_path / "run")
    summary, paths = write_report(run)
    assert paths == {"weights": run / "weights.png", "losses": run / "losses.png", "report": run / "report.md"}
    for name in ("weights", "losses"):
        assert paths[name].read_bytes()[:8] == PNG_MAGIC and paths[name].stat().st_size > 5000
    text = paths["report"].read_text()
    assert "| en | 0.9000 | 3.0000 | 20.09 |" in text
    assert "| code | 0.1000 | 3.5000 | – |" in text
    assert "| fr | – | 4.0000 | – |" in text
    assert "| **mean / worst** | | 3.5000 / 4.0000 | |" in text
    assert "from -0.050 to 0.250" in text
    assert summary.table() in text


def test_cli_prints_the_table_and_paths(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = _write_metrics(tmp_path / "run")
    out = tmp_path / "out"
    assert main([str(run), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "| en | 0.9000 |" in printed and f"weights: {out / 'weights.png'}" in printed
    assert (out / "losses.png").exists() and not (run / "losses.png").exists()


def test_cli_names_a_folder_without_metrics(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([str(tmp_path)]) == 2
    assert f"no metrics file at {tmp_path / 'metrics.jsonl'}" in capsys.readouterr().err
