"""A learning-rate scheduler exists but its step() is never called.

## What it flags
A scheduler the recorder was attached to (`objects.schedulers`) with no `step()` call in
the whole run, in a run long enough for it to have been stepped — at least 10 optimizer
steps and either two epochs (a per-epoch schedule steps at the end of each) or, when the
loop marks no epochs, a run that finished — and whose learning rates indeed never moved.

## Why it matters
The schedule silently does nothing: the learning rate stays at the scheduler's starting
value for the whole run. For OneCycleLR that is `max_lr / 25` (the bottom of the warm-up)
all run long; for a warm-up scheduler possibly 0; for StepLR or cosine the final,
low-LR phase that converges the model never comes.

## Example
```python
scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=3e-3, total_steps=total)
for x, y in loader:
    optimizer.zero_grad(); criterion(model(x), y).backward(); optimizer.step()
    # scheduler.step() forgotten
```
Use instead:
```python
for x, y in loader:
    optimizer.zero_grad(); criterion(model(x), y).backward(); optimizer.step()
    scheduler.step()          # per-iteration schedules; per-epoch ones after each epoch
```

## Thresholds
- At least 10 optimizer steps, and 2 epochs seen (`Monitor.epoch`) or a finished run
  without epoch marks: a run that crashed in its first epoch never reached a per-epoch
  scheduler's turn.
- Every param group's learning rate is the same at every step (if it moved, something
  stepped the schedule through a path the recorder does not see, and the rule stays
  silent).
Silent on the 12 healthy scenarios (seeds 0-2) and every healthy reference run.
"""
from __future__ import annotations

import numpy as np

from diagnose.rules._base import Finding, RunTables, Severity, json_number
from diagnose.rules.loop._callindex import CallIndex, group_names, lr_columns, scheduler_config

NAME = "scheduler-never-stepped"
SEVERITY = Severity.WARNING
REQUIRES = ("calls",)

MIN_OPTIMIZER_STEPS = 10
MIN_EPOCHS = 2

_FIX = """Call scheduler.step() after optimizer.step(): every step for per-iteration schedules
(OneCycleLR, warm-up, cosine over iterations), once per epoch after validation for per-epoch ones:
    optimizer.step()
    scheduler.step()                # ReduceLROnPlateau: scheduler.step(val_loss) after validation
If the scheduler is not meant to be used, do not create it (it still sets the first LR)."""


def _long_enough(run: RunTables) -> tuple[bool, int, int | None]:
    steps = run.steps
    n_steps = len(steps)
    epochs = None
    if "epoch" in steps.columns:
        values = steps["epoch"].dropna()
        epochs = int(values.nunique()) if len(values) else None
    if n_steps < MIN_OPTIMIZER_STEPS:
        return False, n_steps, epochs
    if epochs is not None:
        return epochs >= MIN_EPOCHS, n_steps, epochs
    return run.meta.get("status") == "finished", n_steps, epochs


def _lr_moved(run: RunTables) -> tuple[bool, dict[str, float]]:
    values = {}
    names = group_names(run)
    for i, col in enumerate(lr_columns(run)):
        lr = run.steps[col].to_numpy(dtype=float)
        lr = lr[np.isfinite(lr)]
        if not len(lr):
            continue
        if lr.max() != lr.min():
            return True, {}
        values[names[i] if i < len(names) else col] = json_number(lr[0])
    return False, values


def check(run: RunTables) -> list[Finding]:
    calls = CallIndex.of(run)
    schedulers = run.objects.get("schedulers") or []
    stepped = set(calls.obj[calls.sched_step].tolist()) if len(calls) else set()
    never = [s for i, s in enumerate(schedulers) if f"sched{s.get('index', i)}" not in stepped]
    if not never:
        return []
    enough, n_steps, epochs = _long_enough(run)
    if not enough:
        return []
    moved, lrs = _lr_moved(run)
    if moved:
        return []
    opt_rows = np.flatnonzero(calls.any_opt_step) if len(calls) else np.zeros(0, dtype=int)
    example = int(opt_rows[-1]) if len(opt_rows) else None
    findings = []
    for i, entry in enumerate(never):
        sched = f"sched{entry.get('index', i)}"
        cls = str(entry.get("class", "scheduler"))
        config = {k: v for k, v in scheduler_config(entry).items()
                  if k in ("total_steps", "T_max", "step_size", "total_iters", "max_lr", "milestones", "gamma")}
        lr_text = ", ".join(f"{k} = {v:.3g}" for k, v in lrs.items() if isinstance(v, float))
        findings.append(Finding(
            rule=NAME,
            severity=SEVERITY,
            title=(f"{sched} ({cls}) is never stepped: the learning rate stays at its starting value "
                   f"for all {n_steps} steps"),
            steps=(int(run.steps.index.min()), int(run.steps.index.max())) if n_steps else None,
            evidence={
                "scheduler": sched,
                "scheduler_class": cls,
                "config": config,
                "scheduler_steps": 0,
                "optimizer_steps": n_steps,
                "epochs": epochs,
                "lr": lrs,
                "step": int(calls.step[example]) if example is not None else None,
                "sequence": calls.sequence(example) if example is not None else [],
                "missing": f"{sched}.step",
            },
            explanation=(f"A {cls} was created and attached, but its step() was never called in {n_steps} optimizer "
                         f"steps{f' over {epochs} epochs' if epochs else ''}, and the learning rate never moved"
                         f"{f' ({lr_text})' if lr_text else ''}. The schedule you configured did not happen: the "
                         "run trained at the scheduler's starting LR throughout."),
            fix=_FIX,
        ))
    return findings
