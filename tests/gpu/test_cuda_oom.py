"""Real CUDA out-of-memory errors under a Monitor: the `oom` event holds the allocator's
state and the `out-of-memory` rule explains it. Skipped without CUDA; run on a GPU with

    python3 -m pytest -q -p no:xdist tests/gpu/test_cuda_oom.py

The errors are made by asking for 1.5x the device's capacity in one tensor: inside a
backward hook (the loop catches the error and goes on) and inside the model's forward
(the error ends the `with Monitor` block).
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner

from diagnose import Monitor
from diagnose.cli import main as cli
from diagnose.rundir.reader import read_run

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


def _too_much() -> torch.Tensor:
    total = torch.cuda.get_device_properties(0).total_memory
    return torch.empty(int(total * 1.5), dtype=torch.uint8, device="cuda")


class _Net(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = torch.nn.Sequential(torch.nn.Linear(256, 1024), torch.nn.ReLU(), torch.nn.Linear(1024, 10))
        self.explode = False

    def forward(self, x):
        if self.explode:
            _too_much()
        return self.body(x)


def _train(run_dir: Path, *, backward_oom_at: int | None = None, forward_oom_at: int | None = None) -> int:
    torch.manual_seed(0)
    model = _Net().cuda()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    done = 0
    with Monitor(run_dir, model=model, optimizer=opt):
        for i in range(20):
            x, y = torch.randn(64, 256, device="cuda"), torch.randint(0, 10, (64,), device="cuda")
            opt.zero_grad(set_to_none=True)
            model.explode = i == forward_oom_at
            out = model(x)
            if i == backward_oom_at:
                out.register_hook(lambda grad: _too_much())
            try:
                F.cross_entropy(out, y).backward()
            except torch.OutOfMemoryError:
                continue
            opt.step()
            done += 1
    return done


def _oom_finding(run_dir: Path) -> dict:
    result = CliRunner().invoke(cli, ["report", str(run_dir), "--format", "json"])
    assert result.exit_code in (0, 1), result.output
    (finding,) = [f for f in json.loads(result.stdout)["findings"] if f["rule"] == "out-of-memory"]
    return finding


def _check_state(event: dict) -> None:
    total = torch.cuda.get_device_properties(0).total_memory
    assert event["total_bytes"] == total
    assert 0 < event["allocated_bytes"] <= event["reserved_bytes"] <= total
    assert event["peak_bytes"] >= event["allocated_bytes"]
    assert abs(event["requested_bytes"] - 1.5 * total) < 0.01 * total  # parsed from torch's message


def test_real_oom_in_backward_caught_by_the_loop(tmp_path):
    assert _train(tmp_path / "run", backward_oom_at=5) == 19
    events = read_run(tmp_path / "run").first.events_of("oom")
    assert list(events["step"]) == [5]
    event = events["data"].iloc[0]
    assert event["where"] == "backward"
    _check_state(event)
    finding = _oom_finding(tmp_path / "run")
    assert finding["steps"] == [5, 5] and not finding["evidence"]["ended_the_run"]
    assert finding["evidence"]["looks_like"] == "step-too-big"


def test_real_oom_in_forward_ends_the_run(tmp_path):
    with pytest.raises(torch.OutOfMemoryError):
        _train(tmp_path / "run", forward_oom_at=7)
    run = read_run(tmp_path / "run").first
    assert run.meta["status"] == "crashed"
    events = run.events_of("oom")
    assert list(events["step"]) == [7] and events["data"].iloc[0]["where"] == "the training loop"
    _check_state(events["data"].iloc[0])
    assert _oom_finding(tmp_path / "run")["evidence"]["ended_the_run"]
