"""What field-test round 3 (docs/rules.md "Field test") changed, on tiny Monitor loops: the
zero-code scripts of tests/scripts show each case end to end; these pin each fix down and
the healthy loops next to it that must stay silent.

- train-mode-not-restored: a baseline validation before the loop that leaves the model in
  eval mode for the *whole* run (no `model.train()` anywhere) is the bug; a model put in
  eval mode before its first step on purpose (no evaluation before it) stays a choice;
- nonfinite-loss: says how the loss got there: a divergence (the last finite losses >= 100x
  the start: a learning rate too high, which no other rule named when it overflowed within
  a few steps) or a sudden jump from an unremarkable loss (an operation at a singular point).
- evaluation forwards (all loop rules): a chain of no_grad forwards of different models
  that ends in a training forward (reentrant `checkpoint_sequential`'s first segments) is
  part of the training step, not a validation in train mode.
- eval-without-eval-mode: `F.dropout(h, p)` without `training=` in a model's forward keeps
  dropping units after `model.eval()` (recorded as `eval_dropout` events); `nn.Dropout` and
  an explicit `training=True` (Monte Carlo dropout) stay silent.
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from diagnose import Monitor
from diagnose.rules._base import Severity
from diagnose.rules.loop import eval_without_eval_mode, train_mode_not_restored
from diagnose.rules.loop._callindex import CallIndex
from diagnose.rules.numerics import nonfinite_loss
from diagnose.rundir.reader import read_run

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _data(n: int = 256):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(n, 8, generator=gen)
    return x, (x[:, 0] - x[:, 1] > 0).long()


def _norm_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Dropout(0.2), nn.Linear(16, 2))


# ---- train-mode-not-restored: a sanity validation before a loop that never calls train() ------

def _eval_mode_loop(run_dir: Path, sanity_validation: bool) -> None:
    x, y = _data()
    model = _norm_net()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)

    def validate():
        model.eval()
        with torch.no_grad():
            return F.cross_entropy(model(x[:64]), y[:64]).item()

    with Monitor(run_dir, model=model, optimizer=opt):
        if sanity_validation:
            validate()                  # leaves the model in eval mode: never undone
        else:
            model.eval()                # on purpose: BatchNorm and Dropout frozen for the run
        for epoch in range(2):
            for i in range(0, 256, 32):
                opt.zero_grad()
                F.cross_entropy(model(x[i:i + 32]), y[i:i + 32]).backward()
                opt.step()
            validate()


def test_sanity_validation_before_a_loop_that_never_calls_train(tmp_path: Path) -> None:
    _eval_mode_loop(tmp_path / "run", sanity_validation=True)
    [finding] = train_mode_not_restored.check(read_run(tmp_path / "run").first)
    assert finding.severity == Severity.WARNING
    ev = finding.evidence
    assert (ev["first_step"], ev["evaluation_step"], ev["steps_in_eval_mode"], ev["training_steps"]) == (0, 0, 16, 16)
    assert "model.train() was never called" in finding.explanation


def test_eval_mode_from_the_first_step_with_validations_after_is_a_choice(tmp_path: Path) -> None:
    _eval_mode_loop(tmp_path / "run", sanity_validation=False)
    assert train_mode_not_restored.check(read_run(tmp_path / "run").first) == []


# ---- nonfinite-loss: how the loss became non-finite ---------------------------------------------

def _regression_loop(run_dir: Path, lr: float, log_zero_at: int | None = None) -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(512, 6, generator=gen) * torch.tensor([1.0, 1.0, 1.0, 3.0, 3.0, 5.0])
    y = x @ torch.randn(6, 1, generator=gen)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.Linear(16, 1))
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    with Monitor(run_dir, model=model, optimizer=opt):
        for step in range(24):
            i = (step * 32) % 512
            err = (model(x[i:i + 32]) - y[i:i + 32]) ** 2
            loss = err.mean()
            if step == log_zero_at:   # a hand-written loss meets log(0): 0 * -inf
                loss = loss + (0 * torch.log(torch.zeros(1))).sum()
            opt.zero_grad()
            loss.backward()
            opt.step()


def test_a_learning_rate_too_high_is_named_when_the_loss_overflows(tmp_path: Path) -> None:
    _regression_loop(tmp_path / "run", lr=0.1)
    [finding] = nonfinite_loss.check(read_run(tmp_path / "run").first)
    lead = finding.evidence["lead_up"]
    assert lead["kind"] == "divergence" and lead["growth"] >= 100
    assert lead["onset_step"] < finding.evidence["first_step"] and lead["grad_norm_peak"] > 100 * lead["grad_norm_before"]
    assert "learning rate too high" in finding.explanation and "corrupted" not in finding.explanation
    assert f"from step {lead['onset_step']}" in finding.title


def test_a_sudden_nan_from_a_sound_loss_is_not_called_a_divergence(tmp_path: Path) -> None:
    _regression_loop(tmp_path / "run", lr=0.002, log_zero_at=12)
    [finding] = nonfinite_loss.check(read_run(tmp_path / "run").first)
    assert finding.evidence["first_step"] == 12
    lead = finding.evidence["lead_up"]
    assert lead["kind"] == "sudden" and lead["last_finite_step"] == 11
    assert "singular point" in finding.explanation and "learning rate too high" not in finding.explanation


# ---- evaluation forwards: a chain of no_grad forwards that feeds a training forward ------------

def _checkpointed_layers(run_dir: Path, validate_in_train_mode: bool) -> None:
    """Reentrant `checkpoint_sequential`: its first segments run each layer under no_grad (in
    train mode) and recompute them in backward; here each layer is a watched model."""
    from torch.utils.checkpoint import checkpoint_sequential

    x, y = _data()
    torch.manual_seed(0)
    layers = [nn.Linear(8, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 16), nn.BatchNorm1d(16),
              nn.ReLU(), nn.Linear(16, 2)]
    seq = nn.Sequential(*layers)
    models = [m for m in layers if any(True for _ in m.parameters())]
    opt = torch.optim.Adam(seq.parameters(), lr=1e-3)
    with Monitor(run_dir, models=models, optimizer=opt):
        for epoch in range(2):
            seq.train()
            for i in range(0, 256, 32):
                out = checkpoint_sequential(seq, 3, x[i:i + 32].requires_grad_(), use_reentrant=True)
                opt.zero_grad()
                F.cross_entropy(out, y[i:i + 32]).backward()
                opt.step()
            if not validate_in_train_mode:
                seq.eval()
            with torch.no_grad():
                seq(x[:64])


def test_a_chain_of_no_grad_forwards_feeding_training_is_not_evaluation(tmp_path: Path) -> None:
    _checkpointed_layers(tmp_path / "run", validate_in_train_mode=False)
    tables = read_run(tmp_path / "run").first
    calls = CallIndex.of(tables)
    chained = calls.forward & calls.no_grad & calls.train_mode
    assert chained.sum() >= 16 * 3 and (calls.feeds_training() == chained).all()
    assert eval_without_eval_mode.check(tables) == []


def test_a_validation_in_train_mode_is_still_found_beside_the_chains(tmp_path: Path) -> None:
    _checkpointed_layers(tmp_path / "run", validate_in_train_mode=True)
    findings = {f.evidence["model"]: f for f in eval_without_eval_mode.check(read_run(tmp_path / "run").first)}
    # both validations, in every layer
    assert {m: (f.evidence["first_step"], f.evidence["evaluations"]) for m, f in findings.items()} == \
        {f"model{k}": (7, 2) for k in range(5)}
    assert findings["model1"].severity == findings["model3"].severity == Severity.WARNING  # BatchNorm


# ---- eval-without-eval-mode: a functional dropout that ignores model.eval() -------------------

class _FunctionalDropoutNet(nn.Module):
    def __init__(self, style: str):
        super().__init__()
        self.fc1, self.fc2, self.style = nn.Linear(8, 32), nn.Linear(32, 2), style
        self.drop = nn.Dropout(0.3)

    def forward(self, x):
        h = F.relu(self.fc1(x))
        if self.style == "default":
            h = F.dropout(h, 0.3)                     # the bug: training defaults to True
        elif self.style == "mc":
            h = F.dropout(h, p=0.3, training=True)    # Monte Carlo dropout, on purpose
        elif self.style == "mode":
            h = F.dropout(h, 0.3, training=self.training)
        else:
            h = self.drop(h)
        return self.fc2(h)


def _dropout_loop(run_dir: Path, style: str) -> None:
    x, y = _data()
    torch.manual_seed(0)
    model = _FunctionalDropoutNet(style)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    with Monitor(run_dir, model=model, optimizer=opt):
        for epoch in range(3):
            model.train()
            for i in range(0, 256, 64):
                opt.zero_grad()
                F.cross_entropy(model(x[i:i + 64]), y[i:i + 64]).backward()
                opt.step()
            model.eval()
            with torch.no_grad():
                model(x[:64])


def test_functional_dropout_without_training_argument_is_found(tmp_path: Path) -> None:
    _dropout_loop(tmp_path / "run", "default")
    [finding] = eval_without_eval_mode.check(read_run(tmp_path / "run").first)
    assert finding.severity == Severity.WARNING and finding.evidence["kind"] == "functional-dropout"
    ev = finding.evidence
    assert (ev["first_step"], ev["steps_seen"], ev["functions"], ev["p"]) == (3, 3, ["dropout"], [0.3])
    assert ev["forward_token"] == "model0.forward[EN]" and "training=self.training" in finding.fix


@pytest.mark.parametrize("style", ["mc", "mode", "module"])
def test_dropout_that_follows_the_mode_or_is_on_on_purpose_is_silent(style: str, tmp_path: Path) -> None:
    _dropout_loop(tmp_path / "run", style)
    tables = read_run(tmp_path / "run").first
    assert eval_without_eval_mode.check(tables) == []
    assert not (tables.events["kind"] == "eval_dropout").any()
