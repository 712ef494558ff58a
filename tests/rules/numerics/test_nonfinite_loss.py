"""nonfinite-loss: fires on NaN/Inf losses, silent on healthy runs and unrecorded losses."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from diagnose.rules import run_rules
from diagnose.rules._base import Severity
from diagnose.rules.numerics import nonfinite_loss
from diagnose.rundir.reader import read_run
from diagnose.rundir.synthetic import write_synthetic_run
from diagnose.rundir.tables import Run, RunTables


def _curve(steps: int) -> list[float]:
    return list(np.linspace(2.0, 0.5, steps))


def test_fires_on_loss_nan_to_the_end(tmp_path: Path) -> None:
    loss = _curve(100)
    loss[60:] = [math.nan] * 40
    run = read_run(write_synthetic_run(tmp_path / "run", steps=100, params=3, loss=loss))
    [finding] = nonfinite_loss.check(run.first)
    assert finding.rule == "nonfinite-loss" and finding.severity == Severity.ERROR
    assert finding.title == "Loss is nan from step 60 to the end of the run (40 steps)"
    assert finding.steps == (60, 99)
    ev = finding.evidence
    assert (ev["first_step"], ev["first_value"], ev["nonfinite_steps"], ev["recovered"]) == (60, "nan", 40, False)
    assert ev["step_ranges"] == [[60, 99]] and ev["last_finite_loss"] == loss[59]
    assert "skipped_by_scaler" not in ev
    assert "never became finite again" in finding.explanation
    assert "clip_grad_norm_" in finding.fix


def test_fires_on_transient_overflow_skipped_by_grad_scaler(tmp_path: Path) -> None:
    loss = _curve(50)
    loss[10], loss[11], loss[30] = math.inf, math.nan, -math.inf
    run = read_run(write_synthetic_run(tmp_path / "run", steps=50, params=3, loss=loss, amp=True))
    [finding] = nonfinite_loss.check(run.first)
    assert finding.title == "Loss was non-finite at 3 steps (first: step 10, inf)"
    assert finding.steps == (10, 30)
    assert finding.evidence["skipped_by_scaler"] == 3
    assert finding.evidence["counts"] == {"nan": 1, "inf": 1, "-inf": 1}
    assert finding.evidence["step_ranges"] == [[10, 11], [30, 30]]
    assert finding.evidence["recovered"] is True
    assert "GradScaler skipped" in finding.explanation


def test_a_single_bad_last_step_is_not_called_the_end_of_the_run(tmp_path: Path) -> None:
    loss = _curve(20)
    loss[-1] = math.nan
    [finding] = nonfinite_loss.check(read_run(write_synthetic_run(tmp_path / "run", steps=20, params=2,
                                                                  loss=loss)).first)
    assert finding.title == "Loss was nan at step 19"


def test_silent_when_the_loss_was_not_recorded() -> None:
    steps = pd.DataFrame({"loss": [1.0, np.nan, 0.9], "micro_batches": [1, 0, 1], "skipped": False},
                         index=pd.Index([0, 1, 2], name="step"))
    assert nonfinite_loss.check(RunTables(steps=steps)) == []


def test_same_finding_on_every_rank_is_reported_once(tmp_path: Path) -> None:
    loss = _curve(30)
    loss[5] = math.nan
    run = read_run(write_synthetic_run(tmp_path / "run", steps=30, params=2, loss=loss, ranks=2))
    findings, notes = run_rules(run, select=["nonfinite-loss"])
    assert notes == []
    [finding] = findings
    assert finding.rank is None and finding.evidence["ranks"] == [0, 1]


def test_silent_on_synthetic_healthy(tmp_path: Path) -> None:
    for amp in (False, True):
        run = read_run(write_synthetic_run(tmp_path / f"run{amp}", steps=200, params=4, amp=amp))
        assert nonfinite_loss.check(run.first) == []


def test_silent_on_healthy(healthy_run: Run) -> None:
    for tables in healthy_run.ranks.values():
        assert nonfinite_loss.check(tables) == []
