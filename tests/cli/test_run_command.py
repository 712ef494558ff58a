"""`diagnose run`: the embedded default end to end, bad input, never overwriting."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from diagnose.cli import main

TINY = ["--steps", "6", "--task", "chars"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("cli") / "run"
    result = CliRunner().invoke(main, ["run", "--out", str(out), *TINY])
    assert result.exit_code == 0, result.output
    return out


def test_run_records_and_writes_the_report(run_dir: Path) -> None:
    steps = (run_dir / "rank0" / "steps.jsonl").read_text().splitlines()
    assert len(steps) == 6
    meta = [json.loads(line) for line in (run_dir / "rank0" / "meta.jsonl").read_text().splitlines()]
    assert meta[0]["config"]["task"] == "chars" and meta[-1]["status"] == "finished"
    page = (run_dir / "report.html").read_text(encoding="utf-8")
    assert "Content-Security-Policy" in page


def test_existing_run_directory_is_refused(run_dir: Path) -> None:
    before = (run_dir / "rank0" / "steps.jsonl").read_text()
    result = CliRunner().invoke(main, ["run", "--out", str(run_dir), *TINY])
    assert result.exit_code == 2
    assert "not empty" in result.output and "--overwrite" in result.output
    assert "Traceback" not in result.output
    assert (run_dir / "rank0" / "steps.jsonl").read_text() == before


@pytest.mark.parametrize("args, message", [
    (["--amp", "fp8"], "fp8"),
    (["--epochs", "0"], "0"),
    (["--inject", "no-such-rule"], "no-such-rule"),
    (["--device", "tpu"], "tpu"),
])
def test_bad_values_are_one_line_errors(tmp_path: Path, args: list[str], message: str) -> None:
    result = CliRunner().invoke(main, ["run", "--out", str(tmp_path / "r"), *args])
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output
    assert not (tmp_path / "r").exists()


def test_help_lists_every_option_and_the_injections() -> None:
    result = CliRunner().invoke(main, ["run", "--help"])
    assert result.exit_code == 0
    for option in ("--out", "--task", "--epochs", "--steps", "--device", "--amp", "--seed",
                   "--config", "--inject", "--resume", "--overwrite"):
        assert option in result.output
    assert "eval-with-grad" in "".join(result.output.split())  # click wraps at hyphens
