"""Loop rules about learning-rate schedules: scheduler-before-optimizer, scheduler-never-stepped,
scheduler-step-frequency, zero-lr-steps. Faulty loops come from tests/harness/faults_loop.py
(hand-written loops and reference-loop injections), recorded once per session."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from diagnose.rules._base import Severity
from diagnose.rules.loop import scheduler_before_optimizer, scheduler_never_stepped, scheduler_step_frequency, \
    zero_lr_steps
from diagnose.rundir.tables import Run
from tests.harness.faults_loop import EPOCHS, HALF, STEPS_PER_EPOCH, fault_tables

RULES = [scheduler_before_optimizer, scheduler_never_stepped, scheduler_step_frequency, zero_lr_steps]

pytestmark = [pytest.mark.filterwarnings("ignore:Detected call of `lr_scheduler.step\\(\\)`:UserWarning"),
              pytest.mark.usefixtures("one_torch_thread_module")]  # tests/conftest.py: one torch thread


@pytest.mark.parametrize("rule", RULES, ids=lambda m: m.NAME)
def test_silent_on_healthy(rule, healthy_run: Run) -> None:
    assert [f.title for f in rule.check(healthy_run.first)] == []


# ---- scheduler-before-optimizer ------------------------------------------------------------------


@pytest.mark.parametrize("name, optimizer_call", [("scheduler_before_step_per_iteration", "opt0.step"),
                                                  ("scheduler_before_scaler_step", "scaler0.step"),
                                                  ("ref_scheduler_before_optimizer", "opt0.step")])
def test_fires_on_scheduler_before_optimizer_in_every_step(name: str, optimizer_call: str, fault_root: Path) -> None:
    tables = fault_tables(name, fault_root)
    [finding] = scheduler_before_optimizer.check(tables)
    assert finding.rule == "scheduler-before-optimizer" and finding.severity == Severity.WARNING
    ev = finding.evidence
    n_steps = len(tables.steps)
    assert (ev["step"], ev["affected_steps"], ev["scheduler_steps"]) == (0, n_steps, n_steps)
    assert ev["where"] == "between backward() and the optimizer step" and ev["scheduler_class"] == "OneCycleLR"
    seq = ev["sequence"]
    assert seq.index("backward") < seq.index("sched0.step") < seq.index(optimizer_call)
    assert finding.steps == (0, n_steps - 1)


def test_fires_on_scheduler_before_optimizer_at_the_start_of_each_epoch(fault_root: Path) -> None:
    [finding] = scheduler_before_optimizer.check(fault_tables("scheduler_at_epoch_start", fault_root))
    ev = finding.evidence
    assert ev["where"] == "before the first optimizer step of the run" and ev["scheduler_class"] == "StepLR"
    assert (ev["step"], ev["first_optimizer_step"], finding.steps) == (0, 0, (0, 0))
    assert ev["sequence"][0] == "sched0.step" and "opt0.step" in ev["sequence"]


@pytest.mark.parametrize("name", ["scaler_skips_first_steps", "scheduler_after_zero_grad", "scheduler_fast_forwarded",
                                  "gan_two_models", "lbfgs_closure"])
def test_right_orders_are_not_flagged(name: str, fault_root: Path) -> None:
    tables = fault_tables(name, fault_root)
    if name == "scaler_skips_first_steps":  # the case torch's own warning gets wrong
        assert tables.steps["skipped"].iloc[:5].all()
        first = tables.calls[tables.calls["step"] == 0]["token"].astype(str).tolist()
        assert "opt0.step" not in first and first.index("scaler0.step") < first.index("sched0.step")
    assert scheduler_before_optimizer.check(tables) == []


# ---- scheduler-never-stepped -------------------------------------------------------------------


@pytest.mark.parametrize("name, cls", [("onecycle_never_stepped", "OneCycleLR"), ("steplr_never_stepped", "StepLR"),
                                       ("ref_scheduler_never_stepped", "OneCycleLR")])
def test_fires_on_scheduler_never_stepped(name: str, cls: str, fault_root: Path) -> None:
    tables = fault_tables(name, fault_root)
    [finding] = scheduler_never_stepped.check(tables)
    assert finding.rule == "scheduler-never-stepped" and finding.severity == Severity.WARNING
    ev = finding.evidence
    assert (ev["scheduler"], ev["scheduler_class"], ev["scheduler_steps"]) == ("sched0", cls, 0)
    assert ev["optimizer_steps"] == len(tables.steps) and ev["epochs"] == tables.steps["epoch"].nunique()
    first_lr = tables.steps["lr_0"].iloc[0]
    assert list(ev["lr"].values())[0] == pytest.approx(first_lr)
    assert ev["missing"] == "sched0.step" and "opt0.step" in ev["sequence"]
    assert finding.steps == (0, len(tables.steps) - 1)


def test_a_run_that_crashed_before_the_first_epoch_ended_is_not_judged(fault_root: Path) -> None:
    tables = fault_tables("per_epoch_scheduler_cut_short", fault_root)
    assert tables.meta["status"] == "crashed"
    assert scheduler_never_stepped.check(tables) == []


def test_a_learning_rate_that_moved_means_something_stepped_it(fault_root: Path) -> None:
    tables = fault_tables("steplr_never_stepped", fault_root)
    steps = tables.steps.copy()
    steps.loc[steps.index[-1], "lr_0"] = steps["lr_0"].iloc[0] / 2
    assert scheduler_never_stepped.check(dataclasses.replace(tables, steps=steps)) == []


# ---- scheduler-step-frequency ------------------------------------------------------------------


@pytest.mark.parametrize("name, cls, length, stepped", [
    ("onecycle_stepped_per_epoch", "OneCycleLR", EPOCHS * STEPS_PER_EPOCH, EPOCHS),
    ("cosine_iterations_stepped_per_epoch", "CosineAnnealingLR", EPOCHS * STEPS_PER_EPOCH, EPOCHS),
    ("ref_scheduler_step_frequency", "OneCycleLR", 24, 3),
])
def test_fires_on_scheduler_step_frequency_per_epoch(name: str, cls: str, length: int, stepped: int,
                                                     fault_root: Path) -> None:
    tables = fault_tables(name, fault_root)
    [finding] = scheduler_step_frequency.check(tables)
    assert finding.rule == "scheduler-step-frequency" and finding.severity == Severity.WARNING
    ev = finding.evidence
    assert (ev["scheduler_class"], ev["configured_length"], ev["scheduler_steps"]) == (cls, length, stepped)
    assert ev["optimizer_steps"] == len(tables.steps) and ev["schedule_progress"] < 0.5
    assert abs(ev["lr_last"] - ev["configured_end_lr"]) > 0.1 * ev["lr_max"]  # ended far from its configured end
    assert ev["step"] == len(tables.steps) // stepped - 1  # stepped after the first epoch's last step
    assert ev["sequence"][-1] == "sched0.step"


def test_fires_on_scheduler_step_frequency_per_iteration(fault_root: Path) -> None:
    [finding] = scheduler_step_frequency.check(fault_tables("cosine_epochs_stepped_per_iteration", fault_root))
    ev = finding.evidence
    assert (ev["configured_length"], ev["scheduler_steps"], ev["cosine_cycles"]) == (EPOCHS, 48, 6.0)
    assert ev["step"] == 0 and ev["sequence"][-2:] == ["opt0.step", "sched0.step"]
    assert "epochs" in finding.explanation


def test_fires_on_scheduler_step_frequency_when_onecycle_runs_past_its_end(fault_root: Path) -> None:
    tables = fault_tables("onecycle_overstepped", fault_root)
    assert tables.meta["status"] == "crashed"
    [finding] = scheduler_step_frequency.check(tables)
    assert finding.severity == Severity.ERROR
    assert "Tried to step 5 times" in finding.evidence["error"] and finding.evidence["configured_length"] == EPOCHS


def test_per_epoch_schedules_in_early_stopped_runs_are_not_flagged(fault_root: Path) -> None:
    # LambdaLR has no length to compare with; StepLR neither: never judged
    assert scheduler_step_frequency.check(fault_tables("warmup_from_zero_stepped_per_epoch", fault_root)) == []
    assert scheduler_step_frequency.check(fault_tables("scheduler_at_epoch_start", fault_root)) == []


# ---- zero-lr-steps -----------------------------------------------------------------------------


@pytest.mark.parametrize("name, first, until_the_end", [
    ("lambda_schedule_ends_halfway", HALF, True),
    ("polynomial_decay_too_short", HALF, True),
    ("warmup_from_zero_stepped_per_epoch", 1, False),
    ("ref_zero_lr_steps", 12, True),
])
def test_fires_on_zero_lr_steps(name: str, first: int, until_the_end: bool, fault_root: Path) -> None:
    tables = fault_tables(name, fault_root)
    [finding] = zero_lr_steps.check(tables)
    assert finding.rule == "zero-lr-steps" and finding.severity == Severity.ERROR
    ev = finding.evidence
    n_steps = len(tables.steps)
    assert (ev["first_step"], ev["step"], ev["until_the_end"]) == (first, first, until_the_end)
    expected = n_steps - first if until_the_end else STEPS_PER_EPOCH - 1
    assert ev["zero_lr_steps"] == expected and ev["longest_stretch"] == expected
    assert (tables.steps["lr_0"].loc[first:first + expected - 1] == 0).all()
    assert ev["groups"][0] == "opt0.group0" and "opt0.step" in ev["sequence"]
    if name == "ref_zero_lr_steps":  # both param groups, one finding
        assert ev["groups"] == ["opt0.group0", "opt0.group1"]


def test_isolated_zero_lr_steps_are_a_warning(fault_root: Path) -> None:
    [finding] = zero_lr_steps.check(fault_tables("cosine_epochs_stepped_per_iteration", fault_root))
    assert finding.severity == Severity.WARNING
    assert finding.evidence["longest_stretch"] == 1 and finding.evidence["step_ranges"][:2] == [[4, 4], [12, 12]]


def test_a_warm_up_from_zero_and_a_group_frozen_at_zero_are_fine(fault_root: Path) -> None:
    tables = fault_tables("group_frozen_by_lr", fault_root)
    assert (tables.steps["lr_0"] == 0).all() and (tables.steps["lr_1"] > 0).all()
    assert zero_lr_steps.check(tables) == []
    steps = tables.steps.copy()
    steps["lr_1"] = steps["lr_1"].where(steps.index > 0, 0.0)  # a warm-up's first step at 0
    assert zero_lr_steps.check(dataclasses.replace(tables, steps=steps)) == []
    steps["lr_1"] = steps["lr_1"].where(steps.index > 2, 0.0)  # three steps at 0: two beyond the first
    assert zero_lr_steps.check(dataclasses.replace(tables, steps=steps)) == []
    steps["lr_1"] = steps["lr_1"].where(steps.index > 3, 0.0)  # three beyond the first
    [finding] = zero_lr_steps.check(dataclasses.replace(tables, steps=steps))
    assert finding.evidence["step_ranges"] == [[1, 3]] and finding.severity == Severity.WARNING
