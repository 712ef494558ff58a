"""The total gradient norm grows by orders of magnitude and stays up.

## What it flags
A sustained rise of the total gradient norm *before clipping* (`clip_norm` when the loop
clips - `grad_norm` is measured after clipping then - else `grad_norm`):
- by 100x or more over its level at the start of training, for 5 steps in a row; or
- by 10x or more over its lowest level so far, and to 3x or more its level at the start,
  for 5 steps in a row, while the loss got markedly worse (at least double its best so
  far, and half of the progress lost).
Reports the growth factor, the steps, the norm before and at the peak, the loss, and the
parameters that carry most of the norm at the peak.

## Why it matters
An exploding gradient makes each update far larger than the last: weights overshoot,
the loss climbs, and soon something overflows to Inf/NaN. Usual causes: a learning rate
too high (or a warm-up that never ends), no gradient clipping on an RNN or a deep net
without normalisation, a loss that can grow without bound. With clipping on, the
weights survive, but a pre-clip norm 100x above `max_norm` means every step is cut down
to `max_norm`: the clip is steering, not the gradient, and the run is unstable.

## Example
```python
optimizer = torch.optim.SGD(model.parameters(), lr=1.0)   # far above what the loss allows
for x, y in loader:
    loss = F.mse_loss(model(x), y)
    loss.backward()
    optimizer.step()                                      # each step overshoots further
```
Use instead:
```python
optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
...
loss.backward()
torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=1.0)
optimizer.step()
```

## Thresholds
Smoothing: rolling median over 5 steps, so one outlier is not a rise (isolated outliers
are `gradient-spike`). Start level: median of the first 3 steps. Sustained: 5 steps in a
row. 100x alone; 10x with the loss criterion above.
Healthy scenarios (12, seeds 0-2): the smoothed norm rose at most 7.5x over its start
(a GRU whose gradients grow as it learns, loss falling); with the loss criterion at most
1.4x for 5 steps in a row (batch size 2). A converged run's norm may rise 500x above its
minimum (1e-6 to 5e-4 at a loss of 1e-7): that is noise on a floor, and the loss
criterion, which measures against the progress made, keeps it silent; so does the 3x
start level when a converged model meets bad labels and its gradient merely returns to
where it started (17x over its low, 1.5x its start). Faulty runs (seeds 0-2), as the
smoothed growth: the reference `gradient-explosion` injection (SGD at LR 50, clipped;
character transformer) 6e7-3e8x before its loss turns NaN at step ~40, 3e5x on the CNN;
SGD with its LR 20x too high 4e4-2e5x; a clipped ReLU RNN 940-6e4x; an AdamW transformer
at 1000x its LR, clipped, 14x while its loss went 4 -> 200 (through the loss criterion).
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from diagnose.rules._base import Finding, RunTables, Severity
from diagnose.rules.numerics import _signals

NAME = "gradient-explosion"
SEVERITY = Severity.ERROR
REQUIRES = ("steps.grad_norm",)

WINDOW = 5
SUSTAINED = 5
GROWTH_ALONE = 100.0
GROWTH_WITH_LOSS = 10.0
ABOVE_START = 3.0          # ... and >= 3x the start level: not merely back to where it began
LOSS_FACTOR = 2.0          # smoothed loss >= 2x its best so far ...
PROGRESS_LOST = 0.5        # ... and >= half of (start - best) given back
MIN_STEPS = 10

_FIX = """Bring the update size back under control:
- lower the learning rate (or end the warm-up at a lower peak); check the schedule's values;
- clip the total gradient norm, after unscaling under AMP:
    scaler.unscale_(optimizer)
    torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=1.0)
