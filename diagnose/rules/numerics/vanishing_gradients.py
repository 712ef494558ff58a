"""The first layers' gradients are tiny next to the last layers': they barely learn.

## What it flags
Weight tensors (matrices and conv kernels, input side first) whose typical gradient per
element is a thousand times or more smaller than that of the last layers'. Reports the
ratio, the per-layer values from input to output, and the layers below the threshold.

## Why it matters
Each layer of the backward pass multiplies the gradient by its local derivative. With
saturating activations (sigmoid: at most 1/4, tanh near +-1), weights initialised too
small, or a deep stack without normalisation or residual connections, that product
shrinks geometrically with depth: the first layers get gradients of 1e-6 and less, so
with any learning rate that keeps the last layers stable they do not move. The model
trains as if it were only its last few layers, or not at all.

## Example
```python
layers = []
for _ in range(12):
    layers += [nn.Linear(256, 256), nn.Sigmoid()]      # each sigmoid: gradient x <= 0.25
model = nn.Sequential(*layers, nn.Linear(256, 10))
```
Use instead:
```python
def block():                                            # normalised, non-saturating
    return nn.Sequential(nn.Linear(256, 256), nn.LayerNorm(256), nn.GELU())

class Residual(nn.Module):                              # a path around each block
    def __init__(self): super().__init__(); self.f = block()
    def forward(self, x): return x + self.f(x)

model = nn.Sequential(*[Residual() for _ in range(12)], nn.Linear(256, 10))
```
Keep the default (Kaiming/Xavier) initialisation rather than tiny constant stds.

## Thresholds
Per weight tensor (>= 2 dims, not an embedding - only some of its rows get gradients -
trainable, not dead: exactly-zero gradients are `dead-units`): its median gradient norm
over the recorded steps divided by sqrt(numel). Early = the first quarter of the weight
tensors in forward order (at least one), late = the last quarter; the ratio is the
median of the early ones over the median of the late ones. Needs >= 3 weight tensors.
Warning below 1e-3, error below 1e-6 (practically zero).
Biases are left out: a conv bias before BatchNorm gets (almost) no gradient by design.
Healthy scenarios (12, seeds 0-2): the lowest ratio was 0.057 (a 2-layer transformer,
whose output layer has the largest per-element gradients); MLPs, CNNs and a GRU 0.17-0.7;
the reference loop's CNN and transformer 0.13-0.28. Faulty runs (seeds 0-2): 1.6e-4 to
3.6e-4 (10 tanh layers initialised with std 0.02), 4e-9 to 4.8e-9 (12 sigmoid layers).
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd

from diagnose.rules._base import Finding, RunTables, Severity
from diagnose.rules.numerics import _signals

NAME = "vanishing-gradients"
SEVERITY = Severity.WARNING
REQUIRES = ("grad_norms", "params")

RATIO_WARNING = 1e-3
RATIO_ERROR = 1e-6
MIN_WEIGHTS = 3
DEAD_SHARE = 0.9
_EMBEDDINGS = ("Embedding", "EmbeddingBag")

_FIX = """Give the gradient a way back to the first layers:
- replace saturating activations (sigmoid, tanh) in hidden layers with ReLU/GELU/SiLU;
- keep the default initialisation (Kaiming for ReLU: `nn.init.kaiming_normal_`), not a
  tiny constant std;
- add normalisation (`nn.LayerNorm`, `nn.BatchNorm1d`) and residual connections
  (`x = x + block(x)`) in deep stacks;
- for RNNs use LSTM/GRU instead of a plain RNN."""


def layer_rms(run: RunTables) -> pd.DataFrame:
    """Per candidate weight tensor, in forward order: name, layer, numel, median gradient
    norm and the per-element value (median norm / sqrt(numel))."""
    params = run.params
    grads = _signals.unskipped_rows(run.steps, run.grad_norms).astype("float64")
    grads = grads.where(np.isfinite(grads.to_numpy()))
    medians = grads.median()
    zero_share = (grads == 0).sum() / grads.notna().sum().replace(0, np.nan)
    rows = []
    for index in _signals.forward_order(params):
        if index not in grads.columns or pd.isna(medians[index]) or zero_share[index] >= DEAD_SHARE:
            continue
        info = params.loc[index]
        shape = info["shape"] if isinstance(info["shape"], (list, tuple)) else []
        if len(shape) < 2 or info["module_type"] in _EMBEDDINGS or info["requires_grad"] is False:
            continue
        numel = int(info["numel"]) if not pd.isna(info["numel"]) else int(np.prod(shape))
        median = float(medians[index])
        rows.append({"index": index, "parameter": info["name"], "layer": _signals.module_of(params, index),
                     "numel": numel, "median_norm": median, "per_element": median / math.sqrt(max(numel, 1))})
    return pd.DataFrame(rows)


def check(run: RunTables) -> list[Finding]:
    table = layer_rms(run)
    if len(table) < MIN_WEIGHTS:
        return []
    quarter = max(1, len(table) // 4)
    early = float(table["per_element"].iloc[:quarter].median())
    late = float(table["per_element"].iloc[-quarter:].median())
    if late <= 0:
        return []
    ratio = early / late
    if ratio >= RATIO_WARNING:
        return []
    table["ratio_to_late"] = table["per_element"] / late
    low = table[table["ratio_to_late"] < RATIO_WARNING]
    severity = Severity.ERROR if ratio < RATIO_ERROR else Severity.WARNING
    first_layer = table.iloc[0]
    title = (f"Gradients vanish toward the input: the first layers' gradients are {_signals.fmt(ratio)}x the last "
             f"layers' ({len(low)} of {len(table)} weight tensors below {RATIO_WARNING:g}x, e.g. "
             f"{first_layer['parameter']})")
    steps = run.grad_norms.index
    evidence = {
        "ratio_early_to_late": ratio,
        "early_per_element": early,
        "late_per_element": late,
        "early_parameters": table["parameter"].iloc[:quarter].tolist(),
        "late_parameters": table["parameter"].iloc[-quarter:].tolist(),
        "layers": [{"parameter": r.parameter, "per_element": r.per_element, "ratio_to_late": r.ratio_to_late}
                   for r in table.itertuples()][:40],
        "below_threshold": low["parameter"].tolist()[:20],
        "recorded_steps": int(len(steps)),
        "thresholds": {"warning": RATIO_WARNING, "error": RATIO_ERROR},
    }
    explanation = (f"Per element, the gradient of {first_layer['parameter']} is "
                   f"{_signals.fmt(first_layer['ratio_to_late'])}x "
                   f"that of the last layers, over {len(steps)} recorded steps, and it shrinks layer by layer toward "
                   "the input. With one learning rate for all, the first layers hardly move: the network trains "
                   "as if it were only its last layers.")
    if severity is Severity.ERROR:
        explanation += " Below 1e-6 the first layers are practically frozen."
    return [Finding(rule=NAME, severity=severity, title=title,
                    steps=(int(steps[0]), int(steps[-1])) if len(steps) else None,
                    evidence=evidence, explanation=explanation, fix=_FIX)]
