"""A per-iteration schedule is stepped once per epoch, or a per-epoch schedule every iteration.

## What it flags
A scheduler whose configured length does not match how often it is stepped, so the
schedule ends far from where it was configured to end:
- *per-iteration schedule stepped per epoch*: OneCycleLR (`total_steps`),
  CosineAnnealingLR (`T_max`), LinearLR / ConstantLR / PolynomialLR (`total_iters`)
  configured for about as many steps as the run took optimizer steps, but stepped at most
  once every 3 optimizer steps, so it covered less than half of its length;
- *per-epoch cosine stepped per iteration*: CosineAnnealingLR stepped about once per
  optimizer step, for at least twice its `T_max`: past `T_max` the cosine climbs back up,
  so the LR swings between its base value and `eta_min` again and again;
- OneCycleLR stepped past its `total_steps`, which stops the run with
  "Tried to step N times. The specified number of total steps is M";
- *per-epoch decay stepped per iteration*: StepLR, MultiStepLR or ExponentialLR (whose
  `step_size`, `milestones` and `gamma` are usually counted in epochs) stepped about once
  per optimizer step, after which the learning rate has decayed away: below a millionth of
  its peak for at least a quarter of the run (`StepLR(step_size=30)` stepped every batch
  divides the LR by 10 every 30 iterations).

## Why it matters
OneCycleLR laid out over 10,000 iterations and stepped 10 times never leaves its
warm-up: the run trains at a fraction of `max_lr` and never anneals. A cosine over 90
epochs stepped every iteration reaches its minimum after 90 iterations and then cycles.
Either way the learning-rate schedule you tuned is not the one that ran.

## Example
```python
sched = OneCycleLR(opt, max_lr=1e-3, total_steps=epochs * len(loader))
for epoch in range(epochs):
    for x, y in loader:
        ...; opt.step()
    sched.step()              # once per epoch: the schedule moves epochs/total_steps of the way
```
Use instead:
```python
for epoch in range(epochs):
    for x, y in loader:
        ...; opt.step()
        sched.step()          # per-iteration schedules step with the optimizer
```

## Thresholds
- Per epoch: optimizer steps / scheduler steps >= 3; scheduler steps < 0.5 x the configured
  length; configured length between 0.8x and 1.25x the optimizer steps of the run (the
  length was counted in iterations). Healthy per-epoch schedules have a length in epochs,
  far below the optimizer steps (the 12 healthy scenarios, seeds 0-2: lengths 3-12 against
  36-96 steps); a per-epoch schedule in a run stopped very early (after about
  length / steps-per-epoch epochs) can look the same, hence the narrow 0.8-1.25 window.
- Per iteration: optimizer steps / scheduler steps <= 1.5 and scheduler steps >= 2 x T_max.
- Per-epoch decay stepped per iteration (StepLR, MultiStepLR, ExponentialLR): optimizer
  steps / scheduler steps <= 1.5, and the LR of the scheduler's first group below
  `DECAYED_FACTOR` (1e-6) x its maximum on at least `DECAYED_SHARE` (25%) of the optimizer
  steps. These classes have no length, so the LR that ran is the evidence. Healthy
  schedules stay far from it: a step decay ends around 1e-3 x the peak (ResNet's 0.1 ->
  1e-4), a linear or cosine decay to 0 is below 1e-6 x the peak on its last step or two;
  on the 60 healthy scenario runs (seeds 0-4) and the 18 near misses of bench/false_alarms.py
  the largest share of steps below 1e-6 x the peak is 2.1% (a warm-up from 0's first step),
  12x below the threshold. A tiny LR that is constant (a group frozen by its LR) is at its
  own maximum and never counts.
- LambdaLR and MultiplicativeLR (a function of the step count) are judged the same way, by
  the LR that ran (field test round 4: `LambdaLR(lambda epoch: 0.9 ** epoch)` stepped every
  batch of 25-batch epochs was below 1e-6 x its peak from step 132 of 300, 56% of the
  run); their healthy per-batch uses (a warm-up from 0, a linear or cosine decay to 0)
  touch that level on their first or last step or two only, the same as the classes above;
  for them only an LR above 0 counts (a function clamped at exactly 0 for the second half,
  tests/harness/faults_loop.py `lambda_schedule_ends_halfway`, is `zero-lr-steps`' case).
  ReduceLROnPlateau has no length and no fixed decay and is not judged (a warm-up from 0
  stepped per epoch still shows as `zero-lr-steps`).
"""
from __future__ import annotations

