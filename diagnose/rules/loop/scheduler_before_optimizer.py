"""lr_scheduler.step() is called before optimizer.step(), so the schedule's first value is skipped.

## What it flags
A learning-rate scheduler stepped ahead of the optimizer, seen in either of two ways:
- *within a step*: `scheduler.step()` after the step's `backward()` but before its
  optimizer step (`optimizer.step()` or `scaler.step(optimizer)`);
- *at the start of the run*: the scheduler's first `step()` comes before the run's first
  optimizer step (the classic `for epoch: scheduler.step(); train(...)`).

A GradScaler step that skipped the optimizer on an overflow counts as the optimizer step
here: `scaler.step(opt); scaler.update(); scheduler.step()` is the right order even when
the first steps are skipped while the scale calibrates (PyTorch's own warning, "Detected
call of `lr_scheduler.step()` before `optimizer.step()`", cannot tell the two apart).
`optimizer.step(); optimizer.zero_grad(); scheduler.step()` and per-epoch schedulers
stepped after validation are the right order too.

## Why it matters
Since PyTorch 1.1 the scheduler must step *after* the optimizer. Stepped before, the
first learning rate of the schedule is never used: the warm-up starts one step late (or a
per-epoch schedule decays one epoch early), and the run ends one value past its plan.
The effect is small for long per-iteration schedules and large for per-epoch ones.

## Example
```python
loss.backward()
scheduler.step()
optimizer.step()
```
Use instead:
```python
loss.backward()
optimizer.step()
scheduler.step()
```

## Thresholds
None (call order). ReduceLROnPlateau is not checked for the start-of-run case (it steps on
a metric, not on a position in a schedule), nor is a scheduler fast-forwarded before
training (several `step()` calls before the first optimizer step, as when resuming
without its state). Silent on the 12 healthy scenarios (seeds 0-2), the healthy
reference runs and a fp16 run whose GradScaler skips its first steps.
"""
from __future__ import annotations

import numpy as np

from diagnose.rules._base import Finding, RunTables, Severity, compact_ranges
from diagnose.rules.loop._callindex import CallIndex

NAME = "scheduler-before-optimizer"
SEVERITY = Severity.WARNING
REQUIRES = ("calls",)

_METRIC_SCHEDULERS = frozenset({"ReduceLROnPlateau"})

_FIX = """Step the scheduler after the optimizer (per-iteration schedules every step, per-epoch ones after the epoch):
    scaler.step(optimizer)      # or optimizer.step()
    scaler.update()
    scheduler.step()
For a per-epoch schedule, call scheduler.step() at the end of the epoch (after validation), not at its start."""


def _scheduler_classes(run: RunTables) -> dict[str, str]:
    return {f"sched{s.get('index', i)}": str(s.get("class", ""))
            for i, s in enumerate(run.objects.get("schedulers") or [])}


def check(run: RunTables) -> list[Finding]:
    calls = CallIndex.of(run)
    if not len(calls) or not calls.sched_step.any() or not calls.any_opt_step.any():
        return []
    last_backward = calls.last_at_or_before(calls.backward)
    last_opt = calls.last_at_or_before(calls.any_opt_step)
    next_opt = calls.next_at_or_after(calls.any_opt_step)
    # within a step: after its backward, before its first optimizer step call
    in_step = (calls.sched_step & (last_backward >= calls.step_first) & (last_opt < calls.step_first)
               & (next_opt <= calls.step_last))
    first_opt = int(np.flatnonzero(calls.any_opt_step)[0])
    classes = _scheduler_classes(run)
    findings = []
    for sched in sorted(set(calls.obj[calls.sched_step].tolist())):
        mine = calls.sched_step & calls.is_obj(sched)
        positions = np.flatnonzero(mine)
        early = positions[positions < first_opt]
        at_start = (len(early) == 1 and classes.get(sched) not in _METRIC_SCHEDULERS)
        within = np.flatnonzero(in_step & mine)
        if not len(within) and not at_start:
            continue
        offending = within if len(within) else early
        steps = sorted(set(calls.step[offending].tolist()))
        first = int(offending[0])
        total = len(positions)
        if len(within):
            title = (f"{sched}.step() runs before the optimizer step in {len(steps)} steps "
                     f"({len(within)} of its {total} calls)")
            where = "between backward() and the optimizer step"
        else:
            title = f"{sched}.step() is first called before any optimizer step (at the start of the run)"
            where = "before the first optimizer step of the run"
        cls = classes.get(sched, "")
        findings.append(Finding(
            rule=NAME,
            severity=SEVERITY,
            title=title,
            steps=(steps[0], steps[-1]),
            evidence={
                "scheduler": sched,
                "scheduler_class": cls,
                "step": int(calls.step[first]),
                "where": where,
                "affected_steps": len(steps),
                "scheduler_steps": total,
                "step_ranges": compact_ranges(steps),
                "first_optimizer_step": int(calls.step[first_opt]),
                "sequence": calls.sequence(first),
                "early_call": f"{sched}.step",
            },
            explanation=(f"The scheduler{f' ({cls})' if cls else ''} stepped {where}, so the learning rate changed "
                         "before the optimizer used it: the first value of the schedule is skipped and the whole "
                         "schedule runs one step ahead (one epoch ahead for a per-epoch schedule). PyTorch warns "
                         "about this order since 1.1."),
            fix=_FIX,
        ))
    return findings
