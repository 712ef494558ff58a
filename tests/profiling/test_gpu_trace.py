"""The GPU path on real CUDA traces captured by bench/profile_gpu.py (tests/data/profile/),
trimmed to the 3 profiled steps: torch-tb-profiler's GPU metrics, kernels and the
low-gpu-utilization rule. Skipped until the traces exist; they need no GPU to run."""
from __future__ import annotations

from pathlib import Path

import pytest

from diagnose.profiling.load import load_profile
from diagnose.rules._base import Severity
from diagnose.rules.resources import low_gpu_utilization
from diagnose.rundir.tables import RunTables

DATA = Path(__file__).resolve().parents[1] / "data" / "profile"
CASES = ("gpu_busy", "gpu_starved")

pytestmark = pytest.mark.skipif(not all(any((DATA / c).glob("*.pt.trace.json*")) for c in CASES),
                                reason="no GPU traces yet: run `python3 bench/profile_gpu.py` on a CUDA machine")


@pytest.fixture(scope="module")
def profiles():
    return {case: load_profile(DATA / case) for case in CASES}


@pytest.mark.parametrize("case", CASES)
def test_gpu_trace_parses_with_device_time(profiles, case: str) -> None:
    profile = profiles[case]
    assert profile.ok, profile.message
    steps = [s.step for s in profile.steps]
    assert steps == sorted(set(steps)) and len(steps) >= 2  # each step once (GPU-side step spans dropped)
    assert profile.on_gpu and all(0 < g.utilization <= 1 for g in profile.gpus)
    assert profile.mean_ms["kernel"] > 0 and profile.top_kernels
    # cuda_runtime events, re-labelled, tie kernels to the operators that launched them
    assert profile.mean_ms["runtime"] > 0
    assert any("cuda_runtime events read as runtime" in a for a in profile.adapted)
    assert any((op.device_self_ms or 0) > 0 for op in profile.top_operators)
    for step in profile.steps:
        assert sum(step.parts_ms.values()) == pytest.approx(step.total_ms, rel=0.01)


def test_busy_gpu_is_not_flagged(profiles) -> None:
    profile = profiles["gpu_busy"]
    assert profile.gpus[0].utilization >= low_gpu_utilization.MAX_UTILIZATION
    assert low_gpu_utilization.check(RunTables(profile=profile)) == []


def test_starved_gpu_is_flagged_for_data_loading(profiles) -> None:
    profile = profiles["gpu_starved"]
    [finding] = low_gpu_utilization.check(RunTables(profile=profile))
    assert finding.severity == Severity.WARNING
    assert finding.evidence["largest_host_part"] == "data_loading"
    assert profile.mean_share("data_loading") > 0.5
    assert any("DataLoader" in r for r in profile.recommendations)


def test_no_tensor_core_verdict_on_hopper(profiles) -> None:
    """torch-tb-profiler's Tensor Core kernel list predates sm90 (nvjet_*, *wgmma*): on
    these fp16 runs it would say "no Tensor Cores, enable AMP". The verdict is dropped."""
    for profile in profiles.values():
        assert not any("Automatic Mixed Precision" in r for r in profile.recommendations)
        assert all(k.tensor_cores is None for k in profile.top_kernels)
        assert any(a.startswith("Tensor Core use not assessed on compute capability 9") for a in profile.adapted)


def test_gpu_section_in_the_reports(profiled_run: Path, tmp_path: Path) -> None:
    """A run directory whose profile is the starved H200 trace: the HTML has the GPU and
    kernel tables (kernel names shortened, full in a tooltip), the terminal the utilization."""
    import shutil

    from click.testing import CliRunner

    from diagnose.cli import main
    from tests.report.test_html import parse

    run = tmp_path / "run"
    shutil.copytree(profiled_run, run)
    folder = run / "rank0" / "profile"
    shutil.rmtree(folder)
    shutil.copytree(DATA / "gpu_starved", folder)
    text = CliRunner().invoke(main, ["report", str(run)]).stdout
    assert "GPU 0 (NVIDIA H200): utilization 6%" in text and "low-gpu-utilization" in text
    out = tmp_path / "r.html"
    assert CliRunner().invoke(main, ["report", str(run), "--format", "html", "-o", str(out)]).exit_code == 0
    page = parse(out.read_text(encoding="utf-8"))
    titles = [a["title"] for t, a in page.tags if t == "td" and "title" in a]
    assert titles and any(t.startswith("void at::native::") and "<" in t for t in titles)
    assert "at::native::reduce_kernel<…>" in "".join(page.text)
    assert [t for t, _ in page.tags].count("script") == 0