import numpy as np

from diagnose.rules._base import Finding, RunTables, Severity, json_number
from diagnose.rules.loop._callindex import CallIndex, lr_columns, scheduler_config

NAME = "scheduler-step-frequency"
SEVERITY = Severity.WARNING
REQUIRES = ("calls",)

LENGTH_KEYS = {"OneCycleLR": "total_steps", "CosineAnnealingLR": "T_max", "LinearLR": "total_iters",
               "ConstantLR": "total_iters", "PolynomialLR": "total_iters"}
"""The configuration field that holds each scheduler class's length."""
RARE_RATIO = 3.0
"""Optimizer steps per scheduler step from which a schedule counts as stepped per epoch."""
MAX_PROGRESS = 0.5
"""Share of its length a schedule stepped per epoch may have covered at most."""
LENGTH_WINDOW = (0.8, 1.25)
"""Configured length / optimizer steps of the run that marks a length counted in iterations."""
FREQUENT_RATIO = 1.5
"""Optimizer steps per scheduler step up to which a schedule counts as stepped per iteration."""
OVERRUN = 2.0
"""Scheduler steps / T_max from which a cosine stepped per iteration is flagged."""
DECAY_CLASSES = ("StepLR", "MultiStepLR", "ExponentialLR", "LambdaLR", "MultiplicativeLR")
"""Schedules without a length, judged by the LR that ran: the first three's step_size /
milestones / gamma are usually meant per epoch; LambdaLR and MultiplicativeLR take a
function of the epoch count (`lambda epoch: 0.9 ** epoch`) that is often meant per epoch
too (field test round 4, tests/scripts/lambda_lr_epoch_decay_per_batch.py)."""
FUNCTION_CLASSES = ("LambdaLR", "MultiplicativeLR")
"""Schedules given as a function: only a tiny LR above 0 counts for them (a geometric decay
never reaches 0; a warm-up + linear decay clamped at 0 halfway is a schedule that ends too
early, `zero-lr-steps`, not one stepped too often)."""
DECAYED_FACTOR = 1e-6
"""LR / its maximum below which the LR counts as decayed away."""
DECAYED_SHARE = 0.25
"""Share of the optimizer steps with a decayed-away LR from which a decay is flagged."""

_FIX_PER_ITERATION = """Step a per-iteration schedule with the optimizer, inside the batch loop:
    for x, y in loader:
        ...
        optimizer.step()
        scheduler.step()
or lay it out in epochs if you want to step it per epoch (OneCycleLR(..., epochs=E, steps_per_epoch=1))."""
_FIX_PER_EPOCH = """Step a per-epoch schedule once per epoch, after validation:
    for epoch in range(epochs):
        train_one_epoch(...)
        validate(...)
        scheduler.step()
or give it a length in iterations (CosineAnnealingLR(opt, T_max=epochs * len(loader)))."""


def _lr_column(run: RunTables, config: dict) -> str | None:
    """The lr_K column of the scheduler's first param group (matched on base_lrs)."""
    columns = lr_columns(run)
    if not columns:
        return None
    base = config.get("base_lrs")
    offset = 0
    for opt in run.objects.get("optimizers") or []:
        groups = opt.get("groups") or []
        initial = [g.get("initial_lr") for g in groups]
        if base and initial == list(base) and offset < len(columns):
            return columns[offset]
        offset += len(groups)
    return columns[0]


def _lr_summary(run: RunTables, config: dict) -> dict:
    column = _lr_column(run, config)
    if column is None:
        return {}
    lr = run.steps[column].to_numpy(dtype=float)
    lr = lr[np.isfinite(lr)]
    if not len(lr):
        return {}
    return {"lr_group": column, "lr_first": json_number(lr[0]), "lr_max": json_number(lr.max()),
            "lr_last": json_number(lr[-1])}


