"""nonfinite-inputs and update-ratio on every loop of tests/harness/faults_data.py: each
fault fires its rule (at its step), each near miss stays silent (no rule at warning)."""
from __future__ import annotations

from pathlib import Path

import pytest

from diagnose.rules import run_rules
from diagnose.rules._base import Severity
from diagnose.rundir.reader import read_run
from tests.harness.faults_data import FAULTS, record_fault


@pytest.mark.parametrize("name", sorted(FAULTS))
def test_fault_fires_and_near_miss_is_silent(name: str, tmp_path: Path) -> None:
    fault = FAULTS[name]
    findings, _ = run_rules(read_run(record_fault(name, tmp_path / "run")))
    if fault.rule is None:
        alarms = [f"{f.rule}: {f.title}" for f in findings if f.severity >= Severity.WARNING]
        assert alarms == []
        return
    hits = [f for f in findings if f.rule == fault.rule and f.severity >= Severity.parse(fault.severity)]
    assert hits, [f"{f.rule} ({f.severity.label})" for f in findings]
    if fault.at is not None:
        assert hits[0].steps[0] == fault.at
