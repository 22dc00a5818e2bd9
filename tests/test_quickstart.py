"""`make quickstart`, the README's first command, run as a user would (shortened training) on its own server:
once, again (a finished run is reported, not an error), from an empty run folder (a second clone: the
checkpoint and the metrics come from S3), and after the server was stopped (it restarts with its data)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_make_quickstart(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "S3_"))}
    env["PIKE_STREAM_HOME"] = str(tmp_path / "home")  # its own embedded S3 server and caches
    if not (ROOT / ".venv" / "bin" / "pike-stream").exists():
        pytest.skip("make quickstart runs from the repository's .venv (created by `make test`)")
    pike_stream = str(ROOT / ".venv" / "bin" / "pike-stream")

    def quickstart(run_folder: str) -> str:
        overrides = (f"max_duration=12ba eval_interval=12ba save_interval=6ba algorithms.pike.warmup_steps=2 "
                     f"algorithms.pike.update_interval=4 run_folder={tmp_path / run_folder}")
        done = subprocess.run(["make", "--no-print-directory", "quickstart", f"DATA={tmp_path / 'data'}",
                               f"QUICKSTART_ARGS={overrides}"], cwd=ROOT, env=env, capture_output=True,
                              text=True, timeout=900)
        output = done.stdout + done.stderr
        assert done.returncode == 0, output[-5000:]
        for domain in ("en", "de", "fr", "es", "ru", "code"):  # the table of learned weights and losses
            assert f"| {domain} |" in output, output[-3000:]
        assert "mean / worst" in output
        assert (tmp_path / run_folder / "weights.png").stat().st_size > 0
        assert not (ROOT / "s3:").exists(), "Composer's local copy of the remote checkpoint was left behind"
        return output

    def table(output: str) -> str:
        return output[output.index("| domain |"):output.index("mean / worst")]

    try:
        first = quickstart("run")
        assert "embedded S3 server started" in first and "pike-stream s3 stop" in first
        assert "nothing to train" not in first
        again = quickstart("run")                      # the same clone: the finished run is reported
        elsewhere = quickstart("run-second-clone")     # an empty run folder: checkpoint and metrics from S3
        subprocess.run([pike_stream, "s3", "stop", "--grace", "0"], env=env, capture_output=True, timeout=120,
                       check=True)
        restarted = quickstart("run")                  # the server restarts on its data
    finally:
        subprocess.run([pike_stream, "s3", "stop", "--grace", "0"], env=env, capture_output=True, timeout=120)
    assert "embedded S3 server already running" in again and "embedded S3 server started" in restarted
    for output in (again, elsewhere, restarted):
        assert "the run already trained 12 of max_duration=12ba steps" in output
        assert table(output) == table(first)
    assert "fetched the run's metrics" in elsewhere
    print(first[-2000:], file=sys.stderr)