def _configured_end(run: RunTables, cls: str, config: dict) -> float | None:
    if cls == "CosineAnnealingLR":
        return config.get("eta_min")
    if cls == "OneCycleLR":
        for opt in run.objects.get("optimizers") or []:
            for group in opt.get("groups") or []:
                if "min_lr" in group:
                    return group["min_lr"]
    return None


def _overstepped(run: RunTables) -> str | None:
    for data in run.events_of("exception")["data"]:
        message = str((data or {}).get("message", ""))
        if "Tried to step" in message and "total steps" in message:
            return message.splitlines()[0][:300]
    return None


def _decayed_away(run: RunTables, calls: CallIndex, entry: dict, i: int, n_opt: int) -> Finding | None:
    """A per-epoch decay (StepLR, MultiStepLR, ExponentialLR) stepped every iteration until
    the LR vanished (see Thresholds)."""
    sched = f"sched{entry.get('index', i)}"
    cls = str(entry.get("class", ""))
    config = scheduler_config(entry)
    rows = np.flatnonzero(calls.sched_step & calls.is_obj(sched)) if len(calls) else np.zeros(0, int)
    n_sched = len(rows)
    if n_sched < 2 or n_opt / n_sched > FREQUENT_RATIO:
        return None
    column = _lr_column(run, config)
    if column is None:
        return None
    lr = run.steps[column].to_numpy(dtype=float)
    lr = lr[np.isfinite(lr)]
    if not len(lr) or lr.max() <= 0:
        return None
    tiny = lr < DECAYED_FACTOR * lr.max()
    if cls in FUNCTION_CLASSES:
        tiny &= lr > 0  # a function clamped at exactly 0 ends early: zero-lr-steps' finding
    share = float(tiny.mean())
    if share < DECAYED_SHARE:
        return None
    first_tiny = int(run.steps.index[np.flatnonzero(np.isfinite(run.steps[column].to_numpy(float)))[
        int(np.argmax(tiny))]])
    setting = {"StepLR": f"step_size={config.get('step_size')}, gamma={config.get('gamma')}",
               "MultiStepLR": f"milestones={config.get('milestones')}, gamma={config.get('gamma')}",
               "ExponentialLR": f"gamma={config.get('gamma')}"}.get(cls, "a function of the step count")
    evidence = {"scheduler": sched, "scheduler_class": cls, "setting": setting,
                "scheduler_steps": n_sched, "optimizer_steps": n_opt,
                "optimizer_steps_per_scheduler_step": round(n_opt / n_sched, 2),
                "decayed_from_step": first_tiny, "decayed_share": round(share, 3),
                **_lr_summary(run, config), "step": int(calls.step[rows[0]]),
                "sequence": calls.sequence(int(rows[0]))}
    title = (f"{sched} ({cls}, {setting}) was stepped {n_sched} times in {n_opt} optimizer steps: the LR "
             f"was below a millionth of its peak from step {first_tiny} ({100 * share:.0f}% of the run)")
    meant = (f"its {setting} reads like a number of epochs" if cls in ("StepLR", "MultiStepLR", "ExponentialLR")
             else "its function's argument counts scheduler.step() calls, often written as epochs")
    explanation = (f"{cls} decays the learning rate each time scheduler.step() is called; {meant}, "
                   f"but it was stepped about every optimizer step. The LR fell from "
                   f"{evidence.get('lr_max', 'n/a')} to {evidence.get('lr_last', 'n/a')}: from step {first_tiny} "
                   "on, the optimizer steps change nothing.")
    return Finding(rule=NAME, severity=SEVERITY, title=title,
                   steps=(first_tiny, int(run.steps.index.max())), evidence=evidence,
                   explanation=explanation, fix=_FIX_PER_EPOCH)


