"""Gradients are never cleared between optimizer steps, so every step adds to the old ones.

## What it flags
An optimizer whose consecutive `step()` calls have a `backward()` between them but no
`optimizer.zero_grad()` (or `model.zero_grad()`) — in at least half of those intervals.
Gradient accumulation done right is *not* this: it calls `backward()` k times and then
steps, and clears once per optimizer step, so every interval between two steps holds a
`zero_grad`. The first step needs none (gradients start out as None).

## Why it matters
`backward()` adds into `.grad`. Without clearing, the gradient used at step t is the sum
of every gradient since the last clear: the effective step grows without bound (like SGD
with momentum 1), stale directions from early batches never fade, and the loss stalls or
diverges while everything looks normal in the code.

## Example
```python
for x, y in loader:
    loss = criterion(model(x), y)
    loss.backward()
    optimizer.step()          # .grad still holds every earlier step's gradient
```
Use instead:
```python
for x, y in loader:
    optimizer.zero_grad(set_to_none=True)
    loss = criterion(model(x), y)
    loss.backward()
    optimizer.step()
```

## Thresholds
- Fires when at least 3 intervals between two `step()` calls of one optimizer, and at least
  half of all its intervals that contain a `backward()`, hold no `zero_grad` of that
  optimizer, of a watched model, or of another optimizer that holds the same parameters
  (SAM's `zero_grad` clears what its base optimizer steps on: tests/harness/
  faults_accumulation.py `sam_first_second_step`). A watched model's `zero_grad` counts
  for an optimizer only together with the other models that hold its parameters: with
  several models the parameter table names each tensor after its model (`modelK.`), and
  an optimizer built over a backbone and a head is cleared only when both are (or the
  optimizer itself is); `head.zero_grad()` alone leaves the backbone's gradients piling
  up (field test round 4, tests/scripts/module_zero_grad_covers_one_model.py). A model
  with no tensor named after it (a wrapper around models already in the table) is taken
  to clear everything, as before. Healthy loops clear in every interval (all 12 healthy
  scenarios, seeds 0-2, and the reference loop with every scheduler, fp16 and
  accumulation: 0 uncleared intervals); the faulty loops tested clear in 0 % (never) or
  1 in 12 (once per epoch) of them.
- Severity error when the loop does call `zero_grad` elsewhere (it is misplaced: the
  record proves the gradients were not cleared); warning when no `zero_grad` call was
  recorded at all in the run, because gradients cleared by hand (`p.grad = None` for
  each parameter) are invisible to the recorder and read the same.
"""
from __future__ import annotations

import re

import numpy as np
import pandas as pd

from diagnose.rules._base import Finding, RunTables, Severity, compact_ranges
from diagnose.rules.loop._callindex import CallIndex

NAME = "missing-zero-grad"
SEVERITY = Severity.ERROR
REQUIRES = ("calls",)

MIN_INTERVALS = 3
"""Uncleared intervals needed before the rule speaks."""
MIN_FRACTION = 0.5
"""Share of an optimizer's intervals (with a backward) that must be uncleared."""

_FIX = """Clear the gradients once per optimizer step, before the backward passes of the next one:
    for i, (x, y) in enumerate(loader):
        loss = criterion(model(x), y) / accum_steps
        loss.backward()
        if (i + 1) % accum_steps == 0:
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
If you clear gradients yourself (`p.grad = None`), call `optimizer.zero_grad(set_to_none=True)` instead:
it does the same, and diagnose (and readers of your code) can see it."""


def _optimizer_steps(calls: CallIndex) -> dict[str, np.ndarray]:
    """Positions of each optimizer's step() calls; a lone `scalerN.step` stands in for an
    optimizer whose own step() was not recorded."""
    steps = {}
    for obj in sorted(set(calls.obj[calls.opt_step].tolist())):
        steps[obj] = np.flatnonzero(calls.opt_step & calls.is_obj(obj))
    if not steps and calls.scaler_step.any():
        steps["opt0"] = np.flatnonzero(calls.scaler_step)
    return steps


def _sharing(run: RunTables) -> dict[str, set[str]]:
    """Per optimizer, the other optimizers that hold the same parameter tensors: SAM's
    `zero_grad` clears the gradients its base optimizer steps on (they share param_groups)."""
    held: dict[str, set[int]] = {}
    for opt in run.objects.get("optimizers") or []:
        params = {int(i) for g in opt.get("groups") or [] for i in (g.get("params") or []) if isinstance(i, int)}
        held[f"opt{opt.get('index', 0)}"] = params
    return {a: {b for b in held if b != a and held[a] & held[b]} for a in held}


_MODEL_PREFIX = re.compile(r"(model\d+)\.")


def _models_holding(run: RunTables) -> tuple[set[str], dict[str, set[str]]]:
    """The models named in the parameter table, and per optimizer the models whose
    trainable tensors it holds (`modelK.` name prefixes; empty with one model, whose
    names carry no prefix, or for tensors in no model)."""
    params = run.params
    if params.empty or "name" not in params or "optimizer" not in params:
        return set(), {}
    named: set[str] = set()
    held: dict[str, set[str]] = {}
    trainable = params["requires_grad"].fillna(True).astype(bool) if "requires_grad" in params \
        else pd.Series(True, index=params.index)
    for index, name, owner in zip(params.index, params["name"], params["optimizer"]):
        match = _MODEL_PREFIX.match(str(name))
        if not match:
            continue
        named.add(match.group(1))
        if not pd.isna(owner) and trainable.get(index, True):
            held.setdefault(f"opt{int(owner)}", set()).add(match.group(1))
    return named, held


