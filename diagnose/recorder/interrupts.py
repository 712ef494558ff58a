"""Re-deliver a Ctrl-C (or SIGTERM) that Python swallowed, so the run still stops.

Python runs a signal handler between two bytecodes of the main thread, wherever that
thread happens to be. When that is inside a `__del__`, a weakref callback, a generator
being finalised or a garbage-collection pass, the `KeyboardInterrupt` it raises cannot
propagate: Python prints "Exception ignored in ..." and carries on, and the training loop
keeps running as if the signal had never come (bench/crash_trials.py saw this once in 60
trials: the run trained on after SIGINT until it was killed 120 s later).

Such an exception goes through `sys.unraisablehook`. `install()` chains a hook that notes
a `KeyboardInterrupt` or `SystemExit` there; the recorder calls `redeliver()` at the start
of every callback (a global read when nothing is pending) and raises it again there, in the
user's loop, as if the signal had arrived a moment later. An interrupt the user's own code
catches on purpose never reaches the hook, so it is left alone.
"""
from __future__ import annotations

import sys
import threading
from typing import Any

_pending: BaseException | None = None
_previous_hook: Any = None
_users = 0
_lock = threading.Lock()


def _hook(unraisable: Any) -> None:
    global _pending
    exc = getattr(unraisable, "exc_value", None)
    if isinstance(exc, (KeyboardInterrupt, SystemExit)) and threading.current_thread() is threading.main_thread():
        _pending = exc
    previous = _previous_hook or sys.__unraisablehook__
    previous(unraisable)  # still printed: "Exception ignored in ..."


def install() -> None:
    """Chain the hook into `sys.unraisablehook` (once, however many recorders are open)."""
    global _previous_hook, _users
    with _lock:
        _users += 1
        if _users == 1 and sys.unraisablehook is not _hook:
            _previous_hook = sys.unraisablehook
            sys.unraisablehook = _hook


def uninstall() -> None:
    """Undo `install()` when the last recorder closes (if nobody replaced the hook since)."""
    global _previous_hook, _users, _pending
    with _lock:
        _users = max(0, _users - 1)
        if _users == 0:
            if sys.unraisablehook is _hook:
                sys.unraisablehook = _previous_hook or sys.__unraisablehook__
            _previous_hook = None
            _pending = None


def redeliver() -> None:
    """Raise a swallowed `KeyboardInterrupt`/`SystemExit` now (main thread only)."""
    global _pending
    if _pending is None or threading.current_thread() is not threading.main_thread():
        return
    exc, _pending = _pending, None
    if isinstance(exc, SystemExit):
        raise SystemExit(exc.code)
    raise KeyboardInterrupt
