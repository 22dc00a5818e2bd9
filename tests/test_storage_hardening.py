"""The embedded S3 server's security and life cycle under faults, against real ``weed`` processes.

* Without a key, no port the server opens on 127.0.0.1 lists, reads, writes, deletes or assigns, and
  its gRPC ports take only its own client certificate.
* Its files are the owner's only, even in a folder that existed with looser permissions.
* A start interrupted after spawning weed (SIGTERM, Ctrl-C, an exception) leaves no weed running.
* ``pike-stream s3 stop`` ends a server that is alive but does not answer (SIGSTOPped).
"""

from __future__ import annotations

import gc
import http.client
import json
import os
import signal
import socket
import ssl
import stat
import struct
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from pike_stream.storage import EmbeddedS3, s3_client
from pike_stream.storage.cli import main as s3_cli
from tests.processes import listening_ports, weed_pids

__all__: list[str] = []

pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads processes from Linux /proc")

_START_SCRIPT = "import sys; from pike_stream.storage.cli import main; sys.exit(main(sys.argv[1:]))"


def _kill_all(data_dir: Path) -> None:
    for pid in weed_pids(data_dir):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


@pytest.fixture
def data_dir(tmp_path: Path) -> Iterator[Path]:
    """A data folder for the test's own server; any weed left serving it is killed afterwards."""
    folder = tmp_path / "s3"
    yield folder
    _kill_all(folder)


def _file_ids(weed_dir: Path, collection: str) -> list[str]:
    """The file ids (``volume,needle+cookie``) of the needles in ``collection``'s volumes, read from the
    volume files themselves: what a request to the volume server would have to name."""
    fids = []
    for idx in sorted(weed_dir.glob(f"{collection}_*.idx")):
        volume = int(idx.stem.rsplit("_", 1)[1])
        index, data = idx.read_bytes(), idx.with_suffix(".dat").read_bytes()
        # An index entry: needle id (8 bytes), offset / 8 (4 bytes, or 5 in weed's "large disk" build), size (4).
        for entry in (17, 16):
            found = []
            for at in range(0, len(index) - entry + 1, entry):
                needle = struct.unpack(">Q", index[at : at + 8])[0]
                offset = struct.unpack(">I", index[at + 8 : at + 12])[0] + (index[at + 12] << 32 if entry == 17 else 0)
                size = struct.unpack(">i", index[at + entry - 4 : at + entry])[0]
                if offset and size > 0:
                    cookie, stored = struct.unpack(">IQ", data[offset * 8 : offset * 8 + 12].ljust(12, b"\0"))
                    if stored != needle:
                        break
                    found.append(f"{volume},{needle:x}{cookie:08x}")
            else:
                if len(index) % entry == 0:
                    fids += found
                    break
    return fids


