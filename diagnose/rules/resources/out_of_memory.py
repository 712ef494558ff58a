"""The run ran out of memory: what was asked for, what was in use, and what it points to.

## What it flags
An out-of-memory error (`torch.OutOfMemoryError`, or an allocator's "out of memory")
during training: the `oom` event the recorder writes when the error goes through
`backward()` (even if the loop catches it and skips the batch) or ends the run. The
finding gives the step, where it happened, the allocation that failed and the memory
state at that moment (CUDA allocated, reserved, peak, capacity), and says which of three
usual stories the numbers tell:
- **fragmentation**: the caching allocator holds far more than the tensors use
  (reserved − allocated is at least the request, and at least 10% of the device), so the
  memory exists but not in one piece;
- **growth**: the memory held between steps rose over the run (the `memory-leak` rule
  says how steadily), so the run would have died sooner or later;
- **the step is too big**: neither; one step's forward and backward need more than the
  device has (batch size, sequence length, model size).

## Why it matters
The run is dead, or silently skipping batches if the loop catches the error. Retrying
with the same settings fails at the same place.

## Example
```python
for x, y in loader:                      # batch 256 at sequence length 4096
    loss = model(x).loss                 # activations of every layer kept for backward
    loss.backward()                      # torch.OutOfMemoryError: Tried to allocate 8.00 GiB
```
Use instead:
```python
for i, (x, y) in enumerate(loader):      # a quarter of the batch, four micro-batches
    with torch.autocast("cuda", dtype=torch.bfloat16):   # half the activation memory
        loss = model(x).loss / 4
    loss.backward()
    if (i + 1) % 4 == 0:
        optimizer.step(); optimizer.zero_grad(set_to_none=True)
```

## Thresholds
Fragmentation: reserved − allocated ≥ the failed request and ≥ 10% of the device's
capacity at the moment of the error (an allocator that holds a tenth of the device in
pieces too small for the request). Growth: the median memory of the last tenth of the
recorded steps is at least 1.5x that of the second tenth (after warm-up). Both
are descriptions of one error, not detectors: the finding itself needs only the error.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from diagnose.rules._base import Finding, RunTables, Severity
from diagnose.rules.resources._series import fmt_bytes

NAME = "out-of-memory"
SEVERITY = Severity.ERROR
REQUIRES = ("events",)

FRAGMENTED_SHARE = 0.10
GROWTH_FACTOR = 1.5

_FIX = """\
Make one step need less memory, or find what keeps memory alive:
- a smaller batch with gradient accumulation (the same effective batch), or shorter sequences;
- mixed precision: `torch.autocast("cuda", dtype=torch.bfloat16)` (half the activations);
- activation checkpointing (`torch.utils.checkpoint.checkpoint`) on the biggest blocks;
- `optimizer.zero_grad(set_to_none=True)`, and `torch.no_grad()` around evaluation;
- fragmentation (reserved far above allocated): `PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True`;
- memory that grows step after step: see the `memory-leak` finding (a kept graph, a list of outputs)."""


def check(run: RunTables) -> list[Finding]:
    errors = _oom_events(run)
    if not errors:
        return []
    first = errors[0]
    steps = [e["step"] for e in errors if e.get("step") is not None]
    state = {k: first[k] for k in ("requested_bytes", "free_bytes", "allocated_bytes", "reserved_bytes",
                                   "peak_bytes", "total_bytes") if _number(first.get(k)) is not None}
    story, why = _story(run, state)
    where = first.get("where") or "the training loop"
    title = f"Out of memory at step {steps[0]} ({where})" if steps else f"Out of memory ({where})"
    if "requested_bytes" in state:
        title += f": asked for {fmt_bytes(state['requested_bytes'])}"
        if "allocated_bytes" in state and "total_bytes" in state:
            title += (f" with {fmt_bytes(state['allocated_bytes'])} of {fmt_bytes(state['total_bytes'])} "
                      "already allocated")
    ended = _ended_the_run(run)
    caught = len(errors) - (1 if ended else 0)
    if len(errors) > 1:
        title += f"; {len(errors)} times in all"
    title += "; it ended the run" if ended else "; the loop caught it and went on"
    evidence: dict[str, Any] = {"step": steps[0] if steps else None, "where": where, "count": len(errors),
                                "caught": caught, "ended_the_run": ended,
                                "steps": steps[:20], "looks_like": story, **state,
                                "message": str(first.get("message", "")).splitlines()[0][:300] if first.get("message") else ""}
    if "reserved_bytes" in state and "allocated_bytes" in state:
        evidence["reserved_not_allocated_bytes"] = state["reserved_bytes"] - state["allocated_bytes"]
    explanation = ("The allocator could not find the memory a tensor needed, and the error went through the "
                   f"training step{' at step ' + str(steps[0]) if steps else ''}. {why}")
    if caught:
        explanation += (f" {caught} time(s) the loop caught the error and went on: those batches were skipped "
                        "(or half-done) without a trace in the loss.")
    span = (min(steps), max(steps)) if steps else None
    return [Finding(rule=NAME, severity=SEVERITY, title=title, steps=span, evidence=evidence,
                    explanation=explanation, fix=_FIX)]


def _ended_the_run(run: RunTables) -> bool:
    error = str(run.meta.get("error", "")).lower()
    return run.meta.get("status") == "crashed" and ("out of memory" in error or "outofmemory" in error)


def _oom_events(run: RunTables) -> list[dict[str, Any]]:
    """The `oom` events (each with its `step`); for runs recorded before they existed, the
    `exception` events whose text says out of memory."""
    out = []
    for kind in ("oom", "exception"):
        for step, data in zip(run.events_of(kind)["step"], run.events_of(kind)["data"]):
            if not isinstance(data, dict):
                continue
            if kind == "exception":
                text = f"{data.get('type', '')} {data.get('message', '')}".lower()
                if "outofmemory" not in text and "out of memory" not in text:
                    continue
            out.append({**data, "step": None if pd.isna(step) else int(step)})
        if out:
            return out
    return out


def _story(run: RunTables, state: dict[str, float]) -> tuple[str, str]:
    """(label, sentence): fragmentation, growth over the run, or a step too big."""
    requested, reserved, allocated, total = (state.get(k) for k in
                                             ("requested_bytes", "reserved_bytes", "allocated_bytes", "total_bytes"))
    if None not in (requested, reserved, allocated, total):
        spare = reserved - allocated
        if spare >= requested and spare >= FRAGMENTED_SHARE * total:
            return "fragmentation", (
                f"The caching allocator held {fmt_bytes(reserved)} but tensors used only {fmt_bytes(allocated)}: "
                f"{fmt_bytes(spare)} were reserved yet free, more than the {fmt_bytes(requested)} asked for, "
                "but in pieces too small for it (fragmentation).")
    grown = _growth(run)
    if grown is not None:
        column, start, end = grown
        what = "CUDA memory allocated between steps" if column == "mem_alloc_bytes" else "the process's memory (RSS)"
        return "growth", (f"{what[0].upper() + what[1:]} grew from {fmt_bytes(start)} after warm-up to "
                          f"{fmt_bytes(end)} at the end: something kept memory alive step after step "
                          "(see the memory-leak finding, if any), and the run ran out.")
    if allocated is not None and total is not None:
        return "step-too-big", (f"{fmt_bytes(allocated)} of {fmt_bytes(total)} was in use and the memory held "
                                "between steps did not grow: one step's forward and backward need more than the "
                                "device has.")
    return "unknown", "No CUDA memory state was recorded (a CPU run, or an older recorder)."


def _growth(run: RunTables) -> tuple[str, float, float] | None:
    for column in ("mem_alloc_bytes", "rss_bytes"):
        if column not in run.steps.columns:
            continue
        values = pd.to_numeric(run.steps[column], errors="coerce").dropna().to_numpy(dtype=float)
        if len(values) < 20:
            continue
        tenth = len(values) // 10
        start, end = float(np.median(values[tenth:2 * tenth])), float(np.median(values[-tenth:]))
        if start > 0 and end >= GROWTH_FACTOR * start:
            return column, start, end
        return None
    return None


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None
