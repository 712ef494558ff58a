"""Out-of-memory errors: recorded as `oom` events with the step and the memory state, and
explained by the `out-of-memory` rule. On CPU the error is simulated (torch's own
`torch.OutOfMemoryError` with CUDA's message, raised from a custom autograd Function);
tests/gpu/test_cuda_oom.py makes real ones on a GPU.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner

from diagnose import Monitor
from diagnose.cli import main as cli
from diagnose.recorder import oom
from diagnose.rules._base import RunTables
from diagnose.rules.resources import out_of_memory
from diagnose.rundir.reader import read_run
from tests.zerocode._helpers import record

MESSAGE = ("CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of 79.15 GiB "
           "of which 1.06 GiB is free.")
GiB = 2**30


class _FailingBackward(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x * 1.0

    @staticmethod
    def backward(ctx, grad):
        raise torch.OutOfMemoryError(MESSAGE)


def _report(run_dir: Path) -> dict:
    result = CliRunner().invoke(cli, ["report", str(run_dir), "--format", "json"])
    assert result.exit_code in (0, 1), result.output
    return json.loads(result.stdout)


def _loop(run_dir: Path, steps: int, oom_at: int, catch: bool) -> int:
    """A Monitor loop whose backward runs out of memory at step `oom_at`."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    done = 0
    with Monitor(run_dir, model=model, optimizer=opt):
        for i in range(steps):
            x, y = torch.randn(8, 6), torch.randint(0, 3, (8,))
            opt.zero_grad()
            out = model(x)
            if i == oom_at:
                out = _FailingBackward.apply(out)
            try:
                F.cross_entropy(out, y).backward()
            except torch.OutOfMemoryError:
                if not catch:
                    raise
                continue
            opt.step()
            done += 1
    return done


def _ooms(run_dir: Path) -> list[dict]:
    events = read_run(run_dir).first.events_of("oom")
    return [{**d, "step": s} for s, d in zip(events["step"], events["data"])]


def test_a_caught_oom_in_backward_is_recorded_and_explained(tmp_path):
    assert _loop(tmp_path / "run", 12, oom_at=4, catch=True) == 11  # the loop went on
    (event,) = _ooms(tmp_path / "run")
    assert (event["step"], event["where"], event["type"]) == (4, "backward", "OutOfMemoryError")
    assert event["requested_bytes"] == 2 * GiB and event["free_bytes"] == int(1.06 * GiB)
    document = _report(tmp_path / "run")
    assert document["run"]["status"] == "finished"
    (finding,) = [f for f in document["findings"] if f["rule"] == "out-of-memory"]
    assert finding["severity"] == "error" and finding["steps"] == [4, 4]
    assert finding["evidence"]["caught"] == 1 and not finding["evidence"]["ended_the_run"]
    assert "Out of memory at step 4 (backward): asked for 2.0 GiB" in finding["title"]
    assert {f["rule"] for f in document["findings"]} == {"out-of-memory"}  # nothing else from it


def test_an_oom_that_ends_the_run_is_recorded_once(tmp_path):
    with pytest.raises(torch.OutOfMemoryError):
        _loop(tmp_path / "run", 12, oom_at=6, catch=False)
    ooms = _ooms(tmp_path / "run")
    assert [(e["step"], e["where"]) for e in ooms] == [(6, "backward")]  # not again at the exit
    document = _report(tmp_path / "run")
    assert document["run"]["status"] == "crashed"
    (finding,) = [f for f in document["findings"] if f["rule"] == "out-of-memory"]
    assert finding["evidence"]["ended_the_run"] and finding["evidence"]["caught"] == 0
    assert finding["title"].endswith("it ended the run")


