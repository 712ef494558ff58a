"""rnn-batch-first-mismatch: batch-major input into batch_first=False LSTM/GRU (a classifier,
a language model whose flattened loss says nothing, the reference loop's chars injection, a
zero-code script); silent on sequence-major data (transposed, pad_sequence, batchified by
hand without a DataLoader), batch_first=True, and seq_len == batch size."""
from __future__ import annotations

from pathlib import Path

import pytest

from diagnose.rules._base import Severity
from diagnose.rules.data import rnn_batch_first_mismatch as rule
from tests.harness import faults_contracts
from tests.rules.data._contracts import alarms, faults_for, record, script

RULE = "rnn-batch-first-mismatch"


@pytest.mark.parametrize("name", faults_for(RULE))
def test_fires_on_batch_major_input(name: str, tmp_path: Path) -> None:
    run = record(name, tmp_path)
    [finding] = rule.check(run)
    ev = finding.evidence
    assert finding.severity == Severity.ERROR and finding.steps[0] == 0
    assert ev["batch_first"] is False and ev["module"] == "rnn"
    assert ev["input_shape"][0] in ev["batch_sizes_seen"] and ev["input_shape"][1] not in ev["batch_sizes_seen"]
    assert "batch_first=True" in finding.fix
    assert [f.rule for f in alarms(run)].count(RULE) == 1


@pytest.mark.parametrize("name", ["lstm_transposed", "lstm_pad_sequence", "lstm_batchified_by_hand",
                                  "gru_batch_first_square"])
def test_silent_on_correct_layouts(name: str, tmp_path: Path) -> None:
    run = record(name, tmp_path)
    assert len(run.rnn_calls) >= 5 and not run.rnn_calls["packed"].any()
    assert rule.check(run) == []
    assert alarms(run) == []


def test_zero_code_script(tmp_path: Path) -> None:
    run = script("rnn_batch_first_mismatch.py", tmp_path)
    [finding] = rule.check(run)
    assert finding.evidence["input_shape"] == [32, 15, 3] and finding.evidence["module"] == "lstm"
    assert finding.title.startswith("lstm (LSTM, batch_first=False)")


def test_seq_len_equal_to_batch_size_alone_is_not_evidence(tmp_path: Path, monkeypatch) -> None:
    # the bug with 16-step sequences in batches of 16: (16, 16, E) reads the same either way
    x, y = faults_contracts._tokens(0, 256, 16)
    monkeypatch.setattr(faults_contracts, "_tokens", lambda seed, n, length: (x, y))
    run = record("gru_batch_major_lm", tmp_path)
    assert {tuple(s[:2]) for s in run.rnn_calls["input_shape"]} == {(16, 16)}
    assert rule.check(run) == []


@pytest.mark.parametrize("shape, batch_first, batches, expected", [
    ((32, 10, 4), False, {32}, "mismatch"), ((10, 32, 4), False, {32}, "consistent"),
    ((32, 10, 4), True, {32}, "consistent"), ((10, 32, 4), True, {32}, "mismatch"),
    ((16, 16, 4), False, {16}, None), ((32, 10, 4), False, {7}, None), ((32, 4), False, {32}, None),
    ((32, 10, 4), False, {32, 10}, "consistent"),
])
def test_verdict(shape, batch_first, batches, expected) -> None:
    assert rule.verdict(shape, batch_first, batches) == expected


def test_healthy_sequence_major_script_is_silent(tmp_path: Path) -> None:
    run = script("healthy_lstm_seq_major_nll.py", tmp_path)
    assert len(run.rnn_calls) == 5 and set(run.loss_calls["fn"]) == {"nll_loss", "binary_cross_entropy"}
    assert alarms(run) == []
