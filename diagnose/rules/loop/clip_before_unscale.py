"""Gradients are clipped while still multiplied by the GradScaler's scale.

## What it flags
A `clip_grad_norm_` / `clip_grad_value_` call after a `backward()` of a loss passed
through `scaler.scale(...)`, with no `scaler.unscale_(optimizer)` between that backward
and the clipping, while the GradScaler is enabled. Clipping before `unscale_` (and calling
`unscale_` afterwards) counts too. A disabled scaler (`GradScaler(enabled=False)`, AMP
switched off by a flag) is a pass-through and is never flagged.

## Why it matters
The gradients are multiplied by the loss scale (65536 by default): `clip_grad_norm_`
compares norms about 65536 times too large with `max_norm`, so practically every step is
clipped, and clipped far harder than intended; the effective learning rate shrinks by
the ratio and follows the scale as GradScaler changes it. `clip_grad_value_` clamps
scaled values, i.e. the true gradients at `clip_value / scale`.

## Example
```python
scaler.scale(loss).backward()
torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
scaler.step(optimizer)
```
Use instead:
```python
scaler.scale(loss).backward()
scaler.unscale_(optimizer)
torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
scaler.step(optimizer)          # knows the gradients are unscaled already
scaler.update()
```

## Thresholds
None (call order): any such clipping call in a step. The evidence adds, when recorded,
the norm clip_grad_norm_ saw (`clip_norm`, scaled), the scale, and how many of those
steps were clipped (pre-clip norm above `max_norm`). Silent on the 12 healthy scenarios
(seeds 0-2), the healthy fp16 reference runs, and clipping with a disabled scaler.
"""
from __future__ import annotations

import numpy as np

from diagnose.rules._base import Finding, RunTables, Severity, compact_ranges, json_number
from diagnose.rules.loop._callindex import CallIndex

NAME = "clip-before-unscale"
SEVERITY = Severity.ERROR
REQUIRES = ("calls",)

_FIX = """Unscale the gradients before clipping them (once per optimizer step, after the last backward):
    scaler.scale(loss).backward()
    scaler.unscale_(optimizer)
    torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
    scaler.step(optimizer)
    scaler.update()"""


def _scaler_enabled(run: RunTables) -> bool:
    scalers = run.objects.get("scalers") or []
    if not scalers:
        return True  # the scale() calls say a scaler is in use; its state was not recorded
    return any(bool(s.get("enabled", True)) for s in scalers)


def _clipping_numbers(run: RunTables, steps: list[int]) -> dict:
    table = run.steps
    if table.empty or "clip_norm" not in table.columns:
        return {}
    rows = table.loc[table.index.intersection(steps)]
    norm = rows["clip_norm"].to_numpy(dtype=float)
    out: dict = {}
    finite = np.isfinite(norm)
    if finite.any():
        out["clip_norm_median"] = json_number(np.median(norm[finite]))
    if "clip_max" in rows.columns:
        limit = rows["clip_max"].to_numpy(dtype=float)
        known = finite & np.isfinite(limit)
        if known.any():
            out["clip_max"] = json_number(np.median(limit[known]))
            out["steps_clipped"] = int((norm[known] > limit[known]).sum())
            out["steps_with_clip_norm"] = int(known.sum())
    if "scale" in rows.columns:
        scale = rows["scale"].to_numpy(dtype=float)
        both = finite & np.isfinite(scale) & (scale > 0)
        if both.any():
            out["scale_median"] = json_number(np.median(scale[both]))
            out["unscaled_norm_median"] = json_number(np.median(norm[both] / scale[both]))
    return out


def check(run: RunTables) -> list[Finding]:
    calls = CallIndex.of(run)
    if not len(calls) or not calls.clip.any() or not calls.scale.any() or not _scaler_enabled(run):
        return []
    last_backward = calls.last_at_or_before(calls.backward)
    last_unscale = calls.last_at_or_before(calls.unscale)
    last_scale = calls.last_at_or_before(calls.scale)
    clip = np.flatnonzero(calls.clip)
    backward_at = last_backward[clip]
    in_step = backward_at >= calls.step_first[clip]
    scaled = in_step & (last_scale[np.maximum(backward_at, 0)] >= calls.step_first[clip])
    bad = clip[scaled & (last_unscale[clip] < backward_at)]
    if not len(bad):
        return []
    steps = sorted(set(calls.step[bad].tolist()))
    first = int(bad[0])
    kinds = sorted(set(calls.method[bad].tolist()))
    n_clip_steps = len(set(calls.step[clip].tolist()))
    numbers = _clipping_numbers(run, steps)
    clipped = ""
    if numbers.get("steps_with_clip_norm"):
        clipped = (f" clip_grad_norm_ saw a median norm of {numbers['clip_norm_median']:.3g} against max_norm "
                   f"{numbers['clip_max']:.3g} and clipped {numbers['steps_clipped']} of "
                   f"{numbers['steps_with_clip_norm']} steps.")
        if "unscaled_norm_median" in numbers:
            clipped += (f" Divided by the scale ({numbers['scale_median']:.3g}) that norm is "
                        f"{numbers['unscaled_norm_median']:.3g}: the norm you meant to clip.")
    return [Finding(
        rule=NAME,
        severity=SEVERITY,
        title=(f"{' and '.join(kinds)} runs on gradients still scaled by the GradScaler in {len(steps)} of "
               f"{n_clip_steps} steps (no scaler.unscale_ before it)"),
        steps=(steps[0], steps[-1]),
        evidence={
            "step": int(calls.step[first]),
            "first_step": steps[0],
            "affected_steps": len(steps),
            "steps_with_clipping": n_clip_steps,
            "step_ranges": compact_ranges(steps),
            "clip_call": str(calls.token[first]),
            **numbers,
            "sequence": calls.sequence(first),
        },
        explanation=("The loss was multiplied by the GradScaler's scale before backward(), so the gradients were "
                     "still scaled when they were clipped: the threshold was compared with norms (or values) "
                     "scale-times too large, so nearly every step is clipped far harder than intended, and how "
                     "hard changes whenever GradScaler changes its scale." + clipped),
        fix=_FIX,
    )]
