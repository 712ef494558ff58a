"""Memory grows steadily, step after step, after warm-up: something is kept every step.

## What it flags
A run whose memory at the step boundary climbs all through the second half of the run:
CUDA allocated memory (`mem_alloc_bytes`, the tensors alive between steps) on a GPU run,
the process's resident set size (`rss_bytes`) otherwise. Between two optimizer steps a
healthy loop holds the same things every time (weights, gradients, optimizer state), so
after warm-up that number is flat; a leak adds the same amount every step. The finding
gives the growth per step and per sample, how much it added over the run, and what the
growth looks like:
- on CUDA, growth per step close to the memory one step's forward/backward adds
  (`mem_peak_bytes - mem_alloc_bytes` on steps that set a new peak) is the signature of
  **autograd graphs kept alive**, each holding the activations it saved; far less is
  tensors kept per step (losses, outputs in a list);
- on CPU only the size tells: hundreds of KiB or more per step is activation-sized (a
  kept graph, or batches/outputs kept in a list); a few KiB per step is Python objects.

## Why it matters
A leak ends in an out-of-memory crash — hours in, at the worst time — or, before that,
in an allocator that spends its time freeing caches. Runs that crash with an OOM after
such growth are reported as errors.

## Example
```python
running = 0
for x, y in loader:
    loss = F.cross_entropy(model(x), y)
    loss.backward(retain_graph=True)   # the graph (and its activations) is kept...
    optimizer.step(); optimizer.zero_grad()
    running = running + loss           # ...and this holds every step's graph alive
history.append(model(x_val).mean())    # a metric computed with autograd on: same thing
```
Use instead:
```python
running += loss.item()                 # a Python float: nothing kept (or loss.detach())
with torch.no_grad():
    history.append(model(x_val).mean().item())
```
Other usual causes: a recurrent hidden state carried across batches without
`h = h.detach()`, outputs or batches appended to a list that is never emptied, a cache
keyed by something that never repeats.

## Thresholds
Runs of at least 40 steps. The window is the second half of the steps (warm-up,
allocator caches, lazy initialisation and a first-epoch data cache are over by then).
Over it:
- the Theil–Sen slope (median of pairwise slopes) times the window's length is at least
  **32 MiB** of RSS or **16 MiB** of CUDA allocated memory, and at least 6 times the
  robust noise (1.4826·MAD of the residuals about that slope);
- the growth is steady: the medians of the window's four quarters rise one after the
  other, each rise at least 15% of the whole. One jump (a checkpoint buffer, a bigger
  evaluation batch, the healthy reference loop's +70 MB at the start of its last epoch)
  or a cache that fills once and stops does not qualify.
Where the numbers come from: on the 12 healthy scenarios (36–600 steps, seeds 0–2, each
in a shared and in a fresh process) RSS moved at most 1 MiB over the window and never
rose quarter after quarter; the healthy reference loop (320 steps) rose 70 MB in one
jump. The leaking loops of `tests/harness/faults_resources.py` grow 0.7–2.5 MiB a step
(35–125 MiB over the window), steadily; the reference loop's `--inject memory-leak` ~2 MiB
a step of RSS. CUDA allocated memory between steps is exact — on an H200, flat to the
byte in a healthy MLP loop, +512 B a step in the healthy reference loop (one loss scalar
kept per step until the epoch ends) — hence the lower floor there; a graph kept with
`retain_graph=True` added 1.5 MiB a step (2.2x the step's transient memory), a held-out
loss kept with its graph 1.5 MiB (0.9x), the reference injection 512 KiB (0.07x: one
module's output, not a graph's activations).
Graph retention is called at a growth per step of at least 0.25x the step's transient
memory; on CPU, sizes from 256 KiB a step are called activation-sized.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from diagnose.rules._base import Finding, RunTables, Severity
from diagnose.rules.resources._series import fmt_bytes, robust_sigma, theil_sen_slope

NAME = "memory-leak"
SEVERITY = Severity.WARNING
REQUIRES = ("steps",)

MIN_STEPS = 40
"""Fewer steps say nothing about a trend."""
FLOOR_BYTES = {"mem_alloc_bytes": 16 * 2**20, "rss_bytes": 32 * 2**20}
"""Least growth over the window that is reported, per series."""
NOISE_FACTOR = 6.0
"""Growth over the window must exceed this many robust standard deviations of the residuals."""
QUARTER_RISE = 0.15
"""Each quarter's median must rise by at least this fraction of the total rise."""
GRAPH_RATIO = 0.25
"""CUDA: growth per step at least this fraction of a step's transient memory looks like
kept activations (a kept graph)."""
ACTIVATION_SIZED = 256 * 1024
"""CPU: growth per step from which the size alone could be activations or batches."""

