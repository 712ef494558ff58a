"""GradScaler keeps finding Inf/NaN gradients: its scale falls again and again.

## What it flags
A run with a GradScaler (fp16) where, after the scale's initial calibration, the scaler
skips a large share of the optimizer steps, skips many in a row, or drives the scale
below 1 (fp16 gradients overflow even unscaled). Reports the skipped fraction, the
longest streak, and the scale's trajectory (start, after calibration, lowest, last).

## Why it matters
GradScaler multiplies the loss by a large scale so small fp16 gradients do not underflow.
When a step's gradients hold Inf/NaN it skips the step and halves the scale; after
`growth_interval` (2000) clean steps it doubles it again. So a skipped step now and then
is normal, and so is a streak at the very start while a large `init_scale` calibrates
down. But when the overflow is not caused by the scale - an fp16 forward that overflows
(large logits, `exp`, an unnormalised sum), a loss term weighted far too high, NaN in
the data - halving the scale cannot fix it: every skipped step trains nothing, and the
scale sinks toward 0 (1/2 per step), which ruins the gradients that do get through.

## Example
```python
scaler = torch.amp.GradScaler("cuda")
with torch.autocast("cuda", dtype=torch.float16):
    logits = model(x) * 1e4              # overflows fp16's range (65504)
    loss = F.cross_entropy(logits, y)    # inf/nan: every step is skipped
scaler.scale(loss).backward()
scaler.step(optimizer); scaler.update()
```
Use instead:
```python
with torch.autocast("cuda", dtype=torch.bfloat16):   # fp32's range, no scaler needed
    logits = model(x)
loss = F.cross_entropy(logits.float(), y)            # the loss in float32
```
Or find the overflowing operation and keep it in float32 (`torch.autocast(...,
enabled=False)` around it).

## Thresholds
Calibration: the leading run of skipped steps is excused (a large `init_scale` halves
down until the gradients fit; `init_scale=2**40` in the tests skips 23 steps), unless
every step is skipped. After it, any one of:
- skipped share >= 20% of the steps, with at least 5 skipped;
- >= 5 consecutive skipped steps (the scale fell 32x in a row);
- the scale fell below 1.0.
Healthy GradScaler runs skip at most one step per `growth_interval` (1/21 = 5% with the
deliberately tiny growth_interval of 20 in the healthy fp16 scenario; 0 skips seen in the
healthy scenarios on CPU); the faulty runs (seeds 0-2) skip 100% (reference injection,
16 of 16) and 34-38% (a 22-24-step streak from step 25, the scale down to 2**-6..2**-8).
"""
from __future__ import annotations

import numpy as np

from diagnose.rules._base import Finding, RunTables, Severity, compact_ranges
from diagnose.rules.numerics import _signals

NAME = "loss-scale-collapse"
SEVERITY = Severity.ERROR
REQUIRES = ("steps.scale", "steps.scale_after")

SKIPPED_SHARE = 0.20
MIN_SKIPPED = 5
STREAK = 5
LOWEST_SCALE = 1.0
MIN_STEPS = 3

_FIX = """Find why fp16 overflows instead of letting GradScaler skip step after step:
- switch to bf16 autocast where the hardware has it: same speed, fp32's range, no scaler:
    with torch.autocast("cuda", dtype=torch.bfloat16): loss = model(x)
- compute the loss (and softmax/exp/log-sum-exp) in float32: `F.cross_entropy(logits.float(), y)`;
- check the loss itself: if it is already Inf/NaN, see nonfinite-loss / nonfinite-inputs;
- look for loss terms weighted far too high and unnormalised sums (use `mean`, not `sum`);
- clip after `scaler.unscale_(optimizer)`, and lower the learning rate if the weights grew."""


