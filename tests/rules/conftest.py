"""Fixtures for rule tests: healthy runs recorded once per session, and synthetic runs.

    def test_silent_on_healthy(healthy_run):          # parametrised over every scenario
        assert check(healthy_run.first) == []
"""
from __future__ import annotations

from pathlib import Path

import pytest

from diagnose.rundir.reader import read_run
from diagnose.rundir.tables import Run
from tests.harness.scenarios import HEALTHY, record


@pytest.fixture(scope="session")
def _healthy_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return {}


@pytest.fixture(params=sorted(HEALTHY))
def healthy_run(request: pytest.FixtureRequest, _healthy_dirs: dict[str, Path],
                tmp_path_factory: pytest.TempPathFactory) -> Run:
    """Each healthy scenario of tests/harness, recorded by Monitor (once per session), read."""
    name = request.param
    if name not in _healthy_dirs:
        _healthy_dirs[name] = record(name, tmp_path_factory.mktemp(name) / "run")
    return read_run(_healthy_dirs[name])


@pytest.fixture(scope="session")
def fault_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where the loop-structure faults (tests/harness/faults_loop.py) are recorded, once per
    session for all the test_loop_* modules."""
    return tmp_path_factory.getbasetemp() / "loop_faults"