def _request(port: int, method: str, path: str, body: bytes | None, headers: dict[str, str]) -> tuple[int, bytes]:
    """Status and body of one plain HTTP request; status 0 if the port did not answer in HTTP."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        connection.request(method, path, body=body, headers=headers)
        response = connection.getresponse()
        return response.status, response.read()
    except (OSError, http.client.HTTPException):
        return 0, b""
    finally:
        connection.close()


# ---------------------------------------------------------------------- security


def test_without_a_key_no_port_lists_reads_writes_deletes_or_assigns(data_dir: Path) -> None:
    """After `pike-stream s3 start --bucket b` and a put with the keys, plain HTTP without a key to every
    port weed opened (the recorded ones and any other it listens on) is refused, and the object is intact."""
    bucket, key, body = "guarded", "secret-object-name.bin", b"the-private-content-" + os.urandom(2000)
    assert s3_cli(["start", "--data-dir", str(data_dir), "--bucket", bucket]) == 0
    try:
        server = EmbeddedS3.attach(data_dir)
        assert server is not None and server.ports is not None and server.pid is not None
        client = s3_client(server.settings)
        client.put_object(Bucket=bucket, Key=key, Body=body)
        fids = _file_ids(data_dir / "weed", bucket)
        assert fids, "the object's needle was not found in the volume files"
        volume = fids[0].split(",")[0]
        new_fid = f"{volume},{uuid.uuid4().int % 2**40:x}1234abcd"
        recorded = set(json.loads(server.state_path.read_text())["ports"].values())
        ports = recorded | listening_ports(server.pid)
        assert set(vars(server.ports).values()) <= ports and len(ports) >= 8

        form = b'--xx\r\nContent-Disposition: form-data; name="file"; filename="x"\r\n\r\nplanted\r\n--xx--\r\n'
        multipart = {"Content-Type": "multipart/form-data; boundary=xx"}
        requests = {
            "list": [("GET", f"/buckets/{bucket}/"), ("GET", f"/{bucket}"), ("GET", f"/{bucket}?list-type=2"),
                     ("GET", "/buckets/?pretty=y"), ("GET", "/dir/status"), ("GET", "/vol/status")],
            "read": [("GET", f"/buckets/{bucket}/{key}"), ("GET", f"/{bucket}/{key}"),
                     *[("GET", f"/{fid}") for fid in fids], *[("GET", f"/{fid.replace(',', '/')}") for fid in fids]],
            "upload": [("POST", f"/buckets/{bucket}/planted.txt"), ("PUT", f"/buckets/{bucket}/planted.txt"),
                       ("PUT", f"/{bucket}/planted.txt"), ("POST", f"/{new_fid}"), ("PUT", f"/{new_fid}"),
                       ("POST", "/submit")],
            "delete": [("DELETE", f"/buckets/{bucket}/{key}"), ("DELETE", f"/{bucket}/{key}"),
                       *[("DELETE", f"/{fid}") for fid in fids], ("POST", f"/col/delete?collection={bucket}")],
            "assign": [("GET", "/dir/assign"), ("POST", "/dir/assign"), ("GET", f"/dir/assign?collection={bucket}"),
                       ("GET", f"/dir/lookup?volumeId={volume}")],
        }
        answered = []
        for port in sorted(ports):
            for kind, calls in requests.items():
                for method, path in calls:
                    upload = method in ("POST", "PUT")
                    status, reply = _request(port, method, path, form if upload else None, multipart if upload else {})
                    # The content anywhere, or the key's name in an answer to a request that did not name it.
                    leaked = body[:20] in reply or (key.encode() in reply and key not in path)
                    if 200 <= status < 400 or leaked:
                        answered.append(f"{kind}: {method} http://127.0.0.1:{port}{path} -> {status} {reply[:80]!r}")
        assert answered == [], "answered without a key:\n" + "\n".join(answered)

        # The object is intact and nothing was planted (checked with the key).
        assert client.get_object(Bucket=bucket, Key=key)["Body"].read() == body
        assert [obj["Key"] for obj in client.list_objects_v2(Bucket=bucket)["Contents"]] == [key]
        assert _file_ids(data_dir / "weed", bucket) == fids
    finally:
        assert s3_cli(["stop", "--data-dir", str(data_dir), "--grace", "0"]) == 0


def test_the_keys_still_do_everything(fresh_s3_server: EmbeddedS3, tmp_path: Path) -> None:
    """With the JWT keys and the HTTP APIs off, S3 with the keys still puts, lists, copies, deletes,
    uploads in parts and reads back in ranges."""
    from boto3.s3.transfer import TransferConfig

    client = s3_client(fresh_s3_server.settings)
    fresh_s3_server.create_bucket("works")
    big = os.urandom(12 * 2**20)
    source = tmp_path / "big.bin"
    source.write_bytes(big)
    parts = TransferConfig(multipart_threshold=5 * 2**20, multipart_chunksize=5 * 2**20)
    client.upload_file(str(source), "works", "parts/big.bin", Config=parts)
    client.put_object(Bucket="works", Key="small.txt", Body=b"small")
    client.copy_object(Bucket="works", Key="copy.txt", CopySource={"Bucket": "works", "Key": "small.txt"})
    assert client.get_object(Bucket="works", Key="parts/big.bin")["Body"].read() == big
    ranged = client.get_object(Bucket="works", Key="parts/big.bin", Range="bytes=6000000-6000099")["Body"].read()
    assert ranged == big[6_000_000:6_000_100]
    assert client.get_object(Bucket="works", Key="copy.txt")["Body"].read() == b"small"
    client.delete_object(Bucket="works", Key="small.txt")
    assert sorted(o["Key"] for o in client.list_objects_v2(Bucket="works")["Contents"]) == ["copy.txt", "parts/big.bin"]
    reader = s3_client(fresh_s3_server.read_only_settings)
    assert reader.get_object(Bucket="works", Key="copy.txt")["Body"].read() == b"small"


# ---------------------------------------------------------------------- file permissions


def test_files_are_private_even_in_a_folder_that_existed_looser(data_dir: Path) -> None:
    for folder in (data_dir, data_dir / "config", data_dir / "weed"):
        folder.mkdir(parents=True)
        folder.chmod(0o777)
    for name, mode in [("weed.log", 0o644), ("lock", 0o666), ("config/master.toml", 0o644), ("notes.txt", 0o664)]:
        (data_dir / name).write_text("from an earlier version\n")
        (data_dir / name).chmod(mode)
    server = EmbeddedS3(data_dir).start()
    try:
        server.create_bucket("private")
        s3_client(server.settings).put_object(Bucket="private", Key="k", Body=b"v")
        loose = []
        for path in [data_dir, *data_dir.iterdir(), *(data_dir / "config").iterdir()]:
            mode = stat.S_IMODE(path.lstat().st_mode)
            if mode != (0o700 if path.is_dir() else 0o600):
                loose.append(f"{path.relative_to(data_dir.parent)}: {mode:04o}")
        assert loose == []
        assert server.ports is not None
        sockets = [path for path in server.ports.local_sockets() if path.exists()]
        assert sockets and all(stat.S_IMODE(path.stat().st_mode) & 0o077 == 0 for path in sockets)
        names = {path.name for path in data_dir.iterdir()} | {path.name for path in (data_dir / "config").iterdir()}
        assert {"weed.log", "lock", "server.json", "credentials.json", "s3-identities.json", "security.toml"} <= names
        # The JWT keys are new at every start and never part of the log.
        security = (data_dir / "config" / "security.toml").read_text()
        assert 'key = ""' not in security
        lines = security.splitlines()
        keys = [line.split('"')[1] for line in lines if line.startswith("key = ") and ".pem" not in line]
        assert len(keys) == 4 and not any(k in (data_dir / "weed.log").read_text() for k in keys)
    finally:
        server.stop(grace_s=0.0)
    assert stat.S_IMODE((data_dir / "server.json").stat().st_mode) == 0o600


# ---------------------------------------------------------------------- interrupted starts


def _wait_for_spawn(data_dir: Path, starter: subprocess.Popen[str]) -> int:
    """The pid of the weed ``starter`` spawned, once it is recorded in server.json as still starting."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert starter.poll() is None, f"the start ended before it could be interrupted: {starter.communicate()}"
        pids = weed_pids(data_dir)
        try:
            state = json.loads((data_dir / "server.json").read_text())
        except (OSError, ValueError):
            state = {}
        if pids and state.get("starting") and state.get("pid") in pids:
            return int(state["pid"])
        time.sleep(0.02)
    raise AssertionError("weed was not spawned within 60 s")


