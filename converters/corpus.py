"""``pike-stream corpus``: the multilingual benchmark corpus, built from real text nobody here wrote.

Domains:

- one per language: Debian's translated man pages (packages ``manpages`` and ``manpages-dev`` for
  ``en``, ``manpages-LANG`` for the others), fetched with ``apt-get download`` into a cache folder,
  unpacked with ``dpkg-deb -x`` (nothing is installed) and reduced from troff to plain text
  (:mod:`converters.troff`); one document per man page;
- ``code``: the Python standard library's ``*.py`` files of the running interpreter; one document per
  file.

Documents are taken in sorted order, each one that still fits under ``--max-mb-per-domain`` MB of UTF-8
text (a document too big for what is left is passed over); every 20th document taken (index 0, 20,
40, …) goes to the validation split. The result is
``OUT/raw/<domain>/{train,val}.jsonl`` (``{"text": …, "source": "<package>:<path>"}``) and
``OUT/raw/corpus.json`` (package versions, Python version, counts), so the same packages and
interpreter give the same corpus.

``pike-stream corpus convert OUT --seq-len 128`` then converts every domain and split to
``OUT/mds/<domain>/{train,val}`` (or under ``--dest s3://bucket/prefix``).
"""

from __future__ import annotations

import argparse
import gzip
import json
import platform
import subprocess
import sys
import sysconfig
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from converters.errors import ConversionError
from converters.troff import troff_to_text

__all__ = ["LANGUAGE_PACKAGES", "DEFAULT_LANGS", "VAL_EVERY", "SMALL_MB", "build_corpus", "convert_corpus",
           "main"]

LANGUAGE_PACKAGES = {
    "en": ("manpages", "manpages-dev"),
    "de": ("manpages-de",),
    "fr": ("manpages-fr",),
    "es": ("manpages-es",),
    "ru": ("manpages-ru",),
    "it": ("manpages-it",),
    "pl": ("manpages-pl",),
    "nl": ("manpages-nl",),
}
DEFAULT_LANGS = ("en", "de", "fr", "es", "ru")
CODE_DOMAIN = "code"
VAL_EVERY = 20
SMALL_MB = 0.3
SPLITS = ("train", "val")
_STDLIB_EXCLUDE = {"site-packages", "dist-packages", "__pycache__"}

Log = Callable[[str], None]


def _stderr(message: str) -> None:
    print(message, file=sys.stderr)


# -- fetching man pages ------------------------------------------------------------------------------

