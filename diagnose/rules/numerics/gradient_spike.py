"""Isolated spikes of the gradient norm against a robust running baseline.

## What it flags
Single steps (or a few adjacent ones) whose total gradient norm before clipping jumps an
order of magnitude above the recent typical level and falls back right after. For each
spike: the step, the norm, how many times the baseline it is, a robust z-score, the loss
of that step, and the parameter (and its layer) holding most of the spike's norm.

## Why it matters
A spike is usually one bad batch: corrupted inputs (a unit or scaling mix-up, a decoding
error), wrong labels, an extreme outlier, or a numerically fragile operation meeting an
unusual input. Without clipping, that one step can move the weights further than
hundreds of normal steps; with Adam it pollutes the second-moment estimate for the next
thousand steps. Spikes often come before a divergence or a NaN.

## Example
```python
for x, y in loader:                 # one shard was stored in uint8 0-255, not floats 0-1
    loss = F.cross_entropy(model(x), y)
    loss.backward()
    optimizer.step()                # the step on that batch is 100x larger than the rest
```
Use instead:
```python
for step, (x, y) in enumerate(loader):
    loss = F.cross_entropy(model(x), y)
    loss.backward()
    total = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=1.0)
    optimizer.step()
    if step % 100 == 0: ...          # log `total`; on a spike, save the batch and look at it
```

## Thresholds
Baseline: median of log(norm) over the previous 25 recorded steps (at least 10); noise:
1.4826 x MAD of its step-to-step differences / sqrt(2), floored at 0.05 (so a steady
trend is not noise), over the same window. A spike is a step with
- norm >= 10x the baseline, and z >= 6 (on the log scale), and
- norm >= the highest baseline the run has had so far (a converged run's norm of 1e-6
  that jumps 1000x is still below what the run handled at the start: not a spike), and
- isolated: the median of the next 5 steps is at most 1/3 of the spike (a climb that
  stays up is `gradient-explosion`).
Spikes within 5 steps of each other count as one (its largest step).
Healthy scenarios (12, seeds 0-2): largest ratio with z >= 6 was 5.4x (GRU); the largest
ratio overall was 29x with z = 3.8 (batch size 2); converged-floor jumps of up to 1900x
are below the run's own level. Faulty runs (seeds 0-2): 70-111x, z 32-92 (corrupt
batches at steps 45 and 110), 123-388x, z 41-51 (a mislabelled batch hidden by clipping).
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from diagnose.rules._base import Finding, RunTables, Severity
from diagnose.rules.numerics import _signals

NAME = "gradient-spike"
SEVERITY = Severity.WARNING
REQUIRES = ("steps.grad_norm",)

WINDOW = 25
MIN_HISTORY = 10
RATIO = 10.0
Z = 6.0
NOISE_FLOOR = 0.05
AFTER = 5
FALL_BACK = 1 / 3
MERGE_GAP = 5
MIN_STEPS = 20
_SHOWN = 10

_FIX = """Find the batches behind the spikes and protect the run from the next one:
- log the indices (or file names) of each batch, and look at the batches of the steps listed;
- validate inputs in the data pipeline (range, dtype, NaN/Inf, label range);
- clip gradients, so one bad batch cannot move the weights far:
    torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=1.0)
