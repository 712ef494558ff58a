"""Distributed runs on several GPUs (NCCL): the reference loop with DDP and an FSDP2 model.

Skipped without 2 CUDA devices. The CPU/gloo versions of the same runs are in
tests/distributed/ (they run in CI); these check what only NCCL and real GPUs can: one
device per rank, async norms of sharded CUDA gradients, the same global-norm arithmetic.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from diagnose.rules import run_rules
from diagnose.rundir.reader import read_run

ROOT = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 CUDA devices")]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}


def test_reference_loop_ddp_on_two_gpus(tmp_path: Path) -> None:
    out = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "diagnose.cli", "run", "--nproc-per-node", "2", "--device", "cuda",
                           "--epochs", "2", "--no-report", "--out", str(out)], cwd=ROOT, env=_env(),
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = read_run(out)
    assert sorted(run.ranks) == [0, 1]
    assert {t.meta["local_rank"] for t in run.ranks.values()} == {0, 1}
    assert all(t.meta["status"] == "finished" and "mem_peak_bytes" in t.steps.columns for t in run.ranks.values())
    findings, _ = run_rules(run)
    assert [f.title for f in findings if f.severity >= 2] == []


def test_fsdp2_global_norms_on_two_gpus(tmp_path: Path) -> None:
    out = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--standalone",
                           str(ROOT / "tests" / "distributed" / "fsdp_script.py"), str(out), "--device", "cuda"],
                          cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0 and "recorder failed" not in proc.stderr, proc.stderr[-3000:]
    truth = json.loads((out / "truth.json").read_text())
    for tables in read_run(out).ranks.values():
        np.testing.assert_allclose(tables.grad_norms.to_numpy(), truth["param_grad_norms"], rtol=1e-4)
        np.testing.assert_allclose(tables.steps["grad_norm"], truth["grad_norm"], rtol=1e-4)
