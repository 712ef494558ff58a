"""The loss_calls / rnn_calls tables take whatever a damaged events.jsonl holds: every field
of a real `loss_call` and `rnn_call` event replaced by each odd value of the reader fuzzer
(bench/fuzz_reader.py) reads without error, as a documented type or missing, and the three
rules that read the tables run on it without failing."""
from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest

from bench.fuzz_reader import ODD_VALUES
from diagnose.rules.data import loss_shape_broadcast, rnn_batch_first_mismatch, softmax_before_cross_entropy
from diagnose.rundir.reader import read_run
from tests.harness.faults_contracts import record_fault

RULES = (softmax_before_cross_entropy, loss_shape_broadcast, rnn_batch_first_mismatch)


@pytest.fixture(scope="module")
def recorded(tmp_path_factory) -> Path:
    run = record_fault("gru_batch_major_lm", tmp_path_factory.mktemp("rec") / "run", 0)
    events = (run / "rank0" / "events.jsonl").read_text().splitlines()
    assert any('"loss_call"' in e for e in events) and any('"rnn_call"' in e for e in events)
    return run


@pytest.mark.parametrize("kind", ["loss_call", "rnn_call"])
def test_every_field_takes_every_odd_value(recorded: Path, tmp_path: Path, kind: str) -> None:
    path = recorded / "rank0" / "events.jsonl"
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    first = next(i for i, r in enumerate(lines) if r["kind"] == kind)
    copy = tmp_path / "run"
    shutil.copytree(recorded, copy)
    for field in [k for k in lines[first] if k != "kind"]:
        for value in ODD_VALUES:
            changed = [dict(r) for r in lines]
            for r in changed:
                if r["kind"] == kind:
                    r[field] = value
            (copy / "rank0" / "events.jsonl").write_text("\n".join(json.dumps(r) for r in changed) + "\n")
            tables = read_run(copy).first
            for shape in list(tables.loss_calls["input_shape"]) + list(tables.rnn_calls["input_shape"]):
                assert shape is None or (isinstance(shape, tuple) and all(isinstance(d, int) for d in shape))
            for stat in tables.loss_calls["pred_min"]:
                assert isinstance(stat, float) or math.isnan(stat)
            for rule in RULES:
                rule.check(tables)   # must not raise
