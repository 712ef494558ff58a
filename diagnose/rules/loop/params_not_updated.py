"""Parameters receive gradients but are in no optimizer, so they never change.

## What it flags
Parameters with `requires_grad=True` that receive a non-zero gradient on most recorded
steps and yet:
belong to no optimizer (`params.optimizer` is null: left out when the optimizer was
built, or replaced after it was built, so the optimizer holds the old tensor), and whose
recorded weight norms do not change either (a parameter updated by hand is left alone).
A param group held at LR 0 for the whole run while its parameters get gradients is
reported at info (a freeze done through the LR: `requires_grad_(False)` saves the
backward work). Frozen parameters (`requires_grad=False`) never get gradients and are
never flagged.

The whole model never changing is flagged too (error): backward() ran and the optimizers
stepped on at least 3 steps, gradients were recorded (`grad_every` >= 1), watched models ran
forwards with autograd on (at least 3) but a backward reached none of them, and not one
trainable parameter of any optimizer ever held a non-zero gradient. The loss reached no
weight: it was cut from the graph (`loss.detach().requires_grad_()`, a loss rebuilt with
`torch.tensor(loss.item(), requires_grad=True)`, predictions taken from `.detach()` or
numpy). Before field test round 4 this went unflagged (no gradient at all left no
gradient table, so the rule was not even run; tests/scripts/loss_detached_requires_grad.py).

Parameters *in* an optimizer whose weight norm never changes are not flagged: a norm can
stay put while the tensor moves. In a healthy reference run (SGD, LR 3e-3) two BatchNorm
weights initialised at 1.0 kept a bit-identical float32 norm (sqrt(8)) over 4 samples
while they trained; the norm is not evidence of "no update".

## Why it matters
The layer keeps its initial random weights for the whole run while the rest of the
network learns around it: the model is weaker than designed, and the gradient work for
it is wasted. It typically comes from building the optimizer from a list of submodules
that misses one, or from replacing a layer (a new head) after the optimizer was created.

## Example
```python
optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
model.head = nn.Linear(512, num_classes)     # the optimizer still holds the old head
```
Use instead:
```python
model.head = nn.Linear(512, num_classes)
optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)   # after the model is final
```

## Thresholds
- "Receives gradients": a finite, non-zero gradient norm on at least half of the steps
  with recorded norms, and on at least 3 of them.
- "Unchanged": the weight norms (param_norms.arrow, every `param_every` steps) equal to
  within 1e-7 relative across the samples; with fewer than 2 samples, being in no
  optimizer is enough. A parameter updated by hand outside the optimizer changes by far
  more (a hand-updated temperature: 0.09-0.13 relative over 48 steps in the tests).
- Without any optimizer watched, the rule does not judge "in no optimizer" (every
  parameter would be). Silent on the 12 healthy scenarios (seeds 0-2) and the healthy
  reference runs; a parameter updated by hand outside the optimizer is not flagged.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from diagnose.rules._base import Finding, RunTables, Severity, json_number
from diagnose.rules.loop._callindex import OPTIMIZER_ONLY, CallIndex, lr_columns

NAME = "params-not-updated"
SEVERITY = Severity.ERROR
REQUIRES = ("params",)

MIN_GRAD_STEPS = 3
GRAD_FRACTION = 0.5
STILL_RELATIVE = 1e-7
"""Relative spread of a parameter's norm samples below which it counts as unchanged."""

_FIX = """Build the optimizer from the final model, after every layer is in place, and include every trainable parameter:
    model.head = nn.Linear(512, num_classes)            # changes to the model first
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    missing = {id(p) for p in model.parameters() if p.requires_grad} - \\
              {id(p) for g in optimizer.param_groups for p in g["params"]}
    assert not missing, f"{len(missing)} trainable tensors are in no optimizer"
If the layer is meant to stay fixed, freeze it instead: `layer.requires_grad_(False)`."""


def _receiving(run: RunTables) -> pd.Series:
    """Per parameter index: whether it received non-zero gradients on most recorded steps."""
    norms = run.grad_norms
    values = norms.to_numpy(dtype=float)
    nonfinite = run.grad_nonfinite.reindex_like(norms).fillna(False).to_numpy(dtype=bool) \
        if not run.grad_nonfinite.empty else np.zeros_like(values, dtype=bool)
    real = np.isfinite(values) & (values > 0) & ~nonfinite
    count = real.sum(axis=0)
    ok = (count >= MIN_GRAD_STEPS) & (count >= GRAD_FRACTION * len(values))
    return pd.Series(ok, index=norms.columns)


