"""nonfinite-parameters: fires on NaN weights (after a NaN gradient, a NaN loss, or a NaN
written into a weight), names the window and the parameters; silent on healthy runs."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from diagnose.rules._base import Severity
from diagnose.rules.numerics import nonfinite_parameters
from diagnose.rundir.reader import read_run
from diagnose.rundir.tables import Run, RunTables
from tests.harness.faults_numerics import SQRT_STEP, recorded


@pytest.fixture(scope="module")
def fault(tmp_path_factory: pytest.TempPathFactory):
    base = tmp_path_factory.getbasetemp()
    return lambda name, seed=0: read_run(recorded(name, base, seed)).first


def _only(findings):
    assert len(findings) == 1, findings
    finding = findings[0]
    assert finding.rule == "nonfinite-parameters" and finding.severity == Severity.ERROR
    return finding


def test_fires_on_weights_after_a_nan_gradient(fault) -> None:
    run = fault("sqrt_of_zero_grad")                      # param_every=5: samples 0, 5, 10, 15, ...
    finding = _only(nonfinite_parameters.check(run))
    ev = finding.evidence
    assert (ev["first_step"], ev["last_finite_step"]) == (SQRT_STEP, SQRT_STEP - 5)
    assert ev["parameters"] == ["head.weight"]            # the only one hit at the first bad sample
    assert ev["first_nonfinite_gradient_step"] == SQRT_STEP
    assert ev["persistent"] is True and ev["nonfinite_at_last_sample"] == len(run.params)
    assert finding.title.startswith(f"Weights became NaN/Inf between step {SQRT_STEP - 5} and step {SQRT_STEP}")


def test_fires_on_a_weight_overwritten_with_nan(fault) -> None:
    run = fault("nan_weight_adam")                        # NaN written after step 12; param_every=4
    finding = _only(nonfinite_parameters.check(run))
    ev = finding.evidence
    assert (ev["last_finite_step"], ev["first_step"]) == (12, 16)
    assert ev["first_nonfinite_loss_step"] == 13 and ev["first_nonfinite_gradient_step"] == 13
    assert ev["nonfinite_parameters"] == ev["parameters_total"] == 6


def test_fires_on_the_reference_nan_loss(fault) -> None:
    run = fault("nan_loss_reference")
    finding = _only(nonfinite_parameters.check(run))
    assert (finding.evidence["last_finite_step"], finding.evidence["first_step"]) == (5, 10)
    assert finding.evidence["first_nonfinite_loss_step"] == 10


def test_names_output_side_first_and_the_first_sample() -> None:
    norms = pd.DataFrame({0: [1.0, np.inf], 1: [1.0, np.nan], 2: [1.0, 2.0]},
                         index=pd.Index([0, 25], name="step"))
    params = pd.DataFrame({"name": ["a.weight", "b.weight", "c.weight"], "backward_rank": pd.array([2, 0, 1], "Int64"),
                           "module": ["a", "b", "c"], "requires_grad": True}, index=pd.Index([0, 1, 2], name="index"))
    finding = _only(nonfinite_parameters.check(RunTables(param_norms=norms, params=params)))
    assert finding.evidence["parameters"] == ["b.weight", "a.weight"]
    assert "first_nonfinite_gradient_step" not in finding.evidence
    assert "overwritten directly" in finding.explanation


def test_silent_without_weight_norms() -> None:
    assert nonfinite_parameters.check(RunTables()) == []


def test_silent_on_healthy(healthy_run: Run) -> None:
    assert nonfinite_parameters.check(healthy_run.first) == []
