"""gradient-spike: fires on isolated outliers of the pre-clip gradient norm (corrupt
batches; a mislabelled batch hidden by clipping) with the dominating layer, silent on a
sustained climb (that is an explosion) and on healthy runs, batch size 2 included."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from diagnose.rules._base import Severity
from diagnose.rules.numerics import gradient_spike
from diagnose.rundir.reader import read_run
from diagnose.rundir.tables import Run, RunTables
from tests.harness.faults_numerics import SPIKE_STEPS, recorded


@pytest.fixture(scope="module")
def fault(tmp_path_factory: pytest.TempPathFactory):
    base = tmp_path_factory.getbasetemp()
    return lambda name, seed=0: read_run(recorded(name, base, seed)).first


def _only(findings):
    assert len(findings) == 1, findings
    finding = findings[0]
    assert finding.rule == "gradient-spike" and finding.severity == Severity.WARNING
    return finding


def _largest_share(run: RunTables, step: int) -> str:
    row = run.grad_norms.loc[step].astype(float)
    return run.params.at[int((row ** 2).idxmax()), "name"]


def test_fires_on_corrupt_batches(fault) -> None:
    run = fault("corrupt_batches")
    finding = _only(gradient_spike.check(run))
    spikes = finding.evidence["spikes"]
    assert [s["step"] for s in spikes] == list(SPIKE_STEPS) and finding.steps == SPIKE_STEPS
    for spike in spikes:
        assert spike["ratio"] >= 10 and spike["z"] >= 6 and spike["norm"] > 10 * spike["baseline"]
        assert spike["parameter"] == _largest_share(run, spike["step"])
        assert spike["layer"] == spike["parameter"].rsplit(".", 1)[0]
        assert spike["loss"] > 5 * run.steps["loss"].median()
    assert finding.evidence["source"] == "grad_norm"


def test_fires_on_the_pre_clip_norm_when_clipping_hides_the_spike(fault) -> None:
    run = fault("mislabeled_batch_clipped")
    step = SPIKE_STEPS[0]
    assert run.steps.at[step, "grad_norm"] <= 1.0 + 1e-3
    finding = _only(gradient_spike.check(run))
    [spike] = finding.evidence["spikes"]
    assert spike["step"] == step and spike["ratio"] >= 50
    assert spike["norm"] == pytest.approx(run.steps.at[step, "clip_norm"], rel=1e-4)
    assert finding.evidence["source"] == "clip_norm" and spike["parameter"] == _largest_share(run, step)
    assert f"at step {step}" in finding.title


def test_silent_on_a_sustained_climb(fault) -> None:
    assert gradient_spike.check(fault("sgd_lr_too_high")) == []


def test_noisy_small_values_on_a_converged_floor_are_not_spikes() -> None:
    rng = np.random.default_rng(0)
    norms = np.concatenate([np.full(50, 1.0), 1e-6 * np.exp(rng.normal(0, 0.3, 200))])
    norms[150] = 2e-3                                   # 2000x its neighbours, still far below 1.0
    steps = pd.DataFrame({"grad_norm": norms, "skipped": False}, index=pd.Index(range(250), name="step"))
    assert gradient_spike.check(RunTables(steps=steps)) == []
    norms[150] = 20.0                                   # above anything normal in this run: a spike
    [finding] = gradient_spike.check(RunTables(steps=steps.assign(grad_norm=norms)))
    assert [s["step"] for s in finding.evidence["spikes"]] == [150]


def test_silent_on_healthy(healthy_run: Run) -> None:
    assert gradient_spike.check(healthy_run.first) == []
