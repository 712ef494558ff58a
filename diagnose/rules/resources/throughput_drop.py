"""Throughput falls sharply mid-run and stays down.

## What it flags
A step from which every step takes several times longer per sample (per token when the
inputs are token ids, so a sequence-length curriculum is not a drop) than before, to the
end of the run. Evaluation phases, checkpoints and epoch boundaries make single steps
slow, not every step from then on, and are ignored. The finding gives the step, the
throughput before and after, the time the slowdown cost, and what changed at that step
when the record shows it: more parameters receiving gradients (an unfrozen backbone —
reported as info, a schedule you chose), more forward passes per step, a data-loading
wait that appeared, more micro-batches per step.

## Why it matters
A run that gets 5x slower halfway through costs 3x the compute it should, and usually
means the loop started doing something it should not: a synchronous call every step (a
metric upload, `torch.cuda.synchronize()`, a checkpoint each step), an evaluation inside
the batch loop, a model or input that grew, memory so short the allocator thrashes, or
another job on the same GPU or CPU.

## Example
```python
for step, (x, y) in enumerate(loader):
    train_step(x, y)
    if step >= warmup_steps:
        wandb.log(evaluate(model, val_loader))   # a whole evaluation, every step
```
Use instead:
```python
    if step % eval_every == 0:
        with torch.no_grad():
            wandb.log(evaluate(model, val_loader))
```

## Thresholds
Runs of at least 70 steps, leaving out the first 5% (at least 3). A step's cost is its
time per sample (per token). Steps are grouped in blocks of max(5, steps/100); a block's
level is the 20th percentile of its costs: contention from other processes, garbage
collection, evaluation and epoch boundaries only ever add time to some steps, so a low
percentile follows the cost of an undisturbed step. A drop is reported at the earliest
split of the blocks where
- at least 20 steps (10% of the run) lie before and **50** (15%) after, to the end;
- the median level after is at least **3x** the median level before;
- at least 80% of the blocks before sit at or under half the level after, and at most
  **20%** of the steps before already cost that much (the slow state is new);
- the 5th percentile of the steps' cost after is at least **2x** the level before: nearly
  every step got slower, as when the loop itself does more per step, while contention
  leaves some steps fast.
Where the numbers come from: the 12 healthy scenarios (seeds 0–2, recorded in a shared
and in fresh processes) on a two-core machine with a load of 8–10, where other processes
made step times swing 100-fold and sometimes stay 7–600x slower to the end of a run
(torch's two threads spin-waiting for each other): those stretches lasted 27–44 steps,
most with 23–43% of the steps before them already as slow; one (28 steps, 49x) passed
every other test, hence the 50 steps. No healthy run is reported. The slow loops of
`tests/harness/faults_resources.py` (a blocking call, a model that grew, an evaluation in
the batch loop) drop 4–80x with 2–14% of slow steps before; an unfrozen backbone drops
3–30x (info).

## Other processes
Another process that takes a steady share of the CPU from then on (a single-threaded run on
a machine whose load jumps) slows every step alike, exactly as added work does. The
recorder's per-step CPU time and involuntary context switches tell them apart: when the
process got the CPU for a much smaller share of each step and the kernel preempted it far
more often per second of CPU (thresholds below), the finding is rated info and says that
other processes took the CPU. Not told apart: another job on the same GPU (the host
process then waits without being preempted) — check `nvidia-smi`.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from diagnose.rules._base import Finding, RunTables, Severity

NAME = "throughput-drop"
SEVERITY = Severity.WARNING
REQUIRES = ("steps.step_time_s",)

MIN_STEPS = 70
"""Runs shorter than this (after warm-up) are not judged (20 steps before + 50 after)."""
WARMUP_FRACTION = 0.05
"""Leading fraction of the steps left out (at least 3 steps)."""
PERCENTILE = 20
"""A block's cost: this percentile of its seconds per unit of work."""
MIN_BEFORE_STEPS, MIN_BEFORE_FRACTION = 20, 0.10
"""Before the drop: at least this many steps and this fraction of the (analysed) run."""
MIN_AFTER_STEPS, MIN_AFTER_FRACTION = 50, 0.15
"""After the drop, to the end: at least this many steps and this fraction of the run."""
DROP_RATIO = 3.0
"""Median block cost after / before, at least."""
CONSISTENCY = 0.8
"""Fraction of the blocks before the split that cost at most half the level after."""
PRE_SLOW_MAX = 0.2
"""Before the split, at most this fraction of the steps already cost half the level after:
the slow state is new at the drop (evaluation steps, epoch starts and contention spikes
make up the few allowed)."""
FLOOR_PERCENTILE = 5
FLOOR_RISE = 2.0
"""After the split, this percentile of the steps' cost is at least FLOOR_RISE x the level
before: (nearly) every step got slower, as when the loop itself does more per step;
contention from other processes leaves some steps fast."""

