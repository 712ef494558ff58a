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
REQUIRES = ("params", "grad_norms")

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


def check(run: RunTables) -> list[Finding]:
    params = run.params
    if params.empty or run.grad_norms.empty:
        return []
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
