"""The command line: exit codes, one-line errors, the JSON document's shape."""
from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from diagnose import cli
from diagnose.cli import main
from diagnose.rundir import schema
from diagnose.rundir.synthetic import write_synthetic_run


def invoke(*args: str):
    return CliRunner().invoke(main, [str(a) for a in args])


def _strict_json(text: str):
    def refuse(constant: str):
        raise ValueError(f"non-standard JSON constant {constant}")
    return json.loads(text, parse_constant=refuse)


@pytest.fixture
def healthy(tmp_path: Path) -> Path:
    return write_synthetic_run(tmp_path / "healthy", steps=60, params=3)


@pytest.fixture
def nan_run(tmp_path: Path) -> Path:
    loss = list(np.linspace(2.0, 0.5, 60))
    loss[40:] = [math.nan] * 20
    return write_synthetic_run(tmp_path / "nan", steps=60, params=3, loss=loss)


def assert_one_line_error(result, text: str) -> None:
    assert result.exit_code == 2, result.output
    assert result.stdout == ""
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error: ")]
    assert errors == [errors[0]] and text in errors[0]
    assert "Traceback" not in result.output


# ---- report ------------------------------------------------------------------------------------
def test_healthy_run_exits_0(healthy: Path) -> None:
    result = invoke("report", healthy)
    assert result.exit_code == 0, result.output
    assert "status finished · 60 steps" in result.stdout and "No problems found." in result.stdout
    assert f"diagnose: reading {healthy}" in result.stderr and "reading" not in result.stdout


# Tests that count findings select nonfinite-loss: other rules (nonfinite-gradients, ...)
# rightly fire on the same run, and these tests are about the command, not about them.
ONLY = ("--select", "nonfinite-loss")


def test_findings_at_or_above_fail_on_exit_1(nan_run: Path) -> None:
    assert invoke("report", nan_run).exit_code == 1
    result = invoke("report", nan_run, *ONLY)
    assert result.exit_code == 1
    assert "ERROR    nonfinite-loss  Loss is nan from step 40 to the end of the run (20 steps)" in result.stdout
    assert "1 error, 0 warnings, 0 info." in result.stdout
    assert invoke("report", nan_run, *ONLY, "--ignore", "nonfinite-loss").exit_code == 0
    assert invoke("report", nan_run, *ONLY, "--ignore", "numerics").exit_code == 0
    assert invoke("report", nan_run, *ONLY, "--fail-on", "info").exit_code == 1


def test_json_document_shape(nan_run: Path) -> None:
    result = invoke("report", nan_run, "--format", "json", *ONLY)
    assert result.exit_code == 1
    document = _strict_json(result.stdout)
    assert set(document) == {"schema_version", "run", "findings", "notes"}
    assert document["schema_version"] == 1 and document["notes"] == []
    assert document["run"]["status"] == "finished" and document["run"]["steps"] == 60
    [finding] = document["findings"]
    assert set(finding) >= {"rule", "severity", "title", "steps", "evidence", "explanation", "fix"}
    assert (finding["rule"], finding["severity"], finding["steps"]) == ("nonfinite-loss", "error", [40, 59])
    assert finding["evidence"]["first_value"] == "nan"


def test_json_for_several_run_directories_is_one_array(healthy: Path, nan_run: Path) -> None:
    result = invoke("report", healthy, nan_run, "--format", "json", *ONLY)
    assert result.exit_code == 1
    documents = _strict_json(result.stdout)
    assert [len(d["findings"]) for d in documents] == [0, 1]


def test_reader_notes_reach_the_report(healthy: Path) -> None:
    with (healthy / "rank0" / schema.STEPS_FILE).open("a") as f:
        f.write('{"step": 60, "lo')
    result = invoke("report", healthy, "--format", "json", *ONLY)
    assert _strict_json(result.stdout)["notes"] == ["rank0/steps.jsonl: last line is incomplete (torn by a crash?); "
                                                    "skipped"]


def test_output_file(healthy: Path, tmp_path: Path) -> None:
    out = tmp_path / "report.json"
    result = invoke("report", healthy, "--format", "json", "-o", out)
    assert result.exit_code == 0 and result.stdout == ""
    assert _strict_json(out.read_text())["run"]["path"] == str(healthy)


def test_unknown_rule_is_a_usage_error_with_a_suggestion(healthy: Path) -> None:
    result = invoke("report", healthy, "--select", "numerics,nonfinite-los")
    assert_one_line_error(result, "Error: unknown rule or category 'nonfinite-los'; did you mean 'nonfinite-loss'?")
    assert "reading" not in result.stderr  # refused before reading anything


def test_missing_directory_is_one_line(tmp_path: Path) -> None:
    assert_one_line_error(invoke("report", tmp_path / "nope"), "no such directory")


def test_future_schema_is_one_line(healthy: Path) -> None:
    meta = healthy / "rank0" / schema.META_FILE
    meta.write_text(meta.read_text().replace('"schema_version":1', '"schema_version":99'))
    assert_one_line_error(invoke("report", healthy), "uses schema version 99")


def test_internal_error_is_one_line(healthy: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args, **kwargs):
        raise ZeroDivisionError("division by zero")

    monkeypatch.setattr(cli, "analyse", broken)
    assert_one_line_error(invoke("report", healthy),
                          "Error: internal error (ZeroDivisionError: division by zero); please report it")


def test_report_does_not_import_torch(healthy: Path) -> None:
    code = ("import sys\nfrom diagnose.cli import main\n"
            f"try:\n    main(['report', {str(healthy)!r}], standalone_mode=False)\n"
            "finally:\n    print('torch' in sys.modules, file=sys.stderr)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip().endswith("False")


# ---- rules, explain ----------------------------------------------------------------------------
def test_rules_lists_every_rule() -> None:
    result = invoke("rules")
    assert result.exit_code == 0
    assert any(line.split()[:3] == ["nonfinite-loss", "numerics", "error"] for line in result.stdout.splitlines())
    listing = _strict_json(invoke("rules", "--format", "json").stdout)
    entry = next(r for r in listing if r["name"] == "nonfinite-loss")
    assert entry == {"name": "nonfinite-loss", "category": "numerics", "severity": "error",
                     "summary": "The training loss became NaN or Inf.", "requires": ["steps.loss"], "scope": "rank"}


def test_explain_prints_the_docstring() -> None:
    result = invoke("explain", "nonfinite-loss")
    assert result.exit_code == 0
    lines = result.stdout.splitlines()
    assert lines[0] == "# nonfinite-loss (numerics, error)"
    assert lines[2] == "The training loss became NaN or Inf." and "## Why it matters" in result.stdout


def test_explain_unknown_rule_suggests() -> None:
    assert_one_line_error(invoke("explain", "nonfinite_loss"), "did you mean 'nonfinite-loss'?")


def test_run_command_is_registered() -> None:
    assert "run" in main.list_commands(None)
