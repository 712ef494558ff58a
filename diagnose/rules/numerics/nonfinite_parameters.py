"""Weights became NaN or Inf.

## What it flags
Parameters whose weight norm is NaN or Inf on a sampled step (`param_norms.arrow`,
recorded every `param_every` steps, default 25, after that step's optimizer update).
Reports the first sampled step where it happened, the last sampled step where every
weight was still finite, which parameters were hit (output side first), and - to narrow
the window - the first step in between whose loss or gradients were already non-finite.

## Why it matters
A NaN weight is permanent: every forward pass through it gives NaN, every later loss and
gradient is NaN, and a checkpoint saved from here on is poisoned. Nothing after the
first bad update trains anything. The usual causes are an optimizer step on non-finite
gradients (no GradScaler, no check), a learning rate so high the weights overflow, or
an in-place edit of the weights (`p.data[...] = ...`, loading a bad checkpoint).

## Example
```python
loss.backward()            # gradients are NaN at this step
optimizer.step()           # ... and now the weights are NaN, for good
```
Use instead:
```python
loss.backward()
total = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
if torch.isfinite(total):  # a host sync: check every step only if you can afford it
    optimizer.step()
else:
    optimizer.zero_grad(set_to_none=True)   # skip the bad batch, as GradScaler would
```

## Thresholds
None: any non-finite weight norm. The norms are computed in float32 from the weights,
so a weight tensor of finite but astronomically large values (norm above ~3e38) reads
as Inf too - it is broken either way.
"""
from __future__ import annotations

import numpy as np

from diagnose.rules._base import Finding, RunTables, Severity
from diagnose.rules.numerics import _signals

NAME = "nonfinite-parameters"
SEVERITY = Severity.ERROR
REQUIRES = ("param_norms",)

_SHOWN = 5

_FIX = """Stop the NaN before the optimizer writes it into the weights, and restart from a
checkpoint saved before the first bad step (later ones hold NaN weights):
- find the first non-finite loss or gradient (see nonfinite-loss / nonfinite-gradients)
  and remove its cause;
- clip, and skip a step whose gradients are not finite:
    total = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    if torch.isfinite(total): optimizer.step()
- lower the learning rate or add warm-up;
- record weights more often to narrow the step down: Monitor(..., param_every=1)."""


def check(run: RunTables) -> list[Finding]:
    norms = run.param_norms
    if norms.empty:
        return []
    values = norms.to_numpy(dtype="float64")
    known = run.param_nonfinite
    # NaN also marks a parameter not in the table yet (adopted later): the reader tells apart
    bad = known.to_numpy(dtype=bool) if known.shape == norms.shape else ~np.isfinite(values)
    bad_rows = np.flatnonzero(bad.any(axis=1))
    if not len(bad_rows):
        return []
    position = int(bad_rows[0])
    first = int(norms.index[position])
    last_good = int(norms.index[position - 1]) if position > 0 else None
    params = run.params
    columns = [int(c) for c in norms.columns]
    hit = [columns[j] for j in np.flatnonzero(bad[position])]
    hit = _signals.backward_order(params, hit)
    names = [_signals.name_of(params, i) for i in hit]
    bad_steps = [int(norms.index[r]) for r in bad_rows]
    persistent = bool(bad[position:].any(axis=1).all())
    at_end = {int(c) for c, b in zip(columns, bad[-1]) if b}

    onset = _onset(run, last_good, first)
    window = f"between step {last_good} and step {first}" if last_good is not None else f"by step {first}"
    if len(names) == len(columns):
        what = f"all {len(names)} parameter tensors"
    elif len(names) == 1:
        what = names[0]
    else:
        what = f"{len(names)} parameter tensors, e.g. {names[0]}"
    title = f"Weights became NaN/Inf {window} ({what})"
    if persistent and len(bad_steps) > 1:
        title += " and stayed so"

    evidence = {
        "first_step": first,
        "last_finite_step": last_good,
        "parameters": names[:20],
        "nonfinite_parameters": len(names),
        "parameters_total": len(columns),
        "nonfinite_at_last_sample": len(at_end),
        "sampled_steps_nonfinite": len(bad_steps),
        "sampled_steps": int(len(norms)),
        "param_every": (run.meta.get("options") or {}).get("param_every"),
        "persistent": persistent,
    }
    evidence.update(onset)

    shown = ", ".join(names[:_SHOWN]) + (f" and {len(names) - _SHOWN} more" if len(names) > _SHOWN else "")
    explanation = (f"Weights are only sampled every few steps: they were all finite at step {last_good} and "
                   f"{shown} held NaN/Inf at step {first}. " if last_good is not None else
                   f"{shown} already held NaN/Inf at step {first}, the first sample. ")
    if "first_nonfinite_gradient_step" in onset:
        explanation += (f"Gradients were non-finite at step {onset['first_nonfinite_gradient_step']} on a step "
                        "nothing skipped, so the optimizer most likely wrote them into the weights there. ")
    elif "first_nonfinite_loss_step" in onset:
        explanation += f"The loss was first non-finite at step {onset['first_nonfinite_loss_step']}. "
    else:
        explanation += ("No non-finite loss or gradient was recorded before it, so the weights were more likely "
                        "overwritten directly (an in-place edit, a loaded checkpoint) or overflowed. ")
    explanation += ("NaN weights never heal: every later forward pass, loss and gradient is NaN, and checkpoints "
                    "saved since then are unusable.")
    return [Finding(rule=NAME, severity=SEVERITY, title=title, steps=(first, bad_steps[-1]),
                    evidence=evidence, explanation=explanation, fix=_FIX)]


def _onset(run: RunTables, last_good: int | None, first: int) -> dict:
    """The first non-finite gradient (not skipped) and loss in (last_good, first]."""
    low = -1 if last_good is None else last_good
    out: dict = {}
    nonfinite = run.grad_nonfinite
    if not nonfinite.empty:
        any_bad = nonfinite.fillna(False).astype(bool).any(axis=1)
        keep = _signals.not_skipped(run.steps)
        for step in any_bad.index[any_bad.to_numpy()]:
            if low < step <= first and bool(keep.get(step, True)):
                out["first_nonfinite_gradient_step"] = int(step)
                break
    loss = _signals.losses(run.steps)
    window = loss[(loss.index > low) & (loss.index <= first)]
    bad = window[~np.isfinite(window.to_numpy())]
    if len(bad):
        out["first_nonfinite_loss_step"] = int(bad.index[0])
    return out
