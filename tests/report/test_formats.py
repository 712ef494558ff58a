"""Terminal and JSON renderers on hand-made reports."""
from __future__ import annotations

import io
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from diagnose.report import FORMATS, build_report
from diagnose.report.json_report import json_safe, report_document
from diagnose.report.summary import format_duration
from diagnose.report.terminal import evidence_line, plain_text, render
from diagnose.rules._base import Finding, Severity
from diagnose.rundir.reader import read_run
from diagnose.rundir.synthetic import write_synthetic_run


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture
def report(tmp_path: Path):
    run = read_run(write_synthetic_run(tmp_path / "run", steps=10, params=2, ranks=2, status="crashed"))
    findings = [
        Finding(rule="nonfinite-loss", severity=Severity.ERROR, title="Loss is nan from step 3", steps=(3, 9),
                evidence={"first_value": math.nan, "steps": list(range(10))}, explanation="Bad.", fix="Do x:\n  y()",
                rank=1),
        Finding(rule="throughput-drop", severity=Severity.WARNING, title="Slower", evidence={"ratio": 0.123456}),
    ]
    return build_report(run, findings, ["rule x skipped: no steps.scale recorded"])


def test_plain_text_report(report) -> None:
    text = plain_text(report)
    lines = text.splitlines()
    assert lines[1] == "  status crashed (RuntimeError: synthetic crash) · 10 steps · 0.5s · cpu · 2 ranks"
    assert "ERROR    nonfinite-loss   Loss is nan from step 3" in text
    assert "first_value=nan, steps=[0, 1, 2, …]" in text and "ratio=0.1235" in text
    assert "[1] Loss is nan from step 3  (nonfinite-loss, error, rank 1, step 3–9)" in text
    assert "      Do x:" in text and "        y()" in text
    assert "  - 1 rule had nothing to check (x); `--format json` says why" in text  # skip notes collapse
    assert lines[-1].startswith("1 error, 1 warning, 0 info.")
    assert "\x1b[" not in text


def test_terminal_uses_rich_on_a_tty(report) -> None:
    stream = _Tty()
    render(report, stream)
    out = stream.getvalue()
    assert "nonfinite-loss" in out and "Loss is nan from step 3" in out and "Fix:" in out
    assert out != plain_text(report)


def test_evidence_line_is_cut_to_width() -> None:
    line = evidence_line({"a": "x" * 200}, width=40)
    assert len(line) == 40 and line.endswith("…")


def test_json_safe_handles_nonfinite_numpy_and_missing() -> None:
    value = {"a": math.nan, "b": [np.float32(np.inf), -math.inf], "c": np.int64(3), "d": (1, 2), "e": pd.NA,
             "f": np.array([0.5, np.nan]), 7: Path("/x")}
    assert json_safe(value) == {"a": "nan", "b": ["inf", "-inf"], "c": 3, "d": [1, 2], "e": None,
                                "f": [0.5, "nan"], "7": "/x"}


def test_json_document_is_strict_json(report) -> None:
    document = report_document(report)
    text = json.dumps(document, allow_nan=False)
    assert json.loads(text)["findings"][0]["evidence"]["first_value"] == "nan"
    assert document["run"]["world_size"] == 2 and document["run"]["error"] == "RuntimeError: synthetic crash"
    assert [f["rank"] for f in document["findings"]] == [1, None]


def test_formats_registry_writes_through_the_module(report) -> None:
    stream = io.StringIO()
    FORMATS["json"].write([report, report], stream)
    assert len(json.loads(stream.getvalue())) == 2


@pytest.mark.parametrize("seconds, text", [(None, "?"), (12.34, "12.3s"), (65, "1m 05s"), (3725.2, "1h 02m 05s")])
def test_format_duration(seconds, text: str) -> None:
    assert format_duration(seconds) == text
