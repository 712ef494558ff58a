"""PyTorch or another library warned during training.

## What it flags
Each distinct warning Python showed while the run was recorded (`warning` events: every
recorder, `Monitor`, the reference loop and the zero-code mode, records each warning that
passes the user's filters, at the user's line: diagnose/recorder/warnings_capture.py), once, with the step it first appeared at, how often it came, its category and
where it was raised. A warning filtered out or caught by the script is not seen.

## Why it matters
Library warnings often name a real bug in a few words that scroll away in the logs:
`Using a target size (torch.Size([32])) that is different to the input size
(torch.Size([32, 1]))` means `mse_loss` broadcast to a 32x32 matrix and the model learns
the mean; `Implicit dimension choice for softmax` means the softmax may run over the
wrong axis. Severity follows what the warning means: `warning` for those known to
corrupt training, `info` for the rest (deprecations, performance hints). A warning that
another rule covers in full is rated `info` and points to that rule (the scheduler-order
warning: `scheduler-before-optimizer`), so one mistake is never counted twice.

## Example
```python
pred = model(x)                      # (N, 1)
loss = F.mse_loss(pred, y)           # y: (N,) -> UserWarning: Using a target size ...
probs = F.softmax(logits)            # UserWarning: Implicit dimension choice for softmax
```
Use instead:
```python
loss = F.mse_loss(pred.squeeze(-1), y)
probs = F.softmax(logits, dim=-1)
```

## Thresholds
None: every distinct (category, message, file, line) is reported once. Messages are
grouped after replacing numbers, so the same warning with other sizes counts once.
"""
from __future__ import annotations

import importlib.util
import re
from dataclasses import dataclass

from diagnose.rules._base import Finding, RunTables, Severity

NAME = "framework-warning"
SEVERITY = Severity.INFO
REQUIRES = ("events",)

MAX_FINDINGS = 20


@dataclass(frozen=True)
class Known:
    """A warning whose meaning is known: its severity, what to do, and the rule that covers it."""

    pattern: re.Pattern
    severity: Severity
    meaning: str
    fix: str
    rule: str | None = None
    """A dedicated rule that covers this mistake (the finding points to it, rated info)."""


KNOWN: tuple[Known, ...] = (
    Known(re.compile(r"lr_scheduler\.step\(\)` before `optimizer\.step\(\)"), Severity.INFO,
          "the scheduler was stepped before the optimizer, so the first value of the schedule is skipped",
          "call scheduler.step() after optimizer.step()", rule="scheduler-before-optimizer"),
    Known(re.compile(r"Using a target size .* different to the input size"), Severity.WARNING,
          "the loss broadcast prediction and target against each other (e.g. (N, 1) against (N,) gives "
          "(N, N)): every prediction is compared with every target and the model learns the mean",
          "make the shapes equal before the loss: F.mse_loss(pred.squeeze(-1), y)",
          rule="loss-shape-broadcast"),
    Known(re.compile(r"Implicit dimension choice for (log_)?softmax"), Severity.WARNING,
          "softmax was called without `dim`, so torch picked an axis, which may not be the class axis",
          "pass the axis explicitly: F.softmax(logits, dim=-1)"),
)

_NUMBER = re.compile(r"\d+")


def _rule_exists(name: str) -> bool:
    module = name.replace("-", "_")
    return any(importlib.util.find_spec(f"diagnose.rules.{family}.{module}") is not None
               for family in ("numerics", "loop", "data", "resources", "distributed")
               if importlib.util.find_spec(f"diagnose.rules.{family}") is not None)


def _known(message: str) -> Known | None:
    return next((k for k in KNOWN if k.pattern.search(message)), None)


def check(run: RunTables) -> list[Finding]:
    events = run.events_of("warning")
    if events.empty:
        return []
    groups: dict[tuple, dict] = {}
    for step, data in zip(events["step"], events["data"]):
        if not isinstance(data, dict):
            continue
        message = str(data.get("message", ""))
        key = (data.get("category"), _NUMBER.sub("#", message), data.get("filename"), data.get("lineno"))
        group = groups.setdefault(key, {"data": data, "first_step": None, "count": 0})
        group["count"] += 1
        if group["first_step"] is None and step is not None and step == step:
            group["first_step"] = int(step)
    findings = []
    for group in list(groups.values())[:MAX_FINDINGS]:
        data, first, count = group["data"], group["first_step"], group["count"]
        message = str(data.get("message", ""))
        known = _known(message)
        category = str(data.get("category", "Warning"))
        evidence = {"category": category, "message": message[:500], "first_step": first, "count": count,
                    "location": f"{data.get('filename')}:{data.get('lineno')}"}
        severity = known.severity if known else Severity.INFO
        covered = known is not None and known.rule is not None and _rule_exists(known.rule)
        if covered:
            severity = Severity.INFO
            evidence["see_rule"] = known.rule
        short = message.splitlines()[0][:120] if message else category
        title = (f"{category} at step {first}" if first is not None else category) + \
                f"{f' ({count} times)' if count > 1 else ''}: {short}"
        if covered:
            title += f" (see {known.rule})"
        if known:
            explanation = f"The warning means {known.meaning}."
            fix = known.fix[0].upper() + known.fix[1:] + "."
        else:
            explanation = ("A library warned while the run trained; read it once: warnings name deprecated calls, "
                           "slow paths and silent shape or dtype fixes that can change what the model learns.")
            fix = (f"Fix the call at {evidence['location']}, or silence this warning on purpose:\n"
                   f"    warnings.filterwarnings(\"ignore\", category={category}, message=...)")
        findings.append(Finding(rule=NAME, severity=severity, title=title,
                                steps=(first, first) if first is not None else None,
                                evidence=evidence, explanation=explanation, fix=fix))
    return findings