def _start_and_signal(data_dir: Path, signum: signal.Signals) -> tuple[subprocess.Popen[str], int, str, str]:
    """Start a server in a process of its own and send it ``signum`` while weed is still starting."""
    starter = subprocess.Popen(
        [sys.executable, "-c", _START_SCRIPT, "start", "--data-dir", str(data_dir)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "S3_"))},
        # A shell's background job (`make test &`) ignores SIGINT, and a child inherits that: Python then
        # installs no Ctrl-C handler. The starter gets SIGINT's default, as in a terminal.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        weed = _wait_for_spawn(data_dir, starter)
        starter.send_signal(signum)
        out, err = starter.communicate(timeout=60)
    finally:
        if starter.poll() is None:
            starter.kill()
            starter.wait()
    return starter, weed, out, err


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_start_interrupted_by_a_signal_leaves_no_weed(data_dir: Path, signum: signal.Signals) -> None:
    for _ in range(3):
        starter, weed, out, err = _start_and_signal(data_dir, signum)
        if not (starter.returncode == 0 and "started in" in out):
            break
        # The start completed between the test seeing weed spawned and the signal (a busy machine can hold the
        # test back for the seconds a start takes): that start was not interrupted. Stop it and try again.
        assert s3_cli(["stop", "--data-dir", str(data_dir)]) == 0
    # SIGTERM: weed killed, then the process ends by SIGTERM as it would have; Ctrl-C: exit status 130.
    assert starter.returncode == (-signal.SIGTERM if signum == signal.SIGTERM else 130), (out, err)
    assert "started in" not in out
    assert f"killed weed (pid {weed})" in err
    assert weed_pids(data_dir) == []
    assert json.loads((data_dir / "server.json").read_text())["pid"] is None
    assert s3_cli(["stop", "--data-dir", str(data_dir)]) == 0  # and nothing to stop


