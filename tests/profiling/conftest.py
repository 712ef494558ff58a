"""Recorded runs shared by the profiling tests (module-scoped: recorded once per module)."""
from __future__ import annotations

from pathlib import Path

import pytest

from tests.profiling import _runs


@pytest.fixture(scope="session")
def profiled_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A healthy 10-step MLP run, steps 3-5 profiled."""
    run_dir = tmp_path_factory.mktemp("profiled") / "run"
    _runs.train(run_dir)
    return run_dir


@pytest.fixture(scope="session")
def slow_loader_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """20 steps whose collate sleeps 15 ms (against ~1 ms of compute), steps 3-5 profiled."""
    run_dir = tmp_path_factory.mktemp("slow") / "run"
    _runs.train(run_dir, steps=20, collate_sleep_s=0.015)
    return run_dir
