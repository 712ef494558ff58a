"""Gradients are cleared between backward() and optimizer.step(): the step has none, or one micro-batch's.

## What it flags
1. An optimizer `step()` whose last `backward()` is followed by `optimizer.zero_grad()`
   (or `model.zero_grad()`) before the step, and whose recorded gradients at that step are
   indeed gone: every parameter of that optimizer has no gradient (`set_to_none=True`) or
   a zero one.
2. Gradient accumulation that does not accumulate: `zero_grad()` runs for every
   micro-batch, but the optimizer steps only every k-th one, so each step uses the last
   micro-batch's gradient and the other k-1 backward passes are thrown away. Seen in the
   call order as backward passes on training batches that no optimizer step used (a
   `zero_grad` cleared them first) while a *newer* batch's backward reached the step, on
   most steps.

## Why it matters
The optimizer steps on empty gradients: nothing learns (with weight decay or momentum the
weights still drift, which hides it). The loss stays flat and the run burns its compute.
It usually comes from moving `zero_grad()` "to the end of the iteration" one line too early.
With accumulation, the run trains on a k-times smaller batch than intended (noisier
gradients, an LR tuned for the big batch), and k-1 of every k forward/backward passes are
wasted compute.

## Example
```python
loss.backward()
optimizer.zero_grad()
optimizer.step()            # no gradients left
```
Use instead:
```python
optimizer.zero_grad(set_to_none=True)
loss.backward()
optimizer.step()
```
Accumulation:
```python
for i, (x, y) in enumerate(loader):
    optimizer.zero_grad()              # BUG: clears the micro-batches accumulated so far
    (criterion(model(x), y) / accum).backward()
    if (i + 1) % accum == 0:
        optimizer.step()
```
Use instead: clear only after a step.
```python
for i, (x, y) in enumerate(loader):
    (criterion(model(x), y) / accum).backward()
    if (i + 1) % accum == 0:
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
```

## Thresholds
- The call order decides which steps are suspects. A suspect counts as confirmed when the
  gradient norms recorded at that step (grad_norms.arrow) are absent or exactly 0 for every
  parameter of the optimizer, or when the step was due for recording (`grad_every`) and
  has no row: the recorder writes none when no parameter has a gradient at all. The rule
  fires when at least half of the suspects whose gradients are known are confirmed (all
  of them in the faulty loops tested; a loop that writes new gradients into `.grad` after
  `zero_grad`, as gradient-surgery methods do, has non-zero norms there and stays
  silent), or on the call order alone when no suspect step was due for recording.
- No healthy scenario (12, seeds 0-2) or healthy reference run has a suspect step.
- Accumulation (2.) needs to know which batch each backward pass came from: the `batch`
  markers a watched loader puts in the call order (`Monitor.loader`, the zero-code mode's
  training DataLoader). Without them (batches sliced by hand from a tensor) this part
  stays silent. A backward pass is *used* when an optimizer step call (any optimizer's,
  or a GradScaler's) comes after it before any `zero_grad`; a batch is *discarded* when
  none of its backward passes was used and a later batch's backward reached the next
  step. Reusing a batch is therefore never flagged: SAM/ASAM (two backward passes on one
  batch, the first cleared), an adversarial (FGSM/PGD) or saliency backward cleared
  before the training backward on the same batch, LBFGS's closure, a GAN whose
  generator backward is cleared by the discriminator's `zero_grad`, a probe backward on a
  batch a step already used (all of these recorded in tests/harness/
  faults_accumulation.py). By the same reasoning, though not recorded with a loader,
  gradient surgery (every backward cleared, the gradient written into `.grad` by the
  loop): no batch reaches the step, so none is "partly" used.
- It fires when at least `MIN_ACCUMULATION_STEPS` (3) steps and at least
  `ACCUMULATION_FRACTION` (75%) of the steps that used a batch also discarded one. Where
  the numbers come from (bench/false_alarms.py, docs/rules.md): the 5 faulty runs (k = 2,
  3, 4; Monitor loops, the reference loop's `--inject zero-grad-every-micro-batch`) and
  the zero-code script discard on 100% of their steps, step 0 included; all 65 healthy
  runs (each with batch markers) and 39 of the 40 near misses discard on none. The one
  exception is correct accumulation whose partial last window of each epoch is cleared by
  the next epoch's first `zero_grad`: one step per epoch (3 of 20 steps, 15%; 50% at most,
  with 2 steps an epoch). 75% sits between 50% and 100%; 3 steps keep a 2-step run from deciding.
- Limit: a loop that fetches the *next* batch between an adversarial backward and the
  training backward on the current batch reads as a new batch; a loop that fetches its
  batches under `torch.no_grad()` leaves no markers (silent).
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from diagnose.rules._base import Finding, RunTables, Severity, compact_ranges
from diagnose.rules.loop._callindex import CallIndex

NAME = "zero-grad-before-step"
SEVERITY = Severity.ERROR
REQUIRES = ("calls",)

CONFIRMED_FRACTION = 0.5
"""Share of the suspect steps with recorded norms whose gradients must be gone."""
ACCUMULATION_FRACTION = 0.75
"""Share of the steps that used a batch which must also have discarded one (accumulation)."""
MIN_ACCUMULATION_STEPS = 3
"""Steps at least that discarded a batch (accumulation)."""

_ACCUMULATION_FIX = """Clear the gradients only after an optimizer step, never for every micro-batch:
    for i, (x, y) in enumerate(loader):
        loss = criterion(model(x), y) / accum
        loss.backward()                       # adds to .grad
        if (i + 1) % accum == 0:
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)"""

_FIX = """Clear the gradients before the backward pass, never between it and the step:
    optimizer.zero_grad(set_to_none=True)
    loss = criterion(model(x), y)
    scaler.scale(loss).backward()
    scaler.unscale_(optimizer)
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    scaler.step(optimizer)
    scaler.update()"""


_STEP_FIRST_FIX = """Call backward() before the optimizer step, and clear before the forward pass:
    optimizer.zero_grad(set_to_none=True)
    loss = criterion(model(x), y)
    loss.backward()
    optimizer.step()"""


def _stepped_before_backward(calls: CallIndex, suspect: np.ndarray) -> bool:
    """Whether, at most of these steps, the step ran before its batch's backward: a
    backward follows the step call before the next `zero_grad`, with a forward between the
    clear and the step (zero_grad -> forward -> step -> backward: the order got shuffled,
    rather than a clear slipped in between backward and step)."""
    n = len(calls)
    next_backward = calls.next_at_or_after(calls.backward)
    next_clear = calls.next_at_or_after(calls.zero_grad)
    last_forward = calls.last_at_or_before(calls.forward)
    last_clear = calls.last_at_or_before(calls.zero_grad)
    hits = 0
    for position in suspect:
        after = position + 1
        if after >= n:
            continue
        backward_next = next_backward[after] < next_clear[after]
        forward_between = last_forward[position] > last_clear[position] >= 0
        hits += bool(backward_next and forward_between)
    return hits >= 0.75 * len(suspect)


def _optimizer_params(run: RunTables, opt: str) -> list[int]:
    params = run.params
    if params.empty or not opt[3:].isdigit():
        return []
    owner = pd.to_numeric(params["optimizer"], errors="coerce")
    return [int(i) for i in params.index[owner.to_numpy() == int(opt[3:])]]


def _gradients_gone(run: RunTables, steps: list[int], columns: list[int]) -> tuple[int, int]:
    """(suspect steps whose gradients are known, those where every gradient of `columns` is
    absent or 0). The recorder writes no grad_norms row at a step where no parameter has a
    gradient at all, so a step due for recording (`step % grad_every == 0`) without a row
    counts as known, with no gradient."""
    norms = run.grad_norms
    grad_every = int((run.meta.get("options") or {}).get("grad_every") or 1)
    due = [s for s in steps if s % grad_every == 0]
    rows = norms.index.intersection(due) if not norms.empty else []
    without_row = len(due) - len(rows)
    if len(rows) == 0:
        return without_row, without_row
    cols = [c for c in columns if c in norms.columns] or list(norms.columns)
    values = norms.loc[rows, cols].to_numpy(dtype=float)
    nonfinite = run.grad_nonfinite.loc[rows, cols].to_numpy(dtype=bool) if not run.grad_nonfinite.empty else \
        np.zeros_like(values, dtype=bool)
    real = (~np.isnan(values) | nonfinite) & ~(values == 0.0)
    gone = int((~real.any(axis=1)).sum())
    return len(due), gone + without_row


def _accumulation(calls: CallIndex) -> Finding | None:
    """Backward passes of training batches cleared before any step used them, while a newer
    batch's backward reached the step (the module docstring, 2.)."""
    n = len(calls)
    batch = calls.batch
    if not n or not batch.any() or not calls.any_opt_step.any():
        return None
    backward = np.flatnonzero(calls.backward & (batch > 0))
    if not len(backward):
        return None
    after = np.minimum(backward + 1, n - 1)
    next_step = np.where(backward + 1 < n, calls.next_at_or_after(calls.any_opt_step)[after], n)
    next_clear = np.where(backward + 1 < n, calls.next_at_or_after(calls.zero_grad)[after], n)
    stepped = next_step < n
    used = stepped & (next_step < next_clear)
    used_batches = set(batch[backward[used]].tolist())
    windows: dict[int, dict[int, bool]] = {}  # step call -> {batch: discarded}
    passes: dict[int, int] = {}
    for p, s, u in zip(backward[stepped].tolist(), next_step[stepped].tolist(), used[stepped].tolist()):
        b = int(batch[p])
        window = windows.setdefault(s, {})
        window[b] = window.get(b, True) and not u and b not in used_batches
        passes[s] = passes.get(s, 0) + 1
    using = {s: w for s, w in windows.items() if not all(w.values())}  # steps that used a batch
    hit = sorted(s for s, w in using.items() if any(w.values()))
    if len(hit) < MIN_ACCUMULATION_STEPS or len(hit) < ACCUMULATION_FRACTION * len(using):
        return None
    first = hit[0]
    kept = [sum(not d for d in windows[s].values()) for s in hit]
    dropped = [sum(windows[s].values()) for s in hit]
    k = int(np.median([a + b for a, b in zip(kept, dropped)]))
    d = int(np.median(dropped))
    steps = sorted(set(calls.step[hit].tolist()))
    # the optimizer a GradScaler's step call stepped: the `optN.step` right after it, same step
    opt_at = calls.next_at_or_after(calls.opt_step)
    opts = sorted({str(calls.obj[o]) if o < n and calls.step[o] == calls.step[s] else str(calls.obj[s])
                   for s, o in ((s, int(opt_at[s])) for s in hit)})
    opt = opts[0] if len(opts) == 1 else ", ".join(opts)
    clear_before = calls.last_at_or_before(calls.zero_grad)[first]
    clearing = str(calls.token[clear_before]) if clear_before >= 0 else "zero_grad"
    step_call = f"{calls.obj[first]}.step"
    return Finding(
        rule=NAME,
        severity=SEVERITY,
        title=(f"Gradient accumulation discards micro-batches: {clearing} runs before every micro-batch's "
               f"backward but {step_call}() only after {k} of them, so each step keeps {k - d} of {k} backward "
               f"passes and discards {d} ({len(steps)} of {len(using)} steps, from step {steps[0]})"),
        steps=(steps[0], steps[-1]),
        evidence={
            "pattern": "zero_grad every micro-batch, step every k-th",
            "optimizer": opt,
            "step": steps[0],
            "first_step": steps[0],
            "affected_steps": len(steps),
            "optimizer_steps": len(using),
            "step_ranges": compact_ranges(steps),
            "batches_per_step": k,
            "discarded_per_step": d,
            "backward_per_step": int(np.median([passes[s] for s in hit])),
            "discarded_batches": int(sum(dropped)),
            "clearing_call": clearing,
            "sequence": calls.sequence(first),
        },
        explanation=(f"Each {step_call}() is preceded by backward passes on {k} different training batches, but "
                     f"{clearing} runs before each of them, so the gradients of the first {d} are cleared before "
                     f"any optimizer step uses them: the step sees only the last micro-batch's gradient. The run "
                     f"trains on a {k}x smaller batch than the accumulation was meant to give (noisier steps, an LR "
                     f"meant for the big batch), and {d} of every {k} forward/backward passes are wasted. "
                     f"First seen at step {steps[0]}."),
        fix=_ACCUMULATION_FIX,
    )


