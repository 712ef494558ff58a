"""Ctrl-C and SIGTERM stop the reference loop at the next step boundary, with a checkpoint.

A KeyboardInterrupt raised wherever the main thread happens to be can land in the middle
of `optimizer.step()` (Adam's moments updated, the weights not yet), so a checkpoint
written then would hold a state no step ever produced. `GracefulStop` turns the first
SIGINT/SIGTERM into a flag; the loop calls `check()` after each optimizer step (and after
validation), which writes `checkpoints/interrupted.pt` through the given callback and then
raises what the signal would have raised (KeyboardInterrupt, or SystemExit(128+15)), so
the Monitor marks the run `interrupted` as before. A second signal stops at once.

Single process only: with several ranks each would stop at its own step and the others
would wait in the next all-reduce, so under torchrun the signals keep their usual effect.
Only installed in the main thread, and only over Python's default handlers (or the
Monitor's SIGTERM handler): a handler the user set stays in charge.
"""
from __future__ import annotations

import signal
import threading
from typing import Any, Callable

INTERRUPTED_NAME = "interrupted.pt"
"""The checkpoint an interrupted run leaves beside the epoch checkpoints."""


class GracefulStop:
    """Context manager: SIGINT/SIGTERM set a flag that `check()` acts on."""

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled and threading.current_thread() is threading.main_thread()
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> GracefulStop:
        if not self.enabled:
            return self
        for signum in (signal.SIGINT, signal.SIGTERM):
            current = signal.getsignal(signum)
            ours = current in (signal.default_int_handler, signal.SIG_DFL) or \
                getattr(current, "__name__", "") == "_sigterm_to_exit"  # the Monitor's
            if ours:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc: Any) -> bool:
        self._restore()
        return False

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum is not None:  # the second one: now
            self._restore()
            self._raise(signum)
        self.signum = signum

    def check(self, save: Callable[[], None] | None = None) -> None:
        """At a step boundary: if a signal came, call `save` (the checkpoint), then raise."""
        if self.signum is None:
            return
        signum = self.signum
        self._restore()
        if save is not None:
            save()
        self._raise(signum)

    def _restore(self) -> None:
        for signum, previous in self._previous.items():
            try:
                signal.signal(signum, previous)
            except (ValueError, OSError, TypeError):
                pass
        self._previous.clear()

    @staticmethod
    def _raise(signum: int) -> None:
        if signum == signal.SIGINT:
            raise KeyboardInterrupt
        raise SystemExit(128 + signum)
