"""Every numerics rule against every faulty run of tests/harness/faults_numerics.py: the
rule a run is built to trigger fires, the rules it must not trigger stay silent (near
misses: all of them). Seed 0 in the normal suite; seeds 1 and 2, and the healthy
scenarios for seeds 1 and 2, in the slow tests (`-m slow`), so no threshold is tuned to
one seed."""
from __future__ import annotations

from pathlib import Path

import pytest

from diagnose.rules import catalogue
from diagnose.rules._base import Severity
from diagnose.rundir.reader import read_run
from diagnose.rundir.tables import RunTables
from tests.harness.faults_numerics import FAULTS, NUMERICS, recorded
from tests.harness.scenarios import HEALTHY, record

MINE = tuple(n for n in NUMERICS if n != "nonfinite-loss")   # nonfinite-loss is tested in tests/rules/numerics/


def _loud(run: RunTables, rules=NUMERICS) -> dict[str, list[str]]:
    """Rule name -> titles of its findings at warning or above."""
    specs = {spec.name: spec for spec in catalogue().rules}
    out = {}
    for name in rules:
        spec = specs[name]
        if run.missing(*spec.requires):
            continue
        titles = [f.title for f in spec.check(run) if f.severity >= Severity.WARNING]
        if titles:
            out[name] = titles
    return out


def test_every_numerics_rule_is_in_the_catalogue() -> None:
    cat = catalogue()
    assert not [p for p in cat.problems if ".numerics." in p]
    assert {r.name for r in cat.rules if r.category == "numerics"} >= set(NUMERICS)
    for name in MINE:
        spec = cat.get(name)
        for section in ("## What it flags", "## Why it matters", "## Example", "Use instead", "## Thresholds"):
            assert section in spec.doc, (name, section)


def _check_fault(tmp_path_factory: pytest.TempPathFactory, name: str, seed: int) -> None:
    fault = FAULTS[name]
    run = read_run(recorded(name, tmp_path_factory.getbasetemp(), seed)).first
    loud = _loud(run)
    if fault.rule is not None:
        assert fault.rule in loud, f"{fault.rule} missed on {name} seed {seed}; fired: {loud}"
    assert not (set(fault.quiet) & set(loud)), {r: loud[r] for r in set(fault.quiet) & set(loud)}


@pytest.mark.filterwarnings("ignore:Detected call of `lr_scheduler.step\\(\\)` before")
@pytest.mark.parametrize("name", sorted(FAULTS))
def test_fault_fires_its_rule_and_no_other_it_must_not(tmp_path_factory, name: str) -> None:
    _check_fault(tmp_path_factory, name, 0)


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:Detected call of `lr_scheduler.step\\(\\)` before")
@pytest.mark.parametrize("seed", [1, 2])
@pytest.mark.parametrize("name", sorted(FAULTS))
def test_fault_other_seeds(tmp_path_factory, name: str, seed: int) -> None:
    _check_fault(tmp_path_factory, name, seed)


@pytest.mark.slow
@pytest.mark.parametrize("seed", [1, 2])
@pytest.mark.parametrize("scenario", sorted(HEALTHY))
def test_silent_on_healthy_other_seeds(tmp_path_factory, scenario: str, seed: int) -> None:
    run_dir = record(scenario, Path(tmp_path_factory.mktemp(f"{scenario}-s{seed}")) / "run", seed)
    assert _loud(read_run(run_dir).first, MINE) == {}
