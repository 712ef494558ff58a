"""The recorder on a real CUDA device: async norms, fp16 GradScaler, memory traces.

Skipped cleanly without CUDA (CI has none); run on the lent GPU machine.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from diagnose import Monitor

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _train(run_dir: Path | None, steps: int = 40, nan_at: int | None = None):
    torch.manual_seed(0)
    dev = torch.device("cuda")
    model = torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.ReLU(),
                                torch.nn.Linear(256, 10)).to(dev)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=True)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1e-3, total_steps=steps)
    scaler = torch.amp.GradScaler("cuda")
    gen = torch.Generator(device=dev).manual_seed(0)
    data = [(torch.randn(32, 64, device=dev, generator=gen),
             torch.randint(0, 10, (32,), device=dev, generator=gen)) for _ in range(steps)]
    mon = Monitor(run_dir, model=model, optimizer=opt, scheduler=sched, scaler=scaler) \
        if run_dir else None
    for i, (x, y) in enumerate(data):
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.float16):
            loss = F.cross_entropy(model(x), y)
        if nan_at == i:
            loss = loss * float("nan")
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        scaler.step(opt)
        scaler.update()
        sched.step()
    if mon:
        mon.close()
    return model


def test_cuda_numerics_unchanged_and_steps_recorded(tmp_path):
    bare = _train(None)
    watched = _train(tmp_path / "run")
    for a, b in zip(bare.parameters(), watched.parameters()):
        assert torch.equal(a, b)
    steps = _lines(tmp_path / "run" / "rank0" / "steps.jsonl")
    assert len(steps) == 40
    assert all(s["mem_alloc_bytes"] > 0 and s["mem_peak_bytes"] >= s["mem_alloc_bytes"]
               for s in steps)
    assert all(isinstance(s["loss"], float) and s["grad_norm"] > 0 for s in steps)
    assert steps[0]["scale"] == 65536.0


def test_cuda_skipped_step_and_nan_recorded(tmp_path):
    _train(tmp_path / "run", nan_at=7)
    steps = _lines(tmp_path / "run" / "rank0" / "steps.jsonl")
    assert steps[7]["loss"] == "nan"
    assert steps[7]["scale_after"] == steps[7]["scale"] / 2
    assert steps[7]["nonfinite_grads"]
