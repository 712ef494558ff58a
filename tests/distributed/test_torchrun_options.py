"""torchrun's options on `diagnose run` (diagnose/cli_torchrun.py).

Fast: bad values and combinations are one-line usage errors (exit 2), and the command
`diagnose run` would start is parsed by torchrun's own argument parser. Slow (a few
launches at once, once per module): two `diagnose run --nnodes 2` processes on this one
machine play two nodes, the zero-code script over the static rendezvous and the reference
loop over c10d, into one run directory; and a --max-restarts run whose first attempt fails.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

import diagnose.cli_run as cli_run
from diagnose.cli import main

ROOT = Path(__file__).resolve().parents[2]
PLAIN = Path(__file__).with_name("ddp_plain.py")
TINY = """device = "cpu"
train_samples = 128
val_samples = 40
batch_size = 16
width = 8
epochs = 1
num_threads = 1
"""


@pytest.mark.parametrize("args, message", [
    (["--nnodes", "2", "x.py"], "they need --nproc-per-node"),
    (["--nproc-per-node", "1", "--nnodes", "two"], "--nnodes 'two'"),
    (["--nproc-per-node", "1", "--nnodes", "3:2"], "MIN is larger than MAX"),
    (["--nproc-per-node", "1", "--nnodes", "1:2", "--master-addr", "h"], "needs a dynamic rendezvous"),
    (["--nproc-per-node", "1", "--nnodes", "2", "--node-rank", "2", "--master-addr", "h"],
     "node ranks go from 0 to 1"),
    (["--nproc-per-node", "1", "--nnodes", "2", "--node-rank", "0"], "needs --master-addr"),
    (["--nproc-per-node", "1", "--nnodes", "2", "--master-addr", "h"], "needs --node-rank"),
    (["--nproc-per-node", "1", "--nnodes", "2", "--node-rank", "0", "--master-addr", "h", "--no-out"],
     "needs --out"),
    (["--nproc-per-node", "1", "--standalone", "--master-port", "29500"], "cannot go with --master-port"),
    (["--nproc-per-node", "1", "--rdzv-backend", "c10d"], "needs --rdzv-endpoint"),
    (["--nproc-per-node", "1", "--rdzv-backend", "c10d", "--rdzv-endpoint", "h:1", "--master-addr", "h"],
     "only apply to the static rendezvous"),
    (["--nproc-per-node", "1", "--rdzv-backend", "zookeeper"], "zookeeper"),
    (["--nproc-per-node", "1", "--master-port", "70000"], "70000"),
    (["--nproc-per-node", "1", "--monitor-interval", "0"], "--monitor-interval"),
    (["--nproc-per-node", "1", "--tee", "4"], "--tee '4'"),
    (["--nproc-per-node", "1", "--redirects", "0:1,x"], "--redirects"),
    (["--nproc-per-node", "1", "--rdzv-conf", "timeout"], "KEY=VALUE"),
])
@pytest.mark.parametrize("script", [False, True])
def test_bad_torchrun_options_are_one_line_usage_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                        args: list[str], message: str, script: bool) -> None:
    launched = []
    monkeypatch.setattr("subprocess.call", lambda command: launched.append(command) or 0)
    out = [] if "--no-out" in args else ["--out", str(tmp_path / "r")]
    args = [a for a in args if a != "--no-out"]
    if script and "x.py" not in args:
        (tmp_path / "train.py").write_text("pass\n")
        args = [*args, str(tmp_path / "train.py")]
    result = CliRunner().invoke(main, ["run", "--no-report", *out, *args])
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output
    error = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(error) == 1 and message in error[0]
    assert not launched and not (tmp_path / "r").exists()


def _launched(monkeypatch: pytest.MonkeyPatch, args: list[str]) -> list[str]:
    """torchrun's arguments `diagnose run ARGS` starts it with (nothing launched)."""
    launched: list[list[str]] = []
    monkeypatch.setattr("subprocess.call", lambda command: launched.append(command) or 0)
    result = CliRunner().invoke(main, ["run", "--no-report", *args])
    assert result.exit_code == 0, result.output
    assert len(launched) == 1 and launched[0][1:3] == ["-m", "torch.distributed.run"]
    return launched[0][3:]


