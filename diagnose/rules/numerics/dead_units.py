"""Layers whose gradients are exactly zero on most steps: they have stopped learning.

## What it flags
Trainable parameters that receive a gradient on the recorded steps, but a gradient that
is exactly 0.0 on at least 90% of them. Reports the layers (input side first), the share
of zero steps, the step their gradient was first zero, and the dead layer nearest the
output - usually the cause: when every unit of a layer outputs 0 (all ReLUs negative),
no gradient flows through it, so it and every layer before it get exactly zero.

Not flagged: frozen parameters (`requires_grad=False`), parameters that get no gradient
at all (`.grad` is None: unused or frozen; recorded as "no gradient", not as 0), and the
case where *every* parameter's gradient is zero (gradients cleared before the optimizer
step or a loss that does not depend on the model: the loop rules and `loss-plateau`
report that), and a bias (a one-dimensional parameter) whose gradient is zero while a
weight of its layer learns: its units are alive (their weights get gradients), only the
loss does not depend on the bias. A WGAN critic's output bias is one: in
`D(fake).mean() - D(real).mean()` it cancels exactly, on every step (found in the field
test, tests/scripts/healthy_wgan_gp_critic.py).

## Why it matters
A ReLU unit whose input is negative for every sample outputs 0 and gets gradient 0: it
can never recover, because nothing moves its weights. A whole layer of them cuts the
network in two: the layers before it stop training entirely. Causes: a large negative
bias (bad init, a bad checkpoint), a learning-rate spike that pushed the weights far
negative, inputs that are not normalised, or an activation applied twice.

## Example
```python
layer = nn.Linear(256, 256)
nn.init.constant_(layer.bias, -10.0)     # every pre-activation < 0 ...
h = F.relu(layer(x))                     # ... so h == 0 and its gradients are 0
```
Use instead:
```python
layer = nn.Linear(256, 256)              # default init, zero-mean pre-activations
h = F.gelu(layer(x))                     # or LeakyReLU/SiLU: never exactly flat
```
Normalise inputs, add a normalisation layer before the activation, and lower the
learning rate if units died after a spike.

## Thresholds
Zero share >= 90% of the recorded, non-skipped steps on which the parameter had a
gradient, over at least 10 such steps. Error when the dead parameters hold half or more
of the trainable weights (the model as a whole cannot learn), else warning.
Healthy scenarios (12, seeds 0-2): no parameter had an exactly-zero gradient on any
step. Faulty runs: 100% (a ReLU layer with bias -50; the reference `dead-units`
injection, bias -1000); 90% after an LR x1000 explosion killed a CNN's ReLUs.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from diagnose.rules._base import Finding, RunTables, Severity
from diagnose.rules.numerics import _signals

NAME = "dead-units"
SEVERITY = Severity.WARNING
REQUIRES = ("grad_norms", "params")

ZERO_SHARE = 0.9
MIN_STEPS = 10
ERROR_SHARE_OF_WEIGHTS = 0.5

_FIX = """Bring the units back to life (they cannot recover on their own):
- re-initialise the dead layer (default init: `layer.reset_parameters()`), or restart
  from a checkpoint saved before its gradients went to zero;
