"""One rank is consistently slower than the others, and every rank waits for it.

## What it flags
A rank whose step time (`step_time_s`) is longer than the other ranks' at the same steps,
or, in synchronous data parallel training, a rank that waits longer for its batches
(`data_wait_s`) than the others. Says which rank and by how much (median over steps).

## Why it matters
Data-parallel ranks meet at every gradient all-reduce, so the whole job runs at the speed
of its slowest rank: the others sit idle inside `backward()`. Under DDP the step times
of all ranks therefore come out nearly equal; the straggler shows in what it does outside
the collectives, most often waiting for data (a slow disk or worker on one node, an
unbalanced shard, a rank doing extra logging or checkpointing). One rank at 1.3x makes
every GPU of the job 1.3x slower.

## Example
```python
sampler = DistributedSampler(dataset)
loader = DataLoader(dataset, sampler=sampler, num_workers=0)   # decoding on the main thread
if rank == 0:
    log_images(batch)                                          # extra work on one rank
```
Use instead:
```python
loader = DataLoader(dataset, sampler=sampler, num_workers=4, pin_memory=True,
                    persistent_workers=True)
if rank == 0 and step % 500 == 0:                              # rarely, or asynchronously
    log_images(batch)
```

## Thresholds
Compared over the steps every rank recorded, leaving out the first 2 (warm-up), and only
with at least 8 such steps.
- Step time: the rank's median (over steps) of its step time divided by the median of the
  other ranks' at that step is at least 1.25, and the median excess at least 5 ms.
- Data wait: the rank's median excess of data wait over the other ranks' median is at
  least 20% of its median step time, and at least 5 ms.
Tuned on four healthy 2-rank gloo runs (tests/distributed/ddp_script.py, 16 steps, four
launched at once on 2 cores): step-time ratios 0.98-1.02 (excess under 0.03 ms), data-wait
excess under 0.002 ms. A rank 1 sleeping 30 ms per batch: data-wait excess 30 ms (92% of a
step), while its step-time ratio stays 0.99-1.01 (the all-reduce evens them out).
Checked on the reference loop with DDP (`diagnose run --nproc-per-node 2`, 2 gloo ranks,
tests/distributed/test_reference_ddp.py's config and the default one): healthy and
`rank-desync` runs 0.994-1.006 step-time ratio, data-wait excess under 0.01 ms; the
`rank-straggler` injection (30 ms per batch) 30.2 ms, 73-81% of a step.
"""
from __future__ import annotations

import pandas as pd

from diagnose.rules._base import Finding, Run, Severity

NAME = "rank-straggler"
SEVERITY = Severity.WARNING
REQUIRES = ("steps.step_time_s",)
SCOPE = "run"

WARMUP_STEPS = 2
MIN_STEPS = 8
MIN_RATIO = 1.25
MIN_EXCESS_S = 0.005
MIN_WAIT_SHARE = 0.2

_FIX = """Find what the slow rank does that the others do not:
- data: more DataLoader workers (`num_workers`, `pin_memory=True`, `persistent_workers=True`),
  check that every rank's shard is the same size and as fast to read;
- extra work on one rank (logging, evaluation, checkpointing on rank 0): do it rarely or
  in a background thread;
- hardware: compare the nodes (`nvidia-smi`, thermal throttling, a slower interconnect)."""


def _table(run: Run, column: str) -> pd.DataFrame:
    """One column per rank, the steps all ranks recorded, warm-up left out."""
    frame = pd.DataFrame({rank: t.steps[column].astype("float64") for rank, t in run.ranks.items()
                          if column in t.steps.columns})
    if frame.shape[1] < 2:
        return frame.iloc[0:0]
    frame = frame.dropna()
    return frame.iloc[WARMUP_STEPS:]


def _others_median(frame: pd.DataFrame, rank: int) -> pd.Series:
    return frame.drop(columns=rank).median(axis=1)


def _step_time(frame: pd.DataFrame) -> Finding | None:
    best = None
    for rank in frame.columns:
        others = _others_median(frame, rank)
        ratio = float((frame[rank] / others.where(others > 0)).median())
        excess = float((frame[rank] - others).median())
        if ratio >= MIN_RATIO and excess >= MIN_EXCESS_S and (best is None or ratio > best[1]):
            best = (int(rank), ratio, excess, float(others.median()))
    if best is None:
        return None
    rank, ratio, excess, others = best
    steps = (int(frame.index[0]), int(frame.index[-1]))
    return Finding(
        rule=NAME, severity=SEVERITY,
        title=f"Rank {rank} is a straggler: its steps take {ratio:.2f}x the other ranks' "
              f"(+{excess * 1e3:.1f} ms median)",
        steps=steps,
        evidence={"rank": rank, "signal": "step_time_s", "median_ratio": round(ratio, 3),
                  "median_excess_s": round(excess, 6), "others_median_step_time_s": round(others, 6),
                  "steps_compared": len(frame)},
        explanation="Ranks meet at every gradient all-reduce, so the job runs at the slowest rank's pace.",
        fix=_FIX,
    )


def _data_wait(frame: pd.DataFrame, step_time: pd.DataFrame) -> Finding | None:
    best = None
    for rank in frame.columns:
        excess = float((frame[rank] - _others_median(frame, rank)).median())
        own = float(step_time[rank].median()) if rank in step_time.columns else float("nan")
        if excess >= MIN_EXCESS_S and own > 0 and excess >= MIN_WAIT_SHARE * own and (best is None or excess > best[1]):
            best = (int(rank), excess, own)
    if best is None:
        return None
    rank, excess, own = best
    return Finding(
        rule=NAME, severity=SEVERITY,
        title=f"Rank {rank} is a straggler: it waits {excess * 1e3:.1f} ms longer for each batch than "
              f"the other ranks ({excess / own:.0%} of a step)",
        steps=(int(frame.index[0]), int(frame.index[-1])),
        evidence={"rank": rank, "signal": "data_wait_s", "median_excess_s": round(excess, 6),
                  "median_step_time_s": round(own, 6), "share_of_step": round(excess / own, 3),
                  "steps_compared": len(frame)},
        explanation="Ranks meet at every gradient all-reduce, so the others wait for this rank's batches: "
                    "the whole job runs at the pace of its slowest data pipeline.",
        fix=_FIX,
    )


def check(run: Run) -> list[Finding]:
    if run.world_size < 2:
        return []
    step_time = _table(run, "step_time_s")
    if len(step_time) < MIN_STEPS:
        return []
    found = _step_time(step_time)
    if found is None:
        wait = _table(run, "data_wait_s")
        if len(wait) >= MIN_STEPS:
            found = _data_wait(wait, step_time)
    return [found] if found is not None else []