def _spread(run: RunTables, columns: list[int]) -> pd.Series:
    """Per parameter: relative spread of its recorded weight norms (NaN with < 2 samples)."""
    norms = run.param_norms
    cols = [c for c in columns if c in norms.columns]
    out = pd.Series(np.nan, index=columns, dtype=float)
    if not cols or len(norms) < 2:
        return out
    values = norms[cols].to_numpy(dtype=float)
    finite = np.isfinite(values)
    lo = np.where(finite, values, np.inf).min(axis=0)
    hi = np.where(finite, values, -np.inf).max(axis=0)
    enough = finite.sum(axis=0) >= 2
    scale = np.maximum(np.abs(hi), 1e-30)
    out.loc[cols] = np.where(enough, (hi - lo) / scale, np.nan)
    return out


def _group_lr(run: RunTables) -> dict[tuple[int, int], float]:
    """(optimizer, group) -> the largest LR the group had during the run."""
    columns = lr_columns(run)
    keys = []
    for opt in run.objects.get("optimizers") or []:
        for g, _ in enumerate(opt.get("groups") or []):
            keys.append((int(opt.get("index", 0)), g))
    out = {}
    for key, col in zip(keys, columns):
        lr = run.steps[col].to_numpy(dtype=float)
        lr = lr[np.isfinite(lr)]
        if len(lr):
            out[key] = float(lr.max())
    return out


def _example(calls: CallIndex) -> tuple[int | None, list[str]]:
    rows = np.flatnonzero(calls.any_opt_step) if len(calls) else np.zeros(0, int)
    if not len(rows):
        return None, []
    position = int(rows[-1])
    return int(calls.step[position]), calls.sequence(position)


def _finding(run: RunTables, calls: CallIndex, indices: list[int], spread: pd.Series, *, severity: Severity,
             title: str, explanation: str, extra: dict) -> Finding:
    params = run.params
    names = [str(params.at[i, "name"]) for i in indices]
    grads = run.grad_norms[indices]
    median_grad = grads.where(grads > 0).median()
    step, sequence = _example(calls)
    modules = sorted({str(params.at[i, "module"]) or "(root)" for i in indices})
    evidence = {
        "parameters": names[:20],
        "parameter_count": len(indices),
        "numel": int(pd.to_numeric(params.loc[indices, "numel"], errors="coerce").fillna(0).sum()),
        "modules": modules[:10],
        "median_grad_norm": {n: json_number(median_grad[i]) for n, i in zip(names[:10], indices[:10])},
        "weight_norm_relative_change": {n: json_number(spread.get(i, np.nan)) for n, i in zip(names[:10], indices[:10])},
        "weight_norm_samples": int(len(run.param_norms)),
        **extra,
        "step": step,
        "sequence": sequence,
    }
    first, last = int(run.grad_norms.index.min()), int(run.grad_norms.index.max())
    return Finding(rule=NAME, severity=severity, title=title, steps=(first, last), evidence=evidence,
                   explanation=explanation, fix=_FIX)


_DETACHED_FIX = """Compute the loss from the model's output with torch operations only, and call backward() on that tensor:
    loss = criterion(model(x), y)        # no .detach(), .item(), .numpy() or torch.tensor(...) on the way
    loss.backward()
`loss.detach().requires_grad_()` or `torch.tensor(loss.item(), requires_grad=True)` silences the
"does not require grad" error by making a new leaf: backward() then reaches no weight. Find
where the graph is cut: `print(loss.grad_fn)` should name the last operation, not None."""


def _trainable_held(run: RunTables) -> list[int]:
    """Parameter indices held by an optimizer that require grad."""
    params = run.params
    owner = pd.to_numeric(params["optimizer"], errors="coerce")
    trainable = params["requires_grad"].fillna(True).astype(bool)
    return [int(i) for i in params.index if not pd.isna(owner.get(i)) and trainable.get(i, True)]


