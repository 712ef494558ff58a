"""The JSON report: one document per run directory, for CI and other programs.

    {"schema_version": 1,
     "run": {"path", "run_id", "status", "error", "steps", "last_step", "duration_s",
             "device", "world_size", "started_at", "command", "status_rank"},
     "findings": [{"rule", "severity", "title", "steps": [first, last] | null,
                   "evidence": {...}, "explanation", "fix", "rank"}],
     "notes": ["..."],
     "ranks": [{"rank", "status", "error", "killed", "steps", "last_step", "ended_s"}],  # 2+ ranks
     "profile": {"0": {...}}}   # only when profiled: per rank, diagnose.profiling.summary.ProfileSummary

Always valid JSON: NaN and Inf (which JSON cannot hold) are written as the strings
"nan", "inf", "-inf", as in the run directory; numpy scalars and arrays become numbers
and lists. Several run directories give a JSON array of such documents.
"""
from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TextIO

import numpy as np
import pandas as pd

from diagnose.report import Report, profile_section

JSON_SCHEMA_VERSION = 1
"""Version of this document's shape; bumped when a key changes meaning or goes away."""


def json_safe(value: Any) -> Any:
    """`value` as plain JSON data: non-finite floats as strings, numpy as Python,
    tuples and sets as lists, paths and anything else unknown as `str`."""
    if value is None or isinstance(value, (bool, str, int)):
        return value
    if value is pd.NA or value is pd.NaT:
        return None
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return value
    if isinstance(value, np.generic):
        return json_safe(value.item())
    if isinstance(value, np.ndarray):
        return json_safe(value.tolist())
    if isinstance(value, Mapping):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [json_safe(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return str(value)


def report_document(report: Report) -> dict[str, Any]:
    """The JSON document of one report, as JSON-safe Python data."""
    return json_safe({
        "schema_version": JSON_SCHEMA_VERSION,
        "run": report.summary.to_dict(),
        "findings": [f.to_dict() for f in report.findings],
        "notes": list(report.notes),
        **({"profile": profile} if (profile := profile_section.json_data(report)) else {}),
        **({"ranks": _ranks(report)} if report.run.world_size > 1 else {}),
    })


def _ranks(report: Report) -> list[dict[str, Any]]:
    """How each rank ended (several ranks only): status, error, whether it was killed (no
    end record), steps recorded, its last step, and when it ended (seconds since the
    earliest rank started; a killed rank: its last record, up to ~1 s early)."""
    from diagnose.rundir.ranks import rank_ends

    run = report.run
    starts = [t.meta.get("started_at") for t in run.ranks.values()
              if isinstance(t.meta.get("started_at"), (int, float))]
    start = min(starts) if starts else None
    return [{"rank": e.rank, "status": e.status, "error": e.error, "killed": e.killed, "steps": e.steps,
             "last_step": e.last_step,
             "ended_s": round(e.end_at - start, 3) if e.end_at is not None and start is not None else None}
            for e in rank_ends(run)]


def render(report: Report, stream: TextIO) -> None:
    """Write one report as one JSON document (and a newline)."""
    stream.write(json.dumps(report_document(report), indent=2, allow_nan=False) + "\n")


def render_many(reports: list[Report], stream: TextIO) -> None:
    """Write several reports as one JSON array of documents."""
    stream.write(json.dumps([report_document(r) for r in reports], indent=2, allow_nan=False) + "\n")
