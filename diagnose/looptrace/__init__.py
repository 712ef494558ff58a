"""Record a few steps of a training loop and assert on its structure (the pytest plugin's engine).

In pytest, use the `loop_trace` fixture (diagnose/pytest_plugin.py, docs/pytest-plugin.md).
Anywhere else:

    from diagnose.looptrace import loop_trace

    with loop_trace(model, optimizer, scheduler=scheduler) as trace:
        train_steps(model, optimizer, scheduler, n=3)
    trace.assert_step_order()

Modules: `trace` (recording, reading), `assertions`, `checks` (rule or stand-in behind each
assertion), `interim` (order checks not in the rule catalogue yet), `patterns` (call names
for `assert_order` / `assert_called`), `message` (failure text).
"""
from __future__ import annotations

import re
import tempfile
from pathlib import Path
from typing import Any

from diagnose.looptrace.checks import CheckError
from diagnose.looptrace.trace import LoopTrace, TraceError

__all__ = ["CheckError", "LoopTrace", "TraceError", "TraceFactory", "loop_trace"]


def loop_trace(*objects: Any, run_dir: str | Path | None = None, **named: Any) -> LoopTrace:
    """A `LoopTrace` writing to `run_dir` (a new temporary directory when None)."""
    return LoopTrace(Path(run_dir) if run_dir is not None else Path(tempfile.mkdtemp(prefix="loop_trace_")),
                     *objects, **named)


class TraceFactory:
    """What the `loop_trace` fixture returns: call it like `loop_trace(...)`; every trace it
    made is stopped (hooks removed) by `close()`, even one whose block never ended."""

    def __init__(self, make_dir: Any, label: str = "") -> None:
        """`make_dir(n)` returns the run directory of the n-th trace (0, 1, ...)."""
        self._make_dir = make_dir
        self._label = label
        self.traces: list[LoopTrace] = []

    def __call__(self, *objects: Any, **named: Any) -> LoopTrace:
        trace = LoopTrace(self._make_dir(len(self.traces)), *objects, label=self._label, **named)
        self.traces.append(trace)
        return trace

    def close(self) -> None:
        for trace in self.traces:
            trace.stop()


def safe_name(text: str, limit: int = 80) -> str:
    """A test node id as a folder name."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_")[:limit] or "trace"
