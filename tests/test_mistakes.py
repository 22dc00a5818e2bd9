"""Every mistake a new user makes is answered by one line: the CLI run as the user runs it (a subprocess of
``python -m pike_stream``), against this session's embedded S3 server or a wrong endpoint.

Each case asserts: a non-zero exit status, exactly one non-empty line on stderr that names the thing at fault
(file, key, bucket, variable) and what to do, no traceback, and nothing half-written. ``MISTAKES`` and
the three Ctrl-C tests are the README's Troubleshooting table: keep the two in step.

Ctrl-C is sent as a terminal sends it, to the command's whole process group. What the interrupted command
printed before it (its own timestamped progress log, tqdm's progress bar, Python warnings of the libraries
it uses, and torch's C++ warnings such as the one its garbage collector may print while Composer builds a
Trainer) is filtered out explicitly by :func:`_message_lines`; the message is then the only line left.
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import yaml

from pike_stream.storage import EmbeddedS3, s3_client
from pike_stream.train.config import config_from_dict
from tests.checkpoints import flip_a_tensor_byte
from tests.mds_data import write_domain

REPO = Path(__file__).resolve().parents[1]
DOMAINS = ("a", "b")
MISSING_BUCKET = "no-such-bucket-here"
TRAIN, CONVERT = "train", "convert"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _config(bucket: str) -> dict[str, Any]:
    """A tiny run over the synthetic domains of ``bucket``, its checkpoints on S3 (as the quickstart's)."""
    return {
        "run_name": "tiny",
        "max_seq_len": 16,
        "global_train_batch_size": 4,
        "max_duration": "4ba",
        "model": {"n_layer": 1, "n_embd": 16, "n_head": 2, "vocab_size": 1000},
        "scheduler": {"name": "cosine_with_warmup", "t_warmup": "1ba"},
        "train_loader": {"domains": [{"name": n, "remote": f"s3://{bucket}/{n}", "split": "train"} for n in DOMAINS]},
        "loggers": {"console": False},
        "save_folder": f"s3://{bucket}/checkpoints/{{run_name}}",
        "save_interval": "1ba",
        "autoresume": True,
    }


@pytest.fixture(scope="module")
def world(s3_server: EmbeddedS3, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimpleNamespace]:
    """A bucket with two small domains, a config that trains on them, and the environment of the CLI."""
    root = tmp_path_factory.mktemp("mistakes")
    bucket = f"mistakes-{uuid.uuid4().hex[:12]}"
    s3_server.create_bucket(bucket)
    client = s3_client(s3_server.settings)
    for code, name in enumerate(DOMAINS):
        folder = write_domain(str(root / "data" / name / "train"), name, 40, code=code, seq_len=16)
        for path in Path(folder).iterdir():
            client.upload_file(str(path), bucket, f"{name}/train/{path.name}")
    config = root / "tiny.yaml"
    config.write_text(yaml.safe_dump(_config(bucket), sort_keys=False))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "S3_"))}
    env.update(s3_server.env())
    env["PIKE_STREAM_HOME"] = str(root / "home")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    yield SimpleNamespace(root=root, bucket=bucket, config=config, env=env, server=s3_server)
    client.delete_bucket(Bucket=bucket)  # SeaweedFS deletes a non-empty bucket in one call


