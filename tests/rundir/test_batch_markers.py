"""`batch` markers in the call order: not calls, counted in the call table's `batch` column."""
from __future__ import annotations

from diagnose.rundir._calls import calls_table, tokens_from_records
from diagnose.rundir.tables import CALLS_COLUMNS
from diagnose.zerocode.phases import insert_phases


def _table(*records: tuple[int, list[str]]):
    return calls_table(tokens_from_records([{"kind": "calls", "step": s, "calls": c} for s, c in records]))


def test_markers_are_counted_not_called() -> None:
    t = _table((0, ["batch", "opt0.zero_grad", "model0.forward[TGB]", "backward", "batch", "backward", "opt0.step"]),
               (1, ["batch*3", "phase:val", "model0.forward[EN]", "phase:train", "backward"]))
    assert list(t.columns) == list(CALLS_COLUMNS)
    assert t["token"].astype(str).tolist() == ["opt0.zero_grad", "model0.forward[TGB]", "backward", "backward",
                                               "opt0.step", "model0.forward[EN]", "backward"]
    assert t["batch"].tolist() == [1, 1, 1, 2, 2, 5, 5]
    assert t["phase"].astype(str).tolist() == ["train"] * 5 + ["val", "train"]
    assert t["seq"].tolist() == list(range(7))


def test_runs_without_markers_read_zero() -> None:
    t = _table((0, ["opt0.zero_grad", "backward", "opt0.step"]))
    assert t["batch"].tolist() == [0, 0, 0]


def test_a_marker_does_not_end_an_inferred_validation() -> None:
    """The zero-code mode's phase inference: a training batch arriving during a validation
    is neutral (the phase turns back to train at the next training call, as before)."""
    tokens = [["model0.forward", "TGB"], ["backward", None], ["opt0.step", None], ["model0.eval", None],
              ["model0.forward", "EN"], ["batch", None], ["model0.forward", "EN"], ["model0.train", None],
              ["opt0.zero_grad", None]]
    out, phase = insert_phases(tokens, "train")
    names = [t[0] for t in out]
    assert names == ["model0.forward", "backward", "opt0.step", "phase:val", "model0.eval", "model0.forward",
                     "batch", "model0.forward", "phase:train", "model0.train", "opt0.zero_grad"]
    assert phase == "train"
