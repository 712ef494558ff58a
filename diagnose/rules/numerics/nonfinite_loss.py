"""The training loss became NaN or Inf.

## What it flags
Optimizer steps whose loss (the sum of the losses `backward()` was called on) is NaN,
+Inf or -Inf. Reports the first such step and its value, how many steps were affected,
and whether the run ever recovered.

## Why it matters
A non-finite loss means the forward pass itself produced a non-finite number: an
overflow (fp16 activations, `exp`, `log(0)`, division by a tiny number), a bad batch
(see `nonfinite-inputs`), or weights that are already NaN. Its gradients are non-finite
too. Without a GradScaler the optimizer then writes NaN into the weights and the run
never recovers: everything after that step is wasted compute. A GradScaler skips such a
step, which protects the weights, but it is built for overflowing *gradients* of a
finite loss: a NaN *loss* is still a batch that trained nothing and a forward pass that
cannot represent its numbers, so it is reported either way.

## Example
```python
model = model.half()                       # fp16 weights and activations
logits = model(x)                          # overflows to inf for large inputs
loss = F.cross_entropy(logits, y)          # nan
loss.backward(); optimizer.step()          # NaN weights from here on
```
Use instead:
```python
with torch.autocast("cuda", dtype=torch.bfloat16):   # bf16: fp32's range
    logits = model(x)
loss = F.cross_entropy(logits.float(), y)            # the loss in float32
if not torch.isfinite(loss):                         # host sync: check every N steps
    raise FloatingPointError(f"loss is {loss.item()} at step {step}")
```

## Thresholds
None: any non-finite loss on a step where `backward()` ran (`micro_batches > 0`).
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from diagnose.rules._base import Finding, RunTables, Severity, compact_ranges, json_number

NAME = "nonfinite-loss"
SEVERITY = Severity.ERROR
REQUIRES = ("steps.loss",)

_FIX = """Find the first non-finite value, then remove its cause:
- inspect the batch of the first bad step: `torch.isfinite(x).all()` for each input;
- lower the learning rate or add warm-up, and clip gradients
  (`torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)`);
- under fp16 prefer bf16 autocast, and compute the loss in float32 (`logits.float()`);
- stop at once instead of training on:
    if not torch.isfinite(loss):
        raise FloatingPointError(f"loss is {loss.item()} at step {step}")
To find the operation, run a few steps under `torch.autograd.set_detect_anomaly(True)` (slow)."""


def _losses(steps: pd.DataFrame) -> pd.Series:
    """The loss of every step where backward ran (a null loss there means 'not recorded')."""
    loss = steps["loss"].astype("float64")
    if "micro_batches" in steps.columns:
        loss = loss[steps["micro_batches"].fillna(0).to_numpy() > 0]
    return loss


def _explanation(persistent: bool, first: int, skipped: int | None, count: int) -> str:
    if persistent:
        return (f"From step {first} on, the loss never became finite again: the weights were most likely "
                "corrupted by a step on non-finite gradients, and every step after it was wasted compute.")
    if skipped is not None and skipped == count:
        return ("GradScaler skipped the optimizer step each time, so the weights survived, but those batches "
                "trained nothing, and a non-finite loss (not merely overflowing fp16 gradients, which GradScaler "
                "is built for) means the forward pass cannot represent its numbers or the batch was bad.")
    return ("The loss became finite again afterwards, so the weights survived, but those batches trained nothing "
            "and something in the forward pass or the data overflows: it usually gets worse as training goes on.")


def check(run: RunTables) -> list[Finding]:
    loss = _losses(run.steps)
    values = loss.to_numpy()
    bad = ~np.isfinite(values)
    if not bad.any():
        return []
    bad_steps = [int(s) for s in loss.index[bad]]
    first, count = bad_steps[0], len(bad_steps)
    first_value = json_number(values[bad][0])
    first_position = int(np.argmax(bad))
    persistent = count > 1 and bool(bad[first_position:].all())  # one bad last step proves nothing
    before = loss.iloc[:first_position]
    skipped = int(run.steps.loc[bad_steps, "skipped"].sum()) if "scale" in run.steps.columns else None

    if persistent:
        title = f"Loss is {first_value} from step {first} to the end of the run ({count} steps)"
    elif count == 1:
        title = f"Loss was {first_value} at step {first}"
    else:
        title = f"Loss was non-finite at {count} steps (first: step {first}, {first_value})"
    evidence = {
        "first_step": first,
        "first_value": first_value,
        "nonfinite_steps": count,
        "steps_with_loss": len(values),
        "step_ranges": compact_ranges(bad_steps),
        "counts": {"nan": int(np.isnan(values).sum()), "inf": int(np.isposinf(values).sum()),
                   "-inf": int(np.isneginf(values).sum())},
        "recovered": not persistent,
        "last_finite_loss": json_number(before.iloc[-1]) if len(before) else None,
    }
    if skipped is not None:
        evidence["skipped_by_scaler"] = skipped
    return [Finding(
        rule=NAME,
        severity=SEVERITY,
        title=title,
        steps=(first, bad_steps[-1]),
        evidence=evidence,
        explanation=_explanation(persistent, first, skipped, count),
        fix=_FIX,
    )]
