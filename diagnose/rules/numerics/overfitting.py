"""Validation loss rises while the training loss keeps falling: the model memorises.

## What it flags
Runs that log a validation loss (`Monitor.log_metrics("val", val_loss=...)`, phase
`val`) where, after the model had learned something that generalises, the validation
loss reached its minimum and then climbed for a good part of the run while the training
loss went on falling. Reports the best epoch, the validation loss there and at the end,
the training loss at both points, and the gap between validation and training loss.

## Why it matters
Past the minimum every epoch makes the model worse on data it has not seen: it fits the
noise of the training set. Compute is spent to get a worse model, and a checkpoint taken
at the end (rather than at the minimum) is worse than one from many epochs earlier.

## Example
```python
for epoch in range(200):                  # far more epochs than 500 samples support
    train_one_epoch(model, train_loader)  # no weight decay, no dropout, no augmentation
    val_loss = evaluate(model, val_loader)
torch.save(model.state_dict(), "final.pt")   # the last epoch, not the best one
```
Use instead:
```python
best, patience, bad = float("inf"), 5, 0
for epoch in range(200):
    train_one_epoch(model, train_loader)
    val_loss = evaluate(model, val_loader)
    if val_loss < best:
        best, bad = val_loss, 0
        torch.save(model.state_dict(), "best.pt")    # keep the best epoch
    elif (bad := bad + 1) >= patience:
        break                                         # early stopping
```
Add regularisation (weight decay, dropout, augmentation) or more data, or a smaller model.

## Thresholds
Needs >= 5 evaluations. The validation curve is smoothed by a centred median of 3
evaluations before the minimum is taken, so one lucky evaluation is not the minimum.
Fires when all of:
- the model generalised first: the best validation loss is >= 5% below the first
  evaluation's, or >= 25% below the training loss at the start of training (a model that
  never beat its untrained self on validation data has a data problem, not overfitting);
- the run went on well past the minimum: >= 4 evaluations and >= 25% of all of them
  came after it (early stopping with a patience of 2-3 stops before that);
- the smoothed validation loss over the second half of those evaluations is >= 10%
  above the best;
- the training loss at the end is >= 10% below the training loss at the best epoch.
Healthy scenarios (12, seeds 0-2): the two that evaluate on a validation set drawn
from other class centres (validation loss rising from the first epoch, never better
than the untrained model) fail the first condition; early stopping stops 2 evaluations
after its minimum. Faulty runs (seeds 0-2): +91-121% (64 noisy samples, 40 epochs,
best epoch 1-5) and +35-79% (a 20-point curve fit, 40 evaluations, best 4-9).
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from diagnose.rules._base import Finding, RunTables, Severity
from diagnose.rules.numerics import _signals

NAME = "overfitting"
SEVERITY = Severity.WARNING
REQUIRES = ("metrics",)

MIN_EVALS = 5
IMPROVED = 0.05
BELOW_START = 0.25
AFTER_EVALS = 4
AFTER_SHARE = 0.25
RISE = 0.10
TRAIN_FALL = 0.10
_VAL_PHASES = ("val", "valid", "validation", "eval", "dev")
_TRAIN_PHASES = ("train", "training")

_FIX = """Keep the model from memorising, and keep the best epoch:
- save the checkpoint with the lowest validation loss and use it, not the last one;
- stop early: no improvement for `patience` evaluations -> stop;
- regularise: weight decay (AdamW `weight_decay=0.05`), dropout, data augmentation;
- get more data or use a smaller model; lower the number of epochs."""


def validation_curve(metrics: pd.DataFrame) -> tuple[pd.DataFrame, str]:
    """One row per validation evaluation (in order): step, epoch, value; and the metric name."""
    val = metrics[metrics["phase"].astype(str).str.lower().isin(_VAL_PHASES)]
    names = [n for n in dict.fromkeys(val["name"].astype(str)) if "loss" in n.lower()]
    if not names:
        return pd.DataFrame(columns=["step", "epoch", "value"]), ""
    name = next((n for n in names if n.lower() in ("val_loss", "valid_loss", "validation_loss", "eval_loss", "loss")),
                names[0])
    rows = val[val["name"].astype(str) == name][["step", "epoch", "value"]].copy()
    rows["value"] = pd.to_numeric(rows["value"], errors="coerce")
    return rows[np.isfinite(rows["value"].to_numpy(dtype="float64"))].reset_index(drop=True), name


def _train_at(run: RunTables, curve: pd.DataFrame) -> np.ndarray:
    """The training loss belonging to each evaluation: a logged train-phase loss of the
    same epoch when there is one, else the mean step loss since the previous evaluation."""
    metrics = run.metrics
    train = metrics[metrics["phase"].astype(str).str.lower().isin(_TRAIN_PHASES)
                    & metrics["name"].astype(str).str.contains("loss", case=False)]
    out = np.full(len(curve), np.nan)
    if not train.empty and curve["epoch"].notna().all():
        by_epoch = train.groupby("epoch")["value"].last()
        out = np.array([float(by_epoch.get(e, np.nan)) for e in curve["epoch"]])
    if np.isnan(out).any():
        loss = _signals.finite_losses(run.steps)
        previous = -1
        for i, step in enumerate(curve["step"]):
            if np.isnan(out[i]) and not pd.isna(step):
                window = loss[(loss.index > previous) & (loss.index <= int(step))]
                out[i] = float(window.mean()) if len(window) else np.nan
            previous = int(step) if not pd.isna(step) else previous
    return out


def check(run: RunTables) -> list[Finding]:
    curve, name = validation_curve(run.metrics)
    n = len(curve)
    if n < MIN_EVALS:
        return []
    val = curve["value"].to_numpy(dtype="float64")
    smooth = pd.Series(val).rolling(3, center=True, min_periods=1).median().to_numpy()
    around = int(np.argmin(smooth))
    low = max(0, around - 1)
    best_i = low + int(np.argmin(val[low:around + 2]))  # the evaluation itself, near the smoothed minimum
    best = float(smooth[around])
    after = n - 1 - best_i
    if after < AFTER_EVALS or after < AFTER_SHARE * n:
        return []
    scale = abs(best) if best != 0 else 1.0
    late = smooth[best_i + 1 + after // 2:] if after >= 2 else smooth[best_i + 1:]
    late_level = float(np.median(late))
    if (late_level - best) / scale < RISE:
        return []
    train = _train_at(run, curve)
    start_train = _start_train_loss(run, train)
    improved = best <= (1 - IMPROVED) * float(smooth[0])
    below_start = start_train is not None and best <= (1 - BELOW_START) * start_train
    if not (improved or below_start):
        return []
    train_best, train_end = float(train[best_i]), float(train[-1])
    if not (np.isfinite(train_best) and np.isfinite(train_end)) or \
            train_end > (1 - TRAIN_FALL) * train_best:
        return []

    best_row = curve.iloc[best_i]
    best_epoch = None if pd.isna(best_row["epoch"]) else int(best_row["epoch"])
    last_row = curve.iloc[-1]
    where = f"epoch {best_epoch}" if best_epoch is not None else f"step {int(best_row['step'])}"
    end_val = float(val[-1])
    raw_best = float(val[best_i])
    rise = (late_level - raw_best) / (abs(raw_best) if raw_best != 0 else 1.0)
    title = (f"{name} rose {rise:.0%} after its minimum at {where} ({_signals.fmt(val[best_i])} -> "
             f"{_signals.fmt(end_val)}) while the training loss fell {_signals.fmt(train_best)} -> "
             f"{_signals.fmt(train_end)}")
    evidence = {
        "metric": name,
        "evaluations": n,
        "best_epoch": best_epoch,
        "best_step": None if pd.isna(best_row["step"]) else int(best_row["step"]),
        "best_val_loss": float(val[best_i]),
        "best_val_loss_smoothed": best,
        "final_val_loss": end_val,
        "val_rise": rise,
        "evaluations_after_best": after,
        "train_loss_at_best": train_best,
        "train_loss_final": train_end,
        "gap_at_best": raw_best - train_best,
        "gap_final": end_val - train_end,
        "val_losses": [round(float(v), 6) for v in val][:200],
        "thresholds": {"improved": IMPROVED, "below_start": BELOW_START, "after_evals": AFTER_EVALS,
                       "after_share": AFTER_SHARE, "rise": RISE, "train_fall": TRAIN_FALL},
    }
    explanation = (f"The validation loss was lowest at {where} ({_signals.fmt(raw_best)}); over the {after} "
                   f"evaluations after it, it climbed to {_signals.fmt(end_val)} while the training loss kept falling, "
                   f"from {_signals.fmt(train_best)} to {_signals.fmt(train_end)}. The gap between them grew from "
                   f"{_signals.fmt(raw_best - train_best)} to {_signals.fmt(end_val - train_end)}: the model fits the "
                   "training set better and generalises worse with every epoch.")
    first_step = evidence["best_step"]
    last_step = None if pd.isna(last_row["step"]) else int(last_row["step"])
    steps = (first_step, last_step) if first_step is not None and last_step is not None else None
    return [Finding(rule=NAME, severity=SEVERITY, title=title, steps=steps, evidence=evidence,
                    explanation=explanation, fix=_FIX)]


def _start_train_loss(run: RunTables, train: np.ndarray) -> float | None:
    """The training loss at the start: median of the first 3 step losses per micro-batch
    (a loop that accumulates without dividing sums several batches' losses; one that
    divides reads lower, which only makes this test stricter), else the first
    evaluation's training loss."""
    loss = _signals.finite_losses(run.steps)
    if len(loss) >= 3:
        if "micro_batches" in run.steps.columns:
            loss = loss / run.steps.loc[loss.index, "micro_batches"].clip(lower=1)
        return float(loss.iloc[:3].median())
    return float(train[0]) if len(train) and np.isfinite(train[0]) else None
