"""dead-units: fires on layers whose gradients are exactly zero on most steps (a ReLU
layer with a large negative bias, written by hand and by the reference injection) and
names the layer that cuts the gradient; silent on frozen and unused parameters, on a run
whose every gradient is zero, and on healthy runs."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from diagnose.rules._base import Severity
from diagnose.rules.numerics import dead_units
from diagnose.rundir.reader import read_run
from diagnose.rundir.tables import Run, RunTables
from tests.harness.faults_numerics import recorded


@pytest.fixture(scope="module")
def fault(tmp_path_factory: pytest.TempPathFactory):
    base = tmp_path_factory.getbasetemp()
    return lambda name, seed=0: read_run(recorded(name, base, seed)).first


def _only(findings):
    assert len(findings) == 1, findings
    finding = findings[0]
    assert finding.rule == "dead-units" and finding.severity >= Severity.WARNING
    return finding


def test_fires_on_a_relu_layer_with_a_negative_bias(fault) -> None:
    finding = _only(dead_units.check(fault("dead_relu_layer")))
    ev = finding.evidence
    assert [entry["layer"] for entry in ev["layers"]] == ["fc1", "fc2", "head"]
    assert ev["nearest_output"] == "fc2"                              # the layer whose ReLUs are dead
    head = ev["layers"][-1]
    assert head["parameters"] == ["head.weight"] and head["alive_parameters"] == ["head.bias"]
    assert ev["first_zero_step"] == 0 and ev["zero_share_range"] == [1.0, 1.0]
    assert finding.severity == Severity.ERROR                          # almost every weight is dead
    assert "fc2" in finding.explanation


def test_fires_on_the_reference_injection(fault) -> None:
    run = fault("dead_units_reference")
    finding = _only(dead_units.check(run))
    ev = finding.evidence
    assert ev["nearest_output"] == "fc1"                              # the reference loop's probe layer
    assert "fc2.weight" in ev["dead_parameters"] and "fc2.bias" not in ev["dead_parameters"]
    assert "features.0.0.weight" in ev["dead_parameters"]             # everything before it is cut off


def test_silent_on_frozen_and_unused_parameters(fault) -> None:
    run = fault("frozen_and_unused")
    frozen = run.params.index[run.params["name"].str.startswith("fc1.")]
    unused = run.params.index[run.params["name"].str.startswith("unused.")]
    assert not run.params.loc[frozen, "requires_grad"].any()
    assert run.grad_norms[list(unused)].isna().all().all()            # no gradient at all, not zero
    assert dead_units.check(run) == []


def test_a_share_below_ninety_percent_is_not_dead() -> None:
    index = pd.Index(range(40), name="step")
    zero_most = np.where(np.arange(40) % 10 < 8, 0.0, 0.5)            # zero on 80% of steps
    grads = pd.DataFrame({0: zero_most, 1: 1.0}, index=index)
    params = pd.DataFrame({"name": ["a.weight", "b.weight"], "module": ["a", "b"], "numel": pd.array([4, 12], "Int64"),
                           "requires_grad": True, "backward_rank": pd.array([1, 0], "Int64")},
                          index=pd.Index([0, 1], name="index"))
    run = RunTables(grad_norms=grads, grad_nonfinite=grads.isna() & False, params=params)
    assert dead_units.check(run) == []
    grads[0] = np.where(np.arange(40) % 10 < 9, 0.0, 0.5)             # 90%: dead
    [finding] = dead_units.check(RunTables(grad_norms=grads, grad_nonfinite=grads.isna() & False, params=params))
    assert finding.evidence["dead_parameters"] == ["a.weight"] and finding.severity == Severity.WARNING
    assert finding.title.startswith("1 layer gets exactly zero gradients on 90% of steps (a)")


def test_silent_when_every_gradient_is_zero() -> None:
    index = pd.Index(range(30), name="step")
    grads = pd.DataFrame({0: 0.0, 1: 0.0}, index=index)
    params = pd.DataFrame({"name": ["a.weight", "b.weight"], "module": ["a", "b"], "numel": pd.array([4, 4], "Int64"),
                           "requires_grad": True, "backward_rank": pd.NA}, index=pd.Index([0, 1], name="index"))
    assert dead_units.check(RunTables(grad_norms=grads, grad_nonfinite=grads > 1, params=params)) == []


def test_silent_on_healthy(healthy_run: Run) -> None:
    assert dead_units.check(healthy_run.first) == []
