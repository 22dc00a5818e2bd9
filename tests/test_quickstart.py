"""`make quickstart`, the README's first command, run as a user would (shortened training) on its own server."""

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
    overrides = (f"max_duration=12ba eval_interval=12ba save_interval=6ba algorithms.pike.warmup_steps=2 "
                 f"algorithms.pike.update_interval=4 run_folder={tmp_path / 'run'}")
    try:
        done = subprocess.run(["make", "--no-print-directory", "quickstart", f"DATA={tmp_path / 'data'}",
                               f"QUICKSTART_ARGS={overrides}"], cwd=ROOT, env=env, capture_output=True,
                              text=True, timeout=900)
    finally:
        subprocess.run([str(ROOT / ".venv" / "bin" / "pike-stream"), "s3", "stop", "--grace", "0"], env=env,
                       capture_output=True, timeout=120)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-5000:]
    for domain in ("en", "de", "fr", "es", "ru", "code"):  # the table of learned weights and losses
        assert f"| {domain} |" in output
    assert "mean / worst" in output
    assert (tmp_path / "run" / "weights.png").stat().st_size > 0
    assert (tmp_path / "run" / "metrics.jsonl").stat().st_size > 0
    print(output[-2000:], file=sys.stderr)
