"""loss-shape-broadcast: (N, 1) against (N,) and the reverse in mse/smooth_l1, through
nn.MSELoss and the functional form, the reference loop's injection and a zero-code script;
silent on matching shapes and a target row that broadcasts without growing. The torch
target-size warning becomes info pointing here (framework-warning)."""
from __future__ import annotations

from pathlib import Path

import pytest

from diagnose.rules._base import Severity
from diagnose.rules.data import framework_warning
from diagnose.rules.data import loss_shape_broadcast as rule
from tests.rules.data._contracts import alarms, faults_for, record, script

RULE = "loss-shape-broadcast"


@pytest.mark.parametrize("name", faults_for(RULE))
def test_fires_on_broadcasting_shapes(name: str, tmp_path: Path) -> None:
    run = record(name, tmp_path)
    [finding] = rule.check(run)
    ev = finding.evidence
    assert finding.severity == Severity.ERROR and finding.steps[0] == 0
    assert sorted([ev["input_shape"], ev["target_shape"]]) == [[32], [32, 1]]
    assert ev["broadcast_shape"] == [32, 32] and ev["elements_compared"] == 1024
    assert ev["function"] in finding.title and "(32, 32)" in finding.title
    assert [f.rule for f in alarms(run)].count(RULE) == 1


def test_silent_on_matching_shapes(tmp_path: Path) -> None:
    run = record("matching_shapes", tmp_path)
    assert set(run.loss_calls["fn"]) == {"mse_loss", "l1_loss", "huber_loss"}
    assert rule.check(run) == []
    assert alarms(run) == []


def test_zero_code_script_and_the_framework_warning_points_here(tmp_path: Path) -> None:
    run = script("loss_shape_broadcast.py", tmp_path)
    [finding] = rule.check(run)
    assert (finding.evidence["input_shape"], finding.evidence["target_shape"]) == ([32, 1], [32])
    assert "squeeze(-1)" in finding.fix
    [warned] = [f for f in framework_warning.check(run) if "target size" in f.evidence["message"]]
    assert warned.severity == Severity.INFO and warned.evidence["see_rule"] == RULE
    assert [f.rule for f in alarms(run)] == [RULE]   # one mistake, counted once


@pytest.mark.parametrize("a, b, expected", [
    ((32, 1), (32,), (32, 32)), ((32,), (32, 1), (32, 32)), ((8, 1, 4), (8, 4), (8, 8, 4)),
    ((32, 1), (32, 1), None), ((32, 3), (3,), None), ((32, 3), (1, 3), None), ((4,), (5,), None),
    ((), (7,), None),
])
def test_grows(a, b, expected) -> None:
    assert rule.grows(a, b) == expected
