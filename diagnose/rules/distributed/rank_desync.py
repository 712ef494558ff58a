"""Ranks disagree where they must agree: step counts, skipped steps, loss scale, or a rank died.

## What it flags
Across the ranks of one run:
- a rank that stopped (crashed, was interrupted, or was killed without a word: no end
  record, its process gone) while the other ranks finished, or before the others stopped
  too (torchrun stops the job when one rank dies): which rank stopped first, at which step;
- a rank that recorded fewer optimizer steps than the others;
- steps that the GradScaler skipped on some ranks but not on others, and loss scales
  that differ between ranks at the same step.

## Why it matters
In data-parallel training every rank takes the same optimizer steps on the same averaged
gradients, so the replicas stay identical. A rank that skips a step the others take (an
Inf in a gradient that was not all-reduced, a `scaler.step` inside `if rank == 0:`), or
stops stepping, now holds different weights: the model saved from rank 0 is not what the
other ranks train, and the next collective may hang. A rank that died early usually takes
the job down with it, or leaves the others waiting until the collective times out.

## Example
```python
loss.backward()
if rank == 0:
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)   # only rank 0 clips
grads_ok = torch.isfinite(grad_norm)                          # a local decision...
if grads_ok:
    optimizer.step()                                          # ...so ranks step differently
```
Use instead:
```python
torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)       # the same on every rank
ok = torch.isfinite(grad_norm).float()
dist.all_reduce(ok, op=dist.ReduceOp.MIN)                     # decide together
if ok:
    optimizer.step()
```

## Thresholds
- Step counts: a rank with at least 2 steps and 5% fewer than the rank with the most.
- Skipped steps and loss scale: any disagreement at a step every rank recorded.
- Status: any rank `crashed` or `interrupted` while another `finished`; or, when no rank
  finished, ranks that did not all end alike (the first to stop is a rank with an error of
  its own, else a killed rank, else the earliest; see `diagnose.rundir.ranks`).
"""
from __future__ import annotations

import pandas as pd

from diagnose.rules._base import Finding, Run, Severity, compact_ranges
from diagnose.rundir.ranks import first_stop, rank_ends

NAME = "rank-desync"
SEVERITY = Severity.ERROR
REQUIRES = ()  # a rank killed before its first flush has no steps: still a finding
SCOPE = "run"

MIN_MISSING_STEPS = 2
MIN_MISSING_FRACTION = 0.05

_EXPLANATION = ("Data-parallel ranks must take the same optimizer steps on the same averaged gradients; "
                "once they differ, the replicas hold different weights and the next collective may hang.")
_FIX = """Make every rank take the same decisions:
- never guard `optimizer.step()`, `scaler.step()`/`update()`, clipping or `zero_grad()` with `if rank == 0:`;
- decide together: all-reduce a flag (`dist.all_reduce(ok, op=dist.ReduceOp.MIN)`) before a local skip;
- modify gradients only before DDP's all-reduce (in a hook), not after `backward()` on one rank;
- a rank that crashed: read its `exception` event (`diagnose report RUN_DIR/rankN`)."""


def _finding(title: str, steps: tuple[int, int] | None, evidence: dict) -> Finding:
    return Finding(rule=NAME, severity=SEVERITY, title=title, steps=steps, evidence=evidence,
                   explanation=_EXPLANATION, fix=_FIX)


