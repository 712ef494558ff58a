"""memory-leak: fires on memory that grows every step (kept graphs, kept batches), stays
silent on healthy runs, on a cache that fills once, on one-off jumps and on sawtooths.

The loops of tests/harness/faults_resources.py first give memory freed earlier in the
process back to the OS (`release_freed_memory`): RSS is process-wide, and a leak would
otherwise refill memory freed by earlier tests without RSS moving at all.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from diagnose.rules._base import Severity
from diagnose.rules.resources import memory_leak
from diagnose.rundir.reader import read_run
from diagnose.rundir.tables import Run, RunTables
from tests.harness import faults_resources as harness

MiB = 2**20
RECORDED = ("leak_running_loss_retain_graph", "leak_metric_with_grad", "leak_kept_batches", "cache_fills_once")


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, RunTables]:
    """Each loop of RECORDED, recorded once for this module."""
    root = tmp_path_factory.mktemp("leaks")
    return {name: read_run(harness.FAULTS[name].record(root / name, 0)).first for name in RECORDED}


def _only(findings):
    assert len(findings) == 1, findings
    finding = findings[0]
    assert finding.rule == "memory-leak" and finding.severity >= Severity.WARNING
    return finding


@pytest.mark.parametrize("name", ["leak_running_loss_retain_graph", "leak_metric_with_grad"])
def test_fires_on_kept_autograd_graph(runs: dict[str, RunTables], name: str) -> None:
    finding = _only(memory_leak.check(runs[name]))
    ev = finding.evidence
    assert ev["series"] == "rss_bytes"
    assert finding.steps == (50, 99) and ev["window"] == [50, 99]  # the second half, to the end
    assert 0.8 * MiB < ev["bytes_per_step"] < 4 * MiB  # ~1.5 and ~2.5 MiB of saved activations
    assert ev["growth_bytes"] >= memory_leak.FLOOR_BYTES["rss_bytes"]
    assert ev["looks_like"] == "activation-sized"
    assert "autograd graph" in finding.explanation and "loss.item()" in finding.fix
    assert not ev["out_of_memory"]


def test_fires_on_kept_batches_with_their_size(runs: dict[str, RunTables]) -> None:
    finding = _only(memory_leak.check(runs["leak_kept_batches"]))
    ev = finding.evidence
    assert finding.steps == (100, 199)
    # 32 samples x 8192 float32 = 1 MiB kept per step, 32 KiB per sample.
    assert ev["bytes_per_step"] == pytest.approx(MiB, rel=0.3)
    assert ev["bytes_per_sample"] == pytest.approx(32 * 1024, rel=0.3)
    assert "per step" in finding.title and "MiB" in finding.title


def test_silent_on_a_cache_that_fills_once(runs: dict[str, RunTables]) -> None:
    steps = runs["cache_fills_once"].steps
    assert steps["rss_bytes"].iloc[-1] - steps["rss_bytes"].iloc[0] > 10 * MiB  # it did grow, early
    assert memory_leak.check(runs["cache_fills_once"]) == []


# ---- synthetic series: the CUDA path and the shapes that are not leaks -------------------

def _tables(alloc=None, rss=None, peak=None, samples=64, epochs_of=None, events=None) -> RunTables:
    n = len(alloc if alloc is not None else rss)
    data = {"samples": np.full(n, samples), "skipped": np.zeros(n, bool)}
    if alloc is not None:
        data["mem_alloc_bytes"] = np.asarray(alloc, float)
    if peak is not None:
        data["mem_peak_bytes"] = np.asarray(peak, float)
    if rss is not None:
        data["rss_bytes"] = np.asarray(rss, float)
    if epochs_of is not None:
        data["epoch"] = np.arange(n) // epochs_of
    tables = RunTables(steps=pd.DataFrame(data, index=pd.Index(np.arange(n), name="step")))
    if events is not None:
        tables.events = pd.DataFrame(events, columns=["kind", "step", "t_s", "data"])
    return tables


def test_cuda_growth_the_size_of_a_steps_activations_is_graph_retention() -> None:
    steps = np.arange(200)
    alloc = 2e9 + 3 * MiB * steps            # 3 MiB kept every step
    peak = alloc + 6 * MiB                    # a step's forward/backward uses 6 MiB on top
    finding = _only(memory_leak.check(_tables(alloc=alloc, peak=peak, rss=np.full(200, 3e9))))
    ev = finding.evidence
    assert ev["series"] == "mem_alloc_bytes" and ev["looks_like"] == "graph-retention"
    assert ev["bytes_per_step"] == pytest.approx(3 * MiB)
    assert ev["growth_to_transient"] == pytest.approx(0.5)
    assert "CUDA allocated memory grows steadily" in finding.title


def test_cuda_growth_far_below_a_steps_activations_is_not_called_a_graph() -> None:
    steps = np.arange(1000)
    alloc = 8e9 + 64 * 1024 * steps           # 64 KiB per step: 31 MiB over the window
    finding = _only(memory_leak.check(_tables(alloc=alloc, peak=alloc + 2e9)))
    assert finding.evidence["looks_like"] == "small-per-step"


def test_cuda_peak_held_by_an_earlier_run_falls_back_to_the_size() -> None:
    # mem_peak_bytes is the process's peak so far: a bigger earlier run in the same process
    # holds it, so no step sets a new peak and the transient cannot be read.
    steps = np.arange(200)
    alloc = 1e9 + 2 * MiB * steps
    finding = _only(memory_leak.check(_tables(alloc=alloc, peak=np.full(200, 5e9))))
    assert finding.evidence["looks_like"] == "activation-sized"
    assert "step_transient_bytes" not in finding.evidence


def test_error_when_the_growth_ends_in_out_of_memory() -> None:
    steps = np.arange(120)
    events = [["oom", 119, 50.0, {"message": "CUDA out of memory"}]]
    finding = _only(memory_leak.check(_tables(alloc=1e9 + 4 * MiB * steps, events=events)))
    assert finding.severity == Severity.ERROR and finding.evidence["out_of_memory"] is True
    assert finding.title.endswith("then the run ran out of memory")


@pytest.mark.parametrize("shape", ["flat", "one_jump", "sawtooth_per_epoch", "noisy_random_walk", "too_short",
                                   "below_floor"])
def test_silent_on_shapes_that_are_not_leaks(shape: str) -> None:
    rng = np.random.default_rng(0)
    n = 300
    base = np.full(n, 4e8)
    series = {
        "flat": base + rng.normal(0, 2 * MiB, n),
        "one_jump": base + np.where(np.arange(n) >= 230, 70 * MiB, 0),   # the reference loop's last epoch
        "sawtooth_per_epoch": base + (np.arange(n) % 60) * 2 * MiB,       # freed at every epoch end
        "noisy_random_walk": base + np.cumsum(rng.normal(0, 4 * MiB, n)),
        "too_short": base[:39] + np.arange(39) * 8 * MiB,
        "below_floor": base + np.arange(n) * 100 * 1024,                 # 15 MiB over the window
    }[shape]
    assert memory_leak.check(_tables(rss=series)) == []


def test_silent_on_healthy(healthy_run: Run) -> None:
    for tables in healthy_run.ranks.values():
        assert memory_leak.check(tables) == []