def _cleared_by_models(calls: CallIndex, named: set[str], holders: set[str],
                       start: np.ndarray, end: np.ndarray) -> np.ndarray:
    """Per interval (start, end positions): whether watched models' `zero_grad` calls in it
    cleared the optimizer's tensors. Without known holders (one model, or no names) any
    model's call does; otherwise every holding model must have called it, or a model with
    no tensor named after it (a wrapper around the others) once."""
    model_clear = calls.zero_grad & calls.where_obj(lambda o: o.startswith("model"))
    if not holders:
        counts = np.cumsum(model_clear)
        return counts[end] - counts[start] > 0
    wrapper = np.cumsum(model_clear & calls.where_obj(lambda o: o not in named))
    cleared = wrapper[end] - wrapper[start] > 0
    every = np.ones(len(start), dtype=bool)
    for model in holders:
        counts = np.cumsum(model_clear & calls.is_obj(model))
        every &= counts[end] - counts[start] > 0
    return cleared | every


def _partial_clears(calls: CallIndex, holders: set[str], start: np.ndarray, end: np.ndarray) -> list[str]:
    """The holding models whose own `zero_grad` ran in most of these (uncleared) intervals:
    the clears that covered only part of the optimizer's tensors."""
    out = []
    for model in sorted(holders):
        counts = np.cumsum(calls.zero_grad & calls.is_obj(model))
        if len(start) and np.mean(counts[end] - counts[start] > 0) >= MIN_FRACTION:
            out.append(model)
    return out


def check(run: RunTables) -> list[Finding]:
    calls = CallIndex.of(run)
    if not len(calls):
        return []
    any_zero_grad = bool(calls.zero_grad.any())
    backward_count = np.cumsum(calls.backward)
    sharing = _sharing(run)
    named, held = _models_holding(run)
    findings = []
    for opt, positions in _optimizer_steps(calls).items():
        if len(positions) < 2:
            continue
        owners = {opt} | sharing.get(opt, set())
        holders = set().union(*(held.get(o, set()) for o in owners))
        own_clears = np.cumsum(calls.zero_grad & calls.where_obj(owners.__contains__))
        start, end = positions[:-1], positions[1:]
        cleared = (own_clears[end] - own_clears[start] > 0) | \
            _cleared_by_models(calls, named, holders, start, end)
        with_backward = backward_count[end] - backward_count[start] > 0
        uncleared = with_backward & ~cleared
        n_bad, n_checked = int(uncleared.sum()), int(with_backward.sum())
        if n_bad < MIN_INTERVALS or n_bad < MIN_FRACTION * n_checked:
            continue
        bad_ends = end[uncleared]
        bad_steps = sorted(set(calls.step[bad_ends].tolist()))
        first = int(bad_ends[0])
        severity = Severity.ERROR if any_zero_grad else Severity.WARNING
        never = n_bad == n_checked
        title = (f"Gradients are never cleared between {opt}'s optimizer steps ({n_bad} of {n_checked} steps "
                 "accumulate old gradients)" if never else
                 f"Gradients are not cleared before {n_bad} of {n_checked} of {opt}'s optimizer steps")
        explanation = ("backward() adds into .grad, and nothing cleared it between these optimizer steps: each step "
                       "applied the sum of every gradient since the last clear, so the effective step keeps growing "
                       "and old batches never stop pulling the weights.")
        partial = _partial_clears(calls, holders, start[uncleared], end[uncleared])
        if partial:
            left = ", ".join(sorted(holders - set(partial)))
            title = (f"Gradients of {left} are not cleared before {n_bad} of {n_checked} of {opt}'s optimizer steps: "
                     f"only {', '.join(f'{m}.zero_grad()' for m in partial)} runs, but {opt} also steps {left}")
            explanation += (f" {', '.join(f'{m}.zero_grad()' for m in partial)} ran between them, but {opt} also "
                            f"holds the parameters of {', '.join(sorted(holders - set(partial)))}, which it does "
                            f"not clear: call {opt}.zero_grad() instead.")
        if not any_zero_grad:
            explanation += (" No zero_grad() call was recorded anywhere in the run. If the loop clears gradients "
                            "another way (`p.grad = None` for every parameter), the recorder cannot see it and "
                            "this finding is wrong: prefer optimizer.zero_grad(set_to_none=True).")
        elif not partial:
            explanation += (f" zero_grad() is called {int(calls.zero_grad.sum())} times in the run, just not between "
                            "these steps: it is probably outside the batch loop or behind a condition.")
        findings.append(Finding(
            rule=NAME,
            severity=severity,
            title=title,
            steps=(bad_steps[0], bad_steps[-1]),
            evidence={
                "optimizer": opt,
                "step": int(calls.step[first]),
                "first_step": bad_steps[0],
                "uncleared_steps": n_bad,
                "steps_checked": n_checked,
                "step_ranges": compact_ranges(bad_steps),
                "zero_grad_calls": int(calls.zero_grad.sum()),
                "sequence": calls.sequence(first),
                "missing": f"{opt}.zero_grad",
                "models_cleared": partial,
                "models_held": sorted(holders),
            },
            explanation=explanation,
            fix=_FIX,
        ))
    return findings