def check(run: RunTables) -> list[Finding]:
    calls = CallIndex.of(run)
    if not len(calls) or not calls.zero_grad.any():
        return []
    accumulation = _accumulation(calls)
    last_backward = calls.last_at_or_before(calls.backward)
    model_clear = calls.zero_grad & calls.where_obj(lambda o: o.startswith("model"))
    findings = []
    for opt in sorted(set(calls.obj[calls.opt_step].tolist())):
        positions = np.flatnonzero(calls.opt_step & calls.is_obj(opt))
        clears = np.cumsum(model_clear | (calls.zero_grad & calls.is_obj(opt)))
        after = last_backward[positions]
        ok = after >= 0
        positions, after = positions[ok], after[ok]
        suspect = positions[clears[positions] - clears[after] > 0]
        if not len(suspect):
            continue
        steps = sorted(set(calls.step[suspect].tolist()))
        recorded, gone = _gradients_gone(run, steps, _optimizer_params(run, opt))
        if recorded and gone < CONFIRMED_FRACTION * recorded:
            continue
        first = int(suspect[0])
        clear_at = int(np.flatnonzero(calls.zero_grad[:first + 1])[-1])
        n_opt_steps = len(positions)
        step_first = _stepped_before_backward(calls, suspect)
        title = (f"{calls.token[clear_at]} runs after backward() and before {opt}.step() in {len(steps)} of "
                 f"{n_opt_steps} steps: the optimizer steps without gradients")
        if step_first:
            title = (f"{opt}.step() runs before backward() in {len(steps)} of {n_opt_steps} steps: each step follows "
                     f"{calls.token[clear_at]} and uses no gradients")
        findings.append(Finding(
            rule=NAME,
            severity=SEVERITY,
            title=title,
            steps=(steps[0], steps[-1]),
            evidence={
                "optimizer": opt,
                "step": int(calls.step[first]),
                "first_step": steps[0],
                "affected_steps": len(steps),
                "optimizer_steps": n_opt_steps,
                "step_ranges": compact_ranges(steps),
                "steps_with_known_gradients": recorded,
                "steps_without_gradients": gone,
                "clearing_call": str(calls.token[clear_at]),
                "order": "step before backward" if step_first else "zero_grad between backward and step",
                "sequence": calls.sequence(first),
            },
            explanation=(f"{calls.token[clear_at]} cleared the gradients that backward() had just computed, and "
                         f"{opt}.step() ran on what was left: "
                         + (f"at {gone} of the {recorded} steps whose gradients were recorded, every gradient of "
                            "the optimizer was absent or zero. " if recorded else
                            "no gradient norms were recorded at these steps, so this rests on the call order. ")
                         + "Nothing is learned from these batches; weight decay and momentum still move the weights, "
                           "which can hide it."
                         + (f" Here the order is zero_grad -> forward -> {opt}.step() -> backward(): the step comes "
                            "before its own batch's backward, whose gradients the next zero_grad then throws away."
                            if step_first else "")),
            fix=_STEP_FIRST_FIX if step_first else _FIX,
        ))
    if accumulation is not None:
        findings.append(accumulation)
    return findings