- if spikes grow in size or frequency, lower the learning rate (or lengthen the warm-up)."""


def _mad(values: np.ndarray) -> float:
    return float(np.median(np.abs(values - np.median(values))))


def spikes(norms: pd.Series) -> list[dict]:
    """The spikes of a norm series (index: step), each as a dict; see the Thresholds.

    Linear in the number of steps: the cheap tests (ratio, level) are vectorised; the
    noise estimate and the fall-back test run only on the few steps that pass them.
    """
    values = norms.to_numpy(dtype="float64")
    logs = pd.Series(np.log(values))
    base = logs.rolling(WINDOW, min_periods=MIN_HISTORY).median().shift(1).to_numpy()
    level = pd.Series(base).cummax().to_numpy()
    candidates = np.flatnonzero((logs.to_numpy() - base >= np.log(RATIO)) & (logs.to_numpy() >= level))
    diffs = np.diff(logs.to_numpy(), prepend=np.nan)
    found: list[dict] = []
    for t in candidates:
        step_noise = diffs[max(1, t - WINDOW):t]
        step_noise = step_noise[np.isfinite(step_noise)]
        sigma = max(1.4826 * _mad(step_noise) / np.sqrt(2), NOISE_FLOOR) if len(step_noise) else NOISE_FLOOR
        z = (logs[t] - base[t]) / sigma
        after = values[t + 1:t + 1 + AFTER]
        if z < Z or len(after) < 2 or np.median(after) > values[t] * FALL_BACK:
            continue
        found.append({"step": int(norms.index[t]), "norm": float(values[t]), "baseline": float(np.exp(base[t])),
                      "ratio": float(np.exp(logs[t] - base[t])), "z": float(z)})
    merged: list[dict] = []
    for spike in found:
        if merged and spike["step"] - merged[-1]["span"][1] <= MERGE_GAP:
            merged[-1]["span"][1] = spike["step"]
            if spike["norm"] > merged[-1]["norm"]:
                merged[-1].update(spike)
            continue
        merged.append({**spike, "span": [spike["step"], spike["step"]]})
    return merged


def check(run: RunTables) -> list[Finding]:
    steps = run.steps
    norms, source = _signals.preclip_norms(steps)
    norms = norms[norms > 0]
    if len(norms) < MIN_STEPS:
        return []
    found = spikes(norms)
    if not found:
        return []
    loss = _signals.losses(steps)
    for spike in found:
        spike["loss"] = float(loss[spike["step"]]) if spike["step"] in loss.index else None
        spike.update(_dominant(run, spike["step"]))
        for key in ("norm", "baseline", "ratio", "z"):
            spike[key] = round(spike[key], 4 if key in ("ratio", "z") else 6)
    worst = max(found, key=lambda s: s["ratio"])
    first = found[0]
    clipped = source == "clip_norm"
    where = f", mostly {worst['parameter']}" if worst.get("parameter") else ""
    if len(found) == 1 and first["span"][0] == first["span"][1]:
        title = (f"Gradient norm spiked {_signals.fmt(first['ratio'])}x above its baseline at step {first['step']} "
                 f"({_signals.fmt(first['baseline'])} -> {_signals.fmt(first['norm'])}{where})")
    else:
        spans = [f"{a}" if a == b else f"{a}-{b}" for a, b in (s["span"] for s in found)]
        listed = ", ".join(spans[:5]) + (", ..." if len(spans) > 5 else "")
        title = (f"{len(found)} gradient-norm spike{'s' if len(found) > 1 else ''} at steps {listed}; largest "
                 f"{_signals.fmt(worst['ratio'])}x at step {worst['step']}{where}")
    evidence = {
        "source": source,
        "spikes": found[:_SHOWN],
        "spike_count": len(found),
        "recorded_steps": int(len(norms)),
        "thresholds": {"ratio": RATIO, "z": Z, "window": WINDOW, "fall_back_within": AFTER, "merge_gap": MERGE_GAP},
    }
    layers = sorted({s["layer"] for s in found if s.get("layer")})
    explanation = (f"{len(found)} step(s) had a gradient norm{' before clipping' if clipped else ''} at least "
                   f"{RATIO:g}x the median of the {WINDOW} steps before, far outside their usual variation "
                   f"(z >= {Z:g}), and the norm fell back right after: single bad batches rather than a trend.")
    if layers:
        explanation += f" The spikes sit mostly in {', '.join(layers[:5])}."
    if clipped:
        explanation += " Clipping limited the step, so the weights moved no more than max_norm allows."
    else:
        explanation += " Nothing clipped these steps: each moved the weights as far as its gradient said."
    return [Finding(rule=NAME, severity=SEVERITY, title=title, steps=(first["span"][0], found[-1]["span"][1]),
                    evidence=evidence, explanation=explanation, fix=_FIX)]


def _dominant(run: RunTables, step: int) -> dict:
    """The parameter with the largest share of the squared gradient norm at `step`, and
    how far above its own recent median it was."""
    grads = run.grad_norms
    if grads.empty or step not in grads.index:
        return {}
    row = grads.loc[step].astype("float64")
    row = row[np.isfinite(row.to_numpy()) & (row.to_numpy() > 0)]
    total = float((row ** 2).sum())
    if total <= 0:
        return {}
    index = int((row ** 2).idxmax())
    before = grads.loc[grads.index < step, index].astype("float64").tail(WINDOW).dropna()
    before = before[before > 0]
    out = {"parameter": _signals.name_of(run.params, index), "layer": _signals.module_of(run.params, index),
           "parameter_share": round(float(row[index] ** 2 / total), 4)}
    if len(before):
        out["parameter_ratio"] = round(float(row[index] / before.median()), 4)
    return out
