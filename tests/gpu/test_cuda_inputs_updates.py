"""Batch finite checks and update norms on a real CUDA device: batches already on the GPU
(one aminmax per float tensor, read a step later), batches on pinned CPU memory, the weight
copy on sampled steps; numerics unchanged, no device sync from either feature.

Skipped cleanly without CUDA (CI has none); run on the lent GPU machine.
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from diagnose import Monitor
from diagnose.recorder import inputs, updates
from diagnose.rules.data import nonfinite_inputs, update_ratio
from diagnose.rundir.reader import read_run

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


def _train(run_dir: Path | None, *, on_device: bool, nan_at: int | None = None, steps: int = 40):
    torch.manual_seed(0)
    dev = torch.device("cuda")
    model = torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.ReLU(), torch.nn.Linear(256, 10)).to(dev)
    opt = torch.optim.AdamW([{"params": model[0].parameters(), "lr": 1e-9},
                             {"params": model[2].parameters()}], lr=1e-3, fused=True)
    gen = torch.Generator().manual_seed(0)
    batches = []
    for i in range(steps):
        x, y = torch.randn(32, 64, generator=gen), torch.randint(0, 10, (32,), generator=gen)
        if i == nan_at:
            x[3, 5] = float("nan")
        batches.append((x.to(dev), y.to(dev)) if on_device else (x.pin_memory(), y.pin_memory()))
    mon = Monitor(run_dir, model=model, optimizer=opt, param_every=5) if run_dir else None
    for x, y in (mon.loader(batches) if mon else batches):
        x, y = x.to(dev, non_blocking=True), y.to(dev, non_blocking=True)
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(torch.nan_to_num(x)), y).backward()
        opt.step()
    if mon:
        mon.close()
    return model


@pytest.mark.parametrize("on_device", [True, False])
def test_cuda_nan_batch_found_and_numerics_unchanged(tmp_path: Path, on_device: bool) -> None:
    bare = _train(None, on_device=on_device, nan_at=9)
    watched = _train(tmp_path / "run", on_device=on_device, nan_at=9)
    for a, b in zip(bare.parameters(), watched.parameters()):
        assert torch.equal(a, b)
    run = read_run(tmp_path / "run").first
    [finding] = nonfinite_inputs.check(run)
    assert (finding.evidence["first_step"], finding.evidence["tensor"]) == (9, "batch[0]")
    [small] = update_ratio.check(run)  # the first layer at LR 1e-9
    assert small.evidence["direction"] == "small" and list(small.evidence["median_ratio"]) == ["0"]


def test_cuda_checks_and_copy_never_sync() -> None:
    dev = torch.device("cuda")
    model = torch.nn.Linear(64, 10).to(dev)
    params = list(model.parameters())
    batch = {"x": torch.randn(32, 64, device=dev), "mask": torch.zeros(4, 4, device=dev)}
    checks, sampler = inputs.InputChecks(), updates.UpdateSampler()
    sampler.before(params)  # the first call reads the device's total memory (once, not a sync)
    sampler.after(params)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        checks.add(batch)
        _, paths, pairs = checks.take()
        sampler.before(params)
        with torch.no_grad():
            params[0].add_(1.0)
        positions, norms = sampler.after(params)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert paths == ['batch["x"]', 'batch["mask"]'] and pairs.device.type == "cuda"
    assert norms.device.type == "cuda" and checks.failed is None and sampler.refused is None
    assert norms.cpu()[0].item() == pytest.approx((64 * 10) ** 0.5, rel=1e-5)
