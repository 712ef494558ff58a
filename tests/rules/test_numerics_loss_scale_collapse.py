"""loss-scale-collapse: fires when GradScaler skips step after step (every step; a streak
from mid-run that drives the scale below 1; a high share of skips), silent on its
calibration at the start, on periodic growth/backoff and on healthy runs."""
from __future__ import annotations

import pandas as pd
import pytest

from diagnose.rules._base import Severity
from diagnose.rules.numerics import loss_scale_collapse
from diagnose.rundir.reader import read_run
from diagnose.rundir.tables import Run, RunTables
from tests.harness.faults_numerics import OVERFLOW_STEP, recorded


@pytest.fixture(scope="module")
def fault(tmp_path_factory: pytest.TempPathFactory):
    base = tmp_path_factory.getbasetemp()
    return lambda name, seed=0: read_run(recorded(name, base, seed)).first


def _only(findings):
    assert len(findings) == 1, findings
    finding = findings[0]
    assert finding.rule == "loss-scale-collapse" and finding.severity == Severity.ERROR
    return finding


def _scaler_run(skipped: list[bool], init: float = 65536.0, growth_interval: int = 20) -> RunTables:
    """Steps whose scale follows GradScaler's rules: halve on a skip, double after
    `growth_interval` clean steps."""
    scale, clean, rows = init, 0, []
    for skip in skipped:
        before = scale
        if skip:
            scale, clean = scale / 2, 0
        else:
            clean += 1
            if clean == growth_interval:
                scale, clean = scale * 2, 0
        rows.append((before, scale))
    steps = pd.DataFrame(rows, columns=["scale", "scale_after"], index=pd.Index(range(len(rows)), name="step"))
    steps["loss"], steps["micro_batches"] = 1.0, 1
    steps["skipped"] = steps["scale_after"] < steps["scale"]
    return RunTables(steps=steps)


@pytest.mark.filterwarnings("ignore:Detected call of `lr_scheduler.step\\(\\)` before")  # skipped steps: torch warns
def test_fires_when_every_step_is_skipped(fault) -> None:
    run = fault("collapse_reference")
    finding = _only(loss_scale_collapse.check(run))
    ev = finding.evidence
    assert ev["skipped_steps"] == ev["steps_with_scaler"] == len(run.steps)
    assert ev["calibration_steps"] == 0 and finding.steps == (0, len(run.steps) - 1)
    assert ev["nonfinite_loss_on_skipped_steps"] == len(run.steps)      # logits x 1e9: the forward overflows
    assert "every step" in finding.title


def test_fires_on_a_streak_from_mid_run(fault) -> None:
    run = fault("overflow_from_midrun")
    finding = _only(loss_scale_collapse.check(run))
    ev = finding.evidence
    assert finding.steps[0] == OVERFLOW_STEP and ev["longest_streak_steps"][0] == OVERFLOW_STEP
    assert ev["longest_streak"] >= 15 and ev["scale_lowest"] < 1
    assert ev["nonfinite_loss_on_skipped_steps"] == 0                      # finite loss, fp16 backward overflows
    assert "backward" in finding.explanation


def test_fires_on_a_high_share_of_scattered_skips() -> None:
    skipped = [i % 4 == 0 for i in range(200)]                # every 4th step, never 5 in a row
    skipped[0] = False
    finding = _only(loss_scale_collapse.check(_scaler_run(skipped, growth_interval=3)))
    assert finding.evidence["skipped_share_after_calibration"] == pytest.approx(49 / 200, abs=0.01)
    assert finding.evidence["longest_streak"] == 1


def test_silent_while_a_large_initial_scale_calibrates(fault) -> None:
    run = fault("scaler_calibrating")
    assert run.steps["skipped"].iloc[:20].all() and not run.steps["skipped"].iloc[30:].any()
    assert loss_scale_collapse.check(run) == []


def test_fires_when_calibration_drove_the_scale_below_one() -> None:
    # 20 skips in a row from the start (calibration), then clean steps: the scale is left at
    # 2**-4, so the loss is scaled down and small fp16 gradients underflow.
    run = _scaler_run([True] * 20 + [False] * 15, init=2.0 ** 16, growth_interval=1000)
    finding = _only(loss_scale_collapse.check(run))
    assert finding.evidence["why"] == ["the scale fell to 0.0625"]
    assert finding.evidence["skipped_after_calibration"] == 0
    assert finding.steps == (0, 19)


def test_silent_on_periodic_growth_and_backoff() -> None:
    # Grows every 20 clean steps and overflows right after each growth: one skip in 21.
    skipped = [(i % 21) == 20 for i in range(420)]
    run = _scaler_run(skipped)
    assert run.steps["skipped"].sum() == 20
    assert loss_scale_collapse.check(run) == []


def test_silent_without_a_scaler() -> None:
    assert loss_scale_collapse.check(RunTables()) == []


def test_silent_on_healthy(healthy_run: Run) -> None:
    assert loss_scale_collapse.check(healthy_run.first) == []
