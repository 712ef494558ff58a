"""dataloader-bottleneck: fires when the loop mostly waits for batches (a slow
`__getitem__`, a slow `collate_fn`, the reference loop's injection), silent on healthy
runs, on waits confined to worker start-up, and when no loader was watched."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from diagnose.rules._base import Severity
from diagnose.rules.resources import dataloader_bottleneck
from diagnose.rundir.reader import read_run
from diagnose.rundir.tables import Run, RunTables
from tests.harness import faults_resources as harness


RECORDED = ("slow_getitem", "slow_collate", "ref_dataloader_bottleneck", "cache_fills_once")


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, RunTables]:
    root = tmp_path_factory.mktemp("loaders")
    return {name: read_run(harness.FAULTS[name].record(root / name, 0)).first for name in RECORDED}


def _only(findings):
    assert len(findings) == 1, findings
    finding = findings[0]
    assert finding.rule == "dataloader-bottleneck" and finding.severity >= Severity.WARNING
    return finding


@pytest.mark.parametrize("name", ["slow_getitem", "slow_collate"])
def test_fires_on_slow_loader(runs: dict[str, RunTables], name: str) -> None:
    finding = _only(dataloader_bottleneck.check(runs[name]))
    ev = finding.evidence
    assert ev["median_share"] > 0.8 and ev["total_share"] > 0.8  # ~15 ms of sleep against ~1 ms of compute
    assert ev["median_wait_s"] >= 0.014
    last = int(runs[name].steps.index[-1])
    assert finding.steps == (2, last) and ev["window"] == [2, last]  # after the 2 warm-up steps, to the end
    assert ev["steps_over_half"] >= 0.9 * ev["steps_analysed"]
    assert "num_workers" in finding.fix
    assert finding.title.startswith("The loop waits for data ")


def test_fires_on_reference_loop_injection(runs: dict[str, RunTables]) -> None:
    finding = _only(dataloader_bottleneck.check(runs["ref_dataloader_bottleneck"]))
    assert finding.evidence["median_share"] >= 0.5
    assert finding.evidence["median_wait_s"] >= 0.03  # the collate's sleep


def test_silent_on_a_dataset_decoding_in_the_main_process(runs: dict[str, RunTables]) -> None:
    assert dataloader_bottleneck.check(runs["cache_fills_once"]) == []


def _tables(wait: np.ndarray, step: np.ndarray) -> RunTables:
    steps = pd.DataFrame({"data_wait_s": wait, "step_time_s": step, "skipped": False},
                         index=pd.Index(np.arange(len(wait)), name="step"))
    return RunTables(steps=steps)


def test_silent_when_only_worker_start_up_waits() -> None:
    # 5 epochs of 40 steps: workers start again each epoch (a 2 s first batch), then keep up.
    n = 200
    wait = np.where(np.arange(n) % 40 == 0, 2.0, 0.001)
    step = wait + 0.05
    assert dataloader_bottleneck.check(_tables(wait, step)) == []


def test_silent_without_a_watched_loader_or_with_few_steps() -> None:
    assert dataloader_bottleneck.check(_tables(np.zeros(100), np.full(100, 0.05))) == []
    assert dataloader_bottleneck.check(_tables(np.full(11, 0.09), np.full(11, 0.1))) == []  # 9 steps analysed


def test_threshold_is_the_median_share() -> None:
    n = 100
    step = np.full(n, 0.1)
    assert dataloader_bottleneck.check(_tables(np.full(n, 0.035), step)) == []
    finding = _only(dataloader_bottleneck.check(_tables(np.full(n, 0.045), step)))
    assert finding.evidence["median_share"] == pytest.approx(0.45)


def test_silent_on_healthy(healthy_run: Run) -> None:
    for tables in healthy_run.ranks.values():
        assert dataloader_bottleneck.check(tables) == []
