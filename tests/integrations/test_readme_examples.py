"""The README's integration examples run as written (code blocks taken from README.md)."""
from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from diagnose.cli import main

README = Path(__file__).resolve().parents[2] / "README.md"


def _blocks(title: str, lang: str) -> list[str]:
    text = README.read_text(encoding="utf-8")
    start = text.index(f"\n## {title}\n")
    end = text.find("\n## ", start + 1)
    section = text[start:end if end != -1 else None]
    return re.findall(rf"```{lang}\n(.*?)```", section, flags=re.S)


def _report(path: str) -> dict:
    result = CliRunner().invoke(main, ["report", path, "--format", "json"])
    assert result.exit_code in (0, 1), result.output
    return json.loads(result.stdout)


@pytest.fixture
def in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.chdir(tmp_path)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield tmp_path
    torch.set_num_threads(threads)


def _run(code: str) -> None:
    exec(compile(code, str(README), "exec"), {"__name__": "__readme__"})  # noqa: S102


def test_tensorboard_example(in_tmp: Path) -> None:
    pytest.importorskip("tensorboard")
    (code,) = _blocks("Runs diagnose did not record: TensorBoard logs", "python")
    _run(code)
    findings = {f["rule"]: f for f in _report("runs/tb_demo")["findings"]}
    assert set(findings) == {"loss-divergence", "gradient-explosion", "nonfinite-loss"}
    # the README quotes these steps; a CPU with other rounding may shift a chaotic blow-up a little
    assert abs(findings["loss-divergence"]["steps"][0] - 92) <= 5
    assert abs(findings["nonfinite-loss"]["steps"][0] - 118) <= 5


def test_lightning_example(in_tmp: Path) -> None:
    pytest.importorskip("lightning")
    (code,) = _blocks("Lightning", "python")
    _run(code)
    doc = _report("runs/lit_demo")
    assert [f for f in doc["findings"] if f["severity"] != "info"] == []
    assert doc["run"]["steps"] == 3 * 16 and doc["run"]["status"] == "finished"


def test_export_example(in_tmp: Path) -> None:
    pytest.importorskip("tensorboard")
    from tests.harness.scenarios import record

    record("mlp_adamw_onecycle", in_tmp / "runs" / "exp1")
    (block,) = _blocks("Export to TensorBoard", "bash")
    commands = [shlex.split(line.split("#")[0]) for line in block.splitlines() if line.startswith("diagnose ")]
    assert [c[:2] for c in commands] == [["diagnose", "export"], ["diagnose", "report"]]
    for command in commands:
        result = CliRunner().invoke(main, command[1:])
        assert result.exit_code == 0, result.output
    assert "No problems found." in result.stdout
