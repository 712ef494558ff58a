"""Reading traces: torch-tb-profiler's parser as a library, what current torch traces
need adapted for it, and what happens without it or with a bad trace."""
from __future__ import annotations

import json
import shutil
import sys
import tempfile
from pathlib import Path

import pytest
from click.testing import CliRunner

from diagnose.cli import main
from diagnose.profiling.load import adapt_trace, load_profile, plain_text
from diagnose.profiling.summary import PARTS
from diagnose.rundir.reader import read_run
from tests.profiling import _runs


def test_breakdown_adds_up_per_recorder_step(profiled_run: Path) -> None:
    profile = read_run(profiled_run).first.profile
    assert profile.ok and profile.parser.startswith("torch-tb-profiler ")
    assert [s.step for s in profile.steps] == _runs.TRACED
    for step in profile.steps:
        assert set(step.parts_ms) == set(PARTS)
        assert sum(step.parts_ms.values()) == pytest.approx(step.total_ms, rel=0.01)
        assert step.parts_ms["cpu_exec"] > 0 and step.parts_ms["kernel"] == 0  # a CPU run
    assert sum(profile.mean_share(p) for p in PARTS) == pytest.approx(1.0, abs=0.01)
    assert profile.gpus == [] and not profile.on_gpu and profile.top_kernels == []
    names = [op.name for op in profile.top_operators]
    assert "aten::addmm" in names and len(names) <= 10
    assert profile.trace_files == [str(_runs.trace_of(profiled_run).relative_to(profiled_run))]


def test_data_loading_is_only_seen_with_the_adaptation(slow_loader_run: Path) -> None:
    """torch-tb-profiler 0.4.3 alone drops current torch's DataLoader spans (they became
    user annotations): its data-loading share is 0 on a run that waits 15 ms a step."""
    from torch_tb_profiler.profiler.data import RunProfileData
    from torch_tb_profiler.profiler.event_parser import ProfileRole

    trace = _runs.trace_of(slow_loader_run)
    with tempfile.TemporaryDirectory() as cache:
        raw = RunProfileData.parse("rank0", None, str(trace), cache)
    assert raw.avg_costs.costs[ProfileRole.DataLoader] == 0
    assert not any("DataLoader" in r for r in raw.recommendations)

    profile = load_profile(trace.parent)
    assert profile.mean_share("data_loading") > 0.5  # ~15 ms of sleep against ~1 ms of compute
    assert any("DataLoader spans read as cpu_op" in a for a in profile.adapted)
    assert any("time is in DataLoader" in r and "num_workers" in r for r in profile.recommendations)
    assert all("<" not in r for r in profile.recommendations)  # its HTML links became text


def test_adapt_trace_renames_what_current_torch_writes() -> None:
    trace = {"traceEvents": [
        {"ph": "X", "cat": "cuda_runtime", "name": "cudaLaunchKernel"},
        {"ph": "X", "cat": "cuda_driver", "name": "cuLaunchKernel"},
        {"ph": "X", "cat": "user_annotation", "name": "enumerate(DataLoader)#_SingleProcessDataLoaderIter.__next__"},
        {"ph": "X", "cat": "user_annotation", "name": "my_region"},
        {"ph": "X", "cat": "gpu_user_annotation", "name": "ProfilerStep#3"},
        {"ph": "s", "cat": "fwdbwd", "name": "fwdbwd", "id": 1},
        {"ph": "X", "cat": "kernel", "name": "gemm"}]}
    notes = adapt_trace(trace)
    assert [e["cat"] for e in trace["traceEvents"]] == [
        "runtime", "runtime", "cpu_op", "user_annotation", "forward_backward", "kernel"]
    assert sorted(notes) == sorted(["1 cuda_runtime events read as runtime", "1 cuda_driver events read as runtime",
                                    "1 DataLoader spans read as cpu_op", "1 gpu_user_annotation spans dropped",
                                    "1 fwdbwd events read as forward_backward"])


def test_recommendation_links_become_text() -> None:
    html = 'Try <a href="https://x.test/a" target="_blank">this</a> <b>now</b>.'
    assert plain_text(html) == "Try this (https://x.test/a) now."


