"""What field-test round 4 (docs/rules.md "Field test") changed, on tiny Monitor loops: the
zero-code scripts of tests/scripts show each case end to end; these pin each fix down, with
the healthy loops next to it that must stay silent.

- missing-zero-grad: `head.zero_grad()` clears only the head; one optimizer over a backbone
  and a head is cleared when both models (or the optimizer) are;
- params-not-updated: a loss cut from the graph (`loss.detach().requires_grad_()`) reaches
  no parameter: backward and step run, nothing ever gets a gradient, nothing changes;
- scheduler-step-frequency: `LambdaLR(lambda epoch: 0.9 ** epoch)` stepped every batch
  decays the LR away like an ExponentialLR does; a per-batch warm-up + linear decay to 0
  stays silent;
- checkpoint-incomplete: a save into an `io.BytesIO` (a copy of the weights) and a save
  before the first optimizer step (the initial weights) are no resume checkpoints;
- zero-grad-before-step: `zero_grad -> forward -> step -> backward` (the step moved before
  backward in a refactor) is named as such, with the fix for that order;
- loss-divergence: a loss that never fell before it rose, and then stopped rising (a MoCo
  queue filling with real negatives), is info; still rising, or after progress, it warns.
"""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from diagnose import Monitor
from diagnose.rules._base import Severity
from diagnose.rules.data import checkpoint_incomplete
from diagnose.rules.loop import (
    missing_zero_grad,
    params_not_updated,
    scheduler_step_frequency,
    zero_grad_before_step,
)
from diagnose.rules.numerics import loss_divergence
from diagnose.rundir.reader import read_run
from diagnose.rundir.tables import RunTables

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _data(n: int = 512):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(n, 8, generator=gen)
    return x, x[:, :3].sum(1, keepdim=True)


# ---- missing-zero-grad: a model's zero_grad clears that model only -----------------------------

def _backbone_head_loop(run_dir: Path, clear: str) -> Path:
    torch.manual_seed(0)
    x, y = _data()
    backbone, head = nn.Sequential(nn.Linear(8, 16), nn.ReLU()), nn.Linear(16, 1)
    opt = torch.optim.SGD(list(backbone.parameters()) + list(head.parameters()), lr=1e-3)
    with Monitor(run_dir, models=[backbone, head], optimizer=opt):
        for step in range(12):
            if clear == "opt":
                opt.zero_grad()
            elif clear == "both":
                backbone.zero_grad()
                head.zero_grad()
            else:
                head.zero_grad()
            F.mse_loss(head(backbone(x[step * 32:(step + 1) * 32])), y[step * 32:(step + 1) * 32]).backward()
            opt.step()
    return run_dir


def test_missing_zero_grad_fires_when_only_one_of_the_optimizers_models_is_cleared(tmp_path: Path) -> None:
    [finding] = missing_zero_grad.check(read_run(_backbone_head_loop(tmp_path / "run", "head")).first)
    assert finding.severity == Severity.ERROR
    ev = finding.evidence
    assert (ev["uncleared_steps"], ev["steps_checked"]) == (11, 11)
    assert ev["models_cleared"] == ["model1"] and ev["models_held"] == ["model0", "model1"]
    assert "model1.zero_grad() ran between them" in finding.explanation
    assert "opt0.zero_grad() instead" in finding.explanation


@pytest.mark.parametrize("clear", ["opt", "both"])
def test_missing_zero_grad_silent_when_every_holder_or_the_optimizer_clears(clear: str, tmp_path: Path) -> None:
    assert missing_zero_grad.check(read_run(_backbone_head_loop(tmp_path / "run", clear)).first) == []


# ---- params-not-updated: a loss that reaches no parameter -------------------------------------

