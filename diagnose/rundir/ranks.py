"""How each rank of a run ended, and which one stopped first: for the report's header,
its per-rank view and the `rank-desync` rule.

A rank that ended by itself wrote a final status record (`finished`, `crashed` with its
error, `interrupted` by Ctrl-C or torchrun's SIGTERM) with its time. A rank that was
killed (SIGKILL, the kernel's OOM killer, a lost node) wrote none: the reader reads its
`running` status as `crashed` when its process is gone, and its end is the time of its
last record. Its last second or so may be missing (the writer flushes once a second), so
its end time is, if anything, early: a killed rank still sorts before the ranks that
torchrun stopped after it.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass

import pandas as pd

from diagnose.rundir.tables import Run, RunTables

_STOPPED = ("crashed", "interrupted")
# Errors a rank gets because a peer went away: a consequence, not the cause.
_PEER_FAILURE = re.compile(r"gloo|nccl|connection (reset|closed|refused)|broken pipe|timed? ?out|"
                           r"processgroup|distbackenderror|by peer|sigterm", re.IGNORECASE)


@dataclass(frozen=True)
class RankEnd:
    """How one rank ended."""

    rank: int
    status: str
    """`finished`, `crashed`, `interrupted`, `running` (or `unknown`)."""
    error: str | None
    """The exception or signal its end record names, if any."""
    end_record: bool
    """False: no final status record (killed, or still running)."""
    last_step: int | None
    """The last optimizer step it recorded."""
    steps: int
    """Optimizer steps it recorded."""
    end_at: float | None
    """Wall-clock time (epoch seconds) of its end record, or of its last record."""

    @property
    def stopped(self) -> bool:
        """Crashed or interrupted (not finished, not running)."""
        return self.status in _STOPPED

    @property
    def killed(self) -> bool:
        """Stopped without writing an end record."""
        return self.stopped and not self.end_record


def _number(value) -> float | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


def _last_record_at(tables: RunTables) -> float | None:
    """started_at + the latest `t_s` of its steps and events (seconds since its start)."""
    started = _number(tables.meta.get("started_at"))
    if started is None:
        return None
    latest = [0.0]
    for frame in (tables.steps, tables.events):
        if "t_s" in frame.columns and len(frame):
            value = pd.to_numeric(frame["t_s"], errors="coerce").max()
            if _number(value) is not None:
                latest.append(float(value))
    return started + max(latest)


def rank_end(tables: RunTables) -> RankEnd:
    """How the rank of `tables` ended."""
    meta = tables.meta
    status = str(meta.get("status") or "unknown")
    # A `crashed` read from a `running` record whose process is gone (the reader's
    # inference) has neither the `error` nor the `steps` that a final status record has.
    end_record = status != "running" and not (status == "crashed" and "error" not in meta
                                              and "steps" not in meta)
    end_at = _number(meta.get("at")) if end_record else _last_record_at(tables)
    steps = tables.steps
    error = meta.get("error") if end_record else None
    return RankEnd(rank=tables.rank, status=status, error=str(error) if error else None,
                   end_record=end_record, last_step=int(steps.index.max()) if len(steps) else None,
                   steps=len(steps), end_at=end_at)


def rank_ends(run: Run) -> list[RankEnd]:
    """Every rank's end, in rank order."""
    return [rank_end(tables) for _, tables in sorted(run.ranks.items())]


def first_stop(run: Run) -> RankEnd | None:
    """The rank that stopped first, when a rank stopped (crashed or was interrupted) and
    the ranks did not all end the same way; None otherwise (every rank finished, or all
    stopped alike: the same status and error and each wrote its end record, one bug on
    every rank rather than one rank taking the job down).

    Among the stopped ranks, the cause is looked for in this order: a rank that crashed
    with an error of its own (not a peer's failure seen through a collective: gloo/NCCL
    connection errors, timeouts, SIGTERM), then a killed rank (no end record), then any;
    the earliest end within each."""
    ends = rank_ends(run)
    stopped = [e for e in ends if e.stopped]
    if not stopped or len(ends) < 2:
        return None
    alike = len(stopped) == len(ends) and not any(e.killed for e in ends) and \
        len({(e.status, e.error) for e in ends}) == 1
    if alike:
        return None
    def order(e: RankEnd) -> tuple:
        own_error = e.status == "crashed" and e.error is not None and not _PEER_FAILURE.search(e.error)
        kind = 0 if own_error else 1 if e.killed else 2
        return kind, e.end_at if e.end_at is not None else math.inf, e.rank

    return min(stopped, key=order)
