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

## How it happened
The finite losses right before the first bad step tell two stories apart, and the
finding says which (evidence `lead_up`):
- **divergence**: the largest of the last 5 finite losses is >= 100x the run's starting
  loss (median of its first 3): the updates overshot and grew until the numbers
  overflowed, a learning rate too high (or a warm-up that never ends), not a bad batch;
  the onset is where the loss last stood below 10x its start.
- **sudden**: the loss was unremarkable (below 10x its start) up to the step before: an
  operation hit a singular point (`log(0)`, a division by ~0, `sqrt` at 0) or the batch
  was bad.
Field test round 3: an SGD learning rate 10x too high (tests/scripts/lr_too_high_diverges.py,
loss 6.6 -> 3e18 in four steps, then inf) was reported as "weights corrupted by a step
on non-finite gradients", and no other rule named the divergence (too short for
`gradient-explosion`'s 5 sustained steps); a hand-written BCE whose `log(1 - p)` met
p == 1.0 (tests/scripts/handwritten_bce_log_nan.py, 0.09 -> nan) is the sudden kind.
No finding depends on it: it only explains one.

## Thresholds
None: any non-finite loss on a step where `backward()` ran (`micro_batches > 0`).
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from diagnose.rules._base import Finding, RunTables, Severity, compact_ranges, json_number
from diagnose.rules.numerics import _signals

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


def _explanation(persistent: bool, first: int, skipped: int | None, count: int, lead: dict | None = None) -> str:
    if persistent and lead is not None and lead["kind"] == "divergence":
        return (f"From step {first} on, the loss never became finite again, and every step after it was wasted "
                "compute.")
    if persistent:
        return (f"From step {first} on, the loss never became finite again: the weights were most likely "
                "corrupted by a step on non-finite gradients, and every step after it was wasted compute.")
    if skipped is not None and skipped == count:
        return ("GradScaler skipped the optimizer step each time, so the weights survived, but those batches "
                "trained nothing, and a non-finite loss (not merely overflowing fp16 gradients, which GradScaler "
                "is built for) means the forward pass cannot represent its numbers or the batch was bad.")
    return ("The loss became finite again afterwards, so the weights survived, but those batches trained nothing "
            "and something in the forward pass or the data overflows: it usually gets worse as training goes on.")


DIVERGED = 100.0   # the last finite losses >= 100x the starting loss: it diverged first
UNREMARKABLE = 10.0
LEAD = 5


def _lead_up(run: RunTables, loss: pd.Series, first_position: int) -> dict | None:
    """How the loss got there: `divergence` (the last finite losses far above the start),
    `sudden` (unremarkable up to the step before), or None (too few finite steps)."""
    before = loss.iloc[:first_position]
    before = before[np.isfinite(before.to_numpy())]
    if len(before) < 4:
        return None
    start = float(before.iloc[:3].median())
    if not start > 0:
        return None  # a loss that can be negative (a log-likelihood) has no scale to compare with
    tail = before.iloc[-LEAD:]
    peak = float(tail.max())
    lead = {"start_loss": start, "last_finite_step": int(before.index[-1]),
            "last_finite_loss": float(before.iloc[-1]), "peak_before": peak, "peak_step": int(tail.idxmax())}
    if peak >= DIVERGED * start:
        low = np.flatnonzero(before.to_numpy() < UNREMARKABLE * start)
        onset_position = int(low[-1]) + 1 if len(low) else 0
        onset = int(before.index[min(onset_position, len(before) - 1)])
        lead.update(kind="divergence", onset_step=onset, growth=peak / start)
        norms, _ = _signals.preclip_norms(run.steps)
        norms = norms[(norms.index >= onset - 1) & (norms.index <= lead["last_finite_step"])]
        if len(norms) >= 2:
            lead.update(grad_norm_before=float(norms.iloc[0]), grad_norm_peak=float(norms.max()))
        return lead
    if float(before.iloc[-1]) < UNREMARKABLE * start:
        lead["kind"] = "sudden"
        return lead
    return None


def _lead_up_text(lead: dict | None, first: int) -> str:
    if lead is None:
        return ""
    fmt = _signals.fmt
    if lead["kind"] == "divergence":
        text = (f" It did not jump there from a sound value: the loss rose from {fmt(lead['start_loss'])} at the "
                f"start to {fmt(lead['peak_before'])} at step {lead['peak_step']} (from step {lead['onset_step']} on")
        if "grad_norm_peak" in lead:
            text += f"; the gradient norm from {fmt(lead['grad_norm_before'])} to {fmt(lead['grad_norm_peak'])}"
        return text + ("): the updates overshot and grew until the numbers overflowed. That is a learning rate too "
                       "high for this model (or a warm-up that never ends), not a bad batch.")
    return (f" The loss was unremarkable right before ({fmt(lead['last_finite_loss'])} at step "
            f"{lead['last_finite_step']}, {fmt(lead['start_loss'])} at the start): the jump is sudden, so an "
            "operation hit a singular point at step " + str(first) + " (`log` of 0, a division by ~0, `sqrt` at "
            "0, `exp` overflowing) or that step's batch was bad.")


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

    lead = _lead_up(run, loss, first_position)
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
    if lead is not None:
        evidence["lead_up"] = lead
        if lead["kind"] == "divergence":
            title += f", after the loss grew {_signals.fmt(lead['growth'])}x from step {lead['onset_step']}"
    return [Finding(
        rule=NAME,
        severity=SEVERITY,
        title=title,
        steps=(first, bad_steps[-1]),
        evidence=evidence,
        explanation=_explanation(persistent, first, skipped, count, lead) + _lead_up_text(lead, first),
        fix=_FIX,
    )]
