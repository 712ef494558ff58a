"""An element-wise loss compares prediction and target of shapes that broadcast.

## What it flags
A call of `mse_loss`, `l1_loss`, `smooth_l1_loss` or `huber_loss` (functional or the
`nn.*Loss` module) whose prediction and target have different shapes that broadcast to a
shape with more elements than either: `(N, 1)` against `(N,)` becomes `(N, N)`. Judged on
the loss calls recorded on sampled training steps (`loss_call` events: the first 5
optimizer steps, then every 100th). The finding names the function, both shapes and the
shape they broadcast to. (`binary_cross_entropy*` refuse different shapes with an error,
so they cannot get here.)

## Why it matters
The loss is computed over every (prediction, target) pair instead of matching pairs:
each prediction is pulled towards every target of the batch, the gradient only carries
the batch mean, and the model learns to predict the mean. The run goes on, the loss
falls a little and then flattens at the variance of the targets. PyTorch warns once
("Using a target size ... that is different to the input size"), which scrolls away;
`framework-warning` reports that warning as info pointing here.

## Example
```python
pred = model(x)                  # (N, 1)
loss = F.mse_loss(pred, y)       # y: (N,) -> compared as (N, N)
```
Use instead:
```python
loss = F.mse_loss(pred.squeeze(-1), y)     # or y.unsqueeze(-1)
```
Not flagged: equal shapes, e.g. `(N, 1)` against `(N, 1)`; a target that broadcasts
without growing the prediction (a `(C,)` target against `(N, C)`: the same target row
for every sample, as intended by some losses).

## Thresholds
None: one recorded call whose broadcast shape holds more elements than both the
prediction and the target is enough (shapes are exact, there is no noise to wait out).
"""
from __future__ import annotations

import math

from diagnose.rules._base import Finding, RunTables, Severity

NAME = "loss-shape-broadcast"
SEVERITY = Severity.ERROR
REQUIRES = ("loss_calls",)

ELEMENTWISE = ("mse_loss", "l1_loss", "smooth_l1_loss", "huber_loss",
               "binary_cross_entropy", "binary_cross_entropy_with_logits")


def broadcast_shape(a: tuple[int, ...], b: tuple[int, ...]) -> tuple[int, ...] | None:
    """NumPy/PyTorch broadcasting of two shapes, or None when they do not broadcast."""
    out = []
    for i in range(1, max(len(a), len(b)) + 1):
        x = a[-i] if i <= len(a) else 1
        y = b[-i] if i <= len(b) else 1
        if x != y and 1 not in (x, y):
            return None
        out.append(y if x == 1 else x)
    return tuple(reversed(out))


def grows(a: tuple[int, ...], b: tuple[int, ...]) -> tuple[int, ...] | None:
    """The broadcast shape when it holds more elements than both `a` and `b`, else None."""
    if a == b:
        return None
    shape = broadcast_shape(a, b)
    if shape is None or math.prod(shape) <= max(math.prod(a), math.prod(b)):
        return None
    return shape


def _fmt(shape: tuple[int, ...]) -> str:
    return "(" + ", ".join(map(str, shape)) + ("," if len(shape) == 1 else "") + ")"


def check(run: RunTables) -> list[Finding]:
    calls = run.loss_calls
    calls = calls[calls["fn"].isin(ELEMENTWISE)]
    groups: dict[tuple, dict] = {}
    for step, fn, a, b in zip(calls["step"], calls["fn"], calls["input_shape"], calls["target_shape"]):
        if not isinstance(a, tuple) or not isinstance(b, tuple):
            continue
        shape = grows(a, b)
        if shape is None:
            continue
        group = groups.setdefault((fn, a, b), {"shape": shape, "steps": []})
        group["steps"].append(int(step))
    findings = []
    for (fn, a, b), group in groups.items():
        steps, shape = sorted(set(group["steps"])), group["shape"]
        title = (f"{fn} compares prediction {_fmt(a)} with target {_fmt(b)}: they broadcast to {_fmt(shape)}, "
                 f"so every prediction is compared with every target (first at step {steps[0]})")
        squeeze = "pred.squeeze(-1)" if len(a) == len(b) + 1 and a[-1] == 1 else "pred.view_as(target)"
        findings.append(Finding(
            rule=NAME, severity=SEVERITY, title=title, steps=(steps[0], steps[-1]),
            evidence={"function": fn, "input_shape": list(a), "target_shape": list(b),
                      "broadcast_shape": list(shape), "elements_compared": math.prod(shape),
                      "elements_expected": max(math.prod(a), math.prod(b)), "steps": steps[:20]},
            explanation=("The loss broadcast prediction and target against each other, so it averages the error "
                         f"over {math.prod(shape)} pairs instead of {max(math.prod(a), math.prod(b))}: each "
                         "prediction is pulled towards every target and the model learns the batch mean."),
            fix=(f"Make the shapes equal before the loss:\n    loss = F.{fn}({squeeze}, target)\n"
                 "or reshape the target to the prediction's shape (target.unsqueeze(-1))."),
        ))
    return findings
