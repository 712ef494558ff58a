"""softmax-before-cross-entropy: probabilities fed to cross_entropy / nll_loss, seen in
Monitor loops, the reference loop's injection (both tasks) and a zero-code script; silent
on log_softmax + NLLLoss, BCELoss on sigmoid outputs, soft targets and label smoothing."""
from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from diagnose.rules._base import Severity
from diagnose.rules.data import softmax_before_cross_entropy as rule
from tests.rules.data._contracts import NEAR_MISSES, alarms, faults_for, record, script

RULE = "softmax-before-cross-entropy"


@pytest.mark.parametrize("name", faults_for(RULE))
def test_fires_on_probabilities(name: str, tmp_path: Path) -> None:
    run = record(name, tmp_path)
    [finding] = rule.check(run)
    ev = finding.evidence
    assert finding.severity == Severity.ERROR and finding.steps[0] == 0
    assert ev["function"] == ("nll_loss" if "nll" in name else "cross_entropy")
    assert 0.0 <= ev["pred_min"] and ev["pred_max"] <= 1.0 and ev["max_row_sum_error"] < 1e-2
    assert ev["calls_flagged"] == ev["calls_recorded"] >= 5   # steps 0-4 are sampled
    assert [f.rule for f in alarms(run)].count(RULE) == 1


def test_fires_in_zero_code_mode(tmp_path: Path) -> None:
    run = script("softmax_before_cross_entropy.py", tmp_path)
    [finding] = rule.check(run)
    assert finding.evidence["function"] == "cross_entropy" and finding.evidence["input_shape"] == [32, 5]
    assert "logits" in finding.fix


@pytest.mark.parametrize("name", ["log_softmax_nll", "bce_sigmoid_and_soft_targets"])
def test_silent_on_healthy_losses(name: str, tmp_path: Path) -> None:
    run = record(name, tmp_path)
    assert len(run.loss_calls) >= 5   # the calls were seen, and judged healthy
    assert rule.check(run) == []


def test_no_near_miss_of_the_family_raises_it(tmp_path: Path) -> None:
    for name in NEAR_MISSES:
        assert RULE not in [f.rule for f in alarms(record(name, tmp_path / name))], name


def test_thresholds_on_statistics() -> None:
    calls = pd.DataFrame({
        "fn": ["cross_entropy", "cross_entropy", "cross_entropy", "nll_loss", "nll_loss", "cross_entropy"],
        "pred_min": [0.0, -2.0, 0.01, 0.0, -3.0, 0.2],
        "pred_max": [1.0, 3.0, 0.9, 0.9, 0.0, 0.8],
        "row_sum_err": [1e-6, 5.0, 0.05, 4.0, 9.0, 0.0],
        "classes": [10, 10, 10, 10, 10, 1],
    })
    # softmax output / logits / in [0, 1] but rows not summing to 1 / NLL of probabilities /
    # NLL of log-probabilities / a single class (a sum of 1 says nothing)
    assert rule.probability_like(calls).tolist() == [True, False, False, True, False, False]
