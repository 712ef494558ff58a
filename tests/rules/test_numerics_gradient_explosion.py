"""gradient-explosion: fires on a sustained rise of the pre-clip gradient norm by orders of
magnitude (SGD with a too-high LR, a clipped RNN, the reference injection), silent on
isolated spikes, on a converged run's noisy floor and on healthy runs."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from diagnose.rules._base import Severity
from diagnose.rules.numerics import gradient_explosion
from diagnose.rundir.reader import read_run
from diagnose.rundir.tables import Run, RunTables
from tests.harness.faults_numerics import LR_JUMP_STEP, recorded


@pytest.fixture(scope="module")
def fault(tmp_path_factory: pytest.TempPathFactory):
    base = tmp_path_factory.getbasetemp()
    return lambda name, seed=0: read_run(recorded(name, base, seed)).first


def _only(findings):
    assert len(findings) == 1, findings
    finding = findings[0]
    assert finding.rule == "gradient-explosion" and finding.severity >= Severity.WARNING
    return finding


def test_fires_on_sgd_with_a_learning_rate_too_high(fault) -> None:
    run = fault("sgd_lr_too_high")
    finding = _only(gradient_explosion.check(run))
    ev = finding.evidence
    assert finding.severity == Severity.ERROR
    assert ev["source"] == "grad_norm"                              # no clipping in this loop
    assert LR_JUMP_STEP < ev["onset_step"] <= LR_JUMP_STEP + 15
    assert ev["growth_factor"] >= 1000 and ev["peak_step"] == run.steps.index[-1]
    assert ev["loss_peak"] > 1e3 * ev["loss_best_before"]
    assert ev["top_parameters_at_peak"][0]["parameter"] == "0.weight"
    assert ev["lr_at_onset"] == [pytest.approx(1.15)]


def test_fires_on_the_pre_clip_norm_of_a_clipped_rnn(fault) -> None:
    run = fault("rnn_explosion_clipped")
    assert run.steps["grad_norm"].max() <= 1.0 + 1e-3               # clipping hides it from grad_norm
    finding = _only(gradient_explosion.check(run))
    ev = finding.evidence
    assert ev["source"] == "clip_norm" and ev["clip_max"] == 1.0
    assert ev["onset_step"] >= 10 and ev["growth_factor"] >= 100     # the LR is raised at step 10
    assert ev["top_parameters_at_peak"][0]["parameter"] == "rnn.weight_hh_l0"
    assert "before clipping" in finding.title


def test_fires_on_the_reference_injection(fault) -> None:
    finding = _only(gradient_explosion.check(fault("explosion_reference")))
    ev = finding.evidence
    assert ev["source"] == "clip_norm" and ev["onset_step"] <= 15
    assert ev["growth_factor"] >= 10 and ev["loss_peak"] > 10 * ev["loss_start"]


@pytest.mark.parametrize("name", ["corrupt_batches", "mislabeled_batch_clipped", "label_drift"])
def test_silent_on_spikes_and_on_gradients_returning_to_their_start(fault, name: str) -> None:
    assert gradient_explosion.check(fault(name)) == []


def test_silent_on_a_converged_floor_that_rises_a_hundredfold() -> None:
    # Norms fall from 1 to 1e-6 (loss to 1e-7), then drift up to 1e-4 with the loss at 1e-6:
    # 100x above the low, but nothing next to where the run started.
    steps_n = 400
    norms = np.concatenate([np.geomspace(1.0, 1e-6, 200), np.geomspace(1e-6, 1e-4, 200)])
    loss = np.concatenate([np.geomspace(1.4, 1e-7, 200), np.geomspace(1e-7, 1e-6, 200)])
    steps = pd.DataFrame({"grad_norm": norms, "loss": loss, "micro_batches": 1, "skipped": False},
                         index=pd.Index(range(steps_n), name="step"))
    assert gradient_explosion.check(RunTables(steps=steps)) == []


def test_silent_on_healthy(healthy_run: Run) -> None:
    assert gradient_explosion.check(healthy_run.first) == []
