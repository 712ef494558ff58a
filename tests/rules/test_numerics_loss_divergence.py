"""loss-divergence: fires when the training loss climbs back up and stays up (labels going
bad, an LR warm-up that never ends, the reference explosion), silent on isolated spikes,
on a converged run's floor and on healthy runs."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from diagnose.rules._base import Severity
from diagnose.rules.numerics import loss_divergence
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
    assert finding.rule == "loss-divergence" and finding.severity >= Severity.WARNING
    return finding


def _steps(loss: np.ndarray, lr: float | np.ndarray = 1e-3) -> RunTables:
    steps = pd.DataFrame({"loss": loss, "micro_batches": 1, "lr_0": lr, "skipped": False},
                         index=pd.Index(range(len(loss)), name="step"))
    return RunTables(steps=steps)


def test_fires_when_the_labels_go_bad(fault) -> None:
    finding = _only(loss_divergence.check(fault("label_drift")))      # wrong labels from step 60
    ev = finding.evidence
    assert 40 <= ev["best_step"] <= 80 and 60 <= ev["onset_step"] <= 120
    assert ev["peak_loss"] > 5 * ev["loss_best"]
    assert finding.severity == Severity.ERROR and ev["loss_end"] >= ev["loss_start"]   # all progress lost
    assert finding.steps == (ev["onset_step"], ev["end_step"])


def test_fires_when_the_lr_keeps_rising(fault) -> None:
    finding = _only(loss_divergence.check(fault("lr_ramp_too_high")))
    ev = finding.evidence
    assert ev["lr_at_onset"][0] > 3 * ev["lr_at_best"][0]
    assert "learning rate had grown" in finding.explanation


def test_fires_on_sgd_overshooting(fault) -> None:
    finding = _only(loss_divergence.check(fault("sgd_lr_too_high")))   # LR x20 at step 40
    ev = finding.evidence
    assert ev["best_step"] == 40 and 40 < ev["onset_step"] <= 50 and ev["end_step"] == 63
    assert ev["grad_norm_growth"] > 1000 and "gradient-explosion" in finding.explanation


def test_fires_on_the_reference_explosion_before_its_loss_turns_nan(fault) -> None:
    run = fault("explosion_reference")
    finding = _only(loss_divergence.check(run))
    ev = finding.evidence
    finite = run.steps["loss"].notna()
    assert ev["steps_with_loss"] == int(finite.sum())                   # judged on the finite part
    assert ev["onset_step"] < (run.steps.index[~finite].min() if (~finite).any() else len(run.steps))
    assert ev["peak_loss"] > 1e3 * ev["loss_best"]
    assert finding.severity == Severity.ERROR


@pytest.mark.parametrize("name", ["corrupt_batches", "mislabeled_batch_clipped"])
def test_silent_on_isolated_spikes(fault, name: str) -> None:
    assert loss_divergence.check(fault(name)) == []


def test_silent_on_a_converged_floor_that_rises_tenfold() -> None:
    loss = np.concatenate([np.geomspace(1.4, 1e-7, 200), np.geomspace(1e-7, 1e-6, 200)])
    assert loss_divergence.check(_steps(loss)) == []


def test_a_bump_shorter_than_the_sustained_window_is_silent() -> None:
    rng = np.random.default_rng(0)
    loss = np.geomspace(2.0, 0.2, 300) * np.exp(rng.normal(0, 0.05, 300))
    loss[150:158] += 1.0                                             # 8 steps up, then back
    assert loss_divergence.check(_steps(loss)) == []
    loss[150:200] += 1.0                                             # 50 steps up: sustained
    [finding] = loss_divergence.check(_steps(loss))
    assert 150 <= finding.evidence["onset_step"] <= 160 and finding.severity == Severity.WARNING
    assert "came back down" in finding.title and finding.evidence["episodes"] == [[finding.steps[0], finding.steps[1]]]


def test_silent_on_healthy(healthy_run: Run) -> None:
    assert loss_divergence.check(healthy_run.first) == []


def _range_test_then_train(run_dir, *, restore: bool):
    """An LR range test (LR x1.3 a step until the loss is 4x its best), then training at a
    modest LR: from the restored starting weights, or (the control) from where the test
    left the weights. Pretrained weights are loaded before the Monitor sees any step."""
    import copy

    import torch

    from diagnose import Monitor

    torch.manual_seed(0)
    x = torch.randn(256, 8)
    y = x @ torch.randn(8, 1)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 1))
    opt = torch.optim.SGD(model.parameters(), lr=1e-4)
    with Monitor(run_dir, model=model, optimizer=opt):
        model.load_state_dict(copy.deepcopy(model.state_dict()))  # "pretrained": not a restore
        start = copy.deepcopy(model.state_dict())
        lr, best = 1e-4, float("inf")
        for i in range(80):
            for group in opt.param_groups:
                group["lr"] = lr
            loss = torch.nn.functional.mse_loss(model(x[:32]), y[:32])
            opt.zero_grad()
            loss.backward()
            opt.step()
            best, lr = min(best, loss.item()), lr * 1.3
            if i > 10 and loss.item() > 4 * best:
                break
        if restore:
            model.load_state_dict(start)
        for group in opt.param_groups:
            group["lr"] = 1e-3
        for _ in range(60):
            loss = torch.nn.functional.mse_loss(model(x[:32]), y[:32])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return read_run(run_dir).first, i


def test_a_rise_thrown_away_by_a_restore_is_judged_apart(tmp_path) -> None:
    """model.load_state_dict after training began is a rollback (`restore_steps`): the
    range test's blow-up and the restart from the initial weights are not a divergence; the
    same loop that trains on from the blown-up weights still is one."""
    from diagnose.rules.numerics import _signals

    tables, tested = _range_test_then_train(tmp_path / "restored", restore=True)
    assert _signals.restore_steps(tables.calls) == [tested]  # the pretrained load is not one
    assert all(f.severity < Severity.WARNING for f in loss_divergence.check(tables))
    control, _ = _range_test_then_train(tmp_path / "control", restore=False)
    assert _signals.restore_steps(control.calls) == []
    assert any(f.severity >= Severity.WARNING for f in loss_divergence.check(control))
