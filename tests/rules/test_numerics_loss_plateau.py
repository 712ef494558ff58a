"""loss-plateau: fires when the loss never moves from its start (LR 1e-7 by hand, LR 1e-9
by the reference injection, gradients cleared before the step) and says the LR; silent
during an LR warm-up, on runs whose loss is mostly NaN, and on healthy runs."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from diagnose.rules._base import Severity
from diagnose.rules.numerics import loss_plateau
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
    assert finding.rule == "loss-plateau" and finding.severity == Severity.WARNING
    return finding


def _flat(n: int = 100, lr=1e-3, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame({"loss": 2.3 + rng.normal(0, 0.03, n), "micro_batches": 1, "lr_0": lr, "skipped": False},
                        index=pd.Index(range(n), name="step"))


def test_fires_on_a_tiny_learning_rate(fault) -> None:
    finding = _only(loss_plateau.check(fault("tiny_lr_plain")))
    ev = finding.evidence
    assert "LR 1.00e-7" in finding.title
    assert ev["lr"]["lr_0"]["median"] == pytest.approx(1e-7)
    assert abs(ev["relative_change"]) < 0.05 and ev["weight_norm_relative_change"] < 1e-3
    assert "practically did not move" in finding.explanation


def test_fires_on_the_reference_injection(fault) -> None:
    finding = _only(loss_plateau.check(fault("plateau_reference")))
    assert max(group["max"] for group in finding.evidence["lr"].values()) <= 1e-9
    assert finding.steps[0] == 0


def test_fires_when_gradients_are_cleared_before_the_step(fault) -> None:
    run = fault("zero_grad_before_step_reference")
    finding = _only(loss_plateau.check(run))
    assert finding.evidence["lr"]["lr_0"]["max"] > 1e-3                 # the LR is fine: the steps are empty
    assert finding.evidence["steps"] == len(run.steps)


def test_silent_while_the_lr_is_still_warming_up() -> None:
    steps = _flat(lr=np.linspace(0, 1e-3, 100))
    assert loss_plateau.check(RunTables(steps=steps)) == []
    _only(loss_plateau.check(RunTables(steps=_flat(lr=1e-3))))          # the same loss at a steady LR


def test_silent_when_most_losses_are_nan() -> None:
    steps = _flat()
    steps.loc[20:, "loss"] = np.nan                                    # nonfinite-loss says what happened
    assert loss_plateau.check(RunTables(steps=steps)) == []


def test_a_small_but_clear_improvement_is_movement() -> None:
    steps = _flat()
    steps["loss"] = steps["loss"] - np.linspace(0, 0.3, 100)          # -13%, far beyond the noise
    assert loss_plateau.check(RunTables(steps=steps)) == []


def test_silent_on_healthy(healthy_run: Run) -> None:
    assert loss_plateau.check(healthy_run.first) == []
