"""Runs stopped by a signal: SIGINT and SIGTERM become one exception, ``RunInterrupted``, that
unwinds the run (``finally`` blocks remove scratch directories and temporary files; no
completion marker is written) and that the command line turns into one line and exit status
``128 + signal`` (130, 143).

Lightning catches ``KeyboardInterrupt`` inside ``Trainer.fit`` and turns it (and its own SIGTERM
handling) into ``SystemExit``; ``structkd.train.fit`` turns that back into ``RunInterrupted``.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Iterator
from types import FrameType

__all__ = ["SIGNALS", "RunInterrupted", "handling_signals", "raise_on_signals"]

SIGNALS = (signal.SIGINT, signal.SIGTERM)
"""The signals that interrupt a run."""


class RunInterrupted(BaseException):
    """A run stopped by signal ``signum`` (a ``BaseException``, like ``KeyboardInterrupt``: no
    ``except Exception`` takes it for a failed run). ``exit_status``: ``128 + signum``."""

    def __init__(self, signum: int):
        self.signum = int(signum)
        super().__init__(f"interrupted by {self.signal_name}")

    def __reduce__(self) -> tuple[type[RunInterrupted], tuple[int]]:
        return (type(self), (self.signum,))  # from worker processes

    @property
    def signal_name(self) -> str:
        try:
            return signal.Signals(self.signum).name
        except ValueError:
            return f"signal {self.signum}"

    @property
    def exit_status(self) -> int:
        return 128 + self.signum


def raise_on_signals(*, ignore_sigint: bool = False) -> None:
    """Make SIGINT and SIGTERM raise ``RunInterrupted`` (the first one; a second one while the
    run unwinds ends the process at once with status ``128 + signal``). ``ignore_sigint``:
    ignore SIGINT instead (worker processes, stopped by their parent). Main thread only."""
    interrupted = False

    def handler(signum: int, frame: FrameType | None) -> None:
        nonlocal interrupted
        if interrupted:
            os._exit(128 + signum)
        interrupted = True
        raise RunInterrupted(signum)

    for signum in SIGNALS:
        if ignore_sigint and signum == signal.SIGINT:
            signal.signal(signum, signal.SIG_IGN)
        else:
            signal.signal(signum, handler)


@contextlib.contextmanager
def handling_signals() -> Iterator[None]:
    """``raise_on_signals()`` for the block, the previous handlers restored after it (nothing
    changes outside the main thread, where Python cannot set handlers)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {signum: signal.getsignal(signum) for signum in SIGNALS}
    raise_on_signals()
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