def _status(run: Run) -> list[Finding]:
    first = first_stop(run)
    if first is None:
        return []
    ends = rank_ends(run)
    status = {e.rank: e.status for e in ends}
    dead = sorted(e.rank for e in ends if e.stopped)
    last, error = first.last_step, first.error
    how = "was killed (no end record, its process is gone)" if first.killed else first.status
    if first.killed:  # a killed process loses what its writer had not flushed yet (~1 s)
        at = (f"its last written step {last}" if last is not None else "before any of its steps was written")
    else:
        at = f"after step {last}" if last is not None else "before recording a step"
    if "finished" in status.values():
        title = f"Rank {first.rank} {how} while other ranks finished ({at})"
    elif all(e.status == "running" for e in ends if e.rank != first.rank):
        title = f"Rank {first.rank} {how} ({at}) while the other ranks are still running"
    else:
        others = sorted({e.status for e in ends if e.rank != first.rank} - {"running"})
        title = f"Rank {first.rank} {how} first ({at}); then the other ranks {' or '.join(others)}"
    title += f": {error.splitlines()[0][:200]}" if error else ""
    starts = [t.meta.get("started_at") for t in run.ranks.values()
              if isinstance(t.meta.get("started_at"), (int, float))]
    stopped_s = {str(e.rank): round(e.end_at - min(starts), 3)
                 for e in ends if e.stopped and e.end_at is not None and starts}
    return [_finding(
        title, (last, last) if last is not None else None,
        {"status": {str(r): s for r, s in status.items()}, "dead_ranks": dead, "first_rank": first.rank,
         "killed": first.killed, "last_step": last, "error": error,
         "last_step_by_rank": {str(e.rank): e.last_step for e in ends}, "stopped_at_s": stopped_s},
    )]


def _step_counts(run: Run) -> list[Finding]:
    # A killed rank's count says little (its last second may not have been flushed), and
    # the status finding already says it stopped.
    killed = {e.rank for e in rank_ends(run) if e.killed}
    counts = {rank: len(t.steps) for rank, t in run.ranks.items() if rank not in killed}
    if len(counts) < 2:
        return []
    most = max(counts.values())
    short = {rank: n for rank, n in counts.items()
             if most - n >= MIN_MISSING_STEPS and most - n >= MIN_MISSING_FRACTION * most}
    if not short:
        return []
    rank = min(short, key=short.get)
    steps = run.ranks[rank].steps
    last = int(steps.index.max()) if len(steps) else None
    return [_finding(
        f"Rank {rank} recorded {short[rank]} optimizer steps, the other ranks up to {most}"
        + (f" (its last: step {last})" if last is not None else ""),
        (last, last) if last is not None else None,
        {"steps_per_rank": {str(r): n for r, n in counts.items()}, "short_ranks": sorted(short),
         "last_step": last},
    )]


def _scaler(run: Run) -> list[Finding]:
    if not all("scale" in t.steps.columns for t in run.ranks.values()):
        return []
    skipped = pd.DataFrame({rank: t.steps["skipped"] for rank, t in run.ranks.items()}).dropna()
    scale = pd.DataFrame({rank: t.steps["scale"].astype("float64") for rank, t in run.ranks.items()}).dropna()
    skip_diff = skipped.index[skipped.nunique(axis=1) > 1]
    scale_diff = scale.index[scale.nunique(axis=1) > 1]
    if not len(skip_diff) and not len(scale_diff):
        return []
    steps = sorted({int(s) for s in skip_diff} | {int(s) for s in scale_diff})
    first = steps[0]
    evidence = {
        "skip_disagreement_steps": compact_ranges([int(s) for s in skip_diff]),
        "scale_disagreement_steps": compact_ranges([int(s) for s in scale_diff]),
        "skipped_by_rank": {str(r): [int(s) for s in skipped.index[skipped[r].astype(bool)]][:20]
                            for r in skipped.columns},
    }
    if first in scale.index:
        evidence["scale_at_first_step"] = {str(r): float(v) for r, v in scale.loc[first].items()}
    if len(skip_diff):
        title = (f"Ranks disagree on which steps the GradScaler skipped ({len(skip_diff)} "
                 f"step{'s' if len(skip_diff) > 1 else ''}, first: step {int(skip_diff[0])})")
    else:
        title = f"Ranks disagree on the loss scale from step {first} ({len(scale_diff)} steps)"
    return [_finding(title, (first, steps[-1]), evidence)]


def check(run: Run) -> list[Finding]:
    if run.world_size < 2:
        return []
    return _status(run) + _step_counts(run) + _scaler(run)
