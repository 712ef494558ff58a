"""Checkpoints saved during training hold the model weights only.

## What it flags
A run that saved checkpoints while it trained (a `checkpoint` event before its last
optimizer step: `torch.save` under `diagnose run`, or `Monitor.log_checkpoint(path,
keys=...)`) where none of them holds optimizer state: each is a bare `state_dict`
(every value a tensor), a saved module, or a dict whose top-level keys name no
optimizer (`{"model": ..., "epoch": ...}`). Reports how many, the first step and path,
and the keys they hold.

## Why it matters
Such a checkpoint cannot resume the run where it stopped. Adam's moment estimates, the
scheduler's position, the GradScaler's scale and the RNG state are lost: a resumed run
restarts the optimizer cold (a loss spike, then a different trajectory), replays the
warm-up, and sees the batches in a different order. After a crash or a pre-empted job,
the hours since the start are lost, not the minutes since the last checkpoint.

## Example
```python
for epoch in range(epochs):
    train_one_epoch(model, optimizer, scheduler)
    torch.save(model.state_dict(), f"ckpt_{epoch}.pt")     # weights only
```
Use instead:
```python
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(),
                "epoch": epoch, "step": step, "rng": torch.get_rng_state()},
               f"ckpt_{epoch}.pt")
```
A weights-only export at the end of the run (after the last optimizer step), or weights
saved beside full checkpoints (a `best_model.pt`), is fine and not reported. So are two
saves that are no checkpoint at all (field test round 4): a save into an in-memory
`io.BytesIO` (a copy of the weights: a snapshot of the best model, a deep copy, a
pretrained state made in place; it is gone when the process dies, so it cannot be
resumed from), and a save before the first optimizer step (the initial weights kept for
a lottery-ticket rewind or a reproducibility check, a pretrained export).

## Thresholds
None: at least one weights-only checkpoint saved before the last optimizer step, and no
checkpoint of the run that holds optimizer state. A checkpoint event without keys (not a
dict, or `log_checkpoint` without `keys=`) is not judged.
"""
from __future__ import annotations

import re
from typing import Any

import pandas as pd

from diagnose.rules._base import Finding, RunTables, Severity

NAME = "checkpoint-incomplete"
SEVERITY = Severity.WARNING
REQUIRES = ("events",)

_OPTIMIZER_KEY = re.compile(r"optim|(^|_)opt(_|$)", re.IGNORECASE)
_MODULE_OBJECT = re.compile(r"Module$|Sequential$|Linear$|Model$|Net$")

_FIX = """Save everything a resume needs, and load it all back:
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(),
                "epoch": epoch, "step": step, "rng": torch.get_rng_state()}, path)
Keep exporting weights only for inference if you like, beside these checkpoints."""


def classify(data: dict[str, Any]) -> str | None:
    """`"full"` (holds optimizer state), `"weights"` (model weights only) or None (cannot
    tell) for one checkpoint event's fields."""
    keys = data.get("keys")
    if isinstance(keys, list) and keys:
        if any(_OPTIMIZER_KEY.search(str(k)) for k in keys):
            return "full"
        return "weights"
    if data.get("tensors_only") is True:
        return "weights"
    obj = data.get("object")
    if isinstance(obj, str) and _MODULE_OBJECT.search(obj):
        return "weights"
    return None


IN_MEMORY = {"<BytesIO>"}
"""`path` of a `torch.save` into an in-memory buffer (diagnose/recorder/checkpoints.py
names file objects `<ClassName>`; an open file, `<BufferedWriter>`, is a real checkpoint)."""


def _first_step_end(run: RunTables) -> float | None:
    """Run time (`t_s`) at which the first optimizer step ended, when recorded."""
    if not len(run.steps) or "t_s" not in run.steps:
        return None
    first = run.steps["t_s"].iloc[0]
    return float(first) if pd.notna(first) else None


def check(run: RunTables) -> list[Finding]:
    events = run.events_of("checkpoint")
    if events.empty:
        return []
    kinds = [classify(d if isinstance(d, dict) else {}) for d in events["data"]]
    if "full" in kinds:
        return []
    last_step = int(run.steps.index.max()) if len(run.steps) else None
    first_step_end = _first_step_end(run)
    during: list[tuple[int | None, dict]] = []
    seen: set[str] = set()
    for kind, step, t_s, data in zip(kinds, events["step"], events["t_s"], events["data"]):
        path = str(data.get("path"))
        if kind != "weights" or path in seen:  # one file: torch.save's event and log_checkpoint's
            continue
        if path in IN_MEMORY or (first_step_end is not None and pd.notna(t_s) and t_s < first_step_end):
            continue  # a copy in memory, or the initial weights: not a checkpoint to resume from
        seen.add(path)
        step = None if step is None or step != step else int(step)
        # an event's step is the step under way (the last one taken, between steps): a save
        # recorded at an earlier step than the run's last is mid-run
        if last_step is None or step is None or step < last_step:
            during.append((step, data))
    if not during:
        return []
    steps = [s for s, _ in during if s is not None]
    first_step, first = during[0]
    keys = first.get("keys") or []
    title = (f"{len(during)} checkpoint(s) saved during training hold the model weights only, "
             f"no optimizer state (first: {first.get('path', '?')}"
             f"{f' at step {first_step}' if first_step is not None else ''})")
    evidence = {
        "checkpoints": len(during),
        "first_step": first_step,
        "first_path": first.get("path"),
        "keys": keys[:20] if keys else ("a bare state_dict" if first.get("tensors_only") else first.get("object")),
        "paths": [d.get("path") for _, d in during][:10],
        "last_optimizer_step": last_step,
    }
    return [Finding(
        rule=NAME,
        severity=SEVERITY,
        title=title,
        steps=(min(steps), max(steps)) if steps else None,
        evidence=evidence,
        explanation=("None of the run's checkpoints holds the optimizer's state (nor, in general, the scheduler's, "
                     "the GradScaler's or the RNG's): a run resumed from one restarts the optimizer cold and "
                     "replays the schedule, so it neither continues where it stopped nor reproduces."),
        fix=_FIX,
    )]
