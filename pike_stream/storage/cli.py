"""``pike-stream s3 start|stop|status|env``: manage the embedded S3 server from a shell.

    pike-stream s3 start [--bucket B …]   start it (or report the one already running), create buckets
    eval "$(pike-stream s3 env)"    point this shell's streaming/Composer/boto3 at it
    pike-stream s3 status           endpoint, pid, data folder, buckets
    pike-stream s3 stop             stop it (weed takes ~16 s to shut down cleanly)

Every sub-command takes ``--data-dir`` (default: ``s3/`` in the data home, :func:`pike_stream.home.data_home`:
``$PIKE_STREAM_HOME/s3``, else ``$XDG_CACHE_HOME/pike_stream/s3``, else ``~/.cache/pike_stream/s3``; the folder
:func:`pike_stream.storage.ensure_storage` uses).
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from pike_stream.storage.default import default_data_dir, start_or_attach
from pike_stream.storage.embedded import EmbeddedS3
from pike_stream.storage.settings import StorageError

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pike-stream s3", description="Manage the embedded S3 server (SeaweedFS).")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    helps = {
        "start": "start the server, or report the one already running",
        "stop": "stop the running server",
        "status": "print endpoint, pid, data folder and buckets (exit 1 if not running)",
        "env": "print `export VAR=value` lines for a shell (exit 1 if not running)",
    }
    for name, help_ in helps.items():
        command = commands.add_parser(name, help=help_, description=help_)
        command.add_argument(
            "--data-dir",
            type=Path,
            default=None,
            help="the server's data folder (default: $PIKE_STREAM_HOME/s3, else $XDG_CACHE_HOME/pike_stream/s3, "
            "else ~/.cache/pike_stream/s3)",
        )
        if name == "start":
            command.add_argument("--bucket", action="append", default=[], metavar="NAME",
                                 help="create this bucket if it does not exist (repeatable)")
        if name == "stop":
            command.add_argument(
                "--grace",
                type=float,
                default=20.0,
                metavar="SECONDS",
                help="seconds to wait for a clean exit before SIGKILL (default 20)",
            )
    return parser


def _not_running(data_dir: Path) -> int:
    print(f"no embedded S3 server is running in {data_dir}; start one with `pike-stream s3 start`", file=sys.stderr)
    return 1


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    data_dir = (args.data_dir or default_data_dir()).expanduser().resolve()
    try:
        if args.command == "start":
            server, started = start_or_attach(data_dir)
            verb = f"started in {server.startup_s:.1f} s" if started else "already running"
            print(f"embedded S3 server {verb}: {server.endpoint_url} (pid {server.pid}), data in {server.data_dir}")
            for bucket in args.bucket:
                server.create_bucket(bucket)  # idempotent
                print(f"bucket {bucket} is ready")
            print('point a shell at it with: eval "$(pike-stream s3 env)"; stop it with `pike-stream s3 stop`; to '
                  f'start from scratch, stop it and delete {server.data_dir}')
            return 0
        # A live weed of this folder, answering or not: `stop` must end a hung or stopped one too.
        server = EmbeddedS3.attach(data_dir, check_s3=False)
        if server is None:
            if args.command == "stop":
                print(f"no embedded S3 server is running in {data_dir}")
                return 0
            return _not_running(data_dir)
        if args.command != "stop" and EmbeddedS3.attach(data_dir) is None:
            print(
                f"pike-stream s3: the embedded S3 server in {data_dir} (pid {server.pid}) does not answer on "
                f"{server.endpoint_url}; see {server.log_path}, or end it with `pike-stream s3 stop`",
                file=sys.stderr,
            )
            return 1
        if args.command == "stop":
            pid = server.pid
            server.stop(grace_s=args.grace)
            print(f"stopped the embedded S3 server (pid {pid}) in {data_dir}")
        elif args.command == "status":
            buckets = server.list_buckets()
            print(f"endpoint:    {server.endpoint_url}")
            print(f"pid:         {server.pid}")
            print(f"data folder: {server.data_dir}")
            print(f"log:         {server.log_path}")
            print(f"buckets:     {', '.join(buckets) if buckets else '(none)'}")
        else:
            for name, value in server.env().items():
                print(f"export {name}={shlex.quote(value)}")
        return 0
    except StorageError as exc:
        print(f"pike-stream s3: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"pike-stream s3 {args.command}: interrupted", file=sys.stderr)
        return 130
