"""The JSON report: one document per run directory, for CI and other programs.

    {"schema_version": 1,
     "run": {"path", "run_id", "status", "error", "steps", "last_step", "duration_s",
             "device", "world_size", "started_at", "command", "status_rank"},
     "findings": [{"rule", "severity", "title", "steps": [first, last] | null,
                   "evidence": {...}, "explanation", "fix", "rank"}],
     "notes": ["..."],
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
    })


def render(report: Report, stream: TextIO) -> None:
    """Write one report as one JSON document (and a newline)."""
    stream.write(json.dumps(report_document(report), indent=2, allow_nan=False) + "\n")


def render_many(reports: list[Report], stream: TextIO) -> None:
    """Write several reports as one JSON array of documents."""
    stream.write(json.dumps([report_document(r) for r in reports], indent=2, allow_nan=False) + "\n")
