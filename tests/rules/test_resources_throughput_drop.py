"""throughput-drop: fires when every step from some point on costs several times more (a
blocking call added, a model that grew, an evaluation inside the batch loop), reports an
unfrozen backbone as info, and stays silent on healthy runs, a sequence-length curriculum
(tokens/s holds), evaluation phases, and the bursty slowdowns other processes cause."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from diagnose.rules._base import Severity
from diagnose.rules.resources import throughput_drop
from diagnose.rundir.reader import read_run
from diagnose.rundir.tables import Run, RunTables
from tests.harness import faults_resources as harness

LOOPS = ("sleep_after_step", "model_grows", "extra_forwards_after_step", "unfreeze_backbone", "sequence_curriculum")


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, RunTables]:
    root = tmp_path_factory.mktemp("throughput")
    return {name: read_run(harness.FAULTS[name].record(root / name, 0)).first for name in LOOPS}


def _only(findings, severity=Severity.WARNING):
    assert len(findings) == 1, findings
    finding = findings[0]
    assert finding.rule == "throughput-drop" and finding.severity == severity
    return finding


# Each loop changes at its step 60. A blocking call after step 60's optimizer step lands in
# step 61's time; a model grown before step 60's forward slows step 60 itself. Other
# processes can make a few steps around it look slow too, hence the tolerance: two of the
# rule's blocks of steps (`block_steps`, 5) before (seen at 50 under a load of 5 on 2 cores).
@pytest.mark.parametrize("name", ["sleep_after_step", "model_grows", "extra_forwards_after_step"])
def test_fires_on_drop(runs: dict[str, RunTables], name: str) -> None:
    first_slow = harness.FAULTS[name].at
    finding = _only(throughput_drop.check(runs[name]))
    ev = finding.evidence
    assert first_slow - 2 * ev["block_steps"] <= ev["drop_step"] <= first_slow + 2
    assert finding.steps == (ev["drop_step"], int(runs[name].steps.index[-1]))
    assert ev["steps_after"] >= throughput_drop.MIN_AFTER_STEPS
    assert ev["ratio"] >= throughput_drop.DROP_RATIO and ev["unit"] == "samples"
    assert ev["rate_after"] < ev["rate_before"] / 3
    assert ev["time_lost_s"] > 0
    assert f"at step {ev['drop_step']} and stayed down" in finding.title


def test_blocking_call_is_reported_as_nothing_recorded_changing(runs: dict[str, RunTables]) -> None:
    finding = _only(throughput_drop.check(runs["sleep_after_step"]))
    assert "params_with_grad" not in finding.evidence and "forwards_per_step" not in finding.evidence
    assert "Nothing recorded changed" in finding.explanation


def test_evaluation_in_the_batch_loop_is_named(runs: dict[str, RunTables]) -> None:
    finding = _only(throughput_drop.check(runs["extra_forwards_after_step"]))
    assert finding.evidence["forwards_per_step"] == [1, 2]
    assert "2 forward passes instead of 1" in finding.explanation


def test_unfrozen_backbone_is_info_not_warning(runs: dict[str, RunTables]) -> None:
    findings = throughput_drop.check(runs["unfreeze_backbone"])
    assert all(f.severity == Severity.INFO for f in findings)
    for finding in findings:  # when the slowdown is large enough to be seen at all
        before, after = finding.evidence["params_with_grad"]
        assert (before, after) == (2, 8)
        assert "started training" in finding.explanation


def test_silent_on_sequence_length_curriculum(runs: dict[str, RunTables]) -> None:
    steps = runs["sequence_curriculum"].steps
    assert steps["tokens"].iloc[-1] == 8 * steps["tokens"].iloc[0]  # 8x the tokens per sample
    assert throughput_drop.check(runs["sequence_curriculum"]) == []


# ---- synthetic step times ----------------------------------------------------------------

def _tables(seconds: np.ndarray, samples: int = 32) -> RunTables:
    n = len(seconds)
    steps = pd.DataFrame({"step_time_s": seconds, "samples": np.full(n, samples), "skipped": False},
                         index=pd.Index(np.arange(n), name="step"))
    return RunTables(steps=steps)


def _noisy(n: int, rng: np.random.Generator, base: float = 0.01) -> np.ndarray:
    return base * rng.lognormal(0.0, 0.1, n)


def test_fires_on_a_clean_drop_at_its_step() -> None:
    rng = np.random.default_rng(1)
    seconds = _noisy(400, rng)
    seconds[250:] *= 4
    finding = _only(throughput_drop.check(_tables(seconds)))
    assert finding.evidence["drop_step"] == 250
    assert finding.evidence["ratio"] == pytest.approx(4, rel=0.1)


def test_silent_on_a_drop_below_the_ratio() -> None:
    rng = np.random.default_rng(2)
    seconds = _noisy(400, rng)
    seconds[250:] *= 2.5
    assert throughput_drop.check(_tables(seconds)) == []


def test_silent_on_evaluation_and_epoch_boundaries() -> None:
    rng = np.random.default_rng(3)
    seconds = _noisy(600, rng)
    seconds[::50] += 5.0        # an evaluation phase in the step after every epoch
    seconds[1::50] += 0.5       # and DataLoader workers starting again
    assert throughput_drop.check(_tables(seconds)) == []


def test_silent_on_bursty_contention() -> None:
    # Another process takes the cores in bursts from step 200 on: most steps 100x slower,
    # but undisturbed (fast) steps keep coming, so the work per step did not change.
    rng = np.random.default_rng(4)
    seconds = _noisy(300, rng, base=0.0005)
    busy = (np.arange(300) >= 200) & (rng.random(300) < 0.75)
    seconds[busy] *= 100
    assert throughput_drop.check(_tables(seconds)) == []


def test_needs_a_stretch_of_50_slow_steps_to_the_end() -> None:
    # Other processes can starve a run for a few dozen steps (28 steps 49x slower, seen on
    # a healthy scenario): a drop counts from 50 steps on.
    seconds = np.r_[np.full(43, 0.01), np.full(49, 0.1)]  # 3 of warm-up, 40 fast, 49 slow
    assert throughput_drop.check(_tables(seconds)) == []
    finding = _only(throughput_drop.check(_tables(np.r_[seconds, 0.1])))
    assert finding.evidence["drop_step"] == 43 and finding.evidence["steps_after"] == 50


def test_silent_when_the_slow_state_was_already_common_before() -> None:
    # Another process already slowed a quarter of the steps before it took over for good.
    rng = np.random.default_rng(5)
    seconds = _noisy(200, rng, base=0.0005)
    seconds[rng.random(200) < 0.25] *= 200
    seconds[120:] = 0.1 * rng.lognormal(0.0, 0.1, 80)
    assert throughput_drop.check(_tables(seconds)) == []


def test_silent_on_healthy(healthy_run: Run) -> None:
    for tables in healthy_run.ranks.values():
        assert [f for f in throughput_drop.check(tables) if f.severity >= Severity.WARNING] == []


# ---- other processes taking the CPU ---------------------------------------------------------

def _timed(cpu_after: float, switches_after: float, wall_after: float = 4.0,
           n: int = 400, at: int = 250) -> RunTables:
    """A slower step from `at`: wall time, the process's CPU time and its preemptions."""
    rng = np.random.default_rng(3)
    seconds = _noisy(n, rng)
    cpu = seconds * 0.98
    seconds[at:] *= wall_after
    cpu[at:] *= cpu_after
    switches = rng.integers(0, 3, n).astype(float)
    switches[at:] += switches_after
    tables = _tables(seconds)
    tables.steps["cpu_time_s"], tables.steps["involuntary_switches"] = cpu, switches
    return tables


