"""Shared by the loss-contract and layout rule tests: record a tests/harness/faults_contracts.py
loop (or a tests/scripts plain script in zero-code mode) and run the rules on it."""
from __future__ import annotations

from pathlib import Path

from diagnose.rules import run_rules
from diagnose.rules._base import Finding, Severity
from diagnose.rundir.reader import read_run
from diagnose.rundir.tables import RunTables
from diagnose.zerocode import run_script
from tests.harness.faults_contracts import FAULTS, record_fault
from tests.scripts import script_path


def faults_for(rule: str) -> list[str]:
    return [name for name, fault in FAULTS.items() if fault.rule == rule]


NEAR_MISSES = [name for name, fault in FAULTS.items() if fault.rule is None]


def record(name: str, tmp_path: Path) -> RunTables:
    return read_run(record_fault(name, tmp_path / "run", 0)).first


def script(name: str, tmp_path: Path) -> RunTables:
    assert run_script(script_path(name), [], tmp_path / "run") == 0
    return read_run(tmp_path / "run").first


def alarms(tables: RunTables) -> list[Finding]:
    """Every finding at warning or above, from all rules."""
    from diagnose.rundir.tables import Run

    findings, _ = run_rules(Run(path=tables.path or Path("."), ranks={0: tables}))
    return [f for f in findings if f.severity >= Severity.WARNING]
