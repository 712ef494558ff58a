"""Warnings and checkpoints the script produces, as events.

- `warnings.showwarning` is wrapped: every warning Python *shows* (after the script's
  filters; a warning filtered out or caught by `catch_warnings(record=True)` is not
  shown and not recorded) becomes a `warning` event, then is printed exactly as before.
  A warning torch raises with `stacklevel=2` from inside a wrapped method (the
  scheduler's "lr_scheduler.step() before optimizer.step()") would point at diagnose's
  wrapper; its location is moved back to the script's line, as without diagnose.
- torch warns when `torch.compile(module)` is called while global module hooks exist
  (ours). That warning is about diagnose, not the script, so a filter ignores it.
- `torch.save` is recorded by the recorder itself (its global wrappers,
  diagnose/recorder/hooks.py and checkpoints.py), as under `Monitor`.
"""
from __future__ import annotations

import sys
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

from diagnose.recorder.checkpoints import MAX_KEYS, describe_checkpoint  # noqa: F401 - re-exported
from diagnose.zerocode.classpatch import ClassPatches

if TYPE_CHECKING:
    from diagnose.zerocode.session import Session

MAX_WARNINGS = 500
_WRAPPER_DIR = str(Path(__file__).resolve().parent)
_COMPILE_HOOKS_WARNING = r"Using `torch\.compile\(module\)` when there are global hooks"


def install(session: "Session", patches: ClassPatches) -> None:
    original = warnings.showwarning

    def showwarning(message, category, filename, lineno, file=None, line=None):
        if str(filename).startswith(_WRAPPER_DIR):
            filename, lineno, line = script_location(filename, lineno, line)
        if session.on:
            session.safe(session.on_warning, message, category, filename, lineno)
        return original(message, category, filename, lineno, file, line)

    warnings.showwarning = showwarning

    def undo() -> None:
        if warnings.showwarning is showwarning:
            warnings.showwarning = original

    patches.add(undo)
    warnings.filterwarnings("ignore", message=_COMPILE_HOOKS_WARNING, category=UserWarning)
    added = warnings.filters[0]

    def remove_filter() -> None:
        if added in warnings.filters:
            warnings.filters.remove(added)
            warnings._filters_mutated()  # type: ignore[attr-defined]

    patches.add(remove_filter)


def script_location(filename: str, lineno: int, line: Any) -> tuple[str, int, Any]:
    """The first frame above diagnose's wrapper at `filename:lineno` (the caller's line)."""
    frame = sys._getframe(1)
    while frame is not None and not (frame.f_code.co_filename == filename
                                     and frame.f_lineno == lineno):
        frame = frame.f_back
    while frame is not None and frame.f_code.co_filename.startswith(_WRAPPER_DIR):
        frame = frame.f_back
    if frame is None:
        return filename, lineno, line
    return frame.f_code.co_filename, frame.f_lineno, None
