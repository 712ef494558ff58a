"""Training resumes in eval mode after an evaluation (`model.train()` not called again).

## What it flags
Training forwards (a backward later reached their output) of a watched model that run
with the model in eval mode after an evaluation of that model (eval-mode forwards no
backward reached) — including a sanity-check evaluation before the first step — in a
run where the same model also trains in training mode at some point, or where an
evaluation of the model came before its first training step (so eval mode is not the
loop's deliberate choice: a baseline validation before the loop, and no `model.train()`
anywhere, trains the whole run in eval mode). It looks at the mode of the *root* model
recorded in each forward: a backbone frozen in eval mode inside a model that is in
training mode (`model.train(); model.backbone.eval()`) reads as training mode and is
fine, and so is a model put in eval mode before its first training step and kept there,
with no evaluation in between.

## Why it matters
In eval mode Dropout is off and BatchNorm normalises with its running statistics and
stops updating them: the rest of the run trains a different model from the one you
designed — without regularisation, with frozen normalisation statistics — and usually
generalises worse. Nothing fails, so it goes unnoticed.

## Example
```python
for epoch in range(epochs):
    train_one_epoch(model, loader)
    model.eval()
    validate(model, val_loader)       # model stays in eval mode for the next epoch
```
Use instead:
```python
for epoch in range(epochs):
    model.train()
    train_one_epoch(model, loader)
    model.eval()
    validate(model, val_loader)
```

## Thresholds
Any such training forward. Severity warning when train and eval mode can compute
differently (as in `eval-without-eval-mode`: a BatchNorm, attention, RNN or unknown module
in the parameter table, or a dropout above 0 in the run's config); info when every
parameter belongs to a layer that computes the same in both modes and no dropout is
declared (Dropout owns no parameters and cannot show in the record). Silent on the 12
healthy scenarios (seeds 0-2; one of them keeps a frozen backbone in eval mode), the
healthy reference runs, and a loop that trains in eval mode from its first step. A loop that deliberately switches
the whole model to eval mode for its last epochs (instead of freezing the BatchNorm
layers) and evaluates between epochs reads the same as the bug and is flagged, and so
does a loop kept in eval mode on purpose that runs a baseline validation before its
first step (field test round 3: tests/scripts/sanity_eval_before_training.py, the bug,
was missed while the rule required one training step in training mode).
"""
from __future__ import annotations

import numpy as np

from diagnose.rules._base import Finding, RunTables, Severity, compact_ranges
from diagnose.rules.loop._callindex import CallIndex, model_index, mode_evidence

NAME = "train-mode-not-restored"
SEVERITY = Severity.WARNING
REQUIRES = ("calls",)

_FIX = """Put the model back in training mode after every evaluation, ideally where the evaluation ends:
    def evaluate(model, loader):
        was_training = model.training
        model.eval()
        with torch.no_grad():
            ...
        model.train(was_training)
or call model.train() at the start of every epoch (and after any mid-epoch evaluation)."""


def check(run: RunTables) -> list[Finding]:
    calls = CallIndex.of(run)
    if not len(calls) or not calls.forward.any():
        return []
    training = calls.forward & calls.backprop
    evaluation = calls.forward & ~calls.backprop & calls.eval_mode
    findings = []
    for obj in sorted(set(calls.obj[training & calls.eval_mode].tolist())):
        mine = calls.is_obj(obj)
        eval_rows = np.flatnonzero(evaluation & mine)
        if not len(eval_rows):
            continue
        ever_in_train_mode = bool((training & mine & calls.train_mode).any())
        if not ever_in_train_mode:
            # every training forward ran in eval mode: the loop's choice (a fine-tune kept in
            # eval mode from its first step), unless an evaluation of this model came first and
            # left it there (a sanity validation before the loop, then no model.train())
            first_training = int(np.flatnonzero(training & mine)[0])
            if eval_rows[0] > first_training:
                continue
        bad = np.flatnonzero(training & mine & calls.eval_mode)
        bad = bad[bad > eval_rows[0]]
        if not len(bad):
            continue
        steps = sorted(set(calls.step[bad].tolist()))
        train_steps = len(set(calls.step[training & mine].tolist()))
        first = int(bad[0])
        last_eval = int(eval_rows[eval_rows < first][-1])
        differs, modes = mode_evidence(run, model_index(obj) or 0)
        findings.append(Finding(
            rule=NAME,
            severity=SEVERITY if differs else Severity.INFO,
            title=(f"{len(steps)} of {train_steps} training steps of {obj} ran in eval mode after an evaluation "
                   f"(from step {steps[0]})"),
            steps=(steps[0], steps[-1]),
            evidence={
                "model": obj,
                "step": int(calls.step[first]),
                "first_step": steps[0],
                "steps_in_eval_mode": len(steps),
                "training_steps": train_steps,
                "fraction": round(len(steps) / max(train_steps, 1), 4),
                "step_ranges": compact_ranges(steps),
                "evaluation_step": int(calls.step[last_eval]),
                "forward_token": str(calls.token[first]),
                "sequence": calls.sequence(first),
                "evaluation_sequence": calls.sequence(last_eval),
                **modes,
            },
            explanation=(f"{obj} was switched to eval mode for an evaluation (step {int(calls.step[last_eval])}), "
                         f"and its training forwards from step {steps[0]} on still ran in eval mode"
                         + (", while it trains in training mode elsewhere in the run: model.train() was not called "
                            "after the evaluation. " if ever_in_train_mode else
                            ": no training step of the run ran in training mode, model.train() was never called "
                            "after that first evaluation. ")
                         + ("Dropout was off and BatchNorm used (and stopped updating) its running statistics for "
                            f"{len(steps)} training steps." if differs else
                            "Every parameter belongs to a layer that computes the same in both modes and the config "
                            "declares no dropout, so this probably changed nothing yet; Dropout layers (which own no "
                            "parameters and cannot show in the record) would have been off.")),
            fix=_FIX,
        ))
    return findings
