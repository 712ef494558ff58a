"""Capturing: a bounded torch.profiler window into rankK/profile/, from the Monitor, the
reference loop (`diagnose run --profile`) and the zero-code mode; never at the cost of
the training (numerics unchanged, a profiler fault switches profiling off only)."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from diagnose.cli import main
from diagnose.profiling.window import ProfileWindow
from diagnose.rundir.reader import read_run
from tests.profiling import _runs


def test_window_parsing_and_its_errors() -> None:
    assert ProfileWindow.parse("5, 2,5") == ProfileWindow(5, 2, 5)
    assert ProfileWindow.coerce(True) == ProfileWindow() and ProfileWindow().first_traced == 7
    assert ProfileWindow.coerce((1, 0, 2)).total == 3
    assert ProfileWindow.coerce(None) is None and ProfileWindow.coerce(False) is None
    for bad in ("5,2", "a,b,c", "1,1,0", "-1,2,3"):
        with pytest.raises(ValueError, match="WAIT"):
            ProfileWindow.parse(bad)
    with pytest.raises(ValueError):
        ProfileWindow.coerce(3.5)


def test_monitor_traces_exactly_the_window(profiled_run: Path) -> None:
    trace = _runs.read_trace(_runs.trace_of(profiled_run))
    assert _runs.profiler_steps(trace) == _runs.TRACED
    start = json.loads((profiled_run / "rank0" / "meta.jsonl").read_text().splitlines()[0])
    assert start["options"]["profile"] == {"wait": 2, "warmup": 1, "active": 3}
    # the window names the recorder's steps: the trace's steps were recorded in steps.jsonl
    steps = read_run(profiled_run).first.steps
    assert set(_runs.TRACED) <= set(steps.index)


def test_profiler_is_gone_after_the_window(tmp_path: Path) -> None:
    from diagnose import Monitor

    model, data = _runs.model_and_data()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with Monitor(tmp_path / "run", model=model, optimizer=opt, profile=(1, 1, 2)) as mon:
        for step in range(6):
            opt.zero_grad()
            model(data.tensors[0][:8]).sum().backward()
            opt.step()
            if step == 2:  # inside the window: torch's profiler is on
                assert mon.recorder._profiler.running and torch.autograd.profiler._is_profiler_enabled
        assert not mon.recorder._profiler.running  # stopped once steps 2-3 were written
        assert torch.autograd.profiler._is_profiler_enabled is False


def test_a_run_ending_inside_the_window_keeps_what_it_recorded(tmp_path: Path) -> None:
    _runs.train(tmp_path / "run", steps=5, profile=(1, 1, 10))
    assert _runs.profiler_steps(_runs.read_trace(_runs.trace_of(tmp_path / "run"))) == [2, 3, 4]


def test_a_run_ending_before_the_window_says_so(tmp_path: Path) -> None:
    _runs.train(tmp_path / "run", steps=3, profile=(5, 2, 5))
    assert not (tmp_path / "run" / "rank0" / "profile").exists()
    run = read_run(tmp_path / "run")
    assert run.first.profile is None
    assert any("profiling was asked for steps 7-11 but no trace was written" in n for n in run.notes)


def test_profiling_changes_no_numerics(tmp_path: Path) -> None:
    bare = _runs.train(None, steps=8)
    profiled = _runs.train(tmp_path / "run", steps=8, profile=(1, 1, 3))
    for a, b in zip(bare.parameters(), profiled.parameters()):
        assert torch.equal(a, b)


def test_a_profiler_fault_switches_profiling_off_not_training(tmp_path: Path, monkeypatch) -> None:
    from diagnose.profiling import capture

    def broken(self):
        raise RuntimeError("kineto went away")

    monkeypatch.setattr(capture.StepProfiler, "step", broken)
    _runs.train(tmp_path / "run", steps=8)
    run = read_run(tmp_path / "run")
    assert len(run.first.steps) == 8 and run.first.profile is None
    errors = run.first.events_of("profile_error")
    assert len(errors) == 1 and "kineto went away" in errors.iloc[0]["data"]["message"]
    assert run.first.events_of("recorder_error").empty


def test_cli_reference_loop_profile_steps(tmp_path: Path) -> None:
    out = tmp_path / "ref"
    result = CliRunner().invoke(main, ["run", "--steps", "7", "--profile-steps", "2,1,3", "--out", str(out),
                                       "--no-report"])
    assert result.exit_code == 0, result.output
    assert _runs.profiler_steps(_runs.read_trace(_runs.trace_of(out))) == [3, 4, 5]


def test_cli_bad_profile_steps_is_a_usage_error(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["run", "--profile-steps", "2,1", "--out", str(tmp_path / "x")])
    assert result.exit_code == 2
    assert "--profile-steps: profile steps must be three integers" in result.output
    assert "Traceback" not in result.output


SCRIPT = textwrap.dedent("""
    import torch
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = torch.nn.Linear(8, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(8):
        opt.zero_grad()
        model(torch.randn(4, 8)).pow(2).mean().backward()
        opt.step()
""")


def test_zero_code_mode_profiles_an_unchanged_script(tmp_path: Path) -> None:
    script = tmp_path / "train.py"
    script.write_text(SCRIPT)
    out = tmp_path / "zc"
    proc = subprocess.run([sys.executable, "-m", "diagnose.zerocode", "--out", str(out), "--profile-steps", "2,1,3",
                           str(script)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert _runs.profiler_steps(_runs.read_trace(_runs.trace_of(out))) == [3, 4, 5]
    assert read_run(out).first.profile.ok


def test_torchrun_passes_the_window_to_every_rank(tmp_path: Path, monkeypatch) -> None:
    import subprocess as sp

    calls = []
    monkeypatch.setattr(sp, "call", lambda command: calls.append(command) or 0)
    script = tmp_path / "train.py"
    script.write_text(SCRIPT)
    result = CliRunner().invoke(main, ["run", "--nproc-per-node", "2", "--profile", "--out", str(tmp_path / "d"),
                                       "--no-report", str(script)])
    assert result.exit_code == 0, result.output
    [command] = calls
    assert command[command.index("--profile-steps") + 1] == "5,2,5"
    assert command.index("--profile-steps") < command.index(str(script))  # an option of diagnose.zerocode


def test_torchrun_reference_loop_passes_the_window_to_every_rank(tmp_path: Path, monkeypatch) -> None:
    import subprocess as sp

    calls = []
    monkeypatch.setattr(sp, "call", lambda command: calls.append(command) or 0)
    result = CliRunner().invoke(main, ["run", "--nproc-per-node", "2", "--device", "cpu",
                                       "--profile-steps", "3,1,2", "--out", str(tmp_path / "d"),
                                       "--no-report"])
    assert result.exit_code == 0, result.output
    [command] = calls
    assert command[command.index("--profile-steps") + 1] == "3,1,2"
    assert command.index("run") < command.index("--profile-steps")  # an option of the workers' run
