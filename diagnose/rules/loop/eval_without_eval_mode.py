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
- Any such forward. Severity warning when train and eval mode can compute differently:
  the parameter table shows a module that acts differently in eval mode or that we
  cannot rule out (BatchNorm, InstanceNorm, attention and RNN layers, custom modules), or
  the run's config (`Monitor(config=...)`, the reference loop's config) declares a
  dropout above 0 (`dropout`, `attn_pdrop`, `hidden_dropout_prob`, `drop_rate`, ...).
  Info otherwise: every parameter belongs to a layer that computes the same in both
  modes (Linear, Conv, Embedding, LayerNorm, GroupNorm, ...) and no dropout is declared.
  Dropout owns no parameter, so the record cannot show it: a Linear-only model with
  Dropout layers and no config is rated info too (a recall loss taken on purpose: the
  MLPs of the numerics and resources test loops, evaluated without eval(), compute the
  same numbers either way). The reference loop's chars transformer (Linear, LayerNorm,
  Embedding parameters; config dropout 0.1) is rated warning.
- Silent on the 12 healthy scenarios (seeds 0-2), the healthy reference runs, and a loop
  with a frozen teacher and a no_grad pseudo-label forward inside its training steps.

## Dropout that ignores eval()
A second finding, from `eval_dropout` events (diagnose/recorder/contracts.py): the model
*was* in eval mode, but its forward called `F.dropout(x, p)` (or `dropout1d/2d/3d`)
without `training=self.training`; the function defaults to `training=True`, so
`model.eval()` cannot switch it off and every evaluation drops units at random. Warning,
on any such call with p > 0. `nn.Dropout` modules and calls that pass `training=`
explicitly (Monte Carlo dropout on purpose) are never recorded. Found in field test round
3 (tests/scripts/functional_dropout_ignores_eval.py), where the mode flags alone showed a
correct evaluation.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from diagnose.rules._base import Finding, RunTables, Severity, compact_ranges
from diagnose.rules.loop._callindex import CallIndex, mode_evidence, model_index
from diagnose.rundir import schema

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


_DROPOUT_FIX = """Let the module's mode switch the functional dropout off:
    h = F.dropout(h, p=self.p, training=self.training)
or use a module, which follows model.eval() by itself:
    self.drop = nn.Dropout(p)        # in __init__
    h = self.drop(h)                 # in forward
(Monte Carlo dropout on purpose: pass training=True explicitly.)"""


def _dropout_findings(run: RunTables) -> list[Finding]:
    """`eval_dropout` events: a functional dropout that stays on in an eval-mode forward."""
    events = run.events
    if events is None or not len(events):
        return []
    rows = events[events["kind"] == schema.EVENT_EVAL_DROPOUT]
    by_model: dict[str, list[tuple[int, dict]]] = {}
    for step, data in zip(rows["step"], rows["data"]):
        if isinstance(data, dict) and step is not None and not pd.isna(step):
            by_model.setdefault(str(data.get("model", "model0")), []).append((int(step), data))
    findings = []
    for model, hits in sorted(by_model.items()):
        steps = sorted({s for s, _ in hits})
        first = hits[0][1]
        fns = sorted({str(d.get("fn")) for _, d in hits})
        rates = sorted({float(d["p"]) for _, d in hits if isinstance(d.get("p"), (int, float))})
        shown = ", ".join(f"F.{f}" for f in fns)
        findings.append(Finding(
            rule=NAME,
            severity=SEVERITY,
            title=(f"{shown} stays active while {model} is in eval mode: dropout ignores model.eval() "
                   f"(first at step {steps[0]}, {len(steps)} step(s))"),
            steps=(steps[0], steps[-1]),
            evidence={"model": model, "step": steps[0], "first_step": steps[0], "functions": fns, "p": rates,
                      "steps_seen": len(steps), "step_ranges": compact_ranges(steps),
                      "forward_token": first.get("forward_token"), "kind": "functional-dropout"},
            explanation=(f"{model} was put in eval mode, but its forward calls {shown} without `training=`: the "
                         "function defaults to training=True, so it keeps dropping units at random "
                         f"(p={', '.join(f'{r:g}' for r in rates)}) in every evaluation. Validation numbers come "
                         "out noisy and pessimistic, predictions are not reproducible, and checkpoint selection and "
                         "early stopping act on them."),
            fix=_DROPOUT_FIX,
        ))
    return findings


def check(run: RunTables) -> list[Finding]:
    calls = CallIndex.of(run)
    findings = _dropout_findings(run)
    if not len(calls) or not calls.forward.any():
        return findings
    evaluation = calls.evaluation_forwards()
    for obj in sorted(set(calls.obj[evaluation].tolist())):
        mine = evaluation & calls.is_obj(obj)
        bad = np.flatnonzero(mine & calls.train_mode)
        if not len(bad):
            continue
        model = model_index(obj) or 0
        differs, modes = mode_evidence(run, model)
        dependent = modes["mode_dependent_modules"]
        dropout = {k: v for k, v in modes["configured_dropout"].items() if v > 0}
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
            **modes,
            "sequence": calls.sequence(first),
        }
        if dependent:
            shown = ", ".join(dependent[:4]) + (", ..." if len(dependent) > 4 else "")
            why = (f"Modules that can behave differently in training mode were active ({shown}): BatchNorm layers "
                   "normalise with each validation batch's statistics and update their running statistics from "
                   "validation data, and Dropout layers drop units at random.")
        elif dropout:
            shown = ", ".join(f"{k}={v:g}" for k, v in list(dropout.items())[:3])
            why = (f"The run's config declares dropout ({shown}): validation ran with units dropped at random, so its "
                   "numbers are noisy and pessimistic, and checkpoint selection and early stopping act on them.")
        else:
            why = ("Every parameter of this model belongs to a layer that computes the same in train and eval mode "
                   "(no BatchNorm) and the config declares no dropout, so the numbers are probably unaffected. But "
                   "Dropout owns no parameters and cannot show in the record: if the model has Dropout layers, "
                   "validation ran with units dropped at random. Switching modes costs nothing and keeps a later "
                   "Dropout or BatchNorm from silently changing your validation.")
        findings.append(Finding(
            rule=NAME,
            severity=SEVERITY if differs else Severity.INFO,
            title=(f"{len(bad)} of {total} evaluation forwards of {obj} ran in training mode "
                   f"(first at step {steps[0]}, phase {calls.phase[first]})"),
            steps=(steps[0], steps[-1]),
            evidence=evidence,
            explanation=("These forward passes are evaluation (no backward used them) but model.training was True: "
                         "model.eval() was not called before them. " + why),
            fix=_FIX,
        ))
    return findings
