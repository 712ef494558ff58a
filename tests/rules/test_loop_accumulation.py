"""zero-grad-before-step, accumulation part: `zero_grad()` for every micro-batch while the
optimizer steps every k-th, so each step keeps one micro-batch's gradient. Real tiny CPU
runs from tests/harness/faults_accumulation.py (Monitor loops, the reference loop's
`--inject zero-grad-every-micro-batch`) and the zero-code script
tests/scripts/zero_grad_every_micro_batch.py; the near misses clear backward passes
before a step too, legitimately, and must stay silent."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from diagnose.rules import run_rules
from diagnose.rules._base import Severity
from diagnose.rules.loop import missing_zero_grad, zero_grad_before_step
from diagnose.rules.loop._callindex import CallIndex
from diagnose.rundir.reader import read_run
from tests.harness.faults_accumulation import FAULTS, fault_tables

pytestmark = pytest.mark.usefixtures("one_torch_thread_module")  # tests/conftest.py: one torch thread

BUGGY = {  # name: (micro-batches per step, clearing call, optimizer step call)
    "accum_cleared_every_micro_batch": (4, "opt0.zero_grad", "opt0.step"),
    "accum_cleared_trainer_fp16": (3, "model0.zero_grad", "scaler0.step"),
    "accum_cleared_two_losses": (2, "opt0.zero_grad", "opt0.step"),
    "ref_zero_grad_every_micro_batch": (4, "opt0.zero_grad", "opt0.step"),  # CPU: the scaler is off
}
NEAR_MISSES = sorted(n for n, f in FAULTS.items() if f.rule is None)
LOOK_ALIKES = ["sam_first_second_step", "asam_wrapper", "fgsm_adversarial_training", "pgd_adversarial_training",
               "saliency_probe_after_step", "gan_generator_cleared_by_other_optimizer", "lbfgs_closure_loader"]
"""Near misses where a backward really is cleared before any optimizer step used it."""


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("accumulation")


def _accumulation(findings):
    return [f for f in findings if f.evidence.get("pattern")]


@pytest.mark.parametrize("name", sorted(BUGGY))
def test_fires_on_accumulation_that_clears_every_micro_batch(name: str, root: Path) -> None:
    k, clearing, step_call = BUGGY[name]
    tables = fault_tables(name, root)
    [finding] = zero_grad_before_step.check(tables)
    assert finding.rule == "zero-grad-before-step" and finding.severity == Severity.ERROR
    ev = finding.evidence
    n_steps = len(tables.steps)
    assert (ev["batches_per_step"], ev["discarded_per_step"]) == (k, k - 1)
    assert ev["first_step"] == ev["step"] == 0 and finding.steps == (0, n_steps - 1)
    assert ev["affected_steps"] == ev["optimizer_steps"] == n_steps
    assert ev["discarded_batches"] == (k - 1) * n_steps
    assert ev["clearing_call"] == clearing and ev["optimizer"] == "opt0"
    assert "backward" in " ".join(ev["sequence"]) and step_call in ev["sequence"]
    # the message names the pattern, the first step and the fix
    assert f"after {k} of them" in finding.title and f"keeps 1 of {k}" in finding.title
    assert f"discards {k - 1}" in finding.title and "from step 0" in finding.title
    assert f"first {k - 1} are cleared" in finding.explanation and "step 0" in finding.explanation
    assert "optimizer.zero_grad(set_to_none=True)" in finding.fix and "(i + 1) % accum == 0" in finding.fix


@pytest.mark.parametrize("name", sorted(BUGGY))
def test_accumulation_fault_triggers_nothing_else(name: str, root: Path) -> None:
    findings, _ = run_rules(read_run(fault_tables(name, root).path))
    alarms = {f.rule for f in findings if f.severity >= Severity.WARNING}
    assert alarms == {"zero-grad-before-step"}


def test_two_backward_passes_per_micro_batch_count_one_batch(root: Path) -> None:
    [finding] = zero_grad_before_step.check(fault_tables("accum_cleared_two_losses", root))
    assert finding.evidence["backward_per_step"] == 4 and finding.evidence["batches_per_step"] == 2


@pytest.mark.parametrize("name", NEAR_MISSES)
def test_silent_on_near_misses(name: str, root: Path) -> None:
    tables = fault_tables(name, root)
    assert [f.title for f in zero_grad_before_step.check(tables)] == []
    findings, _ = run_rules(read_run(tables.path))
    loud = {f.rule for f in findings if f.severity >= Severity.WARNING}
    assert not loud & set(FAULTS[name].quiet), loud


def _cleared_before_any_step(tables) -> int:
    """Backward passes that a zero_grad cleared before any optimizer step call followed."""
    calls = CallIndex.of(tables)
    n = len(calls)
    backward = np.flatnonzero(calls.backward)
    after = np.minimum(backward + 1, n - 1)
    next_step = np.where(backward + 1 < n, calls.next_at_or_after(calls.any_opt_step)[after], n)
    next_clear = np.where(backward + 1 < n, calls.next_at_or_after(calls.zero_grad)[after], n)
    return int(((next_clear < next_step) & (next_step < n)).sum())


@pytest.mark.parametrize("name", LOOK_ALIKES)
def test_look_alikes_do_clear_backward_passes_before_a_step(name: str, root: Path) -> None:
    """The near misses are real look-alikes: without the batch markers they show the same
    `backward ... zero_grad ... step` shape, and the markers were recorded."""
    tables = fault_tables(name, root)
    assert _cleared_before_any_step(tables) >= 10
    assert CallIndex.of(tables).batch.max() >= 10


def test_without_batch_markers_accumulation_stays_silent(root: Path) -> None:
    """A loop that slices its batches by hand leaves no markers: nothing to tell a new batch
    from the same one, so the accumulation part does not judge (and the old part has no
    suspect: the last backward before each step is not cleared)."""
    tables = fault_tables("accum_cleared_every_micro_batch", root)
    calls = tables.calls.assign(batch=0)
    assert zero_grad_before_step.check(dataclasses.replace(tables, calls=calls)) == []
    legacy = tables.calls.drop(columns=["batch"])  # a run recorded before the markers
    assert zero_grad_before_step.check(dataclasses.replace(tables, calls=legacy)) == []


def test_same_batch_reused_is_not_a_new_batch(root: Path) -> None:
    """Renumber the buggy run's batches so that each step's micro-batches share one batch
    (as SAM or an adversarial backward would): the accumulation finding goes away."""
    tables = fault_tables("accum_cleared_every_micro_batch", root)
    calls = tables.calls.copy()
    calls["batch"] = (calls["batch"] + 3) // 4
    assert zero_grad_before_step.check(dataclasses.replace(tables, calls=calls)) == []


def test_partial_window_each_epoch_is_below_the_threshold(root: Path) -> None:
    """Correct accumulation whose last 2 micro-batches of each epoch are cleared by the next
    epoch's first zero_grad: 1 step in 5 discards a batch, below ACCUMULATION_FRACTION."""
    tables = fault_tables("accum_partial_window_cleared", root)
    calls = CallIndex.of(tables)
    assert zero_grad_before_step.check(tables) == []
    assert _cleared_before_any_step(tables) == 2 * 3  # 2 per epoch boundary, 3 boundaries
    assert int(calls.opt_step.sum()) == 4 * 5 and calls.batch.max() == 4 * 22


def test_sam_zero_grad_clears_its_base_optimizer(root: Path) -> None:
    """SAM's zero_grad (opt1) clears the parameters its base optimizer (opt0) steps on:
    not missing-zero-grad (it was, before the optimizers' shared parameters were checked)."""
    tables = fault_tables("sam_first_second_step", root)
    calls = CallIndex.of(tables)
    assert calls.zero_grad[calls.is_obj("opt0")].sum() == 0 and calls.zero_grad[calls.is_obj("opt1")].sum() > 0
    assert missing_zero_grad.check(tables) == []
