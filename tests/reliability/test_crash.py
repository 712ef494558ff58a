"""Crash safety: kill the reference loop (`diagnose run`) and read what it left.

Six trials of bench/crash_trials.py (fixed seeds, run side by side): two SIGKILLs, one
SIGTERM and three SIGINTs, each sent a random moment after a point of the run showed on
disk (the first step flushed, the first or third epoch's checkpoint written: waits on
files, never on a fixed time), to the reference loop or to a plain script in the zero-code
mode (bench/crash_script.py). The bench script runs 60+ and prints the figures.
"""
from __future__ import annotations

import importlib.util
import signal
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

_BENCH = Path(__file__).resolve().parents[2] / "bench" / "crash_trials.py"
_spec = importlib.util.spec_from_file_location("crash_trials", _BENCH)
crash_trials = importlib.util.module_from_spec(_spec)
sys.modules["crash_trials"] = crash_trials  # dataclasses look their module up
_spec.loader.exec_module(crash_trials)

PLAN = [(0, signal.SIGKILL, "first-step", "reference"), (7, signal.SIGKILL, "first-step", "script"),
        (1000, signal.SIGTERM, "first-checkpoint", "reference"),
        (1001, signal.SIGINT, "first-step", "reference"), (1002, signal.SIGINT, "first-checkpoint", "script"),
        (1003, signal.SIGINT, "third-checkpoint", "reference")]


@pytest.fixture(scope="module")
def trials(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("crash")
    with ThreadPoolExecutor(len(PLAN)) as pool:
        return list(pool.map(lambda p: crash_trials.run_trial(workdir, p[0], p[1], max_delay_s=0.6, point=p[2],
                                                              mode=p[3]), PLAN))


@pytest.mark.parametrize("index", range(len(PLAN)),
                         ids=[f"{s.name}-{seed}-{point}-{mode}" for seed, s, point, mode in PLAN])
def test_run_directory_survives_the_signal(trials, index):
    trial = trials[index]
    assert trial.failure is None, f"{trial.sig} {trial.delay_s}s after {trial.point}: {trial.failure}"
    assert trial.steps > 0  # the signal came while the loop was running