def check(run: RunTables) -> list[Finding]:
    steps = run.steps
    if not {"scale", "scale_after"} <= set(steps.columns):
        return []
    table = steps[["scale", "scale_after"]].astype("float64").dropna()
    if len(table) < MIN_STEPS:
        return []
    skipped = (table["scale_after"] < table["scale"]).to_numpy()
    n = len(table)
    lead = _signals.runs(skipped)[0][1] + 1 if skipped[0] else 0
    all_skipped = lead == n
    post = skipped[lead:]
    post_skipped = int(post.sum())
    streaks = _signals.runs(post)
    longest = max((b - a + 1 for a, b in streaks), default=0)
    lowest = float(min(table["scale"].min(), table["scale_after"].min()))
    share = post_skipped / len(post) if len(post) else 1.0

    reasons = []
    if all_skipped:
        reasons.append("every step was skipped")
    if post_skipped >= MIN_SKIPPED and share >= SKIPPED_SHARE:
        reasons.append(f"{share:.0%} of the steps after calibration were skipped")
    if longest >= STREAK:
        reasons.append(f"{longest} steps in a row were skipped")
    if lowest < LOWEST_SCALE:
        reasons.append(f"the scale fell to {_signals.fmt(lowest)}")
    if not reasons:
        return []

    index = table.index
    skipped_steps = [int(s) for s in index[skipped]]
    counted = [int(s) for s in index[lead:][post]] if not all_skipped else skipped_steps
    if not counted:  # only the scale's fall: it happened while calibrating, no skip after
        counted = skipped_steps
    first = counted[0]
    total_skipped = int(skipped.sum())
    title = (f"GradScaler skipped {total_skipped} of {n} steps" +
             (" (every step)" if all_skipped else f", {post_skipped} after its calibration") +
             f"; scale {_signals.fmt(table['scale'].iloc[0])} -> {_signals.fmt(table['scale_after'].iloc[-1])}")
    longest_span = None
    if streaks:
        a, b = max(streaks, key=lambda ab: ab[1] - ab[0])
        longest_span = [int(index[lead + a]), int(index[lead + b])]
    loss = _signals.losses(steps)
    loss_at_skips = loss[loss.index.isin(counted)].to_numpy(dtype="float64")
    evidence = {
        "steps_with_scaler": n,
        "skipped_steps": total_skipped,
        "calibration_steps": 0 if all_skipped else lead,
        "skipped_after_calibration": post_skipped if not all_skipped else total_skipped,
        "skipped_share_after_calibration": round(share, 4),
        "longest_streak": longest if not all_skipped else n,
        "longest_streak_steps": longest_span if not all_skipped else [int(index[0]), int(index[-1])],
        "skipped_ranges": compact_ranges(counted),
        "scale_first": float(table["scale"].iloc[0]),
        "scale_after_calibration": float(table["scale"].iloc[lead]) if not all_skipped else None,
        "scale_lowest": lowest,
        "scale_last": float(table["scale_after"].iloc[-1]),
        "nonfinite_loss_on_skipped_steps": int((~np.isfinite(loss_at_skips)).sum()),
        "thresholds": {"skipped_share": SKIPPED_SHARE, "min_skipped": MIN_SKIPPED, "streak": STREAK,
                       "lowest_scale": LOWEST_SCALE},
        "why": reasons,
    }
    finite_loss = evidence["nonfinite_loss_on_skipped_steps"] == 0
    cause = ("The loss was finite on those steps, so it is the fp16 backward that overflows: an activation or "
             "loss term whose gradient exceeds fp16's range (65504) even after unscaling."
             if finite_loss else
             "The loss itself was Inf/NaN on skipped steps, so the overflow is in the forward pass (see "
             "nonfinite-loss): halving the scale cannot fix that.")
    explanation = (f"From step {first} GradScaler kept finding Inf/NaN gradients: {'; '.join(reasons)}. "
                   "A skipped step trains nothing, and every skip halves the scale, so the steps that do go "
                   f"through carry gradients scaled ever lower. {cause}")
    return [Finding(rule=NAME, severity=SEVERITY, title=title, steps=(first, counted[-1]),
                    evidence=evidence, explanation=explanation, fix=_FIX)]