def _cli(world: SimpleNamespace, cwd: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    cwd.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen([sys.executable, "-m", "pike_stream", *args], cwd=cwd, env={**world.env, **(env or {})},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)


# ------------------------------------------------------------------------------------------- the table
# Each mistake: what the user typed (placeholders: {config}, {bucket}, {data}, {root}, {port}), what is set
# up before (a file, a saved run), the environment it runs in, and what its one line must say.
def _write(name: str, content: bytes) -> Callable[[SimpleNamespace, Path], None]:
    def setup(world: SimpleNamespace, cwd: Path) -> None:
        (cwd / name).write_bytes(content)
    return setup


def _previous_run(world: SimpleNamespace, cwd: Path) -> None:
    """runs/tiny/config.json as a run trained with lr 0.001 left it."""
    cfg = _config(world.bucket)
    cfg["optimizer"] = {"lr": 1.0e-3}
    (cwd / "runs" / "tiny").mkdir(parents=True)
    (cwd / "runs" / "tiny" / "config.json").write_text(json.dumps(asdict(config_from_dict(cfg)), indent=1))


MISTAKES: list[tuple[str, list[str], Callable[..., None] | None, dict[str, str], list[str]]] = [
    # id, command line, setup, environment, what the line names
    ("config-missing", [TRAIN, "yamls/quickstart.ymal"], None, {},
     ["cannot read the config yamls/quickstart.ymal", "No such file or directory"]),
    ("config-is-a-folder", [TRAIN, "{root}"], None, {}, ["cannot read the config", "Is a directory"]),
    ("config-not-text", [TRAIN, "run.yaml"], _write("run.yaml", b"\x89PNG\r\n\x1a\n\x00\xff\xfe"), {},
     ["cannot read the config run.yaml", "not UTF-8"]),
    ("yaml-syntax", [TRAIN, "run.yaml"], _write("run.yaml", b"run_name: x\nmodel: {n_layer: 2\nseed: 1\n"), {},
     ["run.yaml, line 3, column 5: invalid YAML", "started at line 2", "fix the syntax there"]),
    ("yaml-indentation", [TRAIN, "run.yaml"], _write("run.yaml", b"run_name: x\n  seed: 1\n"), {},
     ["run.yaml, line 2, column 7: invalid YAML", "mapping values are not allowed here"]),
    ("unknown-key", [TRAIN, "{config}", "max_duraton=8ba"], None, {},
     ["max_duraton: unknown key", "did you mean 'max_duration'?"]),
    ("wrong-type", [TRAIN, "{config}", "global_train_batch_size=sixteen"], None, {},
     ["global_train_batch_size: expected int, got 'sixteen'"]),
    ("impossible-value", [TRAIN, "{config}", "model.n_head=0"], None, {}, ["model.n_head: must be positive, got 0"]),
    ("epochs", [TRAIN, "{config}", "max_duration=1ep"], None, {}, ["max_duration: '1ep' is in epochs", "100ba"]),
    ("override-without-value", [TRAIN, "{config}", "max_duration"], None, {},
     ["override 'max_duration' is not key=value"]),
    ("domain-path-missing", [TRAIN, "{config}", "train_loader.domains.1.remote=null",
                             "train_loader.domains.1.local={root}/nowhere"], None, {},
     ["train_loader.domains.1 ('b'): the folder", "nowhere/train does not exist", "pike-stream convert"]),
    ("domain-prefix-missing", [TRAIN, "{config}", "train_loader.domains.0.remote=s3://{bucket}/en"], None, {},
     ["train_loader.domains.0 ('a'): no domain at s3://{bucket}/en/train", "manifest.json is missing"]),
    ("domain-bucket-missing", [TRAIN, "{config}", f"train_loader.domains.0.remote=s3://{MISSING_BUCKET}/a"], None,
     {}, [f"bucket '{MISSING_BUCKET}' does not exist", "create it or fix the s3:// URL"]),
    ("save-folder-bucket-missing", [TRAIN, "{config}", f"save_folder=s3://{MISSING_BUCKET}/checkpoints"], None, {},
     [f"bucket '{MISSING_BUCKET}' does not exist", "create it or fix the s3:// URL"]),
    ("endpoint-unreachable", [TRAIN, "{config}"], None, {"S3_ENDPOINT_URL": "http://127.0.0.1:{port}"},
     ["cannot reach the S3 endpoint http://127.0.0.1:{port}", "check S3_ENDPOINT_URL"]),
    ("endpoint-not-a-url", [TRAIN, "{config}"], None, {"S3_ENDPOINT_URL": "localhost:8333"},
     ["S3_ENDPOINT_URL='localhost:8333' is not a valid URL"]),
    ("wrong-secret-key", [TRAIN, "{config}"], None, {"AWS_SECRET_ACCESS_KEY": "not-the-secret-key"},
     ["rejected the secret key", "check AWS_SECRET_ACCESS_KEY"]),
    ("unknown-access-key", [TRAIN, "{config}"], None, {"AWS_ACCESS_KEY_ID": "NOSUCHKEY"},
     ["does not know access key id 'NOSUCHKEY'", "check AWS_ACCESS_KEY_ID"]),
    ("run-name-reused", [TRAIN, "{config}"], _previous_run, {},
     ["run_name 'tiny'", "optimizer.lr (0.001 → 0.0006)", "run_name=tiny-2", "save_overwrite=true"]),
    ("convert-source-missing", [CONVERT, "{root}/corpus/en", "s3://{bucket}/converted/en", "--domain", "en",
                                "--seq-len", "16"], None, {}, ["input", "corpus/en does not exist"]),
    ("convert-bucket-missing", [CONVERT, "{config}", f"s3://{MISSING_BUCKET}/mds/a", "--domain", "a",
                                "--seq-len", "16"],
     None, {}, [f"bucket '{MISSING_BUCKET}' does not exist", "create it or fix the s3:// URL"]),
    ("convert-mds-folder", [CONVERT, "{data}", "s3://{bucket}/converted/again", "--domain", "a", "--seq-len", "16"],
     None, {}, ["data/a/train already holds MDS shards (index.json)", "name it in train_loader.domains"]),
]


def _fill(text: str, world: SimpleNamespace, port: int) -> str:
    return text.format(config=world.config, bucket=world.bucket, data=world.root / "data" / "a" / "train",
                       root=world.root, port=port)


@pytest.mark.parametrize("case", MISTAKES, ids=[case[0] for case in MISTAKES])
def test_a_mistake_is_one_line(world: SimpleNamespace, case: tuple) -> None:
    name, argv, setup, env, names = case
    cwd = world.root / "cases" / name
    cwd.mkdir(parents=True)
    if setup is not None:
        setup(world, cwd)
    before = sorted(p.relative_to(cwd) for p in cwd.rglob("*"))
    saved = (cwd / "runs" / "tiny" / "config.json").read_bytes() if (cwd / "runs" / "tiny").exists() else None
    port = _free_port()
    proc = _cli(world, cwd, *(_fill(a, world, port) for a in argv),
                env={k: _fill(v, world, port) for k, v in env.items()})
    out, err = proc.communicate(timeout=240)
    output = out + err
    assert proc.returncode == (2 if argv[0] == TRAIN else 1), f"exit status {proc.returncode}:\n{output}"
    assert "Traceback" not in output, output
    lines = [line for line in err.splitlines() if line.strip() and not _TORCH_WARNING.match(line)]
    assert len(lines) == 1, f"expected one line on stderr, got {len(lines)}:\n{err}"
    for expected in names:
        assert _fill(expected, world, port) in lines[0], (expected, lines[0])
    assert world.env["AWS_SECRET_ACCESS_KEY"] not in output
    # Nothing half-written: no run folder, checkpoint or converted output appeared; a saved run is untouched.
    assert sorted(p.relative_to(cwd) for p in cwd.rglob("*")) == before
    if saved is not None:
        assert (cwd / "runs" / "tiny" / "config.json").read_bytes() == saved
    listed = s3_client(world.server.settings).list_objects_v2(Bucket=world.bucket, Prefix="converted/")
    assert listed.get("KeyCount", 0) == 0


# ------------------------------------------------------------------------------------------- Ctrl-C
_LOG_LINE = re.compile(r"^\d\d:\d\d:\d\d (pike-stream|rank\d+) pike_stream[\w.]*: ")  # our progress log
_TQDM = re.compile(r"^(convert|Downloading) \S+:")  # the converter's and Composer's checkpoint download's progress bars
_WARNING = re.compile(r"^\S+\.py:\d+: \w*Warning: ")  # Python warnings (Composer's), and their next lines
_TORCH_WARNING = re.compile(r"^(\[rank\d+\]:)?\[W\d{4} [\d:.]+ \S+\] Warning: ")  # torch's C++ warnings (c10 log)


def _message_lines(err: str) -> list[str]:
    """stderr without the known noise of a command that was busy when Ctrl-C came (see the module doc), or
    that was downloading a checkpoint."""
    lines, in_warning = [], False
    for line in re.split(r"[\r\n]+", err):
        if not line.strip() or _LOG_LINE.match(line) or _TQDM.match(line) or _TORCH_WARNING.match(line):
            in_warning = False
            continue
        if _WARNING.match(line):
            in_warning = True
            continue
        if in_warning and not line.startswith("pike-stream"):  # a warning's continuation and source lines
            continue
        in_warning = False
        lines.append(line)
    return lines


def test_message_lines_drops_known_noise_and_keeps_every_other_line() -> None:
    err = ("06:00:18 pike-stream pike_stream.train.builder: training 8 steps\n"
           "[rank0]:[W1207 06:00:19.081714406 PyInterpreter.cpp:263] Warning: Deallocating Tensor that still has "
           "live PyObject references. (function decref)\n"
           "/site-packages/composer/trainer.py:243: UserWarning: something\n  warnings.warn((\n"
           "Downloading checkpoints/x/ep0-ba4-rank0.pt:   3%|  | 9.25k/271k\r"
           "pike-stream train: error: checkpoint s3://b/x.pt is corrupt\n"
           "[W1207 06:00:19] an unexpected line\n")
    assert _message_lines(err) == ["pike-stream train: error: checkpoint s3://b/x.pt is corrupt",
                                   "[W1207 06:00:19] an unexpected line"]


def _interrupt_when(proc: subprocess.Popen, ready: Callable[[], bool], timeout: float = 240) -> tuple[str, str]:
    """Ctrl-C (SIGINT to the process group, as a terminal sends it) once ``ready()``; the output."""
    deadline = time.monotonic() + timeout
    try:
        while not ready():
            assert proc.poll() is None, f"ended before it could be interrupted:\n{proc.communicate()[1][-4000:]}"
            assert time.monotonic() < deadline, "never got ready to be interrupted"
            time.sleep(0.1)
        os.killpg(proc.pid, signal.SIGINT)
        out, err = proc.communicate(timeout=180)
    except BaseException:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        raise
    assert proc.returncode == 130, f"exit status {proc.returncode}:\n{err[-4000:]}"
    assert "Traceback" not in out + err, err
    return out, err


def _keys(world: SimpleNamespace, prefix: str) -> list[str]:
    listed = s3_client(world.server.settings).list_objects_v2(Bucket=world.bucket, Prefix=prefix)
    return [obj["Key"] for obj in listed.get("Contents", [])]


def _text(path: Path, megabytes: float, seed: int) -> Path:
    rng = random.Random(seed)
    words = ["man", "page", "option", "print", "file", "der", "une", "для", "def", "return", "\n"]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(" ".join(rng.choice(words) for _ in range(int(megabytes * 2**20 / 5))))
    return path


def _interrupt_on_progress(proc: subprocess.Popen, bar: str, timeout: float = 240) -> str:
    """Ctrl-C once the progress bar ``bar`` on stderr shows between 1 and 90 percent; stderr.

    Follows stderr as it is written, so the moment does not depend on how fast this machine converts."""
    chunks: list[str] = []
    progressed = threading.Event()
    pattern = re.compile(re.escape(bar) + r":\s+(\d+)%")

    def follow() -> None:
        while data := os.read(proc.stderr.fileno(), 65536):
            chunks.append(data.decode("utf-8", "replace"))
            if any(1 <= int(p) <= 90 for p in pattern.findall(chunks[-1])):
                progressed.set()

    reader = threading.Thread(target=follow, daemon=True)
    reader.start()
    try:
        assert progressed.wait(timeout), f"no progress to interrupt:\n{''.join(chunks)[-4000:]}"
        os.killpg(proc.pid, signal.SIGINT)
        proc.wait(timeout=180)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        reader.join(timeout=30)
    err = "".join(chunks)
    assert proc.returncode == 130, f"exit status {proc.returncode}:\n{err[-4000:]}"
    assert "Traceback" not in err + proc.stdout.read(), err
    return err


def test_ctrl_c_during_convert_leaves_nothing_and_a_rerun_converts(world: SimpleNamespace) -> None:
    cwd = world.root / "interrupt-convert"
    for i in range(24):  # 24 documents of 1 MB: the progress bar moves 4% at a time
        source = _text(cwd / "corpus" / f"part-{i:02d}.txt", 1, seed=i)
    command = [CONVERT, str(source.parent), f"s3://{world.bucket}/converted/big", "--domain", "big", "--seq-len", "64",
               "--size-limit", "0.25"]
    err = _interrupt_on_progress(_cli(world, cwd, *command), "convert big")  # shards are being uploaded
    assert _message_lines(err) == [f"pike-stream convert: {source.parent} read as text (24 files)",
                                   f"pike-stream convert: interrupted; the partial output was removed, nothing "
                                   f"half-written is left at s3://{world.bucket}/converted/big: rerun the same "
                                   f"command to convert it"], err
    assert _keys(world, "converted/big/") == []
    rerun = _cli(world, cwd, *command)
    out, err = rerun.communicate(timeout=300)
    assert rerun.returncode == 0, err[-4000:]
    assert "converted/big/manifest.json" in _keys(world, "converted/big/")
    s3_client(world.server.settings).delete_objects(
        Bucket=world.bucket, Delete={"Objects": [{"Key": k} for k in _keys(world, "converted/")]})


def test_ctrl_c_during_corpus_convert_leaves_no_half_written_domain(world: SimpleNamespace) -> None:
    cwd = world.root / "interrupt-corpus"
    for i, domain in enumerate(("a-small", "b-big")):  # converted in this order
        for split in ("train", "val"):
            lines = (json.dumps({"text": line}) for line in
                     _text(cwd / "text" / f"{domain}-{split}.txt", 0.2 if domain == "a-small" else 8, i).read_text()
                     .split("\n"))
            (cwd / "corpus" / "raw" / domain).mkdir(parents=True, exist_ok=True)
            (cwd / "corpus" / "raw" / domain / f"{split}.jsonl").write_text("\n".join(lines) + "\n")
    mds = cwd / "corpus" / "mds"
    proc = _cli(world, cwd, "corpus", "convert", "corpus", "--seq-len", "64")
    _, err = _interrupt_when(proc, lambda: (mds / "b-big" / ".train.partial").exists())  # a-small is done
    lines = _message_lines(err)
    assert len(lines) == 1 and lines[0].startswith("pike-stream corpus convert: interrupted;"), err
    assert "--overwrite" in lines[0]
    # Every domain folder left is complete (its manifest.json written last); no staging folder remains.
    assert (mds / "a-small" / "train" / "manifest.json").exists()
    assert not (mds / "b-big" / "train").exists() or (mds / "b-big" / "train" / "manifest.json").exists()
    assert not (mds / "b-big" / "val").exists()
    assert [p for p in mds.rglob(".*")] == []


def test_ctrl_c_during_training_resumes_from_the_last_checkpoint(world: SimpleNamespace) -> None:
    """Checkpoints in a local folder. (With an ``s3://`` save_folder the message and the resume are the same,
    but Ctrl-C while Composer is still starting an upload process can make that process print a traceback
    of its own: not asserted here.)"""
    cwd = world.root / "interrupt-train"
    checkpoints = cwd / "checkpoints"
    command = [TRAIN, str(world.config), "run_name=interrupted", f"save_folder={checkpoints}", "save_interval=2ba",
               "max_duration=100000ba"]
    proc = _cli(world, cwd, *command)
    _, err = _interrupt_when(proc, lambda: (checkpoints / "ep0-ba4-rank0.pt").exists())
    lines = _message_lines(err)
    assert len(lines) == 1, err
    found = re.fullmatch(r"pike-stream train: interrupted at step (\d+) of 100000; rerun the same command to resume "
                         rf"from the last checkpoint in {checkpoints}", lines[0])
    assert found, lines[0]
    # The same command resumes (here with a max_duration it has passed: it says so and reports, exit 0).
    rerun = _cli(world, cwd, *command[:-1], "max_duration=1ba")
    out, err = rerun.communicate(timeout=300)
    assert rerun.returncode == 0, err[-4000:]
    resumed = re.search(r"resumed at step (\d+) of 1", err)
    assert resumed and 4 <= int(resumed.group(1)) <= int(found.group(1)), err[-4000:]
    assert "nothing to train" in out and "Traceback" not in out + err


_FIT_SCRIPT = """
import gc, os, signal, sys
import composer.core.engine  # Composer's SIGINT handler: sys.exit(130)
from pike_stream.train.cli import _fit_interruptibly

def broken_off():
    try:
        yield
    finally:
        raise RuntimeError("a finalizer of code the interrupt broke off")

def fit():
    if sys.argv[1] == "plain-error":
        raise RuntimeError("a real failure")
    pending = broken_off()
    next(pending)
    try:
        os.kill(os.getpid(), signal.SIGINT)
        for _ in range(10**9):  # the handler runs at the next bytecode
            pass
    except SystemExit:
        # as torch's vmap does on unwinding (an INTERNAL ASSERT): another error comes out instead
        del pending
        gc.collect()
        raise RuntimeError("layerId == dynamic_layer.layerId() INTERNAL ASSERT FAILED") from None

print("interrupted" if _fit_interruptibly(fit) else "finished")
"""


@pytest.mark.parametrize("case", ["error-after-ctrl-c", "plain-error"])
def test_ctrl_c_that_library_code_turns_into_another_error_is_still_ctrl_c(case: str) -> None:
    """Composer raises SystemExit(130) wherever Ctrl-C lands; inside torch.vmap (transformers' attention masks)
    that can come out as a RuntimeError, with unraisable errors from the generators it broke off. That is
    still the interruption, told in one line; a failure without Ctrl-C is still a failure."""
    proc = subprocess.run([sys.executable, "-c", _FIT_SCRIPT, case], capture_output=True, text=True, timeout=120,
                          cwd=REPO)
    if case == "plain-error":
        assert proc.returncode == 1 and "RuntimeError: a real failure" in proc.stderr, proc.stderr
        return
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "interrupted"
    assert "Traceback" not in proc.stderr and "Exception ignored" not in proc.stderr, proc.stderr


def test_the_config_knows_streamings_shuffle_algorithms() -> None:
    """The config names them itself (reading a config does not import streaming): they must stay equal."""
    from streaming.base.shuffle import algos

    from pike_stream.train.config import _SHUFFLE_ALGOS

    assert sorted(_SHUFFLE_ALGOS) == sorted(algos)


# ------------------------------------------------------------------------------------------- damaged checkpoints
@pytest.mark.parametrize("where", ["local", "s3"])
def test_a_checkpoint_with_flipped_bytes_is_refused_by_name(world: SimpleNamespace, where: str) -> None:
    """A run trained 4 steps; a byte of its latest checkpoint's weights is flipped on disk or in the bucket.
    Resuming it must not load wrong weights silently: one line names the checkpoint, nothing is trained."""
    cwd = world.root / f"corrupt-{where}"
    run = f"corrupt-{where}"
    local = cwd / "checkpoints"
    save = [f"save_folder={local}"] if where == "local" else []
    first = _cli(world, cwd, TRAIN, str(world.config), f"run_name={run}", *save)
    out, err = first.communicate(timeout=300)
    assert first.returncode == 0, err[-4000:]
    client = s3_client(world.server.settings)
    if where == "local":
        target = local / os.readlink(local / "latest-rank0.pt")
        target.write_bytes(flip_a_tensor_byte(target.read_bytes()))
        named = str(target)
    else:
        prefix = f"checkpoints/{run}/"
        key = client.get_object(Bucket=world.bucket, Key=prefix + "latest-rank0.pt.symlink")["Body"].read().decode()
        body = client.get_object(Bucket=world.bucket, Key=key)["Body"].read()
        client.put_object(Bucket=world.bucket, Key=key, Body=flip_a_tensor_byte(body))
        named = f"s3://{world.bucket}/{key}"

    def saved() -> list[str]:
        if where == "local":
            return sorted(p.name for p in local.iterdir())
        listed = client.list_objects_v2(Bucket=world.bucket, Prefix=f"checkpoints/{run}/")
        return sorted(o["Key"] for o in listed["Contents"])

    before = saved()
    rerun = _cli(world, cwd, TRAIN, str(world.config), f"run_name={run}", "max_duration=8ba", *save)
    out, err = rerun.communicate(timeout=300)
    assert rerun.returncode == 2, err[-4000:]
    lines = _message_lines(err)
    assert len(lines) == 1 and "Traceback" not in out + err, err[-4000:]
    assert f"checkpoint {named} is corrupt" in lines[0] and "fails the CRC-32 check" in lines[0], lines[0]
    assert "nothing was loaded or trained" in lines[0]
    assert saved() == before, "no checkpoint was written past the damaged one"
