"""Waiting for the next batch takes a large share of the step time.

## What it flags
Steps where the loop sat in `next(loader)` for a large part of the step: `data_wait_s`
(time spent waiting for batches from a watched loader — `Monitor.loader(...)`, or the
DataLoader in `diagnose run`) against `step_time_s` (wall time between two optimizer
steps). The finding gives the typical share, the typical wait and step, and the time the
run spent waiting in all.

## Why it matters
While the loop waits for data the GPU (or the CPU's compute) does nothing: a run that
waits 60% of the time could run 2.5 times faster with the same model. The usual causes:
decoding and augmentation in the training process (`num_workers=0`), too few workers
for an expensive `__getitem__` or `collate_fn`, workers started again every epoch, data
read from a slow disk or network on every access.

## Example
```python
loader = DataLoader(dataset, batch_size=64, shuffle=True)   # decodes in the main process
for x, y in loader:
    ...
```
Use instead:
```python
loader = DataLoader(dataset, batch_size=64, shuffle=True,
                    num_workers=8,              # ~ CPU cores available per GPU
                    pin_memory=True,            # faster, asynchronous host-to-GPU copies
                    persistent_workers=True,    # no restart cost every epoch
                    prefetch_factor=4)          # batches queued ahead per worker
for x, y in loader:
    x, y = x.cuda(non_blocking=True), y.cuda(non_blocking=True)
```
Then make each item cheaper: decode once and cache, move augmentation to the GPU, store
data in a format that is read, not parsed.

## Thresholds
After the first 5% of the steps (at least 2: worker start-up, first batch), over at least
10 steps: the median share `data_wait_s / step_time_s` is at least **0.4** and the whole
run's share (total wait / total step time) at least **0.3**.
Where the numbers come from: the 12 healthy scenarios (in-memory data, seeds 0–2, on a
loaded two-core machine) wait a median 0–20% of each step (0–15% of their time); a
dataset that decodes and caches items in the main process waits 15% (29% of its time).
The slow loaders of `tests/harness/faults_resources.py` (a sleeping `__getitem__`, a
sleeping `collate_fn`) wait 95%; the reference loop's `--inject dataloader-bottleneck`
(collate sleeps 50 ms) waits 50–55% on CPU, more on a GPU where the step is shorter.

## With a profile
When the run was profiled (`--profile`), the evidence adds the profiler's breakdown of
the profiled steps (`profile`: the data-loading share and the others, from
torch-tb-profiler): a second, independent measure of the same wait. It never decides
the finding, which needs the recorded steps.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from diagnose.rules._base import Finding, RunTables, Severity
from diagnose.rules.resources._series import fmt_seconds

NAME = "dataloader-bottleneck"
SEVERITY = Severity.WARNING
REQUIRES = ("steps.data_wait_s", "steps.step_time_s")

MIN_STEPS = 10
"""Fewer analysed steps say nothing."""
WARMUP_FRACTION = 0.05
"""Leading fraction of the steps left out (worker start-up, the first batch)."""
MEDIAN_SHARE = 0.4
"""Median per-step share of the step spent waiting for data, at least."""
TOTAL_SHARE = 0.3
"""Share of the whole (analysed) run spent waiting for data, at least."""


def _shares(steps: pd.DataFrame) -> pd.DataFrame | None:
    frame = pd.DataFrame({
        "wait": pd.to_numeric(steps["data_wait_s"], errors="coerce"),
        "step": pd.to_numeric(steps["step_time_s"], errors="coerce"),
    }, index=steps.index).astype("float64")
    frame = frame[np.isfinite(frame["wait"]) & np.isfinite(frame["step"]) & (frame["step"] > 0)]
    skip = max(2, int(round(WARMUP_FRACTION * len(frame))))
    frame = frame.iloc[skip:]
    if len(frame) < MIN_STEPS:
        return None
    frame["share"] = (frame["wait"] / frame["step"]).clip(0.0, 1.0)
    return frame


_FIX = """Feed the loop from worker processes, and make each item cheaper:
    loader = DataLoader(dataset, batch_size=64, shuffle=True,
                        num_workers=8, pin_memory=True,
                        persistent_workers=True, prefetch_factor=4)
    x = x.cuda(non_blocking=True)
If workers are already on: add more (up to the CPU cores per GPU), profile one
`dataset[i]` and the `collate_fn`, cache decoded data, move augmentation to the GPU."""


def check(run: RunTables) -> list[Finding]:
    frame = _shares(run.steps)
    if frame is None:
        return []
    median_share = float(frame["share"].median())
    total_share = float(frame["wait"].sum() / frame["step"].sum())
    if median_share < MEDIAN_SHARE or total_share < TOTAL_SHARE:
        return []
    first, last = int(frame.index[0]), int(frame.index[-1])
    median_wait, median_step = float(frame["wait"].median()), float(frame["step"].median())
    waited = float(frame["wait"].sum())
    speedup = 1.0 / max(1.0 - total_share, 1e-6)
    evidence = {
        "median_share": median_share,
        "total_share": total_share,
        "median_wait_s": median_wait,
        "median_step_s": median_step,
        "waited_s": waited,
        "steps_analysed": len(frame),
        "window": [first, last],
        "steps_over_half": int((frame["share"] >= 0.5).sum()),
        "thresholds": {"median_share": MEDIAN_SHARE, "total_share": TOTAL_SHARE, "min_steps": MIN_STEPS},
    }
    title = (f"The loop waits for data {total_share:.0%} of the time "
             f"(median {fmt_seconds(median_wait)} of a {fmt_seconds(median_step)} step)")
    explanation = (f"From step {first} to {last} the loop spent {waited:.1f} s of "
                   f"{float(frame['step'].sum()):.1f} s waiting for the next batch; in the median step "
                   f"{median_share:.0%} of the step. Meanwhile the model computes nothing: with the data "
                   f"ready in time these steps would run up to {speedup:.1f}x faster.")
    if run.has("profile"):  # the profiler's own measure of the same thing, if a trace exists
        evidence["profile"] = run.profile.corroboration()
        explanation += (f" The profiler's trace of steps {run.profile.steps[0].step}-{run.profile.steps[-1].step} "
                        f"puts data loading at {run.profile.mean_share('data_loading'):.0%} of the step "
                        "(torch-tb-profiler's breakdown; see the profile section).")
    return [Finding(rule=NAME, severity=SEVERITY, title=title, steps=(first, last),
                    evidence=evidence, explanation=explanation, fix=_FIX)]