def _detached_loss_loop(run_dir: Path, detach: bool) -> Path:
    torch.manual_seed(0)
    x, y = _data()
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 1))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    with Monitor(run_dir, model=model, optimizer=opt, param_every=5):
        for step in range(12):
            loss = F.mse_loss(model(x[step * 32:(step + 1) * 32]), y[step * 32:(step + 1) * 32])
            if detach:
                loss = loss.detach().requires_grad_()
            opt.zero_grad()
            loss.backward()
            opt.step()
    return run_dir


def test_params_not_updated_fires_on_a_loss_cut_from_the_graph(tmp_path: Path) -> None:
    findings = params_not_updated.check(read_run(_detached_loss_loop(tmp_path / "run", True)).first)
    [finding] = findings
    assert finding.severity == Severity.ERROR
    ev = finding.evidence
    assert ev["reason"] == "no gradient reached any parameter"
    assert (ev["backward_calls"], ev["optimizer_steps"], ev["parameter_count"]) == (12, 12, 4)
    assert "loss.detach().requires_grad_()" in finding.fix


def test_params_not_updated_silent_on_the_same_loop_with_its_graph(tmp_path: Path) -> None:
    assert params_not_updated.check(read_run(_detached_loss_loop(tmp_path / "run", False)).first) == []


# ---- scheduler-step-frequency: LambdaLR judged by the LR that ran ------------------------------

def _lambda_loop(run_dir: Path, lr_lambda, steps: int = 120) -> Path:
    torch.manual_seed(0)
    x, y = _data()
    model = nn.Linear(8, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda)
    with Monitor(run_dir, model=model, optimizer=opt, scheduler=sched):
        for step in range(steps):
            i = step % 16
            opt.zero_grad()
            F.mse_loss(model(x[i * 32:(i + 1) * 32]), y[i * 32:(i + 1) * 32]).backward()
            opt.step()
            sched.step()
    return run_dir


def test_scheduler_step_frequency_fires_on_a_per_epoch_lambda_stepped_per_batch(tmp_path: Path) -> None:
    [finding] = scheduler_step_frequency.check(read_run(_lambda_loop(tmp_path / "run", lambda e: 0.8 ** e)).first)
    ev = finding.evidence
    assert ev["scheduler_class"] == "LambdaLR" and ev["decayed_from_step"] == 62  # 0.8 ** 62 < 1e-6
    assert "counts scheduler.step() calls" in finding.explanation


def test_scheduler_step_frequency_silent_on_a_per_batch_warmup_and_linear_decay_to_zero(tmp_path: Path) -> None:
    def warmup_then_linear(step: int, total: int = 120, warm: int = 10) -> float:
        return step / warm if step < warm else max(0.0, (total - step) / (total - warm))

    assert scheduler_step_frequency.check(read_run(_lambda_loop(tmp_path / "run", warmup_then_linear)).first) == []


# ---- checkpoint-incomplete: copies in memory and initial weights are no checkpoints ------------

def _save_loop(run_dir: Path, where: Path, save_at: int, target: str) -> Path:
    torch.manual_seed(0)
    x, y = _data()
    model = nn.Linear(8, 1)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)

    def save() -> None:
        torch.save(model.state_dict(), io.BytesIO() if target == "memory" else where / "weights.pt")

    with Monitor(run_dir, model=model, optimizer=opt):
        for step in range(12):
            if step == save_at:
                save()
            opt.zero_grad()
            F.mse_loss(model(x[step * 32:(step + 1) * 32]), y[step * 32:(step + 1) * 32]).backward()
            opt.step()
    return run_dir


@pytest.mark.parametrize("save_at, target", [(6, "memory"), (0, "file")])
def test_checkpoint_incomplete_silent_on_a_copy_in_memory_and_on_initial_weights(save_at: int, target: str,
                                                                                   tmp_path: Path) -> None:
    run = read_run(_save_loop(tmp_path / "run", tmp_path, save_at, target)).first
    assert len(run.events_of("checkpoint")) == 1
    assert checkpoint_incomplete.check(run) == []