- use an activation without a flat zero region: `nn.LeakyReLU(0.01)`, `nn.GELU()`, `nn.SiLU()`;
- normalise before the activation (`nn.BatchNorm1d` / `nn.LayerNorm`), normalise the inputs;
- lower the learning rate (or add warm-up / clipping) if the units died after a spike."""


def dead_parameters(run: RunTables) -> pd.DataFrame:
    """Per trainable parameter that had a gradient on >= MIN_STEPS recorded steps: its
    share of exactly-zero gradients and the first step it was zero, in forward order."""
    params = run.params
    grads = _signals.unskipped_rows(run.steps, run.grad_norms).astype("float64")
    if grads.empty:
        return pd.DataFrame()
    had = grads.notna() & np.isfinite(grads.to_numpy())          # NaN: no gradient (or non-finite)
    zero = (grads == 0) & had
    counts, zeros = had.sum(), zero.sum()
    first_zero = zero.idxmax()                                   # the first True (meaningless when none)
    rows = []
    for index in _signals.forward_order(params):
        if index not in grads.columns or counts[index] < MIN_STEPS or params.at[index, "requires_grad"] is False:
            continue
        numel = params.at[index, "numel"]
        shape = params.at[index, "shape"] if "shape" in params.columns else None
        rows.append({"index": index, "parameter": params.at[index, "name"],
                     "ndim": len(shape) if isinstance(shape, (list, tuple)) else None,
                     "layer": _signals.module_of(params, index),
                     "numel": int(numel) if not pd.isna(numel) else 0,
                     "zero_share": float(zeros[index] / counts[index]), "steps_with_gradient": int(counts[index]),
                     "first_zero_step": int(first_zero[index]) if zeros[index] else None})
    return pd.DataFrame(rows)


def _cancelled_bias(table: pd.DataFrame, row: pd.Series) -> bool:
    """A 1-D parameter with zero gradients in a layer whose multi-dimensional weight learns:
    the loss does not depend on the bias; no unit is dead."""
    if row.get("ndim") != 1:
        return False
    same = table[(table["layer"] == row["layer"]) & (table["zero_share"] < ZERO_SHARE)]
    return bool(((same["ndim"].fillna(0)) >= 2).any())


def check(run: RunTables) -> list[Finding]:
    table = dead_parameters(run)
    if table.empty:
        return []
    dead = table[table["zero_share"] >= ZERO_SHARE]
    if dead.empty or len(dead) == len(table):
        return []
    dead = dead[[not _cancelled_bias(table, row) for _, row in dead.iterrows()]]
    if dead.empty:
        return []
    layers = list(dict.fromkeys(dead["layer"]))
    by_layer = []
    for layer in layers:
        rows = dead[dead["layer"] == layer]
        alive = table[(table["layer"] == layer) & (table["zero_share"] < ZERO_SHARE)]
        by_layer.append({"layer": layer, "parameters": rows["parameter"].tolist(),
                         "zero_share": round(float(rows["zero_share"].min()), 4),
                         "first_zero_step": int(rows["first_zero_step"].min()),
                         "alive_parameters": alive["parameter"].tolist()})
    whole = [entry["layer"] for entry in by_layer if not entry["alive_parameters"]]
    nearest_output = whole[-1] if whole else layers[-1]
    weight_share = float(dead["numel"].sum() / max(int(table["numel"].sum()), 1))
    severity = Severity.ERROR if weight_share >= ERROR_SHARE_OF_WEIGHTS else Severity.WARNING
    onset = int(dead["first_zero_step"].min())
    low, high = float(dead["zero_share"].min()), float(dead["zero_share"].max())
    share = f"{low:.0%}" if round(low, 2) == round(high, 2) else f"{low:.0%}-{high:.0%}"
    shown = ", ".join(layers[:4]) + (f" and {len(layers) - 4} more" if len(layers) > 4 else "")
    title = (f"{len(layers)} layer{'s get' if len(layers) > 1 else ' gets'} exactly zero gradients on {share} of steps "
             f"({shown}): {weight_share:.0%} of the trainable weights do not learn")
    steps = run.grad_norms.index
    evidence = {
        "layers": by_layer[:20],
        "dead_parameters": dead["parameter"].tolist()[:40],
        "dead_share_of_weights": round(weight_share, 4),
        "zero_share_range": [round(low, 4), round(high, 4)],
        "nearest_output": nearest_output,
        "first_zero_step": onset,
        "recorded_steps": int(len(steps)),
        "thresholds": {"zero_share": ZERO_SHARE, "min_steps": MIN_STEPS,
                       "error_share_of_weights": ERROR_SHARE_OF_WEIGHTS},
    }
    explanation = (f"The gradients of {shown} were exactly 0.0 on {share} of the steps they were recorded "
                   f"(from step {onset}), while other layers' were not. ")
    if len(layers) > 1:
        explanation += (f"The layer nearest the output whose gradients are all zero is {nearest_output}: when its "
                        "units all output 0 after the activation (dead ReLUs), no gradient passes through it, which "
                        "also zeroes every layer before it")
        consumers = [entry["layer"] for entry in by_layer if entry["alive_parameters"]]
        explanation += (f", and the weights of {', '.join(consumers)} (whose input is then all zero). "
                        if consumers else ". ")
    explanation += "Units in this state never recover by themselves: their weights stay where they are."
    last = int(steps[-1]) if len(steps) else onset
    return [Finding(rule=NAME, severity=severity, title=title, steps=(onset, max(onset, last)),
                    evidence=evidence, explanation=explanation, fix=_FIX)]
