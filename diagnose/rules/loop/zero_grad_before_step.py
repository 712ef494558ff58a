"""Gradients are cleared between backward() and optimizer.step(), so the step has none.

## What it flags
An optimizer `step()` whose last `backward()` is followed by `optimizer.zero_grad()` (or
`model.zero_grad()`) before the step, and whose recorded gradients at that step are
indeed gone: every parameter of that optimizer has no gradient (`set_to_none=True`) or a
zero one.

## Why it matters
The optimizer steps on empty gradients: nothing learns (with weight decay or momentum the
weights still drift, which hides it). The loss stays flat and the run burns its compute.
It usually comes from moving `zero_grad()` "to the end of the iteration" one line too early.

## Example
```python
loss.backward()
optimizer.zero_grad()
optimizer.step()            # no gradients left
```
Use instead:
```python
optimizer.zero_grad(set_to_none=True)
loss.backward()
optimizer.step()
```

## Thresholds
- The call order decides which steps are suspects. A suspect counts as confirmed when the
  gradient norms recorded at that step (grad_norms.arrow) are absent or exactly 0 for every
  parameter of the optimizer, or when the step was due for recording (`grad_every`) and
  has no row: the recorder writes none when no parameter has a gradient at all. The rule
  fires when at least half of the suspects whose gradients are known are confirmed (all
  of them in the faulty loops tested; a loop that writes new gradients into `.grad` after
  `zero_grad`, as gradient-surgery methods do, has non-zero norms there and stays
  silent), or on the call order alone when no suspect step was due for recording.
- No healthy scenario (12, seeds 0-2) or healthy reference run has a suspect step.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from diagnose.rules._base import Finding, RunTables, Severity, compact_ranges
from diagnose.rules.loop._callindex import CallIndex

NAME = "zero-grad-before-step"
SEVERITY = Severity.ERROR
REQUIRES = ("calls",)

CONFIRMED_FRACTION = 0.5
"""Share of the suspect steps with recorded norms whose gradients must be gone."""

_FIX = """Clear the gradients before the backward pass, never between it and the step:
    optimizer.zero_grad(set_to_none=True)
    loss = criterion(model(x), y)
    scaler.scale(loss).backward()
    scaler.unscale_(optimizer)
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    scaler.step(optimizer)
    scaler.update()"""


def _optimizer_params(run: RunTables, opt: str) -> list[int]:
    params = run.params
    if params.empty or not opt[3:].isdigit():
        return []
    owner = pd.to_numeric(params["optimizer"], errors="coerce")
    return [int(i) for i in params.index[owner.to_numpy() == int(opt[3:])]]


def _gradients_gone(run: RunTables, steps: list[int], columns: list[int]) -> tuple[int, int]:
    """(suspect steps whose gradients are known, those where every gradient of `columns` is
    absent or 0). The recorder writes no grad_norms row at a step where no parameter has a
    gradient at all, so a step due for recording (`step % grad_every == 0`) without a row
    counts as known, with no gradient."""
    norms = run.grad_norms
    grad_every = int((run.meta.get("options") or {}).get("grad_every") or 1)
    due = [s for s in steps if s % grad_every == 0]
    rows = norms.index.intersection(due) if not norms.empty else []
    without_row = len(due) - len(rows)
    if len(rows) == 0:
        return without_row, without_row
    cols = [c for c in columns if c in norms.columns] or list(norms.columns)
    values = norms.loc[rows, cols].to_numpy(dtype=float)
    nonfinite = run.grad_nonfinite.loc[rows, cols].to_numpy(dtype=bool) if not run.grad_nonfinite.empty else \
        np.zeros_like(values, dtype=bool)
    real = (~np.isnan(values) | nonfinite) & ~(values == 0.0)
    gone = int((~real.any(axis=1)).sum())
    return len(due), gone + without_row


def check(run: RunTables) -> list[Finding]:
    calls = CallIndex.of(run)
    if not len(calls) or not calls.zero_grad.any():
        return []
    last_backward = calls.last_at_or_before(calls.backward)
    model_clear = calls.zero_grad & calls.where_obj(lambda o: o.startswith("model"))
    findings = []
    for opt in sorted(set(calls.obj[calls.opt_step].tolist())):
        positions = np.flatnonzero(calls.opt_step & calls.is_obj(opt))
        clears = np.cumsum(model_clear | (calls.zero_grad & calls.is_obj(opt)))
        after = last_backward[positions]
        ok = after >= 0
        positions, after = positions[ok], after[ok]
        suspect = positions[clears[positions] - clears[after] > 0]
        if not len(suspect):
            continue
        steps = sorted(set(calls.step[suspect].tolist()))
        recorded, gone = _gradients_gone(run, steps, _optimizer_params(run, opt))
        if recorded and gone < CONFIRMED_FRACTION * recorded:
            continue
        first = int(suspect[0])
        clear_at = int(np.flatnonzero(calls.zero_grad[:first + 1])[-1])
        n_opt_steps = len(positions)
        findings.append(Finding(
            rule=NAME,
            severity=SEVERITY,
            title=(f"{calls.token[clear_at]} runs after backward() and before {opt}.step() in {len(steps)} of "
                   f"{n_opt_steps} steps: the optimizer steps without gradients"),
            steps=(steps[0], steps[-1]),
            evidence={
                "optimizer": opt,
                "step": int(calls.step[first]),
                "first_step": steps[0],
                "affected_steps": len(steps),
                "optimizer_steps": n_opt_steps,
                "step_ranges": compact_ranges(steps),
                "steps_with_known_gradients": recorded,
                "steps_without_gradients": gone,
                "clearing_call": str(calls.token[clear_at]),
                "sequence": calls.sequence(first),
            },
            explanation=(f"{calls.token[clear_at]} cleared the gradients that backward() had just computed, and "
                         f"{opt}.step() ran on what was left: "
                         + (f"at {gone} of the {recorded} steps whose gradients were recorded, every gradient of "
                            "the optimizer was absent or zero. " if recorded else
                            "no gradient norms were recorded at these steps, so this rests on the call order. ")
                         + "Nothing is learned from these batches; weight decay and momentum still move the weights, "
                           "which can hide it."),
            fix=_FIX,
        ))
    return findings