def test_checkpoint_incomplete_still_fires_on_the_same_file_saved_mid_run(tmp_path: Path) -> None:
    [finding] = checkpoint_incomplete.check(read_run(_save_loop(tmp_path / "run", tmp_path, 6, "file")).first)
    assert finding.evidence["first_step"] == 5


# ---- loss-divergence: a loss that rose from the first steps and settled -----------------------

def _loss_steps(loss: np.ndarray) -> RunTables:
    steps = pd.DataFrame({"loss": loss, "micro_batches": 1, "lr_0": 0.05, "skipped": False},
                         index=pd.Index(range(len(loss)), name="step"))
    return RunTables(steps=steps)


def _queue_filling(n: int = 80, keeps_rising: bool = False) -> np.ndarray:
    """MoCo's shape: 2.1 rising to ~4 over the first 9 steps (the queue fills with real
    negatives), then flat, or (a sign error) still rising to the end."""
    rng = np.random.default_rng(0)
    t = np.arange(n, dtype=float)
    base = 2.1 + 1.9 * np.minimum(t / 9, 1.0) + (0.03 * np.maximum(t - 9, 0) if keeps_rising else 0.0)
    return base + 0.04 * rng.standard_normal(n)


def test_loss_divergence_is_info_for_a_loss_that_rose_from_the_start_and_settled() -> None:
    [finding] = loss_divergence.check(_loss_steps(_queue_filling()))
    assert finding.severity == Severity.INFO
    assert finding.evidence["shape"] == "rose from the start, then settled"
    assert "MoCo" in finding.explanation and "maximize=True" in finding.explanation


def test_loss_divergence_still_warns_when_the_loss_keeps_rising_from_the_start() -> None:
    [finding] = loss_divergence.check(_loss_steps(_queue_filling(keeps_rising=True)))
    assert finding.severity >= Severity.WARNING and "shape" not in finding.evidence


def test_loss_divergence_still_warns_when_the_loss_fell_before_it_rose_and_settled() -> None:
    fell_then_rose = np.concatenate([np.linspace(4.0, 2.0, 30), np.full(50, 3.5)])
    [finding] = loss_divergence.check(_loss_steps(fell_then_rose + 0.02 * np.random.default_rng(1).standard_normal(80)))
    assert finding.severity >= Severity.WARNING and finding.evidence["best_step"] >= 25


# ---- zero-grad-before-step: the step moved before backward() ------------------------------------

def _order_loop(run_dir: Path, order: str) -> Path:
    torch.manual_seed(0)
    x, y = _data()
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 1))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    with Monitor(run_dir, model=model, optimizer=opt):
        for step in range(12):
            batch = slice(step * 32, (step + 1) * 32)
            if order == "step first":          # zero_grad -> forward -> step -> backward
                opt.zero_grad()
                loss = F.mse_loss(model(x[batch]), y[batch])
                opt.step()
                loss.backward()
            else:                              # forward -> backward -> zero_grad -> step
                F.mse_loss(model(x[batch]), y[batch]).backward()
                opt.zero_grad()
                opt.step()
    return run_dir


@pytest.mark.parametrize("order, expected", [("step first", "step before backward"),
                                             ("clear between", "zero_grad between backward and step")])
def test_zero_grad_before_step_says_which_order_ran(order: str, expected: str, tmp_path: Path) -> None:
    [finding] = zero_grad_before_step.check(read_run(_order_loop(tmp_path / "run", order)).first)
    assert finding.evidence["order"] == expected
    assert finding.title.startswith("opt0.step() runs before backward()") == (order == "step first")
    assert ("loss.backward()\n    optimizer.step()" in finding.fix) == (order == "step first")


def test_missing_zero_grad_title_names_the_model_left_uncleared(tmp_path: Path) -> None:
    [finding] = missing_zero_grad.check(read_run(_backbone_head_loop(tmp_path / "run", "head")).first)
    assert finding.title.startswith("Gradients of model0 are not cleared before 11 of 11 of opt0's")
    assert "only model1.zero_grad() runs, but opt0 also steps model0" in finding.title
