"""Loop rules as a family: every faulty loop triggers its rule and no other loop rule, near
misses and healthy runs stay quiet, evidence carries the call sequence of one step, and
the shared call index (`rules/loop/_callindex.py`) classifies calls as documented."""
from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import numpy as np
import pytest

from diagnose.rules import catalogue, run_rules
from diagnose.rules._base import Severity
from diagnose.rules.loop._callindex import CallIndex, SEQUENCE_LIMIT
from diagnose.rundir import schema
from diagnose.rundir.reader import read_run
from diagnose.rundir.synthetic import write_synthetic_run
from diagnose.rundir.tables import Run, RunTables
from tests.harness.faults_loop import ALL_LOOP, FAULTS, fault_tables
from tests.harness.scenarios import HEALTHY, record

LOOP_RULES = {spec.name: spec for spec in catalogue().rules if spec.category == "loop"}

pytestmark = [pytest.mark.filterwarnings("ignore:Detected call of `lr_scheduler.step\\(\\)`:UserWarning"),
              pytest.mark.usefixtures("one_torch_thread_module")]  # tests/conftest.py: one torch thread


def _loop_findings(tables: RunTables, rules=ALL_LOOP):
    found = []
    for name in rules:
        found += LOOP_RULES[name].check(tables)
    return found


def test_the_family_is_complete_and_documented() -> None:
    assert sorted(LOOP_RULES) == sorted(ALL_LOOP)
    for spec in LOOP_RULES.values():
        assert spec.requires and spec.doc.startswith(spec.summary)
        for section in ("## What it flags", "## Why it matters", "## Example", "Use instead", "## Thresholds"):
            assert section in spec.doc, f"{spec.name}: docstring lacks {section!r}"


@pytest.mark.parametrize("name", sorted(n for n, f in FAULTS.items() if f.rule))
def test_fires_on_each_faulty_loop_with_a_call_sequence(name: str, fault_root: Path) -> None:
    fault = FAULTS[name]
    tables = fault_tables(name, fault_root)
    findings = LOOP_RULES[fault.rule].check(tables)
    assert findings, f"{fault.rule} missed {name}"
    finding = findings[0]
    assert finding.rule == fault.rule
    assert finding.severity >= Severity.parse(fault.severity)
    evidence = finding.evidence
    if fault.at is not None:
        assert evidence.get("first_step", evidence.get("step")) == fault.at
        assert finding.steps[0] == fault.at
    sequence = evidence["sequence"]
    assert sequence and all(isinstance(t, str) for t in sequence) and len(sequence) <= SEQUENCE_LIMIT + 2
    assert isinstance(evidence["step"], int)
    step_tokens = set(tables.calls.loc[tables.calls["step"] == evidence["step"], "token"].astype(str))
    assert {t.split("*")[0] for t in sequence if t != "..." and not t.startswith("phase:")} <= step_tokens


@pytest.mark.parametrize("name", sorted(FAULTS))
def test_no_other_loop_rule_speaks_up(name: str, fault_root: Path) -> None:
    fault = FAULTS[name]
    tables = fault_tables(name, fault_root)
    loud = [f"{f.rule}: {f.title}" for f in _loop_findings(tables, fault.quiet) if f.severity >= Severity.WARNING]
    assert loud == [], f"{name}: {loud}"


def test_silent_on_healthy(healthy_run: Run) -> None:
    findings, notes = run_rules(healthy_run, select=["loop"])
    assert [f"{f.rule}: {f.title}" for f in findings] == []  # not even info
    assert not [n for n in notes if "failed" in n]


@pytest.mark.slow
@pytest.mark.parametrize("seed", [1, 2])
@pytest.mark.parametrize("scenario", sorted(HEALTHY))
def test_silent_on_healthy_other_seeds(scenario: str, seed: int, tmp_path: Path) -> None:
    findings, _ = run_rules(read_run(record(scenario, tmp_path / "run", seed)), select=["loop"])
    assert [f"{f.rule}: {f.title}" for f in findings if f.severity >= Severity.WARNING] == []


@pytest.mark.parametrize("amp", [False, True])
def test_silent_on_the_synthetic_healthy_run(amp: bool, tmp_path: Path) -> None:
    run = read_run(write_synthetic_run(tmp_path / "run", steps=120, params=4, amp=amp, steps_per_epoch=30))
    findings, notes = run_rules(run, select=["loop"])
    assert findings == [] and not [n for n in notes if "failed" in n]


