"""Warnings shown during a recorded run become `warning` events, for every recorder.

`warnings.showwarning` is wrapped once for all active recorders (`Monitor`, the
reference loop, the zero-code mode) and restored when the last one closes, only if it is
still ours (a handler installed after ours, `logging.captureWarnings(True)`, stays).
Each warning Python *shows* (after the user's filters: one filtered out, or caught by
`catch_warnings(record=True)` before it reaches `showwarning`, is not seen) is passed to
every active recorder's `on_warning`, then to the previous handler with the same
arguments, so the user sees it exactly as without diagnose.

The location: a warning raised with `stacklevel=2` from a method diagnose wraps (the
scheduler's "lr_scheduler.step() before optimizer.step()", called through the recorder's
wrapper of `scheduler.step`) names diagnose's wrapper; it is moved back to the first frame
outside the diagnose package, the user's line, both in the event and in what is shown.
"""
from __future__ import annotations

import os
import sys
import threading
import warnings
from pathlib import Path
from typing import Any

MAX_WARNINGS = 500
"""Warning events one recorder writes at most (a warning shown every step is one finding)."""

PACKAGE_DIR = str(Path(__file__).resolve().parents[1]) + os.sep
"""The diagnose package folder: frames in it are diagnose's wrappers, never the user's."""

_lock = threading.Lock()
_listeners: list[Any] = []
_state: dict[str, Any] = {}


def add_listener(recorder: Any) -> None:
    """Route shown warnings to `recorder.on_warning` until `remove_listener`."""
    with _lock:
        if not _listeners:
            previous = warnings.showwarning
            _state["previous"] = previous
            _state["wrapper"] = _make_wrapper(previous)
            warnings.showwarning = _state["wrapper"]
        if recorder not in _listeners:
            _listeners.append(recorder)


def remove_listener(recorder: Any) -> None:
    """Stop routing to `recorder`; the last one out restores the previous handler."""
    with _lock:
        if recorder in _listeners:
            _listeners.remove(recorder)
        if not _listeners and "wrapper" in _state:
            if warnings.showwarning is _state["wrapper"]:
                warnings.showwarning = _state["previous"]
            _state.clear()


def _make_wrapper(previous: Any):
    def showwarning(message, category, filename, lineno, file=None, line=None):
        try:
            if str(filename).startswith(PACKAGE_DIR):
                filename, lineno, line = user_location(filename, lineno, line)
            for recorder in list(_listeners):
                recorder._safe(recorder.on_warning, message, category, filename, lineno)
        except Exception:  # noqa: BLE001 - never lose the user's warning over ours
            pass
        return previous(message, category, filename, lineno, file, line)

    showwarning.__diagnose_wrapped__ = True  # type: ignore[attr-defined]
    return showwarning


def user_location(filename: str, lineno: int, line: Any) -> tuple[str, int, Any]:
    """The first frame above diagnose's code at `filename:lineno` (the caller's line)."""
    frame = sys._getframe(1)
    while frame is not None and not (frame.f_code.co_filename == filename
                                     and frame.f_lineno == lineno):
        frame = frame.f_back
    while frame is not None and frame.f_code.co_filename.startswith(PACKAGE_DIR):
        frame = frame.f_back
    if frame is None:
        return filename, lineno, line
    return frame.f_code.co_filename, frame.f_lineno, None


def describe(message: Any, category: Any, filename: Any, lineno: Any) -> dict:
    """The fields of a `warning` event."""
    return {"category": getattr(category, "__name__", str(category)),
            "message": str(message)[:2000], "filename": str(filename), "lineno": lineno}
