"""FSDP2 (`fully_shard`) on 2 gloo/CPU ranks: the recorder takes local shard norms (no
collective of its own), the reader puts the global norms back together, and they match
the true global norms the script computed with `full_tensor()` (a collective). Two loops:
fsdp_script.py with `Monitor`, and fsdp_plain.py in the zero-code mode, launched at once.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from diagnose.rules import run_rules
from diagnose.rundir.reader import read_run

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = Path(__file__).with_name("fsdp_script.py")


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    try:
        from torch.distributed.fsdp import fully_shard  # noqa: F401
    except ImportError:
        pytest.importorskip("torch.distributed._composable.fsdp")
    base = tmp_path_factory.mktemp("fsdp")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
           "OMP_NUM_THREADS": "1"}
    commands = {
        "monitor": [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--standalone",
                    str(SCRIPT), str(base / "monitor")],
        "zerocode": [sys.executable, "-m", "diagnose.cli", "run", "--nproc-per-node", "2", "--no-report",
                     "--out", str(base / "zerocode"), str(SCRIPT.with_name("fsdp_plain.py")), "--",
                     str(base / "zerocode-truth.json")],
    }
    procs = {name: subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for name, cmd in commands.items()}
    for name, proc in procs.items():
        out, err = proc.communicate(timeout=180)
        assert proc.returncode == 0, f"{name}: {out[-2000:]}{err[-3000:]}"
        assert "recorder failed" not in err, err[-3000:]
    return {name: base / name for name in commands}


@pytest.fixture(scope="module")
def run_dir(runs: dict[str, Path]) -> Path:
    return runs["monitor"]


def test_sharded_parameters_are_described(run_dir: Path) -> None:
    run = read_run(run_dir)
    for tables in run.ranks.values():
        assert tables.params["shards"].tolist() == [2, 2, 2, 2]
        assert tables.params["shape"].tolist()[2] == [7, 16]   # the global shape, not the shard's


def test_global_norms_are_put_together_from_local_shards(run_dir: Path) -> None:
    truth = json.loads((run_dir / "truth.json").read_text())
    run = read_run(run_dir)
    assert any("put together from the 2 ranks' local shards" in note for note in run.notes)
    for tables in run.ranks.values():
        np.testing.assert_allclose(tables.grad_norms.to_numpy(), truth["param_grad_norms"], rtol=1e-5)
        np.testing.assert_allclose(tables.steps["grad_norm"], truth["grad_norm"], rtol=1e-5)
        np.testing.assert_allclose(tables.param_norms.loc[0], truth["param_norms_0"], rtol=1e-5)
        if not tables.update_norms.empty:  # the weights and their change on a sampled step
            np.testing.assert_allclose(tables.update_norms.loc[0], truth["update_norms_0"], rtol=1e-4)
        # clip_grad_norm_ all-reduces its total itself (a replicated DTensor): already global
        np.testing.assert_allclose(tables.steps["clip_norm"], truth["grad_norm"], rtol=1e-5)
    local = [t.steps["grad_norm_local"].to_numpy() for t in run.ranks.values()]
    assert np.all(local[0] < truth["grad_norm"]) and not np.allclose(local[0], local[1])
    np.testing.assert_allclose(np.sqrt(local[0] ** 2 + local[1] ** 2), truth["grad_norm"], rtol=1e-5)


def test_one_rank_alone_keeps_its_local_norms(run_dir: Path) -> None:
    run = read_run(run_dir / "rank1")
    assert any("local shard" in note for note in run.notes)
    assert "grad_norm_local" not in run.ranks[1].steps.columns
    truth = json.loads((run_dir / "truth.json").read_text())
    assert np.all(run.ranks[1].steps["grad_norm"].to_numpy() < truth["grad_norm"])


def test_healthy_fsdp_run_is_silent(run_dir: Path) -> None:
    findings, _ = run_rules(read_run(run_dir))
    assert [f.title for f in findings if f.severity >= 2] == []


def test_zero_code_mode_puts_fsdp_norms_together_too(runs: dict[str, Path]) -> None:
    root = runs["zerocode"]
    truth = json.loads(root.with_name("zerocode-truth.json").read_text())
    run = read_run(root)
    for tables in run.ranks.values():
        assert tables.params["shards"].tolist() == [2, 2, 2, 2]
        np.testing.assert_allclose(tables.grad_norms.to_numpy(), truth, rtol=1e-5)
    findings, _ = run_rules(run)
    assert [f.title for f in findings if f.severity >= 2] == []
