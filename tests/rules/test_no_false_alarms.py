"""The project's main guard against false alarms: on every healthy scenario of
tests/harness/scenarios.py (seed 0), all rules together report nothing at warning or
error, and none of them fails. bench/false_alarms.py publishes the same over more seeds."""
from __future__ import annotations

from diagnose.rules import catalogue, run_rules
from diagnose.rules._base import Severity
from diagnose.rundir.tables import Run


def test_catalogue_loads_every_rule_module() -> None:
    cat = catalogue()
    assert cat.problems == ()
    assert {"numerics", "loop", "resources"} <= set(cat.categories)


def test_no_rule_warns_on_healthy(healthy_run: Run) -> None:
    findings, notes = run_rules(healthy_run)
    alarms = [f"{f.rule} ({f.severity.label}): {f.title}" for f in findings if f.severity >= Severity.WARNING]
    assert alarms == [], f"false alarms on healthy run {healthy_run.path}:\n" + "\n".join(alarms)
    broken = [n for n in notes if " failed" in n or "not loaded" in n]
    assert broken == [], "\n".join(broken)
