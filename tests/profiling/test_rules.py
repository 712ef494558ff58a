"""The rules that read a profile: low-gpu-utilization (runs only on a GPU trace) and
dataloader-bottleneck's corroborating evidence."""
from __future__ import annotations

from pathlib import Path

import pytest

from diagnose.profiling.summary import GpuUse, ProfileSummary, StepTime
from diagnose.rules import run_rules
from diagnose.rules._base import Severity
from diagnose.rules.resources import low_gpu_utilization
from diagnose.rundir.reader import read_run
from diagnose.rundir.tables import RunTables


def _profile(utilization: float, shares: dict[str, float], steps: int = 3) -> ProfileSummary:
    """A GPU profile whose steps split 10 ms as `shares` say (computing the metric is
    torch-tb-profiler's; this tests the decision)."""
    parts = {p: 10.0 * s for p, s in shares.items()}
    rows = [StepTime(step=7 + i, total_ms=10.0, parts_ms=dict(parts)) for i in range(steps)]
    mean = dict(parts, total=10.0)
    return ProfileSummary(steps=rows, mean_ms=mean, gpus=[GpuUse(device=0, name="GPU-X", utilization=utilization)],
                          trace_files=["rank0/profile/rank0.1.pt.trace.json.gz"])


def _check(profile: ProfileSummary):
    tables = RunTables(profile=profile)
    assert tables.has(*low_gpu_utilization.REQUIRES)
    return low_gpu_utilization.check(tables)


def test_fires_when_the_gpu_waits_for_data() -> None:
    [finding] = _check(_profile(0.2, {"kernel": 0.2, "data_loading": 0.7, "other": 0.1}))
    assert finding.severity == Severity.WARNING and finding.steps == (7, 9)
    assert finding.evidence["largest_host_part"] == "data_loading" and finding.evidence["utilization"] == 0.2
    assert "GPU 0 is busy 20%" in finding.title and "data loading takes 70%" in finding.title
    assert "num_workers" in finding.fix


def test_launch_bound_gpu_names_cpu_exec() -> None:
    [finding] = _check(_profile(0.4, {"kernel": 0.4, "cpu_exec": 0.5, "other": 0.1}))
    assert finding.severity == Severity.WARNING and finding.evidence["largest_host_part"] == "cpu_exec"
    assert "torch.compile" in finding.fix


def test_mildly_low_with_no_dominant_host_part_is_info() -> None:
    [finding] = _check(_profile(0.45, {"kernel": 0.45, "cpu_exec": 0.2, "runtime": 0.15, "other": 0.2}))
    assert finding.severity == Severity.INFO


@pytest.mark.parametrize("utilization", [0.5, 0.93])
def test_silent_on_a_busy_gpu(utilization: float) -> None:
    assert _check(_profile(utilization, {"kernel": utilization, "other": 1 - utilization})) == []


def test_silent_on_too_few_steps() -> None:
    assert _check(_profile(0.1, {"kernel": 0.1, "other": 0.9}, steps=2)) == []


def test_cpu_profile_has_nothing_to_check(profiled_run: Path) -> None:
    findings, notes = run_rules(read_run(profiled_run))
    assert not [f for f in findings if f.rule == "low-gpu-utilization"]
    assert "rule low-gpu-utilization skipped: no profile.gpus recorded" in notes


def test_dataloader_bottleneck_quotes_the_profile(slow_loader_run: Path) -> None:
    findings, _ = run_rules(read_run(slow_loader_run), select=["dataloader-bottleneck"])
    [finding] = findings
    profile = finding.evidence["profile"]
    assert profile["profiled_steps"] == [3, 5]
    assert profile["profile_data_loading_share"] > 0.5  # the profiler sees the same wait
    assert "profiler's trace of steps 3-5 puts data loading at" in finding.explanation


@pytest.mark.parametrize("name", ["gru_adam_plateau_fp16", "two_optimizers"])
def test_profiling_a_healthy_run_raises_no_alarm(name: str, tmp_path: Path, monkeypatch) -> None:
    """The profiled steps run slower and one step pauses to write the trace: no rule may
    mistake that for a problem (healthy scenarios of tests/harness/scenarios.py)."""
    import functools

    from diagnose import Monitor
    from tests.harness import scenarios

    monkeypatch.setattr(scenarios, "Monitor", functools.partial(Monitor, profile=(3, 1, 3)))
    run = read_run(scenarios.record(name, tmp_path / name))
    assert run.first.profile is not None and run.first.profile.ok
    findings, _ = run_rules(run)
    assert [f.title for f in findings if f.severity >= Severity.WARNING] == []
