"""Call-order checks the plugin needs and the rule catalogue does not have (yet).

Each check has a rule's contract (`check(RunTables) -> list[Finding]`, pure, built on the
loop rules' shared `CallIndex`), so it can move to `diagnose/rules/loop/NAME.py` as it is,
and `checks.run_check` then runs the rule instead.

- `clip-after-step`: clipping between the optimizer step and the next backward (proposed
  for the catalogue).
- `scaler.update()` before `scaler.step()` needs no check: GradScaler itself raises on
  the first iteration ("No inf checks were recorded prior to update").
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np

from diagnose.rules._base import Finding, RunTables, Severity, compact_ranges
from diagnose.rules.loop._callindex import CallIndex

Check = Callable[[RunTables], list[Finding]]


def _finding(name: str, calls: CallIndex, positions: np.ndarray, title: str, explanation: str,
             fix: str, severity: Severity = Severity.ERROR, **evidence) -> Finding:
    """A finding on the calls at `positions` (the first one is shown)."""
    first = int(positions[0])
    steps = sorted(set(calls.step[positions].tolist()))
    return Finding(
        rule=name, severity=severity, title=title, steps=(steps[0], steps[-1]),
        evidence={"step": int(calls.step[first]), "call": str(calls.token[first]),
                  "step_ranges": compact_ranges(steps), "sequence": calls.sequence(first), **evidence},
        explanation=explanation, fix=fix)


# ---- plugin-only order checks -------------------------------------------------------------


def clip_after_step(run: RunTables) -> list[Finding]:
    """Gradient clipping between optimizer.step() and the next backward(): it changes nothing."""
    calls = CallIndex.of(run)
    if not len(calls) or not calls.clip.any():
        return []
    last_backward = calls.last_at_or_before(calls.backward)
    last_step = calls.last_at_or_before(calls.any_opt_step)
    bad = np.flatnonzero(calls.clip & (last_step > last_backward))
    if not len(bad):
        return []
    return [_finding(
        "clip-after-step", calls, bad,
        f"{calls.token[bad[0]]} runs after the optimizer step and before the next backward() "
        f"({len(bad)} of {int(calls.clip.sum())} clipping calls): it clips gradients already applied",
        "The optimizer already used these gradients, and the next backward() or zero_grad() replaces them: "
        "the clipping has no effect, so the updates are not clipped at all.",
        """Clip between backward() and the optimizer step:
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
    optimizer.step()""")]


CHECKS: dict[str, Check] = {
    "clip-after-step": clip_after_step,
}
"""Every interim check by name."""
