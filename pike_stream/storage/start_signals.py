"""Signals while a start runs: SIGTERM and SIGHUP unwind it like Ctrl-C; its cleanup runs with them held back."""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Iterator


class Terminated(BaseException):
    """SIGTERM or SIGHUP arrived while starting: unwinds the start like Ctrl-C does."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum

    def __str__(self) -> str:
        return signal.Signals(self.signum).name


@contextlib.contextmanager
def signals_raise() -> Iterator[None]:
    """While starting, turn SIGTERM and SIGHUP (where their default, process-ending action is in force,
    in the main thread) into an exception, so the start's cleanup kills the weed it spawned; then the
    process ends by that signal as it would have."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {}
    for signum in (signal.SIGTERM, signal.SIGHUP):
        if signal.getsignal(signum) == signal.SIG_DFL:
            previous[signum] = signal.signal(signum, _raise_terminated)
    try:
        yield
    except Terminated as exc:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        previous = {}
        os.kill(os.getpid(), exc.signum)  # the default action: end this process by that signal
        raise
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


@contextlib.contextmanager
def signals_blocked() -> Iterator[None]:
    """Hold back SIGINT, SIGTERM and SIGHUP (delivered after the block), so cleanup runs to its end."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP}
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, held)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def _raise_terminated(signum: int, frame: object) -> None:
    raise Terminated(signum)
