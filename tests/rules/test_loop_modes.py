"""Loop rules about modes around evaluation: eval-without-eval-mode, eval-with-grad,
train-mode-not-restored. Faulty loops come from tests/harness/faults_loop.py (hand-written
loops and reference-loop injections), recorded once per session."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from diagnose.rules._base import Severity
from diagnose.rules.loop import eval_with_grad, eval_without_eval_mode, train_mode_not_restored
from diagnose.rundir.tables import Run
from tests.harness.faults_loop import EPOCHS, STEPS_PER_EPOCH, fault_tables

RULES = [eval_without_eval_mode, eval_with_grad, train_mode_not_restored]
EPOCH_ENDS = [[e * STEPS_PER_EPOCH - 1] * 2 for e in range(1, EPOCHS + 1)]

pytestmark = [pytest.mark.filterwarnings("ignore:Detected call of `lr_scheduler.step\\(\\)`:UserWarning"),
              pytest.mark.usefixtures("one_torch_thread_module")]  # tests/conftest.py: one torch thread


@pytest.mark.parametrize("rule", RULES, ids=lambda m: m.NAME)
def test_silent_on_healthy(rule, healthy_run: Run) -> None:
    assert [f.title for f in rule.check(healthy_run.first)] == []


# ---- eval-without-eval-mode --------------------------------------------------------------------


@pytest.mark.parametrize("name, phase, batchnorm", [("val_phase_without_eval", "val", True),
                                                    ("no_grad_eval_without_phases", "train", True),
                                                    ("linear_model_eval_in_train_mode", "val", False)])
def test_fires_on_eval_without_eval_mode(name: str, phase: str, batchnorm: bool, fault_root: Path) -> None:
    [finding] = eval_without_eval_mode.check(fault_tables(name, fault_root))
    assert finding.rule == "eval-without-eval-mode"
    # a Linear-only model without declared dropout computes the same in both modes: info
    assert finding.severity == (Severity.WARNING if batchnorm else Severity.INFO)
    ev = finding.evidence
    assert (ev["step"], ev["phase"], ev["forward_token"]) == (STEPS_PER_EPOCH - 1, phase, "model0.forward[TN]")
    assert ev["eval_forwards_in_train_mode"] == ev["eval_forwards"] == 3 * EPOCHS  # 3 validation batches
    assert ev["evaluations"] == EPOCHS and ev["step_ranges"] == EPOCH_ENDS
    assert "model0.forward[TN]*3" in ev["sequence"] and "model0.eval" not in ev["sequence"]
    assert ev["mode_dependent_modules"] == (["bn (BatchNorm1d)"] if batchnorm else [])
    assert ev["configured_dropout"] == {}
    assert ("bn (BatchNorm1d)" in finding.explanation) == batchnorm
    assert batchnorm or "Dropout owns no parameters" in finding.explanation


@pytest.mark.parametrize("task, modules, dropout", [("images", "BatchNorm2d", {"dropout": 0.1}),
                                                    ("chars", None, {"dropout": 0.1})])
def test_fires_on_eval_without_eval_mode_in_the_reference_loop(task: str, modules, dropout,
                                                               fault_root: Path) -> None:
    name = "ref_eval_without_eval_mode" + ("_chars" if task == "chars" else "")
    tables = fault_tables(name, fault_root)
    steps = tables.steps
    first_step = int(steps.index[steps["epoch"] == steps["epoch"].min()].max())  # end of epoch 0
    [finding] = eval_without_eval_mode.check(tables)
    assert finding.severity == Severity.WARNING and finding.evidence["first_step"] == first_step
    listed = " ".join(finding.evidence["mode_dependent_modules"])
    assert (modules in listed) if modules else listed == ""
    assert finding.evidence["configured_dropout"] == dropout  # the chars model's only sign of Dropout
    if not modules:
        assert "config declares dropout (dropout=0.1)" in finding.explanation


def test_forwards_inside_a_training_step_are_not_evaluation(fault_root: Path) -> None:
    """A frozen teacher (eval mode, autograd on) and a no_grad pseudo-label forward in train
    mode, both before the optimizer step: choices, not evaluation."""
    tables = fault_tables("teacher_and_pseudo_labels", fault_root)
    tokens = set(tables.calls["token"].astype(str))
    assert {"model1.forward[EG]", "model0.forward[TN]"} <= tokens
    assert eval_without_eval_mode.check(tables) == [] and eval_with_grad.check(tables) == []


# ---- eval-with-grad ----------------------------------------------------------------------------


@pytest.mark.parametrize("name, phase, first", [("val_phase_with_grad", "val", STEPS_PER_EPOCH - 1),
                                                ("eval_with_grad_without_phases", "train", STEPS_PER_EPOCH - 1),
                                                ("ref_eval_with_grad", "val", 7)])
def test_fires_on_eval_with_grad(name: str, phase: str, first: int, fault_root: Path) -> None:
    [finding] = eval_with_grad.check(fault_tables(name, fault_root))
    assert finding.rule == "eval-with-grad" and finding.severity == Severity.WARNING
    ev = finding.evidence
    assert (ev["step"], ev["first_step"], ev["phase"]) == (first, first, phase)
    assert ev["forward_token"] == "model0.forward[EG]" and ev["in_eval_mode"] is True
    assert ev["eval_forwards_with_grad"] == ev["eval_forwards"] > 0
    seq = ev["sequence"]
    assert seq.index("model0.eval") < seq.index(next(t for t in seq if t.startswith("model0.forward[EG]")))
    assert "inference_mode" in finding.fix


def test_eval_with_grad_leaves_frozen_models_alone(fault_root: Path) -> None:
    tables = fault_tables("val_phase_with_grad", fault_root)
    frozen = tables.params.assign(requires_grad=False)
    assert eval_with_grad.check(dataclasses.replace(tables, params=frozen)) == []


# ---- train-mode-not-restored -------------------------------------------------------------------


@pytest.mark.parametrize("name, first, evaluation_step, ranges", [
    ("eval_mode_not_restored", STEPS_PER_EPOCH, STEPS_PER_EPOCH - 1, [[STEPS_PER_EPOCH, EPOCHS * STEPS_PER_EPOCH - 1]]),
    ("periodic_eval_not_restored", 8, 7, [[8, 11], [16, 23], [32, 35], [40, 47]]),
    ("sanity_eval_not_restored", 0, 0, [[0, STEPS_PER_EPOCH - 1]]),
    ("ref_train_mode_not_restored", 8, 7, [[8, 23]]),
])
def test_fires_on_train_mode_not_restored(name: str, first: int, evaluation_step: int, ranges, fault_root: Path) -> None:
    tables = fault_tables(name, fault_root)
    [finding] = train_mode_not_restored.check(tables)
    assert finding.rule == "train-mode-not-restored" and finding.severity == Severity.WARNING
    ev = finding.evidence
    assert (ev["step"], ev["first_step"], ev["evaluation_step"]) == (first, first, evaluation_step)
    assert ev["step_ranges"] == ranges and ev["training_steps"] == len(tables.steps)
    assert ev["steps_in_eval_mode"] == sum(b - a + 1 for a, b in ranges)
    assert ev["forward_token"] == "model0.forward[EGB]" and "model0.forward[EGB]" in ev["sequence"]
    assert "model0.eval" in ev["evaluation_sequence"] and "model0.train" not in ev["evaluation_sequence"]


def test_training_in_eval_mode_from_the_first_step_is_a_choice(fault_root: Path) -> None:
    tables = fault_tables("trained_in_eval_mode_throughout", fault_root)
    assert set(tables.calls.loc[tables.calls["method"] == "forward", "token"].astype(str)) == {"model0.forward[EGB]"}
    assert train_mode_not_restored.check(tables) == []


def test_train_mode_not_restored_is_info_when_both_modes_compute_the_same(fault_root: Path) -> None:
    tables = fault_tables("eval_mode_not_restored", fault_root)
    linear_only = dataclasses.replace(tables, params=tables.params.assign(module_type="Linear"), meta={})
    [finding] = train_mode_not_restored.check(linear_only)
    assert finding.severity == Severity.INFO and "cannot show in the record" in finding.explanation
    declared = dataclasses.replace(linear_only, meta={"config": {"model": {"dropout": 0.2}}})
    [finding] = train_mode_not_restored.check(declared)
    assert finding.severity == Severity.WARNING and finding.evidence["configured_dropout"] == {"dropout": 0.2}
