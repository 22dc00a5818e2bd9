"""The README's training commands run as written, on 2 ranks: ``pike-stream corpus convert … --dest
s3://pike-quickstart/mds``, ``composer -n 2 -m pike_stream.train yamls/quickstart.yaml`` (shortened by
overrides) and ``pike-stream report runs/quickstart``, in a folder laid out as the repository, against this
session's embedded S3 server. (The 1-rank ``pike-stream train yamls/quickstart.yaml`` runs in
``tests/test_quickstart.py`` through ``make quickstart``; ``pike-stream corpus build`` needs apt-get and the
network, so the corpus here is a small hand-written one in its layout.)

The quickstart sets no ``device_train_microbatch_size``: it defaults to the per-rank batch (8 of 16 on 2 ranks).
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pike_stream.storage import EmbeddedS3, s3_client

REPO = Path(__file__).resolve().parents[1]
QUICKSTART_DOMAINS = ("en", "de", "fr", "es", "ru", "code")
DIST_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "NODE_RANK", "MASTER_ADDR", "MASTER_PORT")


def _corpus(root: Path) -> None:
    """``root/raw/<domain>/{train,val}.jsonl`` as ``pike-stream corpus build`` lays it out, small."""
    rng = random.Random(0)
    for i, domain in enumerate(QUICKSTART_DOMAINS):
        words = [f"{domain}{j}" for j in range(50 + 10 * i)] + ["the", "of", "def", "return", "."]
        for split, documents in (("train", 120), ("val", 40)):
            folder = root / "raw" / domain
            folder.mkdir(parents=True, exist_ok=True)
            with open(folder / f"{split}.jsonl", "w") as f:
                for _ in range(documents):
                    f.write(json.dumps({"text": " ".join(rng.choice(words) for _ in range(60))}) + "\n")


@pytest.mark.slow
def test_the_two_rank_quickstart_command_runs_as_written(s3_server: EmbeddedS3, tmp_path: Path) -> None:
    composer = Path(sys.executable).parent / "composer"
    pike_stream = Path(sys.executable).parent / "pike-stream"
    if not composer.exists() or not pike_stream.exists():
        pytest.skip("needs the composer and pike-stream commands of the environment")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "S3_")) and k not in DIST_ENV}
    env.update(s3_server.env())
    env["PIKE_STREAM_HOME"] = str(tmp_path / "home")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    (tmp_path / "yamls").mkdir()
    shutil.copy(REPO / "yamls" / "quickstart.yaml", tmp_path / "yamls" / "quickstart.yaml")
    _corpus(tmp_path / "data" / "corpus")
    s3_server.create_bucket("pike-quickstart")

    def run(*command: str, timeout: float = 600) -> str:
        done = subprocess.run(command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True, timeout=timeout)
        assert done.returncode == 0, f"{' '.join(command)} failed ({done.returncode}):\n{done.stdout[-6000:]}"
        return done.stdout

    try:
        run(str(pike_stream), "corpus", "convert", "data/corpus", "--seq-len", "128", "--dest",
            "s3://pike-quickstart/mds")
        output = run(str(composer), "-n", "2", "-m", "pike_stream.train", "yamls/quickstart.yaml",
                     "max_duration=4ba", "eval_interval=4ba")
        assert "training 4 steps of 16 sequences (8 per rank on 2 ranks)" in output, output[-4000:]
        for domain in QUICKSTART_DOMAINS:  # the table of learned weights and validation losses
            assert f"| {domain} |" in output, output[-4000:]
        assert "weights: runs/quickstart/weights.png" in output and "Traceback" not in output
        report = run(str(pike_stream), "report", "runs/quickstart")
        assert "| en |" in report
        assert (tmp_path / "runs" / "quickstart" / "weights.png").stat().st_size > 0
    finally:
        s3_client(s3_server.settings).delete_bucket(Bucket="pike-quickstart")