CPU_SHARE_FALL = 0.5
"""Contention: the process's CPU time / wall time (window totals) fell to at most this x before..."""
SWITCHES_RISE = 2
RATE_RISE = 3.0
"""...and its involuntary context switches per step rose by at least SWITCHES_RISE and per
CPU second at least RATE_RISE x. Measured on the reference loop (two torch threads) on a
two-core machine whose load jumped mid-run: another session's tests (3.9x slower at step
205 of 320: CPU share 100% -> 26%, preemptions 0 -> 5 a step, 0 -> 270 per CPU second) and
four busy-loop processes started at 4 s (101x slower: share 194% -> 67%, preemptions 0 ->
146 a step, 0 -> 251 per CPU second; CPU time per step 35x, torch's threads spinning).
The slow faults of tests/harness/faults_resources.py on a quiet machine: share 100% ->
100% (model grew, extra forwards) or 8% (sleep), preemptions 0 -> 0."""

_FIX = """Look at what the loop does from that step on, and time one step with the profiler:
    with torch.profiler.profile(schedule=torch.profiler.schedule(wait=1, warmup=1, active=3),
                                on_trace_ready=torch.profiler.tensorboard_trace_handler("prof")) as prof:
        for _ in range(5):
            train_step(next(batches)); prof.step()
Usual culprits: work that belongs once an epoch placed in the batch loop (evaluation,
checkpoints, logging with `.item()`/`.cpu()`), a model or input that grew, memory so
short the allocator thrashes (see memory-leak), another process on the same device
(`nvidia-smi`, `top`)."""


def _work(steps: pd.DataFrame) -> tuple[str, np.ndarray]:
    """The unit throughput is counted in, and the amount of it per step."""
    for unit in ("tokens", "samples"):
        if unit in steps.columns:
            amount = pd.to_numeric(steps[unit], errors="coerce").to_numpy(dtype="float64")
            if len(amount) and np.all(np.isfinite(amount) & (amount > 0)):
                return unit, amount
    return "steps", np.ones(len(steps))


