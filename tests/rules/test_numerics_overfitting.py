"""overfitting: fires when the validation loss climbs after its minimum while the training
loss keeps falling (a small noisy classification set; a curve fit evaluated as "valid");
silent when early stopping ends the run near the minimum, when the model never generalised
(a validation set from another distribution), and on healthy runs."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from diagnose.rules._base import Severity
from diagnose.rules.numerics import overfitting
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
    assert finding.rule == "overfitting" and finding.severity == Severity.WARNING
    return finding


def _metrics(val: list[float], train: list[float] | None = None) -> RunTables:
    rows = [(10 * (i + 1), i, "val", "val_loss", v) for i, v in enumerate(val)]
    rows += [(10 * (i + 1), i, "train", "train_loss", v) for i, v in enumerate(train or [])]
    metrics = pd.DataFrame(rows, columns=["step", "epoch", "phase", "name", "value"])
    steps = pd.DataFrame({"loss": 2.0, "micro_batches": 1, "skipped": False}, index=pd.Index(range(3), name="step"))
    return RunTables(metrics=metrics, steps=steps)


def test_fires_on_a_small_noisy_training_set(fault) -> None:
    run = fault("small_data_big_mlp")
    finding = _only(overfitting.check(run))
    ev = finding.evidence
    val = run.metrics[run.metrics["phase"] == "val"].sort_values("step")["value"].to_numpy()
    assert ev["best_epoch"] == int(np.argmin(val)) and ev["best_val_loss"] == pytest.approx(val.min())
    assert ev["best_epoch"] <= 8 and ev["evaluations_after_best"] >= 30
    assert ev["val_rise"] >= 0.5 and ev["train_loss_final"] < 0.1 * ev["train_loss_at_best"]
    assert ev["gap_final"] > ev["gap_at_best"]
    assert f"epoch {ev['best_epoch']}" in finding.title


def test_fires_on_a_curve_fit_evaluated_as_valid(fault) -> None:
    run = fault("curve_fit_overfit")
    assert set(run.metrics["phase"]) == {"train", "valid"}
    finding = _only(overfitting.check(run))
    ev = finding.evidence
    assert ev["metric"] == "val_loss" and ev["best_epoch"] < 15 and ev["evaluations"] == 40
    logged = run.metrics[(run.metrics["phase"] == "train") & (run.metrics["epoch"] == ev["best_epoch"])]
    assert ev["train_loss_at_best"] == pytest.approx(float(logged["value"].iloc[0]))   # the logged train loss


def test_silent_when_early_stopping_ends_near_the_minimum(fault) -> None:
    assert overfitting.check(fault("early_stopped_overfit")) == []


def test_silent_when_validation_never_beat_the_untrained_model() -> None:
    # Validation loss above the start of training from the first evaluation on: a
    # validation set from another distribution, not a model that learned and then forgot.
    run = _metrics([2.2, 2.9, 3.4, 3.6, 3.7, 3.8, 3.8], [1.5, 0.8, 0.4, 0.2, 0.1, 0.05, 0.03])
    assert overfitting.check(run) == []
    learned_first = _metrics([1.0, 0.7, 0.9, 1.1, 1.2, 1.3, 1.4], [1.5, 0.8, 0.4, 0.2, 0.1, 0.05, 0.03])
    assert _only(overfitting.check(learned_first)).evidence["best_epoch"] == 1


def test_silent_when_the_training_loss_rises_too() -> None:
    run = _metrics([1.0, 0.7, 0.9, 1.1, 1.2, 1.3, 1.4], [1.5, 0.8, 0.9, 1.0, 1.1, 1.2, 1.3])
    assert overfitting.check(run) == []


def test_silent_without_validation_metrics() -> None:
    assert overfitting.check(RunTables()) == []


def test_silent_on_healthy(healthy_run: Run) -> None:
    assert overfitting.check(healthy_run.first) == []