def test_zero_code_script_that_runs_out_of_memory_twice(tmp_path):
    """A plain script: caught in backward at batch 3, uncaught in forward at batch 7."""
    run = record(Path(__file__).with_name("oom_script.py"), tmp_path / "run")
    assert run.returncode == 1 and run.status["status"] == "crashed"
    ooms = _ooms(tmp_path / "run")
    # batch 3 skipped its optimizer step, so batch 7 is optimizer step 6
    assert [(e["step"], e["where"]) for e in ooms] == [(3, "backward"), (6, "the training loop")]
    document = _report(tmp_path / "run")
    (finding,) = [f for f in document["findings"] if f["rule"] == "out-of-memory"]
    assert finding["evidence"]["count"] == 2 and finding["evidence"]["caught"] == 1
    # the OOM'd steps' forwards never got a backward: they are still no evaluation passes
    assert [f["rule"] for f in document["findings"] if f["severity"] != "info"] == ["out-of-memory"]


def test_the_message_is_parsed_into_sizes():
    fields = oom.describe(torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 512.00 MiB. GPU 0 has a "
                                                 "total capacity of 15.77 GiB of which 20.12 MiB is free."),
                          None, "backward")
    assert fields["requested_bytes"] == 512 * 2**20 and fields["free_bytes"] == int(20.12 * 2**20)
    assert oom.is_oom(RuntimeError("DefaultCPUAllocator: not enough memory: you tried to allocate 8 GB"))
    assert not oom.is_oom(RuntimeError("shape mismatch"))


# ---- the rule's three stories, on tables built in memory -------------------------------------
def _tables(oom_data: dict, mem: list[float] | None = None, status: str = "crashed") -> RunTables:
    events = pd.DataFrame({"kind": ["oom"], "step": pd.array([50], dtype="Int64"), "t_s": [1.0],
                           "data": [oom_data]})
    steps = pd.DataFrame({"mem_alloc_bytes": mem}, index=pd.Index(range(len(mem)), name="step")) \
        if mem else pd.DataFrame(index=pd.Index([], name="step"))
    return RunTables(meta={"status": status, "error": "OutOfMemoryError: CUDA out of memory"},
                     events=events, steps=steps)


def _story(tables: RunTables) -> str:
    (finding,) = out_of_memory.check(tables)
    return finding.evidence["looks_like"]


STATE = {"where": "backward", "requested_bytes": 2 * GiB, "total_bytes": 80 * GiB, "peak_bytes": 79 * GiB}


def test_reserved_but_unallocated_memory_reads_as_fragmentation():
    tables = _tables({**STATE, "allocated_bytes": 60 * GiB, "reserved_bytes": 78 * GiB}, mem=[60 * GiB] * 60)
    assert _story(tables) == "fragmentation"


def test_memory_that_grew_over_the_run_reads_as_growth():
    mem = [20 * GiB + i * GiB for i in range(60)]
    tables = _tables({**STATE, "allocated_bytes": 78 * GiB, "reserved_bytes": 78.5 * GiB}, mem=mem)
    assert _story(tables) == "growth"


def test_flat_memory_and_a_full_device_read_as_a_step_too_big():
    tables = _tables({**STATE, "allocated_bytes": 78 * GiB, "reserved_bytes": 78.5 * GiB}, mem=[40 * GiB] * 60)
    assert _story(tables) == "step-too-big"


def test_an_exception_event_alone_still_counts():
    """Runs recorded before `oom` events existed: the exception's text says it."""
    events = pd.DataFrame({"kind": ["exception"], "step": pd.array([7], dtype="Int64"), "t_s": [1.0],
                           "data": [{"type": "OutOfMemoryError", "message": MESSAGE}]})
    (finding,) = out_of_memory.check(RunTables(meta={"status": "crashed"}, events=events))
    assert finding.steps == (7, 7)


def test_silent_without_an_oom():
    events = pd.DataFrame({"kind": ["exception"], "step": pd.array([7], dtype="Int64"), "t_s": [math.nan],
                           "data": [{"type": "RuntimeError", "message": "shape mismatch"}]})
    assert out_of_memory.check(RunTables(meta={"status": "crashed"}, events=events)) == []