def _blocks(cost: np.ndarray, size: int) -> list[np.ndarray]:
    return np.array_split(np.arange(len(cost)), max(1, len(cost) // size))


def _best_split(cost: np.ndarray, blocks: list[np.ndarray], levels: np.ndarray) -> tuple[int, float] | None:
    """Block index of the earliest consistent rise in cost, and its ratio. The earliest:
    once the cost has risen, later splits pass too, and their ratio only grows when
    something else slows the tail further."""
    total = len(cost)
    least_before = max(MIN_BEFORE_STEPS, MIN_BEFORE_FRACTION * total)
    least_after = max(MIN_AFTER_STEPS, MIN_AFTER_FRACTION * total)
    for j in range(1, len(levels)):
        split = int(blocks[j][0])
        if split < least_before or total - split < least_after:
            continue
        before, after = levels[:j], levels[j:]
        low, high = float(np.median(before)), float(np.median(after))
        if low <= 0 or high / low < DROP_RATIO:
            continue
        if np.mean(before <= high / 2) < CONSISTENCY or np.mean(cost[:split] >= high / 2) > PRE_SLOW_MAX:
            continue  # the slow state was already common before
        if np.percentile(cost[split:], FLOOR_PERCENTILE) < FLOOR_RISE * low:
            continue  # fast steps still happen after: the work per step did not grow
        return j, high / low
    return None


def _median_per_step(calls: pd.DataFrame, steps: np.ndarray, method: str) -> float | None:
    if calls.empty or "method" not in calls.columns:
        return None
    counts = calls[calls["method"] == method].groupby("step").size()
    return float(counts.reindex(steps, fill_value=0).median())


def _changes(run: RunTables, before: np.ndarray, after: np.ndarray) -> tuple[list[str], dict, bool]:
    """What the record shows changing at the drop: sentences, evidence, unfrozen?"""
    notes: list[str] = []
    evidence: dict = {}
    unfrozen = False
    if not run.grad_norms.empty:
        with_grad = run.grad_norms.notna().sum(axis=1)
        b, a = with_grad.reindex(before).median(), with_grad.reindex(after).median()
        if np.isfinite(b) and np.isfinite(a) and a != b:
            evidence["params_with_grad"] = [int(b), int(a)]
            if a > b:
                unfrozen = True
                notes.append(f"{int(a - b)} more parameter tensors receive gradients from then on "
                             f"({int(b)} -> {int(a)}): a frozen part of the model started training, which "
                             "costs a backward pass through it")
    forwards_b = _median_per_step(run.calls, before, "forward")
    forwards_a = _median_per_step(run.calls, after, "forward")
    if forwards_b is not None and forwards_a is not None and forwards_a > forwards_b:
        evidence["forwards_per_step"] = [forwards_b, forwards_a]
        notes.append(f"each step now runs {forwards_a:g} forward passes instead of {forwards_b:g}")
    steps = run.steps
    if "data_wait_s" in steps.columns:
        share = (pd.to_numeric(steps["data_wait_s"], errors="coerce")
                 / pd.to_numeric(steps["step_time_s"], errors="coerce")).clip(0, 1)
        b, a = float(share.reindex(before).median()), float(share.reindex(after).median())
        if np.isfinite(a) and np.isfinite(b):
            evidence["data_wait_share"] = [b, a]
            if a - b >= 0.25:
                notes.append(f"the loop now waits for data {a:.0%} of each step ({b:.0%} before): "
                             "see dataloader-bottleneck")
    contention = _contention(steps, before, after, evidence)
    if contention:
        notes.append(contention)
    if "micro_batches" in steps.columns:
        mb = pd.to_numeric(steps["micro_batches"], errors="coerce")
        b, a = float(mb.reindex(before).median()), float(mb.reindex(after).median())
        if np.isfinite(a) and np.isfinite(b) and a > b:
            evidence["micro_batches"] = [b, a]
            notes.append(f"each step now accumulates {a:g} micro-batches instead of {b:g}")
    return notes, evidence, unfrozen


def _contention(steps: pd.DataFrame, before: np.ndarray, after: np.ndarray, evidence: dict) -> str | None:
    """A sentence when the slowdown came from other processes taking the CPU, else None.

    Per step the recorder keeps the process's CPU time and its involuntary context switches
    (the kernel preempting it). Other processes taking the CPU shrink the process's share of
    each step on the CPU and make the kernel preempt it more often per second of CPU it
    gets; a loop that does more per step keeps its share and its preemption rate (more CPU
    time, proportionally more preemptions); a loop that blocks (a sleep, I/O, a blocking
    device sync) waits without being preempted. CPU time alone does not tell: torch's
    intra-op threads spin while a sibling thread is descheduled, so contention can raise it.

    Shares and rates are taken over each window's totals, not per-step medians: on a machine
    other processes load all along, a step shorter than the scheduler's time slice usually
    runs unpreempted (its median share reads 100%) while the rare step that is preempted
    absorbs the whole wait; a loop whose steps got longer is preempted in every step, and
    its medians fell although nothing changed on the machine (a grown model read as
    contention under a load of 4 on 2 cores).
    """
    if not {"cpu_time_s", "involuntary_switches"} <= set(steps.columns):
        return None

    columns = ["cpu_time_s", "step_time_s", "involuntary_switches"]
    table = steps[columns].apply(pd.to_numeric, errors="coerce")

    def means(rows: np.ndarray) -> tuple[float, float, float]:
        window = table.reindex(rows).dropna()
        return tuple(float(v) for v in window.mean()) if len(window) else (np.nan,) * 3

    (cpu_b, wall_b, sw_b), (cpu_a, wall_a, sw_a) = means(before), means(after)
    if not all(np.isfinite(v) for v in (cpu_b, cpu_a, wall_b, wall_a, sw_b, sw_a)) \
            or min(cpu_b, cpu_a, wall_b, wall_a) <= 0:
        return None
    evidence["cpu_time_s"] = [round(cpu_b, 6), round(cpu_a, 6)]
    evidence["involuntary_switches"] = [round(sw_b, 2), round(sw_a, 2)]
    share_b, share_a = cpu_b / wall_b, cpu_a / wall_a
    rate_b, rate_a = sw_b / cpu_b, sw_a / cpu_a
    waited = share_a <= CPU_SHARE_FALL * share_b
    preempted = sw_a >= sw_b + SWITCHES_RISE and rate_a >= RATE_RISE * rate_b
    if not (waited and preempted):
        return None
    evidence["contention"] = True
    return (f"the process got the CPU for {share_a:.0%} of each step instead of {share_b:.0%} and was "
            f"preempted {sw_a:.3g} times a step instead of {sw_b:.3g} ({rate_a:,.0f} instead of "
            f"{rate_b:,.0f} times per CPU second): other processes (or this run's own DataLoader "
            "workers) took the CPU — check the machine (`top`) before the code")


def check(run: RunTables) -> list[Finding]:
    steps = run.steps
    if "step_time_s" not in steps.columns:
        return []
    unit, work = _work(steps)
    seconds = pd.to_numeric(steps["step_time_s"], errors="coerce").to_numpy(dtype="float64")
    ok = np.isfinite(seconds) & (seconds > 0)
    index = steps.index.to_numpy()[ok]
    cost = seconds[ok] / work[ok]
    skip = max(3, int(round(WARMUP_FRACTION * len(cost))))
    index, cost = index[skip:], cost[skip:]
    if len(cost) < MIN_STEPS:
        return []
    size = max(5, len(cost) // 100)
    blocks = _blocks(cost, size)
    levels = np.array([np.percentile(cost[b], PERCENTILE) for b in blocks])
    best = _best_split(cost, blocks, levels)
    if best is None:
        return []
    j, ratio = best
    low, high = float(np.median(levels[:j])), float(np.median(levels[j:]))
    # The exact step: the first from which a block-long median stays above the midpoint.
    mid = float(np.sqrt(low * high))
    start = blocks[j - 1][0]
    drop = blocks[j][0]
    for k in range(start, blocks[min(j + 1, len(blocks) - 1)][-1] + 1):
        if cost[k] >= mid and np.mean(cost[k:k + size] >= mid) >= CONSISTENCY:
            drop = k
            break
    if len(cost) - drop < max(MIN_AFTER_STEPS, MIN_AFTER_FRACTION * len(cost)):
        return []  # the exact step leaves too short a stretch after it
    drop_step = int(index[drop])
    before, after = index[:drop], index[drop:]
    lost = float(np.sum((cost[drop:] - low) * work[ok][skip:][drop:]).clip(min=0))
    notes, changes, unfrozen = _changes(run, before, after)
    rate_b, rate_a = 1.0 / low, 1.0 / high
    title = (f"Throughput fell {ratio:.1f}x at step {drop_step} and stayed down: "
             f"~{rate_b:,.0f} -> ~{rate_a:,.0f} {unit}/s for the last {len(after)} steps")
    evidence = {
        "drop_step": drop_step,
        "ratio": ratio,
        "unit": unit,
        "rate_before": rate_b,
        "rate_after": rate_a,
        "steps_after": int(len(after)),
        "time_lost_s": lost,
        "block_steps": size,
        "thresholds": {"drop_ratio": DROP_RATIO, "percentile": PERCENTILE, "consistency": CONSISTENCY,
                       "pre_slow_max": PRE_SLOW_MAX, "floor_rise": FLOOR_RISE, "min_steps": MIN_STEPS,
                       "min_after_steps": MIN_AFTER_STEPS},
        **changes,
    }
    explanation = (f"Up to step {drop_step} an undisturbed step processed ~{rate_b:,.0f} {unit}/s; from then "
                   f"to the end ~{rate_a:,.0f} {unit}/s, {ratio:.1f}x slower, which cost about {lost:.1f} s. ")
    if notes:
        explanation += "At that step the record shows: " + "; ".join(notes) + "."
    else:
        explanation += ("Nothing recorded changed at that step (same forward passes, gradients and data wait): "
                        "look for work added to the step outside the model — a synchronous call, logging "
                        "that copies to the host, a model or input that grew — or another process "
                        "competing for the device.")
    # An unfrozen backbone is a schedule the user chose; other processes taking the CPU are
    # the machine's doing: both are reported, neither as a problem of the training code.
    severity = Severity.INFO if unfrozen or changes.get("contention") else SEVERITY
    return [Finding(rule=NAME, severity=severity, title=title, steps=(drop_step, int(index[-1])),
                    evidence=evidence, explanation=explanation, fix=_FIX)]
