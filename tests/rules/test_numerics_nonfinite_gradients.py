"""nonfinite-gradients: fires on NaN/Inf gradients of steps nothing skipped (a finite loss
with a NaN backward; a NaN loss), silent on GradScaler's skipped steps and healthy runs."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from diagnose.rules._base import Severity
from diagnose.rules.numerics import nonfinite_gradients
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
    assert finding.rule == "nonfinite-gradients" and finding.severity == Severity.ERROR
    return finding


def test_fires_on_nan_gradient_of_a_finite_loss(fault) -> None:
    run = fault("sqrt_of_zero_grad")
    finding = _only(nonfinite_gradients.check(run))
    ev = finding.evidence
    assert ev["first_step"] == SQRT_STEP and finding.steps[0] == SQRT_STEP
    assert ev["first_parameters"] == ["head.weight"]          # only the sqrt's argument
    assert ev["loss_finite_at_first_step"] is True
    assert np.isfinite(ev["loss_at_first_step"])
    assert ev["recovered"] is False                            # SGD wrote the NaN into the weights
    assert "finite" in finding.explanation and "head.weight" in finding.title


def test_fires_on_nan_loss_of_the_reference_loop(fault) -> None:
    run = fault("nan_loss_reference")
    finding = _only(nonfinite_gradients.check(run))
    ev = finding.evidence
    assert ev["first_step"] == 10                              # the injection's nan_step
    assert ev["loss_finite_at_first_step"] is False and ev["loss_at_first_step"] == "nan"
    output_side = run.params["backward_rank"].astype("float64").idxmin()
    assert ev["first_parameters"][0] == run.params.at[output_side, "name"]   # first in backward order
    assert ev["nonfinite_parameters_at_first_step"] == len(run.params)
    assert "nonfinite-loss" in finding.explanation


def test_silent_on_overflows_skipped_by_grad_scaler(fault) -> None:
    run = fault("scaler_calibrating")
    skipped = run.steps.index[run.steps["skipped"]]
    assert len(skipped) >= 10 and run.grad_nonfinite.loc[skipped].any(axis=1).all()  # inf grads, all skipped
    assert nonfinite_gradients.check(run) == []


def test_counts_a_scaler_step_that_was_not_skipped() -> None:
    index = pd.Index(range(6), name="step")
    steps = pd.DataFrame({"loss": 1.0, "micro_batches": 1, "scale": [1024.0] + [512.0] * 5,
                          "scale_after": 512.0}, index=index)   # step 0 skipped, the rest not
    steps["skipped"] = steps["scale_after"] < steps["scale"]
    nonfinite = pd.DataFrame({0: [True, False, False, True, False, False], 1: False}, index=index)
    params = pd.DataFrame({"name": ["w", "b"], "requires_grad": True, "backward_rank": pd.array([1, 0], "Int64"),
                           "module": "", "shape": [[2, 2], [2]]}, index=pd.Index([0, 1], name="index"))
    run = RunTables(steps=steps, grad_nonfinite=nonfinite, grad_norms=nonfinite.astype(float), params=params)
    finding = _only(nonfinite_gradients.check(run))
    assert finding.evidence["first_step"] == 3 and finding.evidence["nonfinite_steps"] == 1
    assert finding.evidence["skipped_by_scaler_not_counted"] == 1


def test_silent_without_gradient_norms() -> None:
    assert nonfinite_gradients.check(RunTables()) == []


def test_silent_on_healthy(healthy_run: Run) -> None:
    assert nonfinite_gradients.check(healthy_run.first) == []