def _disconnected(run: RunTables, calls: CallIndex) -> Finding | None:
    """backward() and optimizer steps ran, gradients were recorded, and no trainable
    parameter of any optimizer ever got a non-zero gradient: the loss reached no weight."""
    grad_every = (run.meta.get("options") or {}).get("grad_every") if isinstance(run.meta, dict) else None
    if not isinstance(grad_every, int) or grad_every < 1 or not len(calls):
        return None
    held = _trainable_held(run)
    backwards, steps = int(calls.backward.sum()), int(calls.any_opt_step.sum())
    if not held or backwards < MIN_GRAD_STEPS or steps < MIN_GRAD_STEPS or len(run.steps) < MIN_GRAD_STEPS:
        return None
    # the call order must show it: forwards with autograd on, none of them reached by a
    # backward (gradients cleared between backward and step leave [..B] forwards behind:
    # zero-grad-before-step's case, not this one)
    graded = calls.forward & calls.grad_on
    if graded.sum() < MIN_GRAD_STEPS or (calls.forward & calls.backprop).any():
        return None
    norms = run.grad_norms.reindex(columns=held) if not run.grad_norms.empty else pd.DataFrame(columns=held)
    values = norms.to_numpy(dtype=float)
    if (np.isfinite(values) & (values != 0)).any():
        return None
    spread = _spread(run, held)
    if (spread > STILL_RELATIVE).any():
        return None
    names = [str(run.params.at[i, "name"]) for i in held]
    step, sequence = _example(calls)
    return Finding(
        rule=NAME, severity=SEVERITY,
        title=(f"No parameter ever received a gradient: backward() ran {backwards} times and the optimizer stepped "
               f"{steps} times, but the loss reaches none of the {len(held)} trainable tensors"),
        steps=(int(run.steps.index.min()), int(run.steps.index.max())),
        evidence={"reason": "no gradient reached any parameter", "parameters": names[:20], "parameter_count": len(held),
                  "backward_calls": backwards, "optimizer_steps": steps,
                  "weight_norm_samples": int(len(run.param_norms)), "step": step, "sequence": sequence},
        explanation=("Every backward() ran on a loss that is not connected to the model's weights: their gradients "
                     "stayed empty (None or zero) on every recorded step, so each optimizer step changed nothing and "
                     "the model keeps its initial weights"
                     + (", as its recorded weight norms confirm" if len(run.param_norms) >= 2 else "")
                     + "."),
        fix=_DETACHED_FIX)


def check(run: RunTables) -> list[Finding]:
    params = run.params
    if params.empty:
        return []
    if run.grad_norms.empty:
        finding = _disconnected(run, CallIndex.of(run)) if bool(run.objects.get("optimizers")) else None
        return [finding] if finding else []
    receiving = _receiving(run)
    trainable = params["requires_grad"].fillna(True).astype(bool)
    candidates = [int(i) for i in params.index if receiving.get(i, False) and trainable.get(i, True)]
    if not candidates:
        return []
    spread = _spread(run, [int(i) for i in params.index])
    owner = pd.to_numeric(params["optimizer"], errors="coerce")
    group = pd.to_numeric(params["group"], errors="coerce")
    watched_optimizers = bool(run.objects.get("optimizers"))
    calls = CallIndex.of(run)
    findings = []

    orphans = [i for i in candidates if pd.isna(owner.get(i)) and watched_optimizers
               and not (spread.get(i, np.nan) > STILL_RELATIVE)]
    if orphans:
        held = [str(params.at[i, "name"]) for i in params.index
                if OPTIMIZER_ONLY.fullmatch(str(params.at[i, "name"])) and not receiving.get(i, False)]
        confirmed = sum(1 for i in orphans if not np.isnan(spread.get(i, np.nan)))
        modules = sorted({str(params.at[i, "module"]) or "(root)" for i in orphans})
        explanation = ("These parameters received gradients on most steps, but no watched optimizer holds them, "
                       + ("and their weight norms did not change between the recorded samples: "
                          if confirmed else "so nothing updates them: ")
                       + "they keep their initial values while the rest of the model trains around them.")
        if held:
            explanation += (f" The optimizer holds {len(held)} tensor(s) that are in no watched model and get no "
                            "gradient: most likely the old versions of these layers, replaced after the optimizer "
                            "was built.")
        findings.append(_finding(
            run, calls, orphans, spread, severity=SEVERITY,
            title=(f"{len(orphans)} parameter tensor(s) get gradients but are in no optimizer "
                   f"({', '.join(modules[:3])}{', ...' if len(modules) > 3 else ''})"),
            explanation=explanation,
            extra={"reason": "in no optimizer", "optimizer_tensors_without_gradients": held[:10]}))

    group_lr = _group_lr(run)
    frozen_lr = [i for i in candidates if not pd.isna(owner.get(i))
                 and group_lr.get((int(owner[i]), 0 if pd.isna(group.get(i)) else int(group[i]))) == 0.0]
    if frozen_lr:
        findings.append(_finding(
            run, calls, frozen_lr, spread, severity=Severity.INFO,
            title=f"{len(frozen_lr)} parameter tensor(s) get gradients but their param group's LR is 0 all run",
            explanation=("Their param group has learning rate 0 at every step, so they never change, yet backward "
                         "still computes their gradients. If the freeze is intended, `requires_grad_(False)` on "
                         "them saves that work (and memory for their gradients)."),
            extra={"reason": "group LR is 0"}))
    return findings