def test_large_runs_are_analysed_in_linear_time(tmp_path: Path) -> None:
    run = read_run(write_synthetic_run(tmp_path / "run", steps=20_000, params=4, amp=True, steps_per_epoch=500))
    tables = run.first
    assert len(tables.calls) > 150_000
    start = time.perf_counter()
    assert _loop_findings(tables) == []
    assert time.perf_counter() - start < 10.0  # ~0.1 s measured; generous for a loaded machine


# ---- the call index ---------------------------------------------------------------------------


def _tables(tmp_path: Path, records: list[tuple[int, list[str]]]) -> RunTables:
    """A run directory holding only these `calls` records, read by the real reader."""
    rank = tmp_path / f"run{len(list(tmp_path.iterdir()))}" / "rank0"
    rank.mkdir(parents=True)
    start = {"type": "start", "schema_version": schema.SCHEMA_VERSION, "run_id": "x", "started_at": 0.0}
    (rank / schema.META_FILE).write_text(json.dumps(start) + "\n")
    (rank / schema.EVENTS_FILE).write_text("".join(
        json.dumps({"kind": "calls", "step": step, "calls": tokens}) + "\n" for step, tokens in records))
    return read_run(rank.parent).first


def test_sequence_is_run_length_encoded_marks_phases_and_is_trimmed_around_the_call(tmp_path: Path) -> None:
    step = ["opt0.zero_grad", "model0.forward[TGB]", "backward", "opt0.step", "phase:val", "model0.eval",
            "model0.forward[EN]*3", "model0.train", "phase:train"]
    calls = CallIndex.of(_tables(tmp_path, [(0, step), (1, ["opt0.zero_grad"] + ["model0.forward[TGB]", "backward"] * 20
                                            + ["opt0.step"])]))
    assert calls.sequence(0) == ["opt0.zero_grad", "model0.forward[TGB]", "backward", "opt0.step", "phase:val",
                                 "model0.eval", "model0.forward[EN]*3", "model0.train"]
    rows = calls.rows_of_step(1)
    last = calls.sequence(int(rows[-1]), limit=6)
    assert last[0] == "..." and last[-1] == "opt0.step" and len(last) == 7


def test_evaluation_forwards_use_phases_when_marked_and_the_step_tail_otherwise(tmp_path: Path) -> None:
    train = ["opt0.zero_grad", "model0.forward[TGB]", "backward", "opt0.step"]
    marked = CallIndex.of(_tables(tmp_path, [(0, train + ["phase:val", "model0.forward[TN]", "phase:train"]),
                                   (1, ["model0.forward[EN]"] + train)]))
    assert marked.has_phases
    assert marked.token[marked.evaluation_forwards()].tolist() == ["model0.forward[TN]"]
    unmarked = CallIndex.of(_tables(tmp_path, [(0, train + ["model0.forward[TN]", "model0.forward[EG]"]),
                                     (1, ["model0.forward[EN]", "model0.forward[TN]"] + train)]))
    assert not unmarked.has_phases
    # the tail of step 0 counts; no_grad or eval forwards before step 1's optimizer step do not
    assert unmarked.token[unmarked.evaluation_forwards()].tolist() == ["model0.forward[TN]", "model0.forward[EG]"]


def test_a_phase_with_backward_passes_is_training_not_evaluation(tmp_path: Path) -> None:
    finetune = ["phase:finetune", "opt0.zero_grad", "model0.forward[TGB]", "backward", "model0.forward[TG]",
                "opt0.step"]
    calls = CallIndex.of(_tables(tmp_path, [(0, finetune)]))
    assert not calls.has_phases and not calls.evaluation_forwards().any()


def test_the_index_is_built_once_per_call_table(fault_root: Path) -> None:
    tables = fault_tables("no_zero_grad_sgd", fault_root)
    assert CallIndex.of(tables) is CallIndex.of(dataclasses.replace(tables, steps=tables.steps.iloc[:3]))
    copy = dataclasses.replace(tables, calls=tables.calls.copy())
    assert CallIndex.of(copy) is not CallIndex.of(tables)
    assert np.array_equal(CallIndex.of(copy).step, CallIndex.of(tables).step)


def test_rules_without_calls_are_skipped_not_failed(tmp_path: Path) -> None:
    run = read_run(write_synthetic_run(tmp_path / "run", steps=10, params=2))
    run.ranks[0] = dataclasses.replace(run.first, calls=RunTables().calls)
    findings, notes = run_rules(run, select=["loop"])
    assert findings == []
    assert not [n for n in notes if "failed" in n]
    assert any("skipped" in n and "calls" in n for n in notes)
