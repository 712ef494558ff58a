"""The reference loop under `diagnose run --nproc-per-node 2` (DDP on gloo/CPU): a healthy
run, the three rank injections, and a resume of the healthy run's first checkpoint.

Four 2-process runs are launched at once (once per module), then the resume; a tiny
config (512 images, batch 16, 16 steps per rank per epoch, 2 epochs) keeps each to a few
seconds. The healthy run goes through `diagnose run --nproc-per-node 2`, the others
through `torchrun -m diagnose.cli run` directly (the same processes, one launcher less).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from diagnose.cli import main
from diagnose.report import analyse
from diagnose.report.terminal import header_line
from diagnose.rules import run_rules
from diagnose.rules.distributed import rank_desync, rank_straggler
from diagnose.rundir.reader import read_run

ROOT = Path(__file__).resolve().parents[2]
TINY = """device = "cpu"
train_samples = 512
val_samples = 120
batch_size = 16
width = 8
epochs = 2
num_threads = 1
image_noise = 0.5
slow_data_s = 0.03
"""
RUNS = {"healthy": (), "rank-straggler": ("--inject", "rank-straggler"),
        "rank-desync": ("--inject", "rank-desync"), "rank-killed": ("--inject", "rank-killed")}


def _env() -> dict[str, str]:
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    return {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1"}


def _launch(out: Path, config: Path, *args: str, cli: bool = False) -> subprocess.Popen:
    run = ["--no-report", "--out", str(out), "--config", str(config), *args]
    if cli:  # diagnose run starts torchrun
        cmd = [sys.executable, "-m", "diagnose.cli", "run", "--nproc-per-node", "2", *run]
    else:    # torchrun starts diagnose run in each process
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--standalone",
               "-m", "diagnose.cli", "run", *run]
    return subprocess.Popen(cmd, cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("reference-ddp")
    config = base / "tiny.toml"
    config.write_text(TINY + "nan_step = 6\n")
    late = base / "late.toml"  # the kill comes in the second epoch
    late.write_text(TINY + "nan_step = 24\n")
    procs = {name: _launch(base / name, late if name == "rank-killed" else config, *args, cli=name == "healthy")
             for name, args in RUNS.items()}
    outputs = {name: proc.communicate(timeout=240)[0] for name, proc in procs.items()}
    for name, proc in procs.items():
        (base / f"{name}.log").write_text(outputs[name])
        expected = 1 if name == "rank-killed" else 0
        assert proc.returncode == expected, f"{name}: exit {proc.returncode}\n{outputs[name][-3000:]}"
    resumed = _launch(base / "resumed", config, "--resume", str(base / "healthy" / "checkpoints" / "epoch000.pt"))
    out = resumed.communicate(timeout=240)[0]
    assert resumed.returncode == 0, out[-3000:]
    return {name: base / name for name in (*RUNS, "resumed")}


def _serious(path: Path) -> list[str]:
    findings, _ = run_rules(read_run(path))
    return [f"{f.rule}: {f.title}" for f in findings if f.severity >= 2]


def test_healthy_run_writes_each_rank_and_stays_silent(runs: dict[str, Path]) -> None:
    run = read_run(runs["healthy"])
    assert sorted(run.ranks) == [0, 1]
    for rank, tables in run.ranks.items():
        assert (tables.meta["rank"], tables.meta["world_size"], tables.meta["status"]) == (rank, 2, "finished")
        assert len(tables.steps) == 32          # 512 samples / 2 ranks / batch 16 = 16 steps per epoch
        assert not tables.params["name"].str.startswith("module.").any()   # the module inside DDP
    # Each rank trains on its own half: the losses differ, the (all-reduced) gradients agree.
    losses = [t.steps["loss"].to_numpy() for t in run.ranks.values()]
    assert (losses[0] != losses[1]).mean() > 0.9
    norms = [t.steps["grad_norm"].to_numpy() for t in run.ranks.values()]
    assert abs(norms[0] - norms[1]).max() < 1e-4 * max(norms[0].max(), 1)
    assert _serious(runs["healthy"]) == []
    document = json.loads(CliRunner().invoke(main, ["report", str(runs["healthy"]), "--format", "json"]).stdout)
    assert document["run"]["world_size"] == 2 and document["run"]["status"] == "finished"
    assert document["run"]["status_rank"] is None


def test_validation_is_all_reduced_and_only_rank_0_saves(runs: dict[str, Path]) -> None:
    run = read_run(runs["healthy"])
    val = [t.metrics.query("name == 'val_loss'")["value"].tolist() for t in run.ranks.values()]
    assert val[0] == val[1] and len(val[0]) == 2   # the same exact number on both ranks
    assert sorted(p.name for p in (runs["healthy"] / "checkpoints").iterdir()) == ["best.pt", "epoch000.pt",
                                                                                 "epoch001.pt"]
    saved = {rank: [d["path"] for d in t.events_of("checkpoint")["data"]] for rank, t in run.ranks.items()}
    # all_gather_object pickles the RNG states (torch.save of storages): no checkpoint events
    assert saved[0] and "<BytesIO>" not in saved[0] and saved[1] == []
    state = torch.load(runs["healthy"] / "checkpoints" / "epoch000.pt", weights_only=True)
    assert len(state["rng_ranks"]) == 2 and not any(k.startswith("module.") for k in state["model"])
    log = (runs["healthy"].parent / "healthy.log").read_text()
    assert log.count("epoch 1: train_loss") == 1    # only rank 0 prints progress


def test_resume_continues_exactly(runs: dict[str, Path]) -> None:
    def val_losses(path: Path) -> list[float]:
        metrics = read_run(path).ranks[0].metrics
        return metrics.query("name == 'val_loss'")["value"].tolist()

    assert val_losses(runs["resumed"]) == val_losses(runs["healthy"])[1:]
    resumed, healthy = (read_run(runs[n]).ranks[1].steps["loss"] for n in ("resumed", "healthy"))
    # rank 1's own RNG and data shard came back too (the recorder counts steps from 0 again)
    assert resumed.tolist() == healthy.iloc[16:].tolist()


def test_rank_straggler_injection(runs: dict[str, Path]) -> None:
    [finding] = rank_straggler.check(read_run(runs["rank-straggler"]))
    assert finding.evidence["rank"] == 1 and finding.evidence["signal"] == "data_wait_s"
    assert 0.02 < finding.evidence["median_excess_s"] < 0.06    # it sleeps 30 ms per batch
    assert rank_desync.check(read_run(runs["rank-straggler"])) == []


def test_rank_desync_injection(runs: dict[str, Path]) -> None:
    run = read_run(runs["rank-desync"])
    [finding] = rank_desync.check(run)
    assert finding.evidence["skip_disagreement_steps"] == [[6, 6]]
    assert finding.evidence["skipped_by_rank"] == {"0": [], "1": [6]}
    assert rank_straggler.check(run) == []


def test_rank_killed_names_the_rank_and_when(runs: dict[str, Path]) -> None:
    report = analyse(runs["rank-killed"])
    run = report.run
    assert run.ranks[1].meta["status"] == "crashed" and "steps" not in run.ranks[1].meta   # no end record
    assert run.ranks[0].meta["status"] in ("crashed", "interrupted")
    [finding] = [f for f in report.findings if f.rule == "rank-desync"]
    assert finding.evidence["first_rank"] == 1 and finding.evidence["killed"] is True
    assert finding.title.startswith("Rank 1 was killed")
    last = finding.evidence["last_step_by_rank"]
    assert last["1"] is None or last["1"] <= 24 and last["0"] >= last["1"]
    assert report.summary.status_rank == 1
    assert header_line(report.summary).startswith("status crashed (rank 1)")


def test_rank_injections_need_several_processes() -> None:
    result = CliRunner().invoke(main, ["run", "--inject", "rank-straggler", "--steps", "1"])
    assert result.exit_code == 2
    assert "needs 2 or more processes" in result.output


@pytest.mark.skipif(torch.cuda.device_count() >= 2, reason="the machine has 2 GPUs")
def test_more_processes_than_gpus_is_a_usage_error() -> None:
    result = CliRunner().invoke(main, ["run", "--nproc-per-node", "2", "--device", "cuda"])
    assert result.exit_code == 2 and "needs one GPU per process" in result.output