@pytest.mark.parametrize("cpu_after, switches_after, wall_after, why", [
    (1.1, 5, 4.0, "one thread: the same CPU work, preempted"),
    (5.0, 100, 20.0, "torch's threads spinning while a sibling is descheduled: CPU time up too"),
])
def test_other_processes_taking_the_cpu_is_info_and_says_so(cpu_after, switches_after, wall_after, why) -> None:
    finding = _only(throughput_drop.check(_timed(cpu_after, switches_after, wall_after)), Severity.INFO)
    assert finding.evidence["contention"] is True and finding.evidence["drop_step"] == 250, why
    assert "other processes" in finding.explanation and "preempted" in finding.explanation


@pytest.mark.parametrize("cpu_after, switches_after, why", [
    (1.0, 0, "a blocking call: waits without being preempted"),
    (4.0, 5, "more work per step: its CPU share and preemption rate stay"),
])
def test_a_slower_loop_stays_a_warning(cpu_after: float, switches_after: float, why: str) -> None:
    finding = _only(throughput_drop.check(_timed(cpu_after, switches_after)))
    assert "contention" not in finding.evidence, why


def test_longer_steps_on_a_machine_loaded_all_along_stay_a_warning() -> None:
    """Other processes share the CPU from the first step to the last. Before the drop the
    steps are shorter than a time slice: most run unpreempted (their median share reads
    100%) and one in three absorbs a whole wait. From step 250 the loop does 10x the work
    per step and every step is preempted alike. The process's share of the CPU did not
    change (window totals): a slower loop, not contention."""
    n, at = 400, 250
    rng = np.random.default_rng(5)
    cpu = np.full(n, 1e-3) * rng.uniform(0.95, 1.05, n)
    seconds = cpu.copy()
    switches = np.zeros(n)
    hit = rng.random(at) < 0.3  # before: a third of the steps wait out another process's slice
    seconds[:at][hit] += 7e-3
    switches[:at][hit] = 1
    cpu[at:] *= 10
    share = cpu[:at].sum() / seconds[:at].sum()
    seconds[at:] = cpu[at:] / share  # after: every step preempted, the same share overall
    switches[at:] = rng.poisson(switches[:at].sum() / cpu[:at].sum() * cpu[at:])
    tables = _tables(seconds)
    tables.steps["cpu_time_s"], tables.steps["involuntary_switches"] = cpu, switches
    assert np.median(cpu[at:] / seconds[at:]) < 0.5 * np.median(cpu[:at] / seconds[:at])  # medians mislead
    finding = _only(throughput_drop.check(tables))
    assert "contention" not in finding.evidence
