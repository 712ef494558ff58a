"""Optimizer steps are taken while a param group's learning rate is exactly 0.

## What it flags
Param groups whose learning rate, read at the optimizer step, is exactly 0.0 on several
steps beyond a warm-up's first step: a schedule that ended before the run did (laid out
over too few steps, a decay that clamps at 0, a scheduler stepped more often than
planned), or an iteration warm-up from 0 stepped once per epoch, so whole epochs run at 0.

## Why it matters
A step at LR 0 changes nothing (besides optimizer state: Adam's moments, momentum
buffers): the forward, backward and step are paid for and the weights stay put. When a
schedule ends early, the last epochs of the run train nothing at all.

## Example
```python
total = len(loader) * epochs // 2            # wrong count (e.g. forgot an epoch factor)
sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: max(0.0, 1 - s / total))
```
Use instead:
```python
total = len(loader) * epochs // accum_steps  # the number of optimizer steps of the run
sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: max(0.0, 1 - s / total))
```

## Thresholds
- Not counted: the first step of the run (LambdaLR/LinearLR warm-up from 0 starts there:
  the healthy warm-up scenarios show exactly one such step), and groups at LR 0 on every
  step while another group trains (a group frozen through its LR on purpose).
- Fires at 3 or more zero-LR steps that are also at least 2 % of the run's steps
  (a schedule that reaches 0 exactly on the last step is one step). Healthy scenarios
  (12, seeds 0-2) and healthy reference runs: at most that single first step.
- Severity error when one unbroken stretch of zero-LR steps covers at least 10 % of the
  run (a schedule that ended early, a whole epoch at 0), warning otherwise (isolated
  zeros, e.g. a cosine touching 0 each cycle). Groups with the same zero steps are
  reported together.
"""
from __future__ import annotations

import numpy as np

from diagnose.rules._base import Finding, RunTables, Severity, compact_ranges, json_number
from diagnose.rules.loop._callindex import CallIndex, group_names, lr_columns

NAME = "zero-lr-steps"
SEVERITY = Severity.ERROR
REQUIRES = ("steps",)

MIN_STEPS = 3
MIN_FRACTION = 0.02
ERROR_FRACTION = 0.10

_FIX = """Lay the schedule out over the optimizer steps the run really takes, and step it once per optimizer step:
    total_steps = epochs * len(train_loader) // accum_steps
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=total_steps)
A custom lambda should never return 0 inside the run: clamp it at a floor (`max(min_factor, ...)`), and make a
warm-up start above 0 (`(step + 1) / (warmup + 1)`)."""


def check(run: RunTables) -> list[Finding]:
    steps = run.steps
    columns = lr_columns(run)
    if steps.empty or not columns:
        return []
    lr = steps[columns].to_numpy(dtype=float)
    index = steps.index.to_numpy()
    zero = lr == 0.0
    positive = lr > 0.0
    all_zero = zero.all(axis=0) & (len(lr) > 0)
    if all_zero.any() and positive.any():
        zero[:, all_zero] = False  # deliberately frozen groups, while others train
    zero[0, :] = False  # a warm-up from 0 starts at the first step
    n = len(lr)
    names = group_names(run)
    calls = CallIndex.of(run)
    findings = []
    counts = zero.sum(axis=0)
    patterns: dict[bytes, list[int]] = {}
    for g in np.flatnonzero(counts):
        if counts[g] >= MIN_STEPS and counts[g] >= MIN_FRACTION * n:
            patterns.setdefault(zero[:, g].tobytes(), []).append(int(g))
    for groups in patterns.values():
        g = groups[0]
        bad = zero[:, g]
        count = int(counts[g])
        bad_steps = [int(s) for s in index[bad]]
        first = bad_steps[0]
        fraction = count / n
        start = int(np.argmax(bad))
        before = lr[:start, g]
        before = before[np.isfinite(before) & (before > 0)]
        tail = bool(bad[start:].all())
        longest = max(b - a + 1 for a, b in compact_ranges(bad_steps, limit=len(bad_steps)))
        label = ", ".join(names[k] if k < len(names) else columns[k] for k in groups)
        rows = calls.rows_of_step(first) if len(calls) else np.zeros(0, int)
        focus = rows[calls.any_opt_step[rows]] if len(rows) else rows
        position = int(focus[0]) if len(focus) else (int(rows[0]) if len(rows) else None)
        schedulers = [str(s.get("class", "")) for s in run.objects.get("schedulers") or []]
        where = f"from step {first} to the end of the run" if tail else f"first at step {first}"
        findings.append(Finding(
            rule=NAME,
            severity=Severity.ERROR if longest >= ERROR_FRACTION * n else Severity.WARNING,
            title=f"{count} optimizer steps ({100 * fraction:.0f}% of the run) ran with LR exactly 0 in {label}, {where}",
            steps=(bad_steps[0], bad_steps[-1]),
            evidence={
                "groups": [names[k] if k < len(names) else columns[k] for k in groups],
                "lr_columns": [columns[k] for k in groups],
                "step": first,
                "first_step": first,
                "zero_lr_steps": count,
                "steps": n,
                "fraction": round(fraction, 4),
                "longest_stretch": longest,
                "until_the_end": tail,
                "step_ranges": compact_ranges(bad_steps),
                "last_nonzero_lr": json_number(before[-1]) if len(before) else None,
                "schedulers": schedulers,
                "sequence": calls.sequence(position) if position is not None else [],
            },
            explanation=(f"The learning rate of {label} was exactly 0 at {count} optimizer steps "
                         f"({where}). Those steps computed a forward, a backward and an optimizer update that "
                         "changed no weight: "
                         + ("the schedule ended before the run did, so the end of the run trained nothing."
                            if tail else "the schedule sat at 0 for part of the run (a warm-up from 0 stepped "
                                         "too rarely, or a schedule that dips to 0 and comes back).")),
            fix=_FIX,
        ))
    return findings
