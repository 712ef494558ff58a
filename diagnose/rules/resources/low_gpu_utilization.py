"""The GPU sits idle for much of each profiled step.

## What it flags
A GPU whose kernels ran less than half of the time of the profiled steps, measured on
the torch.profiler trace (`diagnose run --profile`, `Monitor(..., profile=True)`) by
torch-tb-profiler: *GPU utilization* = time at least one kernel ran / time of the
profiled steps. It runs only when a GPU trace exists; without `--profile`, or on a CPU
run, it has nothing to check. The finding says where the rest of the step went
(data loading, CPU-side operators, CUDA runtime calls, other host time), from the same
trace's per-step breakdown.

## Why it matters
An idle GPU is paid for and does nothing: at 30% utilization the same hardware could
do about three times the work. The cause is on the host: the GPU waits for the next
batch (data loading), for the Python code and operator dispatch that launch its kernels
(small kernels, a small batch, many tiny ops), or for a synchronisation (`.item()`,
`.cpu()`, printing a tensor) that empties its queue every step.

## Example
```python
for x, y in DataLoader(dataset, batch_size=8):        # tiny batches, loaded in-process
    loss = model(x.cuda()).loss
    print(loss.item())                                # a sync every step
```
Use instead:
```python
loader = DataLoader(dataset, batch_size=64, num_workers=8, pin_memory=True,
                    persistent_workers=True)
model = torch.compile(model)                          # fewer, larger kernels
for x, y in loader:
    loss = model(x.cuda(non_blocking=True)).loss      # log every N steps, not every step
```

## Thresholds
Utilization below **0.5** over at least **3** profiled steps. 0.5 is torch-tb-profiler's
own threshold for its "GPU has low utilization" recommendation
(`torch_tb_profiler/profiler/data.py`, `_analyze_gpu_metrics`). Checked on real H200
traces (`bench/profile_gpu.py`, kept in tests/data/profile/): a GPT-2-like model (4
layers, batch 16 x 256, fp16) with its data on the GPU is busy 60% (silent; the rest is
mostly host-side operator dispatch); the same model at batch 2 fed by an in-process
loader whose collate sleeps 30 ms is busy 6% (warning: data loading 52% of the step).
The severity is info above 0.3 and no host part takes a third of the step (a model that
is simply too small for its GPU), warning otherwise.
"""
from __future__ import annotations

from diagnose.profiling.summary import PART_LABELS, PARTS
from diagnose.rules._base import Finding, RunTables, Severity

NAME = "low-gpu-utilization"
SEVERITY = Severity.WARNING
REQUIRES = ("profile.gpus",)

MAX_UTILIZATION = 0.5
"""Below this, the GPU idles more than it works (torch-tb-profiler's threshold)."""
MIN_STEPS = 3
"""Fewer profiled steps say too little (a step can hold a one-off sync or export)."""
SEVERE_UTILIZATION = 0.3
"""At or below this, always a warning."""
HOST_PART_SHARE = 1 / 3
"""A host part (data loading, CPU exec, runtime, other) taking this much of the step
names the cause, and makes it a warning."""

_HOST_PARTS = ("data_loading", "cpu_exec", "runtime", "other")

_FIXES = {
    "data_loading": "The GPU waits for batches: use DataLoader(num_workers=N, pin_memory=True, "
                    "persistent_workers=True, prefetch_factor=4) and copy with non_blocking=True.",
    "cpu_exec": "The host cannot launch kernels fast enough: raise the batch size, fuse small ops "
                "(torch.compile), or capture the step with CUDA graphs.",
    "runtime": "Time goes to CUDA runtime calls (launches, synchronisations, allocations): fewer, larger "
               "kernels (torch.compile, a larger batch); avoid .item()/.cpu() every step.",
    "other": "The host is busy outside PyTorch operators (Python code, logging, synchronisations such as "
             ".item() or print(tensor)): find it in the trace (Perfetto or TensorBoard) and move it out of "
             "the step, or do it every N steps.",
}


def check(run: RunTables) -> list[Finding]:
    profile = run.profile
    if len(profile.steps) < MIN_STEPS:
        return []
    findings = []
    for gpu in profile.gpus:
        if gpu.utilization >= MAX_UTILIZATION:
            continue
        shares = {part: profile.mean_share(part) for part in PARTS}
        host = max(_HOST_PARTS, key=lambda part: shares[part])
        named = shares[host] >= HOST_PART_SHARE
        severe = gpu.utilization <= SEVERE_UTILIZATION or named
        first, last = profile.step_range()
        step_ms = profile.mean_ms.get("total", 0.0)
        evidence = {
            "gpu": gpu.device, "gpu_name": gpu.name, "utilization": round(gpu.utilization, 4),
            "sm_efficiency": gpu.sm_efficiency, "mean_step_ms": round(step_ms, 3),
            "shares": {part: round(share, 4) for part, share in shares.items() if share > 0},
            "largest_host_part": host, "profiled_steps": [first, last],
            "trace": profile.trace_files[-1] if profile.trace_files else None,
            "thresholds": {"utilization": MAX_UTILIZATION, "severe": SEVERE_UTILIZATION,
                           "host_part_share": round(HOST_PART_SHARE, 3), "min_steps": MIN_STEPS},
        }
        title = (f"GPU {gpu.device} is busy {gpu.utilization:.0%} of each profiled step "
                 f"({PART_LABELS[host]} takes {shares[host]:.0%} of a {step_ms:.1f} ms step)")
        explanation = (f"Over the profiled steps {first}-{last} the kernels on GPU {gpu.device}"
                       f"{f' ({gpu.name})' if gpu.name else ''} ran {gpu.utilization:.0%} of the time; the rest "
                       f"of the step the GPU waited for the host. The largest host part is "
                       f"{PART_LABELS[host]} ({shares[host]:.0%} of the step). With the host out of the way "
                       f"the same steps could run up to {1 / max(gpu.utilization, 1e-3):.1f}x faster "
                       "(if the kernels themselves stay as they are).")
        findings.append(Finding(rule=NAME, severity=Severity.WARNING if severe else Severity.INFO, title=title,
                                steps=(first, last), evidence=evidence, explanation=explanation,
                                fix=_FIXES[host] + "\nThen profile again: diagnose run --profile ... and compare."))
    return findings
