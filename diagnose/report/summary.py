"""The run at a glance, for the header of every report format (terminal, JSON, HTML)."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from diagnose.rundir.ranks import first_stop
from diagnose.rundir.tables import Run


@dataclass(frozen=True)
class RunSummary:
    """What a report says about the run before its findings: from the lowest rank, except
    the status, which is the whole job's (see `status_rank`)."""

    path: str
    run_id: str | None
    status: str | None
    error: str | None
    steps: int
    """Optimizer steps recorded (rows of steps.jsonl)."""
    last_step: int | None
    duration_s: float | None
    device: str | None
    world_size: int
    started_at: float | None
    command: list[str] | None
    status_rank: int | None = None
    """With several ranks: the rank that stopped first (its status and error are the run's:
    `crashed (rank 1)`), None when every rank ended alike (all finished, say)."""

    @property
    def status_text(self) -> str:
        """`crashed (rank 1)`, or the bare status."""
        status = self.status or "unknown"
        return status if self.status_rank is None else f"{status} (rank {self.status_rank})"

    def to_dict(self) -> dict[str, Any]:
        """Plain data for the JSON report."""
        return asdict(self)


def _number(value: Any) -> float | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


def summarize(run: Run) -> RunSummary:
    """Summarize `run`: steps, duration and device of its lowest rank; the status of the
    rank that stopped first when one did (a crashed rank 1 makes the run crashed)."""
    first = run.first
    meta, steps = first.meta, first.steps
    duration_s = None
    if "t_s" in steps.columns and len(steps):
        duration_s = _number(steps["t_s"].max())
    started, ended = _number(meta.get("started_at")), _number(meta.get("at"))
    if started is not None and ended is not None and ended >= started:
        duration_s = max(duration_s or 0.0, ended - started)
    command = meta.get("command")
    status, error, status_rank = meta.get("status"), meta.get("error"), None
    stopped = first_stop(run) if run.world_size > 1 else None
    if stopped is not None:
        status, error, status_rank = stopped.status, stopped.error, stopped.rank
    return RunSummary(
        path=str(run.path),
        run_id=meta.get("run_id"),
        status=status,
        error=error,
        steps=len(steps),
        last_step=int(steps.index.max()) if len(steps) else None,
        duration_s=duration_s,
        device=meta.get("device"),
        world_size=max(run.world_size, int(meta.get("world_size") or 1)),
        started_at=started,
        command=[str(c) for c in command] if isinstance(command, list) else None,
        status_rank=status_rank,
    )


def format_duration(seconds: float | None) -> str:
    """`3725.2` -> `"1h 02m 05s"`, `12.34` -> `"12.3s"`, None -> `"?"`."""
    if seconds is None:
        return "?"
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m {secs:02d}s" if hours else f"{minutes}m {secs:02d}s"