_WHAT = {"mem_alloc_bytes": "CUDA allocated memory", "rss_bytes": "process RSS"}


def _series(steps: pd.DataFrame, column: str) -> pd.Series | None:
    if column not in steps.columns:
        return None
    values = pd.to_numeric(steps[column], errors="coerce").astype("float64")
    values = values[np.isfinite(values.to_numpy())]
    return values if len(values) >= MIN_STEPS else None


def _measure(values: pd.Series) -> dict:
    """Trend, noise and steadiness over the second half of the steps."""
    window = values.iloc[len(values) // 2:]
    x = window.index.to_numpy(dtype="float64")
    y = window.to_numpy()
    slope = theil_sen_slope(x, y)
    span = float(x[-1] - x[0])
    growth = slope * span
    noise = robust_sigma(y - slope * x)
    quarters = [float(np.median(part)) for part in np.array_split(y, 4)]
    rises = np.diff(quarters)
    total_rise = quarters[-1] - quarters[0]
    steady = total_rise > 0 and bool((rises >= QUARTER_RISE * total_rise).all())
    return {"first": int(window.index[0]), "last": int(window.index[-1]), "slope": slope,
            "growth": growth, "noise": noise, "quarters": quarters, "steady": steady,
            "start": float(y[0]), "end": float(y[-1])}


def _fires(m: dict, column: str) -> bool:
    return (m["steady"] and m["growth"] >= FLOOR_BYTES[column]
            and m["growth"] >= NOISE_FACTOR * m["noise"])


def _ran_out_of_memory(run: RunTables) -> bool:
    if not run.events_of("oom").empty:
        return True
    for data in run.events_of("exception")["data"]:
        text = f"{data.get('type', '')} {data.get('message', '')}".lower() if isinstance(data, dict) else ""
        if "out of memory" in text or "outofmemory" in text:
            return True
    return "out of memory" in str(run.meta.get("error", "")).lower()


def _step_transient(steps: pd.DataFrame) -> float | None:
    """The memory one step's forward and backward add on top of what stays allocated,
    from the steps where the CUDA peak rose (`mem_peak_bytes` is the process's peak so far:
    only a step that set a new peak tells its own transient). None when fewer than 5 did,
    e.g. an earlier, larger run in the same process holds the peak."""
    if "mem_peak_bytes" not in steps.columns:
        return None
    peak = pd.to_numeric(steps["mem_peak_bytes"], errors="coerce").to_numpy(dtype="float64")
    alloc = pd.to_numeric(steps["mem_alloc_bytes"], errors="coerce").to_numpy(dtype="float64")
    rose = np.diff(peak) > 0
    if rose.sum() < 5:
        return None
    transient = float(np.median((peak - alloc)[1:][rose]))
    return transient if transient > 0 else None


def _looks_like(run: RunTables, column: str, slope: float, first: int, last: int) -> tuple[str, str, dict]:
    """(kind, sentence, evidence) about what the growth per step resembles."""
    steps = run.steps.loc[first:last]
    transient = _step_transient(steps) if column == "mem_alloc_bytes" else None
    if transient is not None:
        ratio = slope / transient
        extra = {"step_transient_bytes": transient, "growth_to_transient": ratio}
        if ratio >= GRAPH_RATIO:
            return ("graph-retention",
                    f"Each step keeps {fmt_bytes(slope)}, {ratio:.1f}x the {fmt_bytes(transient)} a step's "
                    "forward and backward add on top: the size of its activations, so most likely every step's "
                    "autograd graph is kept alive by a tensor that still references it.", extra)
        return ("small-per-step",
                f"Each step keeps {fmt_bytes(slope)}, far less than the {fmt_bytes(transient)} a step's "
                "forward and backward add on top: not whole graphs; look for tensors (losses, outputs, "
                "metrics) appended to a list or a cache that only grows.", extra)
    if slope >= ACTIVATION_SIZED:
        return ("activation-sized",
                f"Each step keeps {fmt_bytes(slope)}: activation-sized, so most likely an autograd graph kept "
                "alive (a loss or output kept as a tensor, `backward(retain_graph=True)`), or every batch or "
                "output appended to a list. RSS alone cannot tell which; a CUDA run compares it with the "
                "step's activation memory.", {})
    return ("small-per-step",
            f"Each step keeps {fmt_bytes(slope)}: small objects, e.g. a list of scalar tensors or Python "
            "objects that only grows, or losses accumulated as tensors after `backward()` (which keeps "
            "their graph's nodes, though not the activations).", {})


_FIX = """Keep numbers, not tensors, across steps, and nothing with a graph:
    running_loss += loss.item()            # or loss.detach(); never `running = running + loss`
    with torch.no_grad():                  # metrics and monitoring forwards
        metric = model(x_val).mean().item()
    h = h.detach()                         # recurrent state carried to the next batch
Drop `retain_graph=True` unless a second backward really needs the graph, and empty any
list or cache that grows per step. To find what grows on CUDA:
    torch.cuda.memory._record_memory_history(); ...; torch.cuda.memory._dump_snapshot("mem.pickle")
and open the snapshot at https://pytorch.org/memory_viz; on CPU compare `gc.get_objects()`
counts by type between two steps."""


def check(run: RunTables) -> list[Finding]:
    for column in ("mem_alloc_bytes", "rss_bytes"):
        values = _series(run.steps, column)
        if values is None:
            continue
        m = _measure(values)
        if not _fires(m, column):
            continue
        return [_finding(run, column, values, m)]
    return []


def _finding(run: RunTables, column: str, values: pd.Series, m: dict) -> Finding:
    first, last, slope = m["first"], m["last"], m["slope"]
    oom = _ran_out_of_memory(run)
    kind, resembles, extra = _looks_like(run, column, slope, first, last)
    samples = pd.to_numeric(run.steps.loc[first:last].get("samples"), errors="coerce") \
        if "samples" in run.steps.columns else pd.Series(dtype="float64")
    per_sample = slope / float(samples.median()) if len(samples) and samples.median() > 0 else None
    what = _WHAT[column]
    title = (f"{what[0].upper() + what[1:]} grows steadily: +{fmt_bytes(m['growth'])} over steps {first}–{last} "
             f"(+{fmt_bytes(slope)} per step)")
    if oom:
        title += ", then the run ran out of memory"
    evidence = {
        "series": column,
        "window": [first, last],
        "bytes_per_step": slope,
        "growth_bytes": m["growth"],
        "start_bytes": m["start"],
        "end_bytes": m["end"],
        "run_start_bytes": float(values.iloc[0]),
        "quarter_medians_bytes": m["quarters"],
        "noise_bytes": m["noise"],
        "bytes_per_10k_steps": slope * 10_000,
        "looks_like": kind,
        "out_of_memory": oom,
        "thresholds": {"floor_bytes": FLOOR_BYTES[column], "noise_factor": NOISE_FACTOR,
                       "quarter_rise": QUARTER_RISE, "min_steps": MIN_STEPS},
    }
    if per_sample is not None:
        evidence["bytes_per_sample"] = per_sample
    evidence.update(extra)
    explanation = (f"Between optimizer steps a healthy loop holds the same tensors every time, so {what} "
                   f"should be flat after warm-up; here it rose by {fmt_bytes(slope)} every step from step "
                   f"{first} to {last}, quarter after quarter — at this rate "
                   f"{fmt_bytes(slope * 10_000)} more per 10,000 steps. {resembles}")
    if oom:
        explanation += " The run then ran out of memory: the leak most likely ended it."
    return Finding(rule=NAME, severity=Severity.ERROR if oom else SEVERITY, title=title,
                   steps=(first, last), evidence=evidence, explanation=explanation, fix=_FIX)
