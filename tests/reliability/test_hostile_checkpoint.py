"""A checkpoint that runs code when unpickled is refused: diagnose loads checkpoints with
`torch.load(weights_only=True)` (reference_loop/checkpoint.py), so `--resume evil.pt`
stops with one line and the payload never runs."""
from __future__ import annotations

import builtins
import pickle

import pytest
import torch
from click.testing import CliRunner

from diagnose.cli import main as cli
from reference_loop import checkpoint


class _Payload:
    """Unpickling it calls open(marker, "w"): a file appears if any code from it ran."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (builtins.open, (self.marker, "w"))


@pytest.fixture
def evil(tmp_path):
    marker = tmp_path / "payload-ran"
    path = tmp_path / "evil.pt"
    torch.save({"model": {}, "extra": _Payload(str(marker))}, path)
    return path, marker


def test_the_payload_would_run_with_a_full_unpickle(evil):
    """The check below means something: a plain unpickling runs it."""
    path, marker = evil
    torch.load(path, weights_only=False)
    assert marker.exists()


def test_checkpoint_load_refuses_it(evil):
    path, marker = evil
    with pytest.raises(pickle.UnpicklingError):
        checkpoint.load(path)
    assert not marker.exists()


def test_resume_from_it_stops_with_one_line(evil, tmp_path):
    path, marker = evil
    result = CliRunner().invoke(cli, ["run", "--resume", str(path), "--steps", "2", "--out", str(tmp_path / "run"),
                                      "--no-report"])
    assert result.exit_code != 0
    assert "Traceback" not in result.output, result.output
    assert [line for line in result.output.splitlines() if line.startswith("Error:")], result.output
    assert not marker.exists()