def _copy(run: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    (copy / "rank0" / "report.html").unlink(missing_ok=True)
    return copy


def test_without_the_extra_the_report_says_how_to_get_it(profiled_run: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "torch_tb_profiler", None)  # import fails as if not installed
    monkeypatch.setitem(sys.modules, "torch_tb_profiler.profiler", None)
    monkeypatch.setitem(sys.modules, "torch_tb_profiler.profiler.data", None)
    run = _copy(profiled_run, tmp_path)
    result = CliRunner().invoke(main, ["report", str(run)])
    assert result.exit_code == 0, result.output
    assert "pip install 'diagnose[profile]'" in result.stdout
    document = json.loads(CliRunner().invoke(main, ["report", str(run), "--format", "json"]).stdout)
    assert document["profile"]["0"]["status"] == "unavailable"
    assert any("pip install 'diagnose[profile]'" in n for n in document["notes"])
    html = CliRunner().invoke(main, ["report", str(run), "--format", "html", "-o", str(tmp_path / "r.html")])
    assert html.exit_code == 0 and "diagnose[profile]" in (tmp_path / "r.html").read_text()


def test_a_bad_trace_is_a_note_not_a_crash(profiled_run: Path, tmp_path: Path) -> None:
    run = _copy(profiled_run, tmp_path)
    trace = _runs.trace_of(run)
    trace.write_bytes(b"\x1f\x8b not really gzip")
    result = CliRunner().invoke(main, ["report", str(run), "--format", "json"])
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert document["profile"]["0"]["status"] == "failed"
    assert any(n.startswith("rank0/profile: could not parse") for n in document["notes"])
    assert "Traceback" not in result.output


def _kineto_like_gpu_trace(steps=(7, 8, 9)) -> dict:
    """A minimal trace in the categories current torch (Kineto) writes on a GPU: per step a
    DataLoader span (6 ms), an aten::mm that launches a 3 ms kernel through cudaLaunchKernel,
    and the step mirrored on the GPU timeline (`gpu_user_annotation`). Real CUDA traces
    are in tests/data/profile/ (bench/profile_gpu.py); this one runs without them."""
    events = [{"ph": "X", "cat": "Trace", "name": "PyTorch Profiler (0)", "pid": "Spans", "tid": "PyTorch Profiler",
               "ts": 1000, "dur": 10000 * len(steps)}]
    for i, step in enumerate(steps):
        t0, ext, corr = 1000 + i * 10000, 10 * i, 100 + i
        events += [
            {"ph": "X", "cat": "user_annotation", "name": f"ProfilerStep#{step}", "pid": 10, "tid": 10, "ts": t0,
             "dur": 10000, "args": {"External id": ext + 1}},
            {"ph": "X", "cat": "user_annotation", "name": "enumerate(DataLoader)#_SingleProcessDataLoaderIter.__next__",
             "pid": 10, "tid": 10, "ts": t0 + 10, "dur": 6000, "args": {"External id": ext + 2}},
            {"ph": "X", "cat": "cpu_op", "name": "aten::mm", "pid": 10, "tid": 10, "ts": t0 + 6100, "dur": 200,
             "args": {"External id": ext + 3}},
            {"ph": "X", "cat": "cuda_runtime", "name": "cudaLaunchKernel", "pid": 10, "tid": 10, "ts": t0 + 6150,
             "dur": 20, "args": {"External id": ext + 3, "correlation": corr}},
            {"ph": "X", "cat": "kernel", "name": "sm90_gemm", "pid": 0, "tid": 7, "ts": t0 + 6200, "dur": 3000,
             "args": {"External id": ext + 3, "correlation": corr, "device": 0, "stream": 7, "blocks per SM": 1.0,
                      "est. achieved occupancy %": 12}},
            {"ph": "X", "cat": "gpu_user_annotation", "name": f"ProfilerStep#{step}", "pid": 0, "tid": 7,
             "ts": t0 + 6200, "dur": 3000}]
    return {"schemaVersion": 1, "traceEvents": events,
            "deviceProperties": [{"id": 0, "name": "GPU-X", "totalGlobalMem": 80 << 30, "computeMajor": 9,
                                  "computeMinor": 0}]}


@pytest.mark.filterwarnings("ignore:The copy keyword is deprecated")  # torch-tb-profiler on pandas 3, called raw
def test_gpu_categories_of_current_torch(tmp_path: Path) -> None:
    from torch_tb_profiler.profiler.data import RunProfileData

    raw = RunProfileData.from_json("rank0", None, _kineto_like_gpu_trace())  # torch-tb-profiler alone
    assert raw.steps_names == ["7", "7", "8", "8", "9", "9"]  # each step twice (the GPU-side span)
    assert not raw.has_runtime and raw.op_list_groupby_name[0].self_device_duration == 0  # kernel not tied to mm

    folder = tmp_path / "rank0" / "profile"
    folder.mkdir(parents=True)
    _runs.write_trace(folder / "rank0.1.pt.trace.json.gz", _kineto_like_gpu_trace())
    profile = load_profile(folder)
    assert [s.step for s in profile.steps] == [7, 8, 9]
    assert profile.mean_ms["total"] == pytest.approx(10.0)
    assert profile.mean_ms["kernel"] == pytest.approx(3.0) and profile.mean_ms["data_loading"] == pytest.approx(6.0)
    assert profile.mean_ms["runtime"] > 0
    [gpu] = profile.gpus
    assert gpu.name == "GPU-X" and gpu.utilization == pytest.approx(0.3) and gpu.occupancy == pytest.approx(0.12)
    [mm] = profile.top_operators
    assert mm.name == "aten::mm" and mm.device_self_ms == pytest.approx(9.0)  # 3 launches x 3 ms
    assert profile.top_kernels[0].name == "sm90_gemm" and profile.top_kernels[0].calls == 3
    assert any("low utilization" in r for r in profile.recommendations)
