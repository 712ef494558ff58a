"""A training batch holds NaN or Inf.

## What it flags
Training batches whose floating-point tensors hold NaN, +Inf or -Inf (`nonfinite_input`
events: the recorder checks every batch a watched loader yields with autograd on:
`Monitor.loader`, the zero-code mode's DataLoader wrapper, the reference loop). The
finding names the first step, the tensor by its path in the batch (`batch[0]`,
`batch["image"]`), what it held, and how many steps had bad inputs. A loop without a
watched loader (batches sliced by hand) is covered through its model: the data tensors
of each training forward are checked the same way and named `model0.input[0]`
(diagnose/recorder/inputs.py).

Not flagged:
- integer and bool tensors (token ids, labels, boolean masks): they cannot hold NaN;
- additive attention masks: a tensor whose only non-finite values are -Inf and whose
  largest value is 0 (values in {0, -Inf}) is not even recorded (diagnose/recorder/
  inputs.py), and a tensor whose path names a mask (`batch["attn_mask"]`) holding -Inf
  but no NaN or +Inf is not judged. A -Inf elsewhere (`log(0)` of a feature) is flagged;
- evaluation batches: fetched under `no_grad`/`inference_mode`, inside `Monitor.phase`,
  or (zero-code mode) from a loader other than the training one.

## Why it matters
One NaN in one input makes the loss NaN; without a GradScaler to skip the step, the NaN
gradients reach every weight and the run is lost from that step on. The usual causes are
in the data: a corrupt file, a division by a zero standard deviation in normalisation,
`log(0)`, a missing value in a CSV. The loss-side rules (`nonfinite-loss`,
`nonfinite-gradients`) see the consequence; this one says where it came from.

## Example
```python
x = (x - x.mean(0)) / x.std(0)          # a constant feature: std 0 -> NaN
```
Use instead:
```python
x = (x - x.mean(0)) / x.std(0).clamp_min(1e-6)
assert torch.isfinite(x).all(), "bad sample"   # or check once in Dataset.__getitem__
```

## Thresholds
None: one non-finite value in one training batch is reported. Rated `error` when the
loss was non-finite at one of those steps (the bad input reached it), `warning` when
every such step still had a finite loss (the model or the GradScaler absorbed it).
Silent on the 12 healthy scenarios and the healthy zero-code scripts.
"""
from __future__ import annotations

import math

from diagnose.rules._base import Finding, RunTables, Severity

NAME = "nonfinite-inputs"
SEVERITY = Severity.ERROR
REQUIRES = ("events",)

MAX_STEPS_LISTED = 20


def _bad(tensor: dict) -> bool:
    """Whether a recorded tensor counts: NaN or +Inf always; -Inf unless it is a mask."""
    if tensor.get("nan") or tensor.get("posinf"):
        return True
    return bool(tensor.get("neginf")) and "mask" not in str(tensor.get("path", "")).lower()


def _what(tensor: dict) -> str:
    kinds = [k for k, label in (("nan", "NaN"), ("posinf", "+Inf"), ("neginf", "-Inf")) if tensor.get(k)]
    return "/".join({"nan": "NaN", "posinf": "+Inf", "neginf": "-Inf"}[k] for k in kinds) or "non-finite values"


def check(run: RunTables) -> list[Finding]:
    events = run.events_of("nonfinite_input")
    if events.empty:
        return []
    per_step: dict[int, list[dict]] = {}
    for step, data in zip(events["step"], events["data"]):
        if not isinstance(data, dict) or step is None or step != step:
            continue
        tensors = [t for t in data.get("tensors") or [] if isinstance(t, dict) and _bad(t)]
        if tensors:
            per_step.setdefault(int(step), []).extend(tensors)
    if not per_step:
        return []
    steps = sorted(per_step)
    first = steps[0]
    first_tensor = per_step[first][0]
    paths: dict[str, int] = {}
    for step in steps:
        for path in dict.fromkeys(str(t.get("path")) for t in per_step[step]):
            paths[path] = paths.get(path, 0) + 1
    loss = run.steps["loss"] if "loss" in run.steps.columns else None
    reached = loss is not None and any(
        step in loss.index and not math.isfinite(float(loss.loc[step])) and
        ("micro_batches" not in run.steps.columns or run.steps.loc[step, "micro_batches"] > 0)
        for step in steps)
    severity = Severity.ERROR if reached or loss is None else Severity.WARNING
    where = first_tensor.get("path")
    more = f"; {len(steps)} steps had non-finite inputs" if len(steps) > 1 else ""
    title = f"{_what(first_tensor)} in training batch at step {first} ({where}){more}"
    evidence = {"first_step": first, "tensor": where, "values": _what(first_tensor),
                "steps_affected": len(steps), "steps": steps[:MAX_STEPS_LISTED], "tensors": paths,
                "loss_nonfinite": bool(reached)}
    explanation = ("The loader delivered a training batch with non-finite values"
                   + (" and the loss became NaN/Inf at that step: everything downstream (gradients, weights) "
                      "is poisoned from there." if reached else
                      "; the loss stayed finite on those steps (the model or the GradScaler absorbed it), but the "
                      "data is still wrong."))
    fix = ("Find the bad samples in the data pipeline (corrupt files, division by a zero std, log(0), missing "
           "values) and fix or drop them; a cheap guard in the Dataset:\n"
           "    assert torch.isfinite(x).all(), f\"sample {index} holds NaN/Inf\"")
    return [Finding(rule=NAME, severity=severity, title=title, steps=(first, steps[-1]),
                    evidence=evidence, explanation=explanation, fix=fix)]