- for RNNs and deep nets: normalisation layers, residual connections, careful init;
- if clipping is already on and the pre-clip norm still climbs, clipping hides the
  problem: the LR is still too high for this model."""


def _smoothed(series: pd.Series) -> pd.Series:
    return series.rolling(WINDOW, min_periods=3).median()


def _sustained(mask: np.ndarray) -> tuple[int, int] | None:
    """The first run of >= SUSTAINED consecutive True positions."""
    for a, b in _signals.runs(mask):
        if b - a + 1 >= SUSTAINED:
            return a, b
    return None


def check(run: RunTables) -> list[Finding]:
    steps = run.steps
    norms, source = _signals.preclip_norms(steps)
    norms = norms[norms > 0]
    if len(norms) < MIN_STEPS:
        return []
    smooth = _smoothed(norms)
    start_level = float(norms.iloc[:3].median())
    growth_start = (smooth / start_level).to_numpy()
    alone = _sustained(np.nan_to_num(growth_start) >= GROWTH_ALONE)

    trough = np.minimum(smooth.cummin().shift(1).to_numpy(), start_level)
    trough = np.where(np.isnan(trough), start_level, trough)
    growth_trough = smooth.to_numpy() / trough
    worse = _loss_worse(steps, norms.index)
    above_start = np.nan_to_num(growth_start) >= ABOVE_START
    with_loss = (_sustained((np.nan_to_num(growth_trough) >= GROWTH_WITH_LOSS) & above_start & worse)
                 if worse is not None else None)

    if alone is None and with_loss is None:
        return []
    if with_loss is not None and (alone is None or with_loss[0] <= alone[0]):
        a, b = with_loss
        growth, base = growth_trough, trough
        severity = Severity.ERROR
    else:
        a, b = alone
        growth, base = growth_start, np.full(len(norms), start_level)
        severity = Severity.ERROR if worse is not None and worse[a:b + 1].any() else Severity.WARNING
    index = norms.index
    onset = int(index[a])
    # The episode: from the onset while the smoothed norm stays >= the smaller threshold.
    still_up = np.nan_to_num(smooth.to_numpy() / base[a]) >= GROWTH_WITH_LOSS
    end = a
    while end + 1 < len(norms) and still_up[end + 1]:
        end += 1
    episode = norms.iloc[a:end + 1]
    peak_step = int(episode.idxmax())
    peak = float(episode.max())
    baseline = float(base[a])
    factor = float(np.nanmax(growth[a:end + 1]))
    loss = _signals.finite_losses(steps)
    loss_start = float(loss.iloc[:3].median()) if len(loss) else None
    best_loss = float(loss[loss.index <= onset].min()) if len(loss[loss.index <= onset]) else None
    loss_peak = float(loss[(loss.index >= onset) & (loss.index <= int(index[end]))].max()) \
        if len(loss[(loss.index >= onset) & (loss.index <= int(index[end]))]) else None

    clipped = source == "clip_norm"
    title = (f"Gradient norm{' (before clipping)' if clipped else ''} grew {_signals.fmt(peak / baseline)}x from "
             f"step {onset}: {_signals.fmt(baseline)} -> {_signals.fmt(peak)} at step {peak_step}")
    evidence = {
        "source": source,
        "onset_step": onset,
        "end_step": int(index[end]),
        "baseline_norm": baseline,
        "start_norm": start_level,
        "peak_norm": peak,
        "peak_step": peak_step,
        "growth_factor": factor,
        "peak_over_baseline": peak / baseline,
        "criterion": "growth >= 100x over the start" if growth is growth_start else
                     "growth >= 10x over its lowest level, >= 3x the start, while the loss got worse",
        "loss_start": loss_start,
        "loss_best_before": best_loss,
        "loss_peak": loss_peak,
        "top_parameters_at_peak": _top_parameters(run, peak_step),
        "lr_at_onset": _lr_at(steps, onset),
        "thresholds": {"growth_alone": GROWTH_ALONE, "growth_with_loss": GROWTH_WITH_LOSS,
                       "sustained_steps": SUSTAINED, "smoothing_steps": WINDOW},
    }
    if clipped and "clip_max" in steps.columns:
        evidence["clip_max"] = float(steps["clip_max"].dropna().iloc[-1]) if steps["clip_max"].notna().any() else None
    explanation = (f"The total gradient norm{' before clipping' if clipped else ''} stayed (median of "
                   f"{WINDOW} steps) {_signals.fmt(factor)}x above its earlier level for {end - a + 1} recorded steps "
                   f"(steps {onset}-{int(index[end])}).")
    if loss_peak is not None and best_loss is not None:
        explanation += (f" Meanwhile the loss went from {_signals.fmt(best_loss)} (best before) to "
                        f"{_signals.fmt(loss_peak)}.")
    clip_max = evidence.get("clip_max")
    if clipped and clip_max is not None and peak > clip_max:
        explanation += (f" Clipping cut these steps down to max_norm ({_signals.fmt(clip_max)}), so the weights did "
                        "not blow up at once, but the clip, not the gradient, set the step: the run is unstable.")
    else:
        explanation += (" Without clipping, each update grows with the gradient: the weights overshoot further "
                        "every step.")
    return [Finding(rule=NAME, severity=severity, title=title, steps=(onset, int(index[end])),
                    evidence=evidence, explanation=explanation, fix=_FIX)]


def _loss_worse(steps: pd.DataFrame, index: pd.Index) -> np.ndarray | None:
    """Per step of `index`: the smoothed loss is >= 2x its best so far and has given back
    >= half of the progress from the start. None when no loss was recorded."""
    loss = _signals.finite_losses(steps)
    if len(loss) < MIN_STEPS:
        return None
    smooth = _smoothed(loss)
    valid = smooth.dropna()
    if valid.empty:
        return None
    start = float(valid.iloc[0])
    best = smooth.cummin()
    rise = smooth - best
    need = np.maximum(PROGRESS_LOST * (start - best), (LOSS_FACTOR - 1.0) * best.abs())
    worse = ((rise >= need) & (rise > 0)).astype(bool)
    return worse.reindex(index, fill_value=False).to_numpy(dtype=bool)


def _top_parameters(run: RunTables, step: int, count: int = 3) -> list[dict]:
    """The parameters holding most of the squared gradient norm at `step`."""
    if run.grad_norms.empty or step not in run.grad_norms.index:
        return []
    row = run.grad_norms.loc[step].astype("float64")
    row = row[np.isfinite(row.to_numpy()) & (row.to_numpy() >= 0)]
    total = float((row ** 2).sum())
    if total <= 0:
        return []
    top = (row ** 2 / total).sort_values(ascending=False).head(count)
    return [{"parameter": _signals.name_of(run.params, int(i)), "share": round(float(v), 4)} for i, v in top.items()]


def _lr_at(steps: pd.DataFrame, step: int) -> list[float]:
    columns = sorted(c for c in steps.columns if c.startswith("lr_"))
    if not columns or step not in steps.index:
        return []
    return [float(steps.at[step, c]) for c in columns]
