"""On CUDA: fp16 autocast with both GradScaler spellings, recorded unchanged (skipped
without a GPU)."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
import torch

from tests.zerocode._helpers import REPO, env, record

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]

SCRIPT = """
import torch
import torch.nn as nn
import torch.nn.functional as F
torch.manual_seed(0)
device = "cuda"
model = nn.Sequential(nn.Linear(64, 256), nn.GELU(), nn.Dropout(0.1), nn.Linear(256, 8)).to(device)
opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1e-3, total_steps=24)
scaler = {scaler}
x = torch.randn(24, 32, 64, device=device)
y = torch.randint(0, 8, (24, 32), device=device)
for i in range(24):
    opt.zero_grad(set_to_none=True)
    with torch.autocast("cuda", dtype=torch.float16):
        loss = F.cross_entropy(model(x[i]), y[i])
    scaler.scale(loss).backward()
    scaler.unscale_(opt)
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    scaler.step(opt)
    scaler.update()
    sched.step()
model.eval()
with torch.no_grad():
    model(x[0])
"""


@pytest.mark.parametrize("scaler", ['torch.amp.GradScaler("cuda")',
                                    "torch.cuda.amp.GradScaler()"])
def test_cuda_gradscaler_run(tmp_path, scaler):
    script = tmp_path / "train_cuda.py"
    script.write_text(textwrap.dedent(SCRIPT.format(scaler=scaler)))
    run = record(script, tmp_path / "run")
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.meta[0]["device"] != "cpu"
    steps = run.steps
    assert len(steps) == 24 and steps[0]["scale"] == 65536.0
    assert all(s["mem_alloc_bytes"] > 0 for s in steps)
    assert run.calls_by_step()[0] == ["opt0.zero_grad", "model0.forward[TGB]", "scaler0.scale",
                                      "backward", "scaler0.unscale_", "clip_grad_norm_",
                                      "scaler0.step", "opt0.step", "scaler0.update",
                                      "sched0.step"]
    assert run.calls[-3:] == ["phase:val", "model0.eval", "model0.forward[EN]"]
    assert all(s["grad_norm"] <= 1.0 + 1e-3 for s in steps)  # unscaled, after clipping


def test_cuda_bit_identical(tmp_path):
    script = tmp_path / "train_cuda.py"
    script.write_text(textwrap.dedent(SCRIPT.format(scaler='torch.amp.GradScaler("cuda")')))
    proc = subprocess.run([sys.executable, str(REPO / "tests" / "zerocode" / "_twin.py"),
                           str(script), str(tmp_path / "run")],
                          cwd=REPO, env=env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["differ"] == [] and result["tensors"] > 8
