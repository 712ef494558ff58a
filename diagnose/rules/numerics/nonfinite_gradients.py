"""Gradients became NaN or Inf on a step that GradScaler did not skip.

## What it flags
Optimizer steps where at least one parameter's gradient norm is NaN or Inf and the step
was *not* skipped by a GradScaler. Reports the first such step, the first parameter(s)
that went non-finite in backward order (the order gradients are produced, output layer
first: the first one named is nearest to where the NaN/Inf entered the backward pass),
whether the loss of that step was still finite, and how many steps were affected.

## Why it matters
The optimizer step applies whatever is in `.grad`: one NaN in a gradient becomes NaN in
the weights (SGD: `w -= lr * nan`; Adam: NaN in its moment estimates too, for good), and
from then on every loss and gradient is NaN. A *finite* loss with a non-finite gradient
points at an operation whose backward overflows or divides by zero: `sqrt` or `pow(x,
0.5)` at 0, `log`/division near 0, `norm()` of an all-zero vector, `acos`/`asin` at ±1, or
fp16 activations. A NaN loss gives NaN gradients everywhere; then see `nonfinite-loss`.

GradScaler (fp16) is built to meet Inf gradients: it skips those steps and lowers its
scale. Such skipped steps are not reported here (see `loss-scale-collapse` when it
happens again and again).

## Example
```python
dist = (a - b).pow(2).sum(-1).sqrt()     # d sqrt(u)/du = inf at u == 0 (a == b)
loss = dist.mean()                       # finite loss ...
loss.backward()                          # ... NaN gradient
optimizer.step()                         # NaN weights from here on
```
Use instead:
```python
dist = ((a - b).pow(2).sum(-1) + 1e-12).sqrt()   # keep the argument away from 0
loss.backward()
torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0, error_if_nonfinite=True)
optimizer.step()
```

## Thresholds
None: any NaN/Inf per-parameter gradient norm (`grad_norms.arrow`, `grad_nonfinite`) on a
step not skipped by GradScaler (`skipped`: `scale_after < scale`). Gradient norms are
recorded every `grad_every` steps (default 1), so with a larger interval the first step
reported is the first *recorded* one.
"""
from __future__ import annotations

import numpy as np

from diagnose.rules._base import Finding, RunTables, Severity, compact_ranges, json_number
from diagnose.rules.numerics import _signals

NAME = "nonfinite-gradients"
SEVERITY = Severity.ERROR
REQUIRES = ("grad_nonfinite",)

_SHOWN = 5

_FIX = """Find the operation that produces the first NaN/Inf, then guard it:
- run the first bad step again under `torch.autograd.set_detect_anomaly(True)`: it raises
  in the backward of the operation that produced the NaN (slow: a few steps only);
- keep arguments of sqrt/log/division/acos away from their singular points
  (`(x + 1e-12).sqrt()`, `torch.log(x.clamp_min(1e-12))`);
- lower the learning rate or add warm-up, and clip gradients;
- stop instead of stepping on bad gradients:
    total = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0, error_if_nonfinite=True)
- under fp16 use a GradScaler (it skips such steps) or, better, bf16 autocast."""


def check(run: RunTables) -> list[Finding]:
    nonfinite = run.grad_nonfinite
    if nonfinite.empty:
        return []
    bad = nonfinite.fillna(False).astype(bool)
    any_bad = bad.any(axis=1)
    steps = run.steps
    skipped_steps: set[int] = set()
    if "skipped" in steps.columns:
        skipped_steps = {int(s) for s in steps.index[steps["skipped"].astype(bool)]}
    bad_steps = [int(s) for s in any_bad.index[any_bad.to_numpy()] if int(s) not in skipped_steps]
    excused = int(sum(1 for s in any_bad.index[any_bad.to_numpy()] if int(s) in skipped_steps))
    if not bad_steps:
        return []

    first = bad_steps[0]
    row = bad.loc[first]
    params = run.params
    first_params = _signals.backward_order(params, [int(c) for c in row.index[row.to_numpy()]])
    names = [_signals.name_of(params, i) for i in first_params]
    trainable = int(params["requires_grad"].fillna(True).astype(bool).sum()) if len(params) else len(row)
    loss = _signals.losses(steps)
    first_loss = float(loss.get(first, np.nan)) if first in loss.index else None
    loss_finite = first_loss is not None and bool(np.isfinite(first_loss))
    tail = [s for s in any_bad.index if s >= first]
    persistent = len(bad_steps) > 1 and all(bool(any_bad.loc[s]) for s in tail)

    shown = ", ".join(names[:_SHOWN]) + (f" and {len(names) - _SHOWN} more" if len(names) > _SHOWN else "")
    if len(names) == 1:
        what = f"{names[0]}"
    else:
        what = f"{len(names)} parameters, first {names[0]}"
    if persistent:
        title = f"Gradients are NaN/Inf from step {first} to the end of the run ({what})"
    elif len(bad_steps) == 1:
        title = f"Gradients were NaN/Inf at step {first} ({what})"
    else:
        title = f"Gradients were NaN/Inf at {len(bad_steps)} steps, first at step {first} ({what})"

    evidence = {
        "first_step": first,
        "first_parameters": names[:20],
        "nonfinite_parameters_at_first_step": len(names),
        "parameters": trainable,
        "nonfinite_steps": len(bad_steps),
        "recorded_steps": int(len(bad)),
        "step_ranges": compact_ranges(bad_steps),
        "loss_at_first_step": json_number(first_loss) if first_loss is not None else None,
        "loss_finite_at_first_step": loss_finite,
        "recovered": not persistent,
        "grad_every": (run.meta.get("options") or {}).get("grad_every"),
    }
    if skipped_steps or "scale" in steps.columns:
        evidence["skipped_by_scaler_not_counted"] = excused

    if loss_finite:
        explanation = (f"At step {first} the loss was finite ({_signals.fmt(first_loss)}) but the backward pass "
                       f"produced NaN/Inf in {shown}. In backward order the first of them is {names[0]}: the "
                       "NaN/Inf entered the backward pass at or just before the operation that uses it.")
    elif first_loss is not None:
        explanation = (f"The loss itself was {json_number(first_loss)} at step {first}, so every gradient is "
                       "non-finite too: the cause is in the forward pass (see nonfinite-loss).")
    else:
        explanation = f"At step {first} the backward pass produced NaN/Inf in {shown}."
    if persistent:
        explanation += (" Nothing skipped the step, so the optimizer wrote them into the weights; the run never "
                        "recovered and every later step was wasted compute.")
    else:
        explanation += " Each such step that is not skipped corrupts the weights or the optimizer state."
    return [Finding(rule=NAME, severity=SEVERITY, title=title, steps=(first, bad_steps[-1]),
                    evidence=evidence, explanation=explanation, fix=_FIX)]
