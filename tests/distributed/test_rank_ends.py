"""Which rank stopped first (diagnose.rundir.ranks), on 2-rank synthetic runs whose
rank 1 ended differently from rank 0."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from diagnose.report.summary import summarize
from diagnose.rules.distributed import rank_desync
from diagnose.rundir.ranks import first_stop, rank_ends
from diagnose.rundir.reader import read_run
from diagnose.rundir.synthetic import write_synthetic_run

PEER_ERROR = "RuntimeError: [gloo/transport/tcp/pair.cc:537] Read error: Connection reset by peer"


@pytest.fixture(scope="module")
def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _end(rank_dir: Path, status: str | None, error: str | None = None, at_s: float = 5.0) -> None:
    """Replace the rank's final status record (None: no end record, as after SIGKILL)."""
    meta = rank_dir / "meta.jsonl"
    records = [json.loads(line) for line in meta.read_text().splitlines()]
    records = [r for r in records if not (r.get("type") == "status" and r.get("status") != "running")]
    if status is not None:
        started = next(r for r in records if r.get("type") == "start")["started_at"]
        record = {"type": "status", "status": status, "at": started + at_s, "steps": 20}
        records.append(record | ({"error": error} if error else {}))
    meta.write_text("".join(json.dumps(r) + "\n" for r in records))


def _run(tmp_path: Path, rank0: tuple, rank1: tuple, pid: int | None = None):
    root = write_synthetic_run(tmp_path / "run", steps=20, params=2, ranks=2, pid=pid)
    _end(root / "rank0", *rank0)
    _end(root / "rank1", *rank1)
    return read_run(root)


def test_all_finished_is_no_stop(tmp_path: Path) -> None:
    run = _run(tmp_path, ("finished",), ("finished",))
    assert first_stop(run) is None and summarize(run).status_text == "finished"


def test_own_error_beats_the_peers_connection_error(tmp_path: Path) -> None:
    # rank 0 ends first, but with the error a dead peer causes; rank 1 raised its own
    run = _run(tmp_path, ("crashed", PEER_ERROR, 3.0), ("crashed", "ValueError: bad batch", 4.0))
    stop = first_stop(run)
    assert stop.rank == 1 and not stop.killed
    summary = summarize(run)
    assert (summary.status_text, summary.error) == ("crashed (rank 1)", "ValueError: bad batch")
    [finding] = rank_desync.check(run)
    assert finding.title.startswith("Rank 1 crashed first (after step 19); then the other ranks crashed: ValueError")


def test_killed_rank_is_named_and_its_steps_not_counted(tmp_path: Path, dead_pid: int) -> None:
    run = _run(tmp_path, ("interrupted", "SIGTERM"), (None,), pid=dead_pid)
    assert [e.killed for e in rank_ends(run)] == [False, True]
    [finding] = rank_desync.check(run)
    assert finding.evidence["first_rank"] == 1 and finding.evidence["killed"] is True
    assert "then the other ranks interrupted" in finding.title


def test_one_bug_on_every_rank_is_not_a_desync(tmp_path: Path) -> None:
    run = _run(tmp_path, ("crashed", "ValueError: x", 3.0), ("crashed", "ValueError: x", 3.1))
    assert first_stop(run) is None and rank_desync.check(run) == []
    assert summarize(run).status_text == "crashed"


def test_a_crash_while_others_finish(tmp_path: Path) -> None:
    run = _run(tmp_path, ("finished",), ("crashed", "RuntimeError: boom"))
    [finding] = rank_desync.check(run)
    assert finding.title == "Rank 1 crashed while other ranks finished (after step 19): RuntimeError: boom"
    assert finding.evidence["dead_ranks"] == [1]


def test_a_crash_while_the_others_still_run(tmp_path: Path) -> None:
    run = _run(tmp_path, (None,), ("crashed", "RuntimeError: boom"))   # rank 0: this process, alive
    assert run.ranks[0].meta["status"] == "running"
    [finding] = rank_desync.check(run)
    assert finding.title == ("Rank 1 crashed (after step 19) while the other ranks are still running: "
                             "RuntimeError: boom")


def test_json_report_lists_how_each_rank_ended(tmp_path: Path, dead_pid: int) -> None:
    from diagnose.report import analyse
    from diagnose.report.json_report import report_document

    _run(tmp_path, ("interrupted", "SIGTERM", 6.0), (None,), pid=dead_pid)
    document = report_document(analyse(tmp_path / "run"))
    assert document["run"]["status_rank"] == 1
    ranks = {r["rank"]: r for r in document["ranks"]}
    assert (ranks[1]["status"], ranks[1]["killed"], ranks[1]["last_step"]) == ("crashed", True, 19)
    assert (ranks[0]["status"], ranks[0]["error"], ranks[0]["ended_s"]) == ("interrupted", "SIGTERM", 6.0)
    assert ranks[1]["ended_s"] < ranks[0]["ended_s"]