def _run(cmd: list[str], cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    except FileNotFoundError:
        raise ConversionError(f"`{cmd[0]}` not found: building the man-page domains needs a Debian-based "
                              f"system (apt-get, dpkg-deb)") from None


def _fetch_deb(package: str, cache: Path, log: Log) -> Path:
    """The ``.deb`` of ``package`` in ``cache``, downloaded with ``apt-get download`` if not there yet."""
    found = sorted(cache.glob(f"{package}_*.deb"))
    if found:
        return found[-1]
    result = _run(["apt-get", "download", package], cwd=cache)
    if result.returncode != 0:
        log(f"apt-get download {package} failed ({result.stderr.strip().splitlines()[-1:]}); "
            f"running apt-get update and trying again")
        update = _run(["apt-get", "update"])
        if update.returncode != 0:
            raise ConversionError(f"apt-get update failed (needs root and network): {update.stderr.strip()}")
        result = _run(["apt-get", "download", package], cwd=cache)
        if result.returncode != 0:
            raise ConversionError(f"apt-get download {package} failed: {result.stderr.strip()}")
    found = sorted(cache.glob(f"{package}_*.deb"))
    if not found:
        raise ConversionError(f"apt-get download {package} left no {package}_*.deb in {cache}")
    return found[-1]


def _unpack(deb: Path) -> Path:
    """``deb`` extracted next to it (once)."""
    target = deb.with_suffix("")
    if not (target / ".complete").exists():
        target.mkdir(exist_ok=True)
        result = _run(["dpkg-deb", "-x", str(deb), str(target)])
        if result.returncode != 0:
            raise ConversionError(f"dpkg-deb -x {deb} failed: {result.stderr.strip()}")
        (target / ".complete").touch()
    return target


def _deb_version(deb: Path) -> str:
    return deb.name.split("_")[1].replace("%3a", ":")


def _man_pages(package: str, root: Path) -> Iterator[tuple[str, str]]:
    """(``package:relative path``, plain text) of every man page in an unpacked package, sorted."""
    man = root / "usr" / "share" / "man"
    pages = sorted((p.relative_to(man).as_posix(), p) for p in man.rglob("*.gz")
                   if p.is_file() and not p.is_symlink()) if man.is_dir() else []
    for name, path in pages:
        try:
            source = gzip.decompress(path.read_bytes()).decode("utf-8")
        except (UnicodeDecodeError, OSError):
            continue  # not UTF-8 troff: not a page we can read faithfully
        text = troff_to_text(source)
        if text:  # ".so" redirections and empty pages have no text of their own
            yield f"{package}:{name}", text


def _stdlib_files() -> Iterator[tuple[str, str]]:
    """(``stdlib:relative path``, source) of the interpreter's standard-library modules, sorted."""
    root = Path(sysconfig.get_paths()["stdlib"])
    files = sorted((p.relative_to(root).as_posix(), p) for p in root.rglob("*.py")
                   if p.is_file() and not _STDLIB_EXCLUDE & set(p.relative_to(root).parts))
    for name, path in files:
        try:
            text = path.read_bytes().decode("utf-8")
        except UnicodeDecodeError:
            continue  # a few test files are deliberately in other encodings
        if text.strip():
            yield f"stdlib:{name}", text


# -- building ----------------------------------------------------------------------------------------

def _write_domain(folder: Path, documents: Iterator[tuple[str, str]], max_bytes: int) -> dict[str, Any]:
    """Write the documents that fit in ``max_bytes`` as train/val JSONL; return the domain's counts."""
    folder.mkdir(parents=True, exist_ok=True)
    counts = {"documents": 0, "bytes": 0, "train_documents": 0, "val_documents": 0}
    tmp = {split: folder / f".{split}.jsonl.partial" for split in SPLITS}
    with open(tmp["train"], "w", encoding="utf-8") as train, open(tmp["val"], "w", encoding="utf-8") as val:
        for source, text in documents:
            size = len(text.encode("utf-8"))
            if counts["bytes"] + size > max_bytes:
                continue  # too big for what is left; a smaller later document may still fit
            split = "val" if counts["documents"] % VAL_EVERY == 0 else "train"
            (val if split == "val" else train).write(json.dumps({"text": text, "source": source},
                                                                ensure_ascii=False) + "\n")
            counts["documents"] += 1
            counts[f"{split}_documents"] += 1
            counts["bytes"] += size
    for split in SPLITS:
        tmp[split].replace(folder / f"{split}.jsonl")
    return counts


def build_corpus(out: str | Path, *, langs: tuple[str, ...] = DEFAULT_LANGS, max_mb_per_domain: float = 4.0,
                 code: bool = True, cache: str | Path | None = None, log: Log = _stderr) -> dict[str, Any]:
    """Build ``out/raw/<domain>/{train,val}.jsonl`` for man pages in ``langs`` and (``code``) Python code.

    ``cache`` holds the downloaded packages (default ``out/cache``); a second build reuses them.
    Returns what ``out/raw/corpus.json`` records.
    """
    unknown = sorted(set(langs) - set(LANGUAGE_PACKAGES))
    if unknown:
        raise ConversionError(f"--langs: no man-page packages known for {', '.join(unknown)} "
                              f"(known: {', '.join(LANGUAGE_PACKAGES)})")
    if not max_mb_per_domain > 0:
        raise ConversionError(f"--max-mb-per-domain {max_mb_per_domain}: need a positive number")
    out = Path(out)
    cache_dir = Path(cache) if cache else out / "cache"
    cache_dir.mkdir(parents=True, exist_ok=True)
    max_bytes = int(max_mb_per_domain * 2**20)
    domains: dict[str, Any] = {}
    for lang in langs:
        packages = {}
        roots = []
        for package in LANGUAGE_PACKAGES[lang]:
            deb = _fetch_deb(package, cache_dir.absolute(), log)
            packages[package] = _deb_version(deb)
            roots.append((package, _unpack(deb)))
        pages = (page for package, root in roots for page in _man_pages(package, root))
        domains[lang] = {"packages": packages, **_write_domain(out / "raw" / lang, pages, max_bytes)}
        log(f"built domain {lang}: {domains[lang]['documents']} man pages")
    if code:
        domains[CODE_DOMAIN] = {"python": platform.python_version(),
                                **_write_domain(out / "raw" / CODE_DOMAIN, _stdlib_files(), max_bytes)}
        log(f"built domain {CODE_DOMAIN}: {domains[CODE_DOMAIN]['documents']} Python files")
    record = {"format": "pike_stream.corpus", "version": 1, "max_mb_per_domain": max_mb_per_domain,
              "val_every": VAL_EVERY, "domains": domains}
    (out / "raw" / "corpus.json").write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")
    log(_table(["domain", "documents", "train", "val", "MB"],
               [[name, d["documents"], d["train_documents"], d["val_documents"], f"{d['bytes'] / 2**20:.2f}"]
                for name, d in domains.items()]))
    return record


def convert_corpus(root: str | Path, *, seq_len: int, dest: str | None = None, tokenizer: str = "bytes",
                   workers: int = 1, overwrite: bool = False, size_limit: float | None = None,
                   log: Log = _stderr) -> dict[str, dict[str, Any]]:
    """Convert every ``root/raw/<domain>/<split>.jsonl`` to ``<dest>/<domain>/<split>``.

    ``dest`` defaults to ``root/mds``; it may be ``s3://bucket/prefix``. Returns the manifests keyed
    ``"<domain>/<split>"``.
    """
    from converters.conversion import DEFAULT_SIZE_LIMIT_MB, convert  # imports streaming (and torch)

    raw = Path(root) / "raw"
    domains = sorted(p.name for p in raw.iterdir() if (p / "train.jsonl").exists()) if raw.is_dir() else []
    if not domains:
        raise ConversionError(f"{raw} holds no <domain>/train.jsonl: run `pike-stream corpus build {root}` first")
    base = (dest or str(Path(root) / "mds")).rstrip("/")
    manifests: dict[str, dict[str, Any]] = {}
    for domain in domains:
        for split in SPLITS:
            manifests[f"{domain}/{split}"] = convert(
                raw / domain / f"{split}.jsonl", f"{base}/{domain}/{split}", domain=domain, seq_len=seq_len,
                fmt="jsonl", tokenizer=tokenizer, workers=workers, overwrite=overwrite,
                size_limit=size_limit or DEFAULT_SIZE_LIMIT_MB)
    log(_table(["domain", "split", "documents", "MB", "tokens", "samples"],
               [[*key.split("/"), m["documents"], f"{m['input_bytes'] / 2**20:.2f}", f"{m['tokens']:,}",
                 m["samples"]] for key, m in manifests.items()]))
    return manifests


def _table(header: list[str], rows: list[list[Any]]) -> str:
    cells = [header] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    lines = ["  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths)))
             for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


# -- command line ------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    """``pike-stream corpus build OUT …`` or ``pike-stream corpus convert OUT --seq-len N …``."""
    parser = argparse.ArgumentParser(
        prog="pike-stream corpus",
        description="The multilingual benchmark corpus: Debian man pages per language and Python standard-library "
                    "code. `build` writes OUT/raw/<domain>/{train,val}.jsonl; `convert` makes MDS domains of them.")
    commands = parser.add_subparsers(dest="command", required=True)
    build = commands.add_parser("build", help="fetch man pages and Python code into OUT/raw")
    build.add_argument("out", metavar="OUT")
    build.add_argument("--max-mb-per-domain", type=float, default=4.0, help="MB of text per domain (default 4)")
    build.add_argument("--small", action="store_true", help=f"{SMALL_MB} MB per domain, for a quick start")
    build.add_argument("--langs", default=",".join(DEFAULT_LANGS),
                       help=f"man-page languages, comma-separated (default {','.join(DEFAULT_LANGS)}; "
                            f"known: {','.join(LANGUAGE_PACKAGES)})")
    build.add_argument("--no-code", action="store_true", help="leave out the Python code domain")
    build.add_argument("--cache", help="folder for downloaded packages (default OUT/cache)")
    conv = commands.add_parser("convert", help="convert OUT/raw to MDS domains")
    conv.add_argument("out", metavar="OUT")
    conv.add_argument("--seq-len", type=int, required=True)
    conv.add_argument("--dest", help="where the domains go (default OUT/mds; may be s3://bucket/prefix)")
    conv.add_argument("--tokenizer", default="bytes")
    conv.add_argument("--workers", type=int, default=1)
    conv.add_argument("--overwrite", action="store_true")
    conv.add_argument("--size-limit", type=float, metavar="MB")
    args = parser.parse_args(argv)
    try:
        if args.command == "build":
            langs = tuple(lang.strip() for lang in args.langs.split(",") if lang.strip())
            build_corpus(args.out, langs=langs, max_mb_per_domain=SMALL_MB if args.small else args.max_mb_per_domain,
                         code=not args.no_code, cache=args.cache)
        else:
            convert_corpus(args.out, seq_len=args.seq_len, dest=args.dest, tokenizer=args.tokenizer,
                           workers=args.workers, overwrite=args.overwrite, size_limit=args.size_limit)
    except ConversionError as exc:
        print(f"pike-stream corpus: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        if args.command == "convert":
            print("pike-stream corpus convert: interrupted; the domain being converted was removed (the ones "
                  "finished before it are complete), nothing half-written is left: rerun the command with "
                  "--overwrite to convert them all", file=sys.stderr)
        else:
            print(f"pike-stream corpus build: interrupted; rerun the command to finish {args.out} (downloaded "
                  f"packages are kept)", file=sys.stderr)
        return 130
    return 0
