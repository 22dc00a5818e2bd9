"""One conversion past one machine: the N parts of ``--part i/N`` as Ray tasks, then ``merge_parts``.

``convert_on_ray(source, out, parts=N, domain=…, seq_len=…)`` (``pike-stream convert … --ray-parts N``) runs
``convert(source, out, part=(i, N))`` for every part as a Ray task, anywhere on the cluster, then merges the
parts into one domain on the calling machine. The result is the same, byte for byte, as converting the N
parts one after another and merging them: which machine converts a part does not change its output.

Every task reads ``source`` and writes ``out`` itself, so on a cluster of several machines ``out`` must be
an ``s3://`` prefix (or a folder shared at the same path on every machine), ``source`` must be at the same
path on every machine, and pike_stream must be installed on every machine. The calling process's S3
settings (its ``AWS_*`` and ``S3_*`` environment variables) are handed to the tasks.

Ray is an optional dependency (``pip install 'pike_stream[ray]'``), imported only here and only when called.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Mapping
from typing import Any

from converters.errors import ConversionError
from converters.output import open_destination

__all__ = ["ENV_PREFIXES", "convert_on_ray"]

# The environment variables handed to the tasks: S3 settings for streaming, boto3 and the converter.
ENV_PREFIXES = ("AWS_", "S3_")


def convert_on_ray(source: str | os.PathLike[str], out: str | os.PathLike[str], *, parts: int,
                   address: str | None = None, init_kwargs: Mapping[str, Any] | None = None,
                   progress: bool = True, **convert_kwargs: Any) -> dict[str, Any]:
    """Convert ``source`` into the domain folder ``out`` as ``parts`` Ray tasks, then merge the parts.

    Args:
        source: what :func:`converters.conversion.convert` reads; the same path on every Ray machine.
        out: the domain folder (``s3://bucket/prefix``, or a local folder on a one-machine cluster); the
            parts go to ``out/part-0000i``, the merged ``index.json`` and ``manifest.json`` to ``out``.
        parts: the number of parts (tasks), at least 1.
        address: the Ray cluster to connect to (``ray.init(address=…)``, e.g. ``ray://head:10001`` or
            ``auto``); None starts a local one (unless ``RAY_ADDRESS`` names one, as for ``ray.init``).
            A connection this function opened is closed at its end (a local cluster it started ends);
            if Ray is already initialized in this process, that connection is used and left open.
        init_kwargs: more arguments for ``ray.init`` (e.g. ``num_cpus``), when this function calls it.
        progress: say on stderr when each part is done, and the merge's summary.
        **convert_kwargs: the options of :func:`converters.conversion.convert` (``domain``, ``seq_len``,
            ``fmt``, ``tokenizer``, ``workers``, ``overwrite``, …), the same for every part. Each task
            asks Ray for ``workers`` CPUs.

    Returns:
        The merged manifest (``out/manifest.json``).

    Raises:
        ConversionError: Ray is missing or unreachable, or a part failed (the message names the part and
            its error, in one line); nothing is merged then.
    """
    if isinstance(parts, bool) or not isinstance(parts, int) or parts < 1:
        raise ConversionError(f"--ray-parts {parts!r}: need a whole number of parts, at least 1")
    if "part" in convert_kwargs:
        raise ConversionError("convert_on_ray sets part itself for each part: pass parts=N (--ray-parts N) instead")
    source, out = _absolute(source), _absolute(out)
    open_destination(out)  # a malformed output location is an error here, before any cluster starts
    try:
        import ray
    except ImportError:
        raise ConversionError("Ray is not installed: pip install 'pike_stream[ray]'") from None

    connected_here = not ray.is_initialized()
    if connected_here:
        try:
            ray.init(address=address, **dict(init_kwargs or {}))
        except Exception as exc:  # ConnectionError, ValueError, RuntimeError, …: Ray's message says which
            where = f"the Ray cluster at {address}" if address else "a local Ray cluster"
            raise ConversionError(f"cannot start or reach {where}: {_one_line(exc)}") from None
    try:
        _run_parts(ray, source, out, parts, progress, convert_kwargs)
    finally:
        if connected_here:
            ray.shutdown()

    from converters.merge import merge_parts  # imports streaming (and torch): after Ray has been reached

    return merge_parts(out, progress=progress)


def _run_parts(ray: Any, source: str, out: str, parts: int, progress: bool,
               convert_kwargs: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Run the part tasks and wait for all; return their manifests in part order. The first failure
    cancels the parts still running (each removes its partial output) and raises."""
    env = {name: value for name, value in os.environ.items() if name.startswith(ENV_PREFIXES)}
    task = ray.remote(_convert_part).options(
        num_cpus=max(1, int(convert_kwargs.get("workers", 1) or 1)), max_retries=0,
        runtime_env={"env_vars": env} if env else None)
    refs = [task.remote(source, out, index, parts, dict(convert_kwargs)) for index in range(parts)]
    part_of = {ref: index for index, ref in enumerate(refs)}
    manifests: dict[int, dict[str, Any]] = {}
    failures: dict[int, str] = {}
    pending = list(refs)
    try:
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            index = part_of[done[0]]
            try:
                manifests[index] = ray.get(done[0])
            except Exception as exc:
                failures[index] = _describe_failure(exc)
                for ref in pending:  # nothing will be merged: stop the other parts
                    ray.cancel(ref)
                for ref, failure in _outcomes(ray, pending).items():
                    failures[part_of[ref]] = failure
                break
            if progress:
                manifest = manifests[index]
                print(f"part {index}/{parts} done: {manifest['documents']:,} documents, "
                      f"{manifest['samples']:,} samples, {len(manifest['shards'])} shard(s)", file=sys.stderr)
    except KeyboardInterrupt:
        for ref in pending:
            ray.cancel(ref)
        _outcomes(ray, pending)
        raise
    if failures:
        first, *others = sorted(failures)
        also = f" (part {', '.join(f'{i}/{parts}' for i in others)} failed too)" if others else ""
        raise ConversionError(f"part {first}/{parts} of the Ray conversion failed: {failures[first]}{also}")
    return [manifests[index] for index in range(parts)]


def _convert_part(source: str, out: str, index: int, count: int, kwargs: dict[str, Any]) -> dict[str, Any]:
    """One Ray task: part ``index`` of ``count`` into ``out/part-0000{index}``.

    ``ray.cancel`` interrupts a task's main thread as Ctrl-C would. An interrupted ``import`` leaves
    half-initialized modules (torch) in the worker, which Ray reuses for later tasks: so a cancellation is
    only noted while importing, and acted on before the conversion starts; inside, the converter stops at
    its next safe point and removes the part's partial output.
    """
    cancelled = []

    def note(signum: int, frame: Any) -> None:
        cancelled.append(signum)

    previous = signal.signal(signal.SIGINT, note) if threading.current_thread() is threading.main_thread() else None
    try:
        from converters.conversion import convert
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
    if cancelled:
        raise KeyboardInterrupt
    return convert(source, out, part=(index, count), progress=False, **kwargs)


def _describe_failure(exc: Exception) -> str:
    """A task's failure in one line: the converter's own message, or the exception's type and first line."""
    from ray.exceptions import RayTaskError

    if isinstance(exc, RayTaskError) and exc.cause is not None:
        cause = exc.cause
        if isinstance(cause, ConversionError):
            return _one_line(cause)
        return f"{type(cause).__name__}: {_one_line(cause)}"
    return f"{type(exc).__name__}: {_one_line(exc)}"  # the task never ran or its worker died


def _outcomes(ray: Any, refs: list[Any]) -> dict[Any, str]:
    """Wait until the tasks of ``refs`` have ended; the failures among them, other than being cancelled."""
    from ray.exceptions import TaskCancelledError

    failures = {}
    for ref in refs:
        try:
            ray.get(ref)
        except TaskCancelledError:
            pass
        except Exception as exc:
            failures[ref] = _describe_failure(exc)
    return failures


def _one_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__


def _absolute(path: str | os.PathLike[str]) -> str:
    """``path`` as the tasks should see it: a URL as it is, a local path made absolute (tasks run elsewhere)."""
    text = os.fspath(path)
    return text if "://" in text else os.path.abspath(text)