def check(run: RunTables) -> list[Finding]:
    calls = CallIndex.of(run)
    n_opt = len(run.steps) if len(run.steps) else int(calls.any_opt_step.sum()) if len(calls) else 0
    findings = []
    for i, entry in enumerate(run.objects.get("schedulers") or []):
        sched = f"sched{entry.get('index', i)}"
        cls = str(entry.get("class", ""))
        config = scheduler_config(entry)
        if cls in DECAY_CLASSES and n_opt and len(run.steps):
            finding = _decayed_away(run, calls, entry, i, n_opt)
            if finding is not None:
                findings.append(finding)
            continue
        key = LENGTH_KEYS.get(cls)
        length = config.get(key) if key else None
        if not isinstance(length, (int, float)) or isinstance(length, bool) or length <= 0 or not n_opt:
            continue
        rows = np.flatnonzero(calls.sched_step & calls.is_obj(sched)) if len(calls) else np.zeros(0, int)
        n_sched = len(rows)
        ratio = n_opt / max(n_sched, 1)
        lo, hi = LENGTH_WINDOW
        kind = None
        if (n_sched and ratio >= RARE_RATIO and n_sched < MAX_PROGRESS * length
                and lo * n_opt <= length <= hi * n_opt):
            kind = "per-epoch"
        elif cls == "CosineAnnealingLR" and n_sched and ratio <= FREQUENT_RATIO and n_sched >= OVERRUN * length:
            kind = "per-iteration"
        crash = _overstepped(run) if cls == "OneCycleLR" else None
        if kind is None and crash is None:
            continue
        example = int(rows[0]) if n_sched else None
        lr = _lr_summary(run, config)
        end = _configured_end(run, cls, config)
        evidence = {
            "scheduler": sched,
            "scheduler_class": cls,
            "length_field": key,
            "configured_length": length,
            "scheduler_steps": n_sched,
            "optimizer_steps": n_opt,
            "optimizer_steps_per_scheduler_step": round(ratio, 2),
            "schedule_progress": round(n_sched / length, 3),
            **lr,
            "configured_end_lr": json_number(end) if isinstance(end, (int, float)) else None,
            "step": int(calls.step[example]) if example is not None else None,
            "sequence": calls.sequence(example) if example is not None else [],
        }
        if kind == "per-epoch" or (kind is None and crash):
            title = (f"{sched} ({cls}, {key}={length:g}) was stepped {n_sched} times in {n_opt} optimizer steps: "
                     f"the schedule stopped at {100 * n_sched / length:.0f}% of its length")
            explanation = (f"{cls} is laid out over {key}={length:g} steps, about the {n_opt} optimizer steps of the "
                           f"run, but scheduler.step() ran only once every {ratio:.0f} optimizer steps (once per "
                           "epoch, it seems). The schedule therefore covered a small part of its length: the learning "
                           f"rate ended at {lr.get('lr_last', 'n/a')} instead of "
                           f"{json_number(end) if isinstance(end, (int, float)) else 'the end of the schedule'}.")
            fix = _FIX_PER_ITERATION
            severity = SEVERITY
            if crash and kind is None:
                title = f"{sched} ({cls}) was stepped past its {key}={length:g}: the run stopped"
                explanation = (f"The run ended with \"{crash}\": OneCycleLR raises once stepped more often than its "
                               f"{key}. It was stepped {n_sched} times for {n_opt} optimizer steps: usually a "
                               "per-epoch length stepped every iteration, or a length that forgot gradient "
                               "accumulation or an extra epoch.")
                fix = _FIX_PER_EPOCH
                severity = Severity.ERROR
                evidence["error"] = crash
        else:
            cycles = n_sched / (2 * length)
            title = (f"{sched} (CosineAnnealingLR, T_max={length:g}) was stepped {n_sched} times, about every "
                     f"optimizer step: the LR ran through {cycles:.1f} full cosine cycles")
            explanation = (f"CosineAnnealingLR reaches eta_min after T_max={length:g} steps and then climbs back up. "
                           f"Stepped every iteration for {n_sched} steps, the learning rate went down and up about "
                           f"{cycles:.1f} times instead of decaying once over the run: T_max looks like a number of "
                           "epochs.")
            fix = _FIX_PER_EPOCH
            severity = SEVERITY
            evidence["cosine_cycles"] = round(cycles, 2)
        findings.append(Finding(
            rule=NAME,
            severity=severity,
            title=title,
            steps=(int(run.steps.index.min()), int(run.steps.index.max())) if len(run.steps) else None,
            evidence=evidence,
            explanation=explanation,
            fix=fix,
        ))
    return findings
