"""Evaluation forward passes run with autograd enabled (no `torch.no_grad()`).

## What it flags
Evaluation forwards — forward passes no backward reached, inside a `val`/`test` phase
(`Monitor.phase`), or, in a run that marks no phases, in eval mode in the tail of a step
(after its optimizer step) — that ran with autograd recording (`torch.is_grad_enabled()`
True, not inference mode). Models whose every parameter has `requires_grad=False` (a
frozen teacher) are left out: their forwards build no graph from the weights.

## Why it matters
With autograd on, every evaluation forward records a graph and keeps the activations a
backward would need, for nothing: evaluation runs slower and holds several times the
memory (a validation batch that fits under no_grad can run out of memory with it). If a
validation loss tensor is accumulated without `.item()`, the graphs of the whole
validation set stay alive.

## Example
```python
model.eval()
for x, y in val_loader:
    val_loss += criterion(model(x), y).item()   # a graph per batch, thrown away
```
Use instead:
```python
model.eval()
with torch.inference_mode():                     # or torch.no_grad()
    for x, y in val_loader:
        val_loss += criterion(model(x), y).item()
model.train()
```

## Thresholds
Any such forward (call order and flags, no numbers). Silent on the 12 healthy scenarios
(seeds 0-2), the healthy reference runs, and a loop whose frozen teacher runs with
autograd on inside the training step.
"""
from __future__ import annotations

import numpy as np

from diagnose.rules._base import Finding, RunTables, Severity, compact_ranges
from diagnose.rules.loop._callindex import CallIndex, frozen_model, model_index

NAME = "eval-with-grad"
SEVERITY = Severity.WARNING
REQUIRES = ("calls",)

_FIX = """Run evaluation without autograd:
    model.eval()
    with torch.inference_mode():          # or torch.no_grad()
        val_loss = evaluate(model, val_loader)
    model.train()
or decorate the evaluation function with @torch.no_grad()."""


def check(run: RunTables) -> list[Finding]:
    calls = CallIndex.of(run)
    if not len(calls) or not calls.forward.any():
        return []
    evaluation = calls.evaluation_forwards()
    findings = []
    for obj in sorted(set(calls.obj[evaluation & calls.grad_on].tolist())):
        model = model_index(obj)
        if model is not None and frozen_model(run, model):
            continue
        mine = evaluation & calls.is_obj(obj)
        bad = np.flatnonzero(mine & calls.grad_on)
        steps = sorted(set(calls.step[bad].tolist()))
        first = int(bad[0])
        total = int(mine.sum())
        findings.append(Finding(
            rule=NAME,
            severity=SEVERITY,
            title=(f"{len(bad)} of {total} evaluation forwards of {obj} ran with autograd on "
                   f"(first at step {steps[0]}, phase {calls.phase[first]})"),
            steps=(steps[0], steps[-1]),
            evidence={
                "model": obj,
                "step": int(calls.step[first]),
                "first_step": steps[0],
                "eval_forwards_with_grad": len(bad),
                "eval_forwards": total,
                "step_ranges": compact_ranges(steps),
                "phase": str(calls.phase[first]),
                "in_eval_mode": bool(calls.eval_mode[first]),
                "forward_token": str(calls.token[first]),
                "sequence": calls.sequence(first),
            },
            explanation=("These forward passes are evaluation (no backward ever used them), but torch.no_grad() / "
                         "torch.inference_mode() was not active: autograd recorded a graph for each and kept its "
                         "activations alive until the outputs were dropped. Evaluation is slower and needs several "
                         "times the memory it should."),
            fix=_FIX,
        ))
    return findings
