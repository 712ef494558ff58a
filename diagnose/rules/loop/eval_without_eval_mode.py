"""Evaluation forward passes run with the model in training mode (no `model.eval()`).

## What it flags
Evaluation forwards — forward passes no backward reached, inside a `val`/`test` phase
(`Monitor.phase`), or, in a run that marks no phases, in the tail of a step (after its
optimizer step) under no_grad / inference mode — whose watched model was in training mode
(`model.training` True at the call). Forwards inside the training part of a step are
never counted (a pseudo-labelling or target forward under no_grad in train mode is a
choice, not evaluation), nor is a root model in eval mode whose submodules differ.

## Why it matters
In training mode Dropout drops units at random and BatchNorm normalises with the
statistics of the evaluation batch — and *updates its running statistics from the
validation data*, so evaluating changes the model. Validation numbers come out noisy and
pessimistic, and checkpoint selection and early stopping act on them.

## Example
```python
with torch.no_grad():
    for x, y in val_loader:
        val_loss += criterion(model(x), y)      # model still in train mode
```
Use instead:
```python
model.eval()
with torch.no_grad():
    for x, y in val_loader:
        val_loss += criterion(model(x), y)
model.train()
```

## Thresholds
- Any such forward, at warning. A model with neither Dropout nor BatchNorm computes the
  same in both modes, and then the finding is only hygiene; but Dropout owns no
  parameter, so the record (whose parameter table is the only list of modules) cannot
  show it: a GPT-style model with Dropout is made of Linear, LayerNorm and Embedding
  parameters just like one without. The severity therefore stays at warning; the
  explanation names the mode-dependent modules the parameter table does show (BatchNorm,
  InstanceNorm, attention and RNN layers, custom modules) or says that none were seen.
- Silent on the 12 healthy scenarios (seeds 0-2), the healthy reference runs, and a loop
  with a frozen teacher and a no_grad pseudo-label forward inside its training steps.
"""
from __future__ import annotations

import numpy as np

from diagnose.rules._base import Finding, RunTables, Severity, compact_ranges
from diagnose.rules.loop._callindex import CallIndex, mode_dependent_modules

NAME = "eval-without-eval-mode"
SEVERITY = Severity.WARNING
REQUIRES = ("calls",)

_FIX = """Switch to eval mode for evaluation and back to train mode after it:
    model.eval()
    with torch.no_grad():
        val_loss = evaluate(model, val_loader)
    model.train()
(`torch.inference_mode()` instead of no_grad is faster still.)"""


def _blocks(positions: np.ndarray) -> int:
    """Number of evaluation blocks: runs of forwards without a training call between them."""
    return int(1 + np.count_nonzero(np.diff(positions) > 1)) if len(positions) else 0


def check(run: RunTables) -> list[Finding]:
    calls = CallIndex.of(run)
    if not len(calls) or not calls.forward.any():
        return []
    evaluation = calls.evaluation_forwards()
    findings = []
    for obj in sorted(set(calls.obj[evaluation].tolist())):
        mine = evaluation & calls.is_obj(obj)
        bad = np.flatnonzero(mine & calls.train_mode)
        if not len(bad):
            continue
        model = int(obj[5:]) if obj[5:].isdigit() else 0
        dependent, independent = mode_dependent_modules(run, model)
        steps = sorted(set(calls.step[bad].tolist()))
        total = int(mine.sum())
        first = int(bad[0])
        evidence = {
            "model": obj,
            "step": int(calls.step[first]),
            "first_step": steps[0],
            "eval_forwards_in_train_mode": len(bad),
            "eval_forwards": total,
            "evaluations": _blocks(np.flatnonzero(mine & calls.train_mode)),
            "step_ranges": compact_ranges(steps),
            "phase": str(calls.phase[first]),
            "forward_token": str(calls.token[first]),
            "mode_dependent_modules": dependent[:10],
            "sequence": calls.sequence(first),
        }
        if independent:
            why = ("Every parameter of this model belongs to a layer that computes the same in train and eval mode "
                   "(no BatchNorm). If the model has Dropout (it owns no parameters, so the record cannot show it), "
                   "validation ran with units dropped at random: noisy, pessimistic numbers driving checkpoint "
                   "selection and early stopping. If it has no Dropout either, the numbers are unaffected and this "
                   "is hygiene: adding Dropout or BatchNorm later would silently change your validation.")
        else:
            shown = ", ".join(dependent[:4]) + (", ..." if len(dependent) > 4 else "")
            why = (f"Modules that behave differently in training mode ({shown}) were active: BatchNorm normalised with "
                   "each validation batch's statistics and updated its running statistics from validation data, "
                   "and Dropout dropped units at random.")
        findings.append(Finding(
            rule=NAME,
            severity=SEVERITY,
            title=(f"{len(bad)} of {total} evaluation forwards of {obj} ran in training mode "
                   f"(first at step {steps[0]}, phase {calls.phase[first]})"),
            steps=(steps[0], steps[-1]),
            evidence=evidence,
            explanation=("These forward passes are evaluation (no backward used them) but model.training was True: "
                         "model.eval() was not called before them. " + why),
            fix=_FIX,
        ))
    return findings
