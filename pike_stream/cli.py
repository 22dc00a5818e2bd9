"""The ``pike-stream`` command: one sub-command per component, each implemented where it lives.

    pike-stream convert …     corpus → MDS shards + manifest           (converters.cli)
    pike-stream corpus …      build the multilingual benchmark corpus  (converters.corpus)
    pike-stream s3 …          the embedded S3 server                   (pike_stream.storage.cli)
    pike-stream train …       YAML → Composer training run             (pike_stream.train)
    pike-stream report …      weights / losses plots from a run's logs (pike_stream.report)
    pike-stream audit …       replay what a run sampled, step by step  (pike_stream.audit)

Sub-commands are imported lazily so ``pike-stream convert`` does not pay for importing torch.
"""

from __future__ import annotations

import importlib
import sys

__all__ = ["main"]

_COMMANDS = {
    "convert": ("converters.cli", "corpus → tokenized, packed MDS shards with a manifest"),
    "merge": ("converters.merge", "merge the per-part indexes of a --part i/N conversion"),
    "corpus": ("converters.corpus", "build the multilingual benchmark corpus (man pages + Python code)"),
    "s3": ("pike_stream.storage.cli", "start, stop or inspect the embedded S3 server"),
    "train": ("pike_stream.train.cli", "train from a YAML config with PiKE"),
    "report": ("pike_stream.report", "plot weights and per-domain losses of a run"),
    "audit": ("pike_stream.audit", "replay what a run sampled, step by step, and check it"),
}


def _usage() -> str:
    lines = ["usage: pike-stream COMMAND [ARGS…]", "", "commands:"]
    lines += [f"  {name:<9} {help_}" for name, (_, help_) in _COMMANDS.items()]
    lines += ["", "Run `pike-stream COMMAND --help` for a command's options."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in _COMMANDS:
        print(f"pike-stream: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(_COMMANDS[name][0])
    return int(module.main(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
