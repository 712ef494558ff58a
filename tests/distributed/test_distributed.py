"""Distributed runs under torchrun: one `rankK/` folder per process, and the rules that
compare ranks (rank-straggler, rank-desync).

Three real 2-process gloo runs of tests/distributed/ddp_script.py (healthy, a rank 1 with a
slow data pipeline, a rank 1 that desyncs and crashes), launched at once, once per module.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner

from diagnose.cli import main
from diagnose.rules import run_rules
from diagnose.rules.distributed import rank_desync, rank_straggler
from diagnose.rundir.reader import read_run
from diagnose.rundir.tables import Run, RunTables

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = Path(__file__).with_name("ddp_script.py")
FAULTS = ("none", "slow-data", "desync")


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Each fault's run directory (all three torchrun launches run concurrently)."""
    base = tmp_path_factory.mktemp("ddp")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
           "OMP_NUM_THREADS": "1"}
    procs = {}
    for fault in FAULTS:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--standalone",
               str(SCRIPT), str(base / fault), "--fault", fault]
        procs[fault] = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                        stderr=subprocess.STDOUT, text=True)
    # `diagnose run --nproc-per-node 2` on a script with no diagnose in it (zero-code mode)
    cli = [sys.executable, "-m", "diagnose.cli", "run", "--nproc-per-node", "2", "--out", str(base / "cli"),
           str(SCRIPT.with_name("ddp_plain.py"))]
    procs["cli"] = subprocess.Popen(cli, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True)
    cli_out, cli_err = procs.pop("cli").communicate(timeout=180)
    (base / "cli.out").write_text(cli_out)
    (base / "cli.err").write_text(cli_err)
    for fault, proc in procs.items():
        out, _ = proc.communicate(timeout=180)
        expected = 1 if fault == "desync" else 0   # its rank 1 crashes on purpose
        assert proc.returncode == expected, f"{fault}: torchrun exited {proc.returncode}\n{out[-3000:]}"
    return {fault: base / fault for fault in (*FAULTS, "cli")}


def test_each_rank_writes_its_own_folder(runs: dict[str, Path]) -> None:
    root = runs["none"]
    assert sorted(p.name for p in root.iterdir()) == ["rank0", "rank1"]
    run = read_run(root)
    assert sorted(run.ranks) == [0, 1]
    for rank, tables in run.ranks.items():
        assert (tables.meta["rank"], tables.meta["world_size"]) == (rank, 2)
        assert tables.meta["status"] == "finished"
        assert len(tables.steps) == 16


def test_report_reads_every_rank(runs: dict[str, Path]) -> None:
    result = CliRunner().invoke(main, ["report", str(runs["none"]), "--format", "json"])
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert not [f for f in document["findings"] if f["severity"] in ("warning", "error")]
    result = CliRunner().invoke(main, ["report", str(runs["desync"]), "--fail-on", "error"])
    assert result.exit_code == 1
    assert "rank-desync" in result.output


@pytest.mark.parametrize("fault", ["none", "desync"])
def test_straggler_silent_without_slow_rank(runs: dict[str, Path], fault: str) -> None:
    assert rank_straggler.check(read_run(runs[fault])) == []


def test_straggler_fires_on_slow_data_rank(runs: dict[str, Path]) -> None:
    [finding] = rank_straggler.check(read_run(runs["slow-data"]))
    assert finding.evidence["rank"] == 1
    assert finding.evidence["signal"] == "data_wait_s"
    assert finding.evidence["median_excess_s"] > 0.02   # it sleeps 30 ms per batch
    assert finding.title.startswith("Rank 1 is a straggler")


@pytest.mark.parametrize("fault", ["none", "slow-data"])
def test_desync_silent_on_agreeing_ranks(runs: dict[str, Path], fault: str) -> None:
    assert rank_desync.check(read_run(runs[fault])) == []


def test_desync_fires_on_skip_early_stop_and_crash(runs: dict[str, Path]) -> None:
    run = read_run(runs["desync"])
    by_kind = {("status" if "crashed" in f.title else "steps" if "optimizer steps" in f.title else "scaler"): f
               for f in rank_desync.check(run)}
    assert set(by_kind) == {"status", "steps", "scaler"}
    assert by_kind["status"].evidence["dead_ranks"] == [1]
    assert by_kind["steps"].evidence["steps_per_rank"] == {"0": 16, "1": 12}
    assert by_kind["scaler"].evidence["skip_disagreement_steps"] == [[4, 4]]
    assert by_kind["scaler"].evidence["skipped_by_rank"] == {"0": [], "1": [4]}
    names = {f.rule for f in run_rules(run)[0]}
    assert "rank-desync" in names and "rank-straggler" not in names


def test_diagnose_run_launches_torchrun(runs: dict[str, Path]) -> None:
    root = runs["cli"]
    out, err = (root.parent / "cli.out").read_text(), (root.parent / "cli.err").read_text()
    run = read_run(root)
    assert sorted(run.ranks) == [0, 1]
    assert all(len(t.steps) == 12 and t.meta["world_size"] == 2 for t in run.ranks.values())
    assert out.count("diagnose report:") == 1 and "2 ranks" in out, out + err
    assert err.count("diagnose: run directory") == 1, err   # the launcher's; its workers stay quiet


# ---- the thresholds, on runs built in memory ------------------------------------------------
def _run(step_times: dict[int, list[float]], **columns: dict[int, list]) -> Run:
    run = Run(path=Path("."))
    for rank, times in step_times.items():
        steps = pd.DataFrame({"step_time_s": times}, index=pd.RangeIndex(len(times), name="step"))
        for name, per_rank in columns.items():
            steps[name] = per_rank[rank]
        steps["skipped"] = False
        run.ranks[rank] = RunTables(rank=rank, steps=steps, meta={"status": "finished"})
    return run


def test_straggler_on_step_time_says_rank_and_ratio() -> None:
    run = _run({0: [0.10] * 20, 1: [0.10] * 20, 2: [0.15] * 20})
    [finding] = rank_straggler.check(run)
    assert finding.evidence["rank"] == 2 and finding.evidence["signal"] == "step_time_s"
    assert finding.evidence["median_ratio"] == pytest.approx(1.5)


@pytest.mark.parametrize("times", [
    [0.12] * 20,                    # 1.2x: under the ratio
    [0.10] * 12 + [0.3] * 8,       # slow on fewer than half the steps
    [0.3] * 9,                      # too few steps to compare (2 warm-up + 7)
], ids=["small-ratio", "occasional", "few-steps"])
def test_straggler_silent_below_thresholds(times: list[float]) -> None:
    n = len(times)
    run = _run({0: [0.10] * n, 1: times})
    assert rank_straggler.check(run) == []


def test_single_rank_runs_are_silent() -> None:
    run = _run({0: [0.1] * 20})
    assert rank_straggler.check(run) == [] and rank_desync.check(run) == []


def test_desync_step_count_tolerance() -> None:
    assert rank_desync.check(_run({0: [0.1] * 100, 1: [0.1] * 99})) == []
    [finding] = rank_desync.check(_run({0: [0.1] * 100, 1: [0.1] * 90}))
    assert finding.evidence["short_ranks"] == [1]
