"""The training loss does not move from where it started.

## What it flags
A run of at least 20 steps whose smoothed loss never drops below its starting level by
more than the batch-to-batch noise allows, nor by more than 5%, and does not rise
either (that is `loss-divergence`). Reports the start and end loss, the relative change,
the noise, the learning rate(s), and how much the weights moved (from the sampled weight
norms), which usually tells the cause.

## Why it matters
A loss that stays at its initial value means the optimizer steps change nothing that
matters: the learning rate is far too small (a typo, `1e-7` for `1e-3`, or a schedule that
never leaves its warm-up), the gradients are cleared before the step or never reach the
weights (frozen, detached, not in the optimizer), or the model cannot learn at all (dead
units, vanishing gradients, a loss applied to the wrong tensor). The run burns its whole
budget and learns nothing.

## Example
```python
optimizer = torch.optim.SGD(model.parameters(), lr=1e-7)   # meant 1e-3
```
Use instead:
```python
optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
# and make sure the loop reaches it:
optimizer.zero_grad(); loss.backward(); optimizer.step()
```
A quick check that the model *can* learn: train on one small batch for 100 steps; the
loss should go to nearly 0.

If training resumed from a checkpoint that had already converged, or the loss is not meant
to fall (a GAN discriminator, an RL objective), this finding does not apply: ignore it with
`--ignore loss-plateau`.

## Thresholds
Judged on runs of >= 20 steps with a finite loss on >= 90% of them (otherwise
`nonfinite-loss` says what happened), and not while the LR is still warming up (every
group's LR at its largest at the last step, and >= 2x its first).
Smoothing window w = n/10 steps (5 to 50). Start = median of the first w losses; the
smoothed curve is a rolling median over w. Noise: 1.4826 x MAD of the loss around a
centred rolling median; a median of w values moves about 1.25 x noise / sqrt(w). Fires
when (start - lowest smoothed) is below both 4 standard errors of that difference and 5%
of |start|, and the end is not more than 5% above the start.
Healthy scenarios (12, seeds 0-2): the smallest drop was 20% of the start (z = 10, an
EMA CNN over 36 steps); the rest 34-99%. Faulty runs (seeds 0-2): drops of 0-1.6% with
z <= 2.1 (LR 1e-9 and 1e-7, gradients cleared before the step; also dead units and 12
sigmoid layers, whose own rules name the cause).
"""
from __future__ import annotations

import math

import numpy as np

from diagnose.rules._base import Finding, RunTables, Severity
from diagnose.rules.numerics import _signals

NAME = "loss-plateau"
SEVERITY = Severity.WARNING
REQUIRES = ("steps.loss",)

MIN_STEPS = 20
MAX_DROP = 0.05
MAX_Z = 4.0
MAX_RISE = 0.05
FINITE_SHARE = 0.9

_FIX = """Make the optimizer steps count:
- check the learning rate you think you set against the one recorded (evidence `lr`);
  for Adam 1e-4..1e-3, for SGD 1e-2..1e-1 are usual starting points; a schedule's
  warm-up must end;
- the step order must be zero_grad -> backward -> step (see the loop rules);
- every trainable parameter must be in the optimizer and have requires_grad=True;
- overfit one small batch first: if the loss does not go to ~0 there, the model or the
  loss is wired wrong (detached tensors, wrong target, activations that kill gradients)."""


def check(run: RunTables) -> list[Finding]:
    every = _signals.losses(run.steps)
    loss = _signals.finite_losses(run.steps)
    n = len(loss)
    if n < MIN_STEPS or n < FINITE_SHARE * len(every) or _in_warmup(run.steps):
        return []
    w = int(np.clip(n // 10, 5, 50))
    values = loss.to_numpy(dtype="float64")
    start = float(np.median(values[:w]))
    end = float(np.median(values[-w:]))
    smooth = loss.rolling(w, min_periods=w).median()
    lowest = float(smooth.min())
    centred = loss.rolling(w, center=True, min_periods=1).median()
    noise = float(1.4826 * np.median(np.abs(values - centred.to_numpy())))
    scale = abs(start) if start != 0 else 1.0
    drop = start - lowest
    se = 1.2533 * noise * math.sqrt(2.0 / w)
    z = drop / se if se > 0 else (math.inf if drop > 0 else 0.0)
    if drop / scale >= MAX_DROP or z >= MAX_Z or (end - start) / scale > MAX_RISE:
        return []

    steps = run.steps
    lr = _signals.lr_evidence(steps)
    lr_text = _signals.lr_text(steps)
    moved = _weights_moved(run)
    title = (f"Loss has not moved in {n} steps: {_signals.fmt(start)} -> {_signals.fmt(end)} "
             f"({(end - start) / scale:+.1%})" + (f"; {lr_text}" if lr_text else ""))
    evidence = {
        "steps": n,
        "loss_start": start,
        "loss_end": end,
        "loss_lowest_smoothed": lowest,
        "relative_change": (end - start) / scale,
        "largest_relative_drop": drop / scale,
        "noise": noise,
        "z": z if math.isfinite(z) else None,
        "window": w,
        "lr": lr,
        "thresholds": {"max_drop": MAX_DROP, "max_z": MAX_Z, "max_rise": MAX_RISE},
    }
    if moved is not None:
        evidence["weight_norm_relative_change"] = moved
    explanation = (f"Over {n} steps the smoothed loss never fell below its start ({_signals.fmt(start)}) by more than "
                   f"{drop / scale:.1%}, within the noise of single batches ({_signals.fmt(noise)}).")
    if lr_text:
        explanation += f" The learning rate was {lr_text[3:]}."
    if moved is not None:
        if moved < 1e-4:
            explanation += (f" The weights practically did not move (largest relative change of a weight norm "
                            f"{_signals.fmt(moved)}): the steps are too small or never reach the weights.")
        else:
            explanation += (f" The weights did move (up to {moved:.1%} in norm), so the steps reach them but do not "
                            "reduce the loss: look for dead or frozen layers and a mis-wired loss.")
    first, last = int(loss.index[0]), int(loss.index[-1])
    return [Finding(rule=NAME, severity=SEVERITY, title=title, steps=(first, last), evidence=evidence,
                    explanation=explanation, fix=_FIX)]


def _in_warmup(steps) -> bool:
    """True when the run ends inside an LR warm-up: every group's LR is still rising (its
    last value is its largest and at least twice its first). Judged later, not now."""
    columns = [c for c in steps.columns if c.startswith("lr_")]
    if not columns:
        return False
    for column in columns:
        lr = steps[column].astype("float64").dropna()
        if lr.empty or lr.iloc[-1] < lr.max() or lr.iloc[-1] < 2 * lr.iloc[0]:
            return False
    return True


def _weights_moved(run: RunTables) -> float | None:
    """Largest relative change of a weight matrix's norm (>= 2 dims, trainable) between
    the first and the last sample (`param_norms`); None without two samples. Biases are
    left out: one initialised at 0 'changes' by any factor."""
    norms = run.param_norms
    if len(norms) < 2:
        return None
    first = norms.iloc[0].astype("float64")
    last = norms.iloc[-1].astype("float64")
    params = run.params
    trainable = [c for c in norms.columns
                 if c in params.index and params.at[c, "requires_grad"] is not False
                 and len(params.at[c, "shape"] or []) >= 2]
    change = ((last - first).abs() / first.abs().where(first.abs() > 0))[trainable]
    change = change[np.isfinite(change.to_numpy())]
    return float(change.max()) if len(change) else None
