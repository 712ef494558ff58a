"""Loop rules about gradients: missing-zero-grad, zero-grad-before-step, clip-before-unscale,
params-not-updated. Faulty loops come from tests/harness/faults_loop.py (hand-written loops
and reference-loop injections), recorded once per session."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import pandas as pd
import pytest

from diagnose.rules._base import Severity
from diagnose.rules.loop import clip_before_unscale, missing_zero_grad, params_not_updated, zero_grad_before_step
from diagnose.rundir.tables import Run, empty_series
from tests.harness.faults_loop import fault_tables

RULES = [missing_zero_grad, zero_grad_before_step, clip_before_unscale, params_not_updated]

pytestmark = [pytest.mark.filterwarnings("ignore:Detected call of `lr_scheduler.step\\(\\)`:UserWarning"),
              pytest.mark.usefixtures("one_torch_thread_module")]  # tests/conftest.py: one torch thread


@pytest.mark.parametrize("rule", RULES, ids=lambda m: m.NAME)
def test_silent_on_healthy(rule, healthy_run: Run) -> None:
    assert [f.title for f in rule.check(healthy_run.first)] == []


# ---- missing-zero-grad -------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["no_zero_grad_sgd", "no_zero_grad_trainer_fp16", "ref_missing_zero_grad",
                                  "ref_missing_zero_grad_chars"])
def test_fires_on_missing_zero_grad(name: str, fault_root: Path) -> None:
    tables = fault_tables(name, fault_root)
    [finding] = missing_zero_grad.check(tables)
    n_steps = len(tables.steps)
    assert finding.rule == "missing-zero-grad"
    # no zero_grad recorded at all: could be `p.grad = None` by hand, so warning, not error
    assert finding.severity == Severity.WARNING
    ev = finding.evidence
    assert (ev["optimizer"], ev["first_step"], ev["step"]) == ("opt0", 1, 1)
    assert ev["uncleared_steps"] == ev["steps_checked"] == n_steps - 1
    assert ev["zero_grad_calls"] == 0 and ev["missing"] == "opt0.zero_grad"
    assert "backward" in ev["sequence"] and "opt0.step" in ev["sequence"]
    assert finding.steps == (1, n_steps - 1)
    assert "p.grad = None" in finding.explanation and "zero_grad(set_to_none=True)" in finding.fix


def test_fires_on_missing_zero_grad_misplaced_outside_the_batch_loop(fault_root: Path) -> None:
    [finding] = missing_zero_grad.check(fault_tables("zero_grad_once_per_epoch", fault_root))
    assert finding.severity == Severity.ERROR  # zero_grad exists in the loop: the record is proof
    ev = finding.evidence
    assert (ev["uncleared_steps"], ev["steps_checked"], ev["zero_grad_calls"]) == (44, 47, 4)
    assert ev["step_ranges"][:2] == [[1, 11], [13, 23]]  # each epoch's first step is cleared
    assert "opt0.zero_grad" not in ev["sequence"]
    assert "outside the batch loop" in finding.explanation


def test_gradients_cleared_by_hand_read_as_missing_zero_grad_at_warning(fault_root: Path) -> None:
    """A documented limitation: `p.grad = None` leaves no trace in the record."""
    [finding] = missing_zero_grad.check(fault_tables("grads_cleared_by_hand", fault_root))
    assert finding.severity == Severity.WARNING and "p.grad = None" in finding.explanation


@pytest.mark.parametrize("name", ["zero_grad_between_backward_and_step", "ref_zero_grad_before_step"])
def test_a_misplaced_zero_grad_is_not_a_missing_one(name: str, fault_root: Path) -> None:
    assert missing_zero_grad.check(fault_tables(name, fault_root)) == []


# ---- zero-grad-before-step ---------------------------------------------------------------------


@pytest.mark.parametrize("name, clearing", [("zero_grad_between_backward_and_step", "opt0.zero_grad"),
                                            ("model_zero_grad_before_scaler_step", "model0.zero_grad"),
                                            ("ref_zero_grad_before_step", "opt0.zero_grad")])
def test_fires_on_zero_grad_before_step(name: str, clearing: str, fault_root: Path) -> None:
    tables = fault_tables(name, fault_root)
    [finding] = zero_grad_before_step.check(tables)
    assert finding.rule == "zero-grad-before-step" and finding.severity == Severity.ERROR
    ev = finding.evidence
    n_steps = len(tables.steps)
    assert (ev["step"], ev["first_step"], ev["affected_steps"], ev["optimizer_steps"]) == (0, 0, n_steps, n_steps)
    assert ev["steps_with_known_gradients"] == ev["steps_without_gradients"] == n_steps  # confirmed
    assert ev["clearing_call"] == clearing
    seq = ev["sequence"]
    assert seq.index("backward") < seq.index(clearing, seq.index("backward")) < seq.index("opt0.step")
    assert finding.steps == (0, n_steps - 1)


def test_zero_grad_before_step_rests_on_the_call_order_when_no_step_was_due_for_norms(fault_root: Path) -> None:
    tables = fault_tables("model_zero_grad_before_scaler_step", fault_root)
    assert (tables.grad_norms == 0).all().all()  # set_to_none=False: zeros, recorded
    sparse = dataclasses.replace(tables, meta={**tables.meta, "options": {"grad_every": 1000}},
                                 grad_norms=empty_series(), grad_nonfinite=empty_series())
    [finding] = zero_grad_before_step.check(sparse)
    assert finding.evidence["steps_with_known_gradients"] == 1  # step 0 only was due
    no_norms = dataclasses.replace(sparse, steps=tables.steps.iloc[1:])
    calls = tables.calls[tables.calls["step"] > 0]
    [finding] = zero_grad_before_step.check(dataclasses.replace(no_norms, calls=calls))
    assert finding.evidence["steps_with_known_gradients"] == 0 and "call order" in finding.explanation


def test_gradients_rebuilt_after_zero_grad_are_not_flagged(fault_root: Path) -> None:
    """Gradient surgery: zero_grad between backward and step, then new gradients written."""
    tables = fault_tables("grads_rebuilt_after_zero_grad", fault_root)
    assert (tables.grad_norms > 0).all().all()
    assert zero_grad_before_step.check(tables) == []


# ---- clip-before-unscale -----------------------------------------------------------------------


@pytest.mark.parametrize("name, clip", [("clip_scaled_gradients", "clip_grad_norm_"),
                                        ("clip_value_then_unscale", "clip_grad_value_"),
                                        ("ref_clip_before_unscale", "clip_grad_norm_")])
def test_fires_on_clip_before_unscale(name: str, clip: str, fault_root: Path) -> None:
    tables = fault_tables(name, fault_root)
    [finding] = clip_before_unscale.check(tables)
    assert finding.rule == "clip-before-unscale" and finding.severity == Severity.ERROR
    ev = finding.evidence
    n_steps = len(tables.steps)
    assert (ev["step"], ev["affected_steps"], ev["steps_with_clipping"]) == (0, n_steps, n_steps)
    assert ev["clip_call"] == clip
    seq = ev["sequence"]
    assert seq.index("scaler0.scale") < seq.index("backward") < seq.index(clip)
    assert "scaler0.unscale_" not in seq[:seq.index(clip)]
    if clip == "clip_grad_norm_":  # the scaled norm, clipped on every step; unscaled it is ordinary
        assert ev["steps_clipped"] == ev["steps_with_clip_norm"] == n_steps
        assert ev["clip_norm_median"] > 1000 * ev["clip_max"]
        assert 0.01 < ev["unscaled_norm_median"] < 100


def test_clipping_with_a_disabled_scaler_is_right(fault_root: Path) -> None:
    tables = fault_tables("clip_with_disabled_scaler", fault_root)
    assert tables.objects["scalers"][0]["enabled"] is False
    assert clip_before_unscale.check(tables) == []
    enabled = dataclasses.replace(tables, objects={**tables.objects, "scalers": [{"index": 0, "enabled": True}]})
    assert [f.rule for f in clip_before_unscale.check(enabled)] == ["clip-before-unscale"]


# ---- params-not-updated ------------------------------------------------------------------------


def _probe_names(task: str) -> list[str]:
    from reference_loop.config import TrainConfig
    from reference_loop.model import build_model

    model = build_model(TrainConfig(task=task, width=8, n_embd=32, n_layer=1, block_size=32), 10)
    probe = {id(p) for p in model.probe.parameters()}
    return [n for n, p in model.named_parameters() if id(p) in probe]


@pytest.mark.parametrize("name, expected, held", [
    ("layer_left_out_of_optimizer", ["fc2.weight", "fc2.bias"], []),
    ("head_replaced_after_optimizer", ["head.weight", "head.bias"], ["opt0.group0.4", "opt0.group0.5"]),
    ("ref_params_not_updated", "images", []),
])
def test_fires_on_params_not_updated(name: str, expected, held: list[str], fault_root: Path) -> None:
    expected = _probe_names(expected) if isinstance(expected, str) else expected
    tables = fault_tables(name, fault_root)
    [finding] = params_not_updated.check(tables)
    assert finding.rule == "params-not-updated" and finding.severity == Severity.ERROR
    ev = finding.evidence
    assert ev["parameters"] == expected and ev["reason"] == "in no optimizer"
    assert all(v > 0 for v in ev["median_grad_norm"].values())
    assert all(v == 0.0 for v in ev["weight_norm_relative_change"].values())  # never moved
    assert ev["optimizer_tensors_without_gradients"] == held
    assert "opt0.step" in ev["sequence"]
    assert ("replaced after the optimizer" in finding.explanation) == bool(held)


def test_a_parameter_updated_by_hand_is_not_flagged(fault_root: Path) -> None:
    tables = fault_tables("param_updated_by_hand", fault_root)
    temperature = tables.params.index[tables.params["name"] == "temperature"][0]
    assert pd.isna(tables.params.at[temperature, "optimizer"])  # in no optimizer, and it gets gradients
    assert (tables.grad_norms[temperature] > 0).all()
    assert params_not_updated.check(tables) == []


def test_a_group_frozen_through_its_lr_is_info_only(fault_root: Path) -> None:
    [finding] = params_not_updated.check(fault_tables("group_frozen_by_lr", fault_root))
    assert finding.severity == Severity.INFO
    assert finding.evidence["parameters"] == ["fc1.weight", "fc1.bias"] and "requires_grad_(False)" in finding.explanation


def test_without_a_watched_optimizer_nothing_is_judged(fault_root: Path) -> None:
    tables = fault_tables("layer_left_out_of_optimizer", fault_root)
    assert params_not_updated.check(dataclasses.replace(tables, objects={**tables.objects, "optimizers": []})) == []