def test_one_node_stays_standalone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "train.py").write_text("pass\n")
    argv = _launched(monkeypatch, ["--nproc-per-node", "2", "--out", str(tmp_path / "r"),
                                   str(tmp_path / "train.py")])
    assert argv[:3] == ["--nproc-per-node", "2", "--standalone"]
    argv = _launched(monkeypatch, ["--nproc-per-node", "2", "--max-restarts", "1", "--tee", "3",
                                   "--out", str(tmp_path / "s"), str(tmp_path / "train.py")])
    assert argv[:7] == ["--nproc-per-node", "2", "--max-restarts", "1", "--tee", "3", "--standalone"]


def test_options_reach_torchrun_as_it_spells_them(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """What `diagnose run` passes parses with torchrun's own parser into the values given,
    for a script on node 1 of 2 (static) and the reference loop in an elastic c10d job."""
    from torch.distributed.run import parse_args

    (tmp_path / "train.py").write_text("pass\n")
    (tmp_path / "r" / "rank0").mkdir(parents=True)  # node 0 is already writing: not refused
    (tmp_path / "r" / "rank0" / "meta.jsonl").write_text("{}\n")
    argv = _launched(monkeypatch, [
        "--nproc-per-node", "4", "--nnodes", "2", "--node-rank", "1", "--master-addr", "10.0.0.1",
        "--master-port", "29555", "--max-restarts", "2", "--monitor-interval", "0.5",
        "--start-method", "fork", "--log-dir", str(tmp_path / "logs"), "--redirects", "0:3,1:2",
        "--local-ranks-filter", "0", "--local-addr", "10.0.0.2", "--out", str(tmp_path / "r"),
        str(tmp_path / "train.py"), "--", "--lr", "3"])
    ns = parse_args(argv)
    assert (ns.nproc_per_node, ns.nnodes, ns.node_rank, ns.master_addr, ns.master_port) == \
        ("4", "2", 1, "10.0.0.1", 29555)
    assert (ns.max_restarts, ns.monitor_interval, ns.start_method, ns.log_dir, ns.redirects,
            ns.local_ranks_filter, ns.local_addr, ns.standalone, ns.rdzv_backend) == \
        (2, 0.5, "fork", str(tmp_path / "logs"), "0:3,1:2", "0", "10.0.0.2", False, "static")
    assert ns.module and ns.training_script == "diagnose.zerocode"
    assert ns.training_script_args[-4:] == [str(tmp_path / "train.py"), "--", "--lr", "3"]

    (tmp_path / "c.toml").write_text(TINY)
    argv = _launched(monkeypatch, [
        "--nproc-per-node", "1", "--nnodes", "1:3", "--rdzv-backend", "c10d",
        "--rdzv-endpoint", "node0:29400", "--rdzv-id", "job7", "--rdzv-conf", "join_timeout=60",
        "--out", str(tmp_path / "ref"), "--config", str(tmp_path / "c.toml")])
    ns = parse_args(argv)
    assert (ns.nnodes, ns.rdzv_backend, ns.rdzv_endpoint, ns.rdzv_id, ns.rdzv_conf, ns.standalone) == \
        ("1:3", "c10d", "node0:29400", "job7", "join_timeout=60", False)
    assert ns.training_script == "diagnose.cli" and ns.training_script_args[:2] == ["run", "--no-report"]


def test_pending_ranks_are_those_without_an_end(tmp_path: Path) -> None:
    """What node 0's launcher waits for before reporting: ranks of the job (rank 0's
    world_size) whose folder is missing or whose last status is still running."""
    from diagnose.cli_torchrun import pending_ranks, wait_for_ranks

    def write(rank: int, *records: dict) -> None:
        (tmp_path / f"rank{rank}").mkdir(exist_ok=True)
        (tmp_path / f"rank{rank}" / "meta.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))

    start = {"type": "start", "rank": 0, "world_size": 4}
    running, finished = {"type": "status", "status": "running"}, {"type": "status", "status": "finished"}
    write(0, start, running, finished)
    write(1, {**start, "rank": 1}, running)
    write(2, {**start, "rank": 2}, running, {"type": "status", "status": "crashed"})
    assert pending_ranks(tmp_path) == [1, 3]  # rank 3 has no folder yet
    (tmp_path / "rank3").mkdir()
    (tmp_path / "rank3" / "meta.jsonl").write_text(json.dumps(start) + '\n{"type": "sta')  # torn line
    assert pending_ranks(tmp_path) == [1, 3]
    write(1, {**start, "rank": 1}, running, finished)
    write(3, {**start, "rank": 3}, running, finished)
    assert pending_ranks(tmp_path) == [] and wait_for_ranks(tmp_path, timeout_s=0) == []
    assert pending_ranks(tmp_path / "nothing") == []  # no rank 0: nothing known to wait for


# ---------------------------------------------------------------- real launches
def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _diagnose_run(*args: str) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    return subprocess.Popen([sys.executable, "-m", "diagnose.cli", "run", *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


RESTART_SCRIPT = """import os, torch
torch.manual_seed(0)
model = torch.nn.Linear(4, 1)
opt = torch.optim.SGD(model.parameters(), lr=0.1)
for step in range(6):
    opt.zero_grad()
    model(torch.randn(8, 4)).pow(2).mean().backward()
    opt.step()
    if step == 2 and os.environ["TORCHELASTIC_RESTART_COUNT"] == "0":
        raise RuntimeError("first attempt fails")
"""


@pytest.fixture(scope="module")
def launches(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Two simulated nodes twice (zero-code/static, reference loop/c10d) and a restart, at once."""
    base = tmp_path_factory.mktemp("torchrun-options")
    (base / "tiny.toml").write_text(TINY)
    (base / "flaky.py").write_text(RESTART_SCRIPT)
    static = ["--nnodes", "2", "--nproc-per-node", "1", "--master-addr", "127.0.0.1",
              "--master-port", str(_free_port()), "--out", str(base / "plain")]
    c10d = ["--nnodes", "2", "--nproc-per-node", "1", "--rdzv-backend", "c10d", "--rdzv-id", "t",
            "--rdzv-endpoint", f"127.0.0.1:{_free_port()}", "--out", str(base / "ref"),
            "--config", str(base / "tiny.toml"), "--steps", "4"]
    procs = {
        "plain0": _diagnose_run("--node-rank", "0", *static, str(PLAIN)),
        "plain1": _diagnose_run("--node-rank", "1", *static, str(PLAIN)),
        "ref0": _diagnose_run("--node-rank", "0", *c10d),
        "ref1": _diagnose_run("--node-rank", "1", *c10d),
        "restart": _diagnose_run("--nproc-per-node", "1", "--max-restarts", "1", "--no-report",
                                 "--out", str(base / "restart"), str(base / "flaky.py")),
    }
    results = {}
    for name, proc in procs.items():
        stdout, stderr = proc.communicate(timeout=300)
        results[name] = (proc.returncode, stdout, stderr)
    return {"base": base, "results": results}


def _meta(rank_dir: Path) -> dict:
    return json.loads((rank_dir / "meta.jsonl").read_text().splitlines()[0])


@pytest.mark.parametrize("run, nodes", [("plain", ("plain0", "plain1")), ("ref", ("ref0", "ref1"))])
def test_two_nodes_write_one_run_directory(launches: dict, run: str, nodes: tuple[str, str]) -> None:
    results = launches["results"]
    for node in nodes:
        code, stdout, stderr = results[node]
        assert code == 0, f"{node}: exit {code}\n{stdout[-2000:]}\n{stderr[-3000:]}"
    root = launches["base"] / run
    assert sorted(p.name for p in root.iterdir() if p.name.startswith("rank")) == ["rank0", "rank1"]
    metas = [_meta(root / f"rank{k}") for k in (0, 1)]
    assert [(m["rank"], m["world_size"]) for m in metas] == [(0, 2), (1, 2)]
    # each simulated node ran one process: local rank 0 on both
    assert [m["local_rank"] for m in metas] == [0, 0]
    # the launcher with --node-rank 0 reports on both ranks; the other one says so
    (_, report, _), (_, quiet, note) = results[nodes[0]], results[nodes[1]]
    assert "2 ranks" in report and "2 ranks" not in quiet
    assert "the launcher with --node-rank 0 reports" in note


def test_restarted_rank_records_its_new_attempt(launches: dict) -> None:
    from diagnose.rundir.reader import read_run

    code, stdout, stderr = launches["results"]["restart"]
    assert code == 0, f"exit {code}\n{stderr[-3000:]}"
    assert "first attempt fails" in stderr  # the first attempt did fail
    run = read_run(launches["base"] / "restart")
    tables = run.ranks[0]
    assert tables.meta["status"] == "finished"
    assert len(tables.steps) == 6  # the second attempt's steps only, not 3 + 6