def test_a_start_failing_with_an_exception_after_spawn_leaves_no_weed(data_dir: Path) -> None:
    """An exception raised in the starting thread once weed runs (from a timer signal's handler, so at
    whatever point the start has reached) unwinds the start and kills weed."""

    class Injected(Exception):
        pass

    def fail_once_weed_runs(signum: int, frame: object) -> None:
        if weed_pids(data_dir):
            signal.setitimer(signal.ITIMER_REAL, 0)
            raise Injected("injected after spawn")

    # A handler that runs inside a finaliser (garbage of earlier tests collected in this thread) has its
    # exception ignored by Python, and the start then completes: collect first, and collect nothing while
    # the start runs; should it still happen, stop that server and inject again.
    for _ in range(3):
        server = EmbeddedS3(data_dir)
        gc.collect()
        gc.disable()
        previous = signal.signal(signal.SIGALRM, fail_once_weed_runs)
        try:
            signal.setitimer(signal.ITIMER_REAL, 0.02, 0.02)
            server.start()
        except Injected:
            break
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)
            gc.enable()
        server.stop(grace_s=0.0)
    else:
        pytest.fail("the injected exception never reached the start in 3 tries")
    assert not server.running and server.pid is None
    assert weed_pids(data_dir) == []
    # Raised inside Popen (weed forked, its pid not yet known) there is no state yet; after, it has no pid.
    state = data_dir / "server.json"
    assert not state.exists() or json.loads(state.read_text())["pid"] is None
    assert EmbeddedS3.attach(data_dir, check_s3=False) is None
    # The folder starts normally afterwards.
    again = EmbeddedS3(data_dir).start()
    again.stop(grace_s=0.0)


# ---------------------------------------------------------------------- stopping a hung server


def test_stop_ends_a_server_that_is_alive_but_does_not_answer(
    fresh_s3_server: EmbeddedS3, capsys: pytest.CaptureFixture[str]
) -> None:
    server = fresh_s3_server
    pid = server.pid
    assert pid is not None
    where = ["--data-dir", str(server.data_dir)]
    os.kill(pid, signal.SIGSTOP)
    try:
        assert s3_cli(["status", *where]) == 1
        assert f"(pid {pid}) does not answer" in capsys.readouterr().err
        began = time.monotonic()
        assert s3_cli(["stop", *where, "--grace", "1"]) == 0  # SIGTERM (and SIGCONT), then SIGKILL after 1 s
        assert f"stopped the embedded S3 server (pid {pid})" in capsys.readouterr().out
        assert time.monotonic() - began < 15
        assert weed_pids(server.data_dir) == []
        assert json.loads(server.state_path.read_text())["pid"] is None
        assert s3_cli(["stop", *where]) == 0
        assert "no embedded S3 server is running" in capsys.readouterr().out
    finally:
        if pid in weed_pids(server.data_dir):
            os.kill(pid, signal.SIGKILL)  # works on a stopped process too


def _grpc_over_tls(port: int, cert: tuple[Path, Path] | None) -> bytes:
    """What a gRPC port sends back after the HTTP/2 preface over TLS (presenting ``cert`` or no
    certificate); b"" if it closed the connection or refused the handshake."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    context.set_alpn_protocols(["h2"])
    if cert is not None:
        context.load_cert_chain(*cert)
    preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"  # + empty SETTINGS
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, context.wrap_socket(raw) as tls:
            tls.sendall(preface)
            return tls.recv(4096)
    except (OSError, ssl.SSLError):
        return b""


def test_grpc_ports_require_the_servers_own_client_certificate(fresh_s3_server: EmbeddedS3) -> None:
    ports = fresh_s3_server.ports
    assert ports is not None
    config = fresh_s3_server.data_dir / "config"
    own = (config / "grpc-cert.pem", config / "grpc-key.pem")
    for port in (ports.master_grpc, ports.volume_grpc, ports.filer_grpc, ports.s3_grpc):
        assert _grpc_over_tls(port, None) == b"", f"gRPC port {port} answered without a client certificate"
        assert _grpc_over_tls(port, own) != b"", f"gRPC port {port} did not answer with the server's certificate"
        # Plain (no TLS) gRPC is refused too.
        with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
            raw.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
            try:
                reply = raw.recv(4096)
            except OSError:
                reply = b""
            assert not reply.startswith(b"\x00\x00"), f"gRPC port {port} spoke HTTP/2 in the clear"
