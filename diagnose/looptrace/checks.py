"""Which check backs each assertion: the catalogue's rule when it exists, else an interim one.

`run_check(name, run)` runs the loop rule `name` from `diagnose.rules` on the recorded
tables, exactly as `diagnose report` does (`run_rules(run, select=[name])`), so the plugin
and the report agree. Two differences, both for a short, deliberate trace:

- Count thresholds that a full run needs for precision but a 3-step trace can never meet
  are lowered while the rule runs (`TRACE_THRESHOLDS`; a rule module may declare its own
  `TRACE_THRESHOLDS` dict, which wins). Only the amount of evidence changes, never the
  logic: e.g. `missing-zero-grad` speaks after 3 uncleared intervals in a run, after 1 in
  a trace.
- Checks that no rule covers yet live in `interim.py` with a rule's contract
  (`check(RunTables) -> list[Finding]`); a rule of the same name, once in the catalogue,
  replaces its interim check.
"""
from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator

from diagnose.looptrace import interim
from diagnose.rules import UnknownRuleError, catalogue, run_rules
from diagnose.rules._base import Finding, RuleSpec
from diagnose.rundir.tables import Run

TRACE_THRESHOLDS: dict[str, dict[str, float]] = {
    "missing-zero-grad": {"MIN_INTERVALS": 1, "MIN_FRACTION": 0.0},
    "scheduler-never-stepped": {"MIN_OPTIMIZER_STEPS": 1, "MIN_EPOCHS": 1},
    "params-not-updated": {"MIN_GRAD_STEPS": 1},
}
"""Module constants of a rule lowered while it runs on a trace (a trace has few steps)."""


class CheckError(RuntimeError):
    """A rule failed on the recorded tables (a bug in diagnose, not in the user's loop)."""


def source(name: str) -> str:
    """`"rule"` when the catalogue has `name`, `"plugin"` for an interim check."""
    return "rule" if _spec(name) is not None else "plugin"


def run_check(name: str, run: Run) -> list[Finding]:
    """The findings of check `name` on `run` (every severity), most severe first."""
    spec = _spec(name)
    if spec is None:
        check = interim.CHECKS.get(name)
        if check is None:
            problems = "; ".join(catalogue().problems) or "no module defines it"
            raise CheckError(f"rule {name} is not in the catalogue ({problems})")
        findings = [f for tables in run.ranks.values() for f in check(tables)]
        return sorted(findings, key=lambda f: (-f.severity, f.steps[0] if f.steps else -1))
    with _trace_thresholds(spec):
        findings, notes = run_rules(run, select=[name])
    failed = [n for n in notes if n.startswith(f"rule {name} failed")]
    if failed:
        raise CheckError(failed[0])
    return findings


def _spec(name: str) -> RuleSpec | None:
    try:
        return catalogue().get(name)
    except UnknownRuleError:
        return None


@contextlib.contextmanager
def _trace_thresholds(spec: RuleSpec) -> Iterator[None]:
    module = sys.modules.get(getattr(spec.check, "__module__", ""), None)
    overrides = getattr(module, "TRACE_THRESHOLDS", None) or TRACE_THRESHOLDS.get(spec.name, {})
    saved = {}
    try:
        for key, value in overrides.items():
            if module is not None and hasattr(module, key):
                saved[key] = getattr(module, key)
                setattr(module, key, value)
        yield
    finally:
        for key, value in saved.items():
            setattr(module, key, value)
