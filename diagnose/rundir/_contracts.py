"""The `loss_calls` and `rnn_calls` tables, from `loss_call` / `rnn_call` events.

The recorder writes these events on sampled steps (diagnose/recorder/contracts.py,
docs/run-directory.md). Each field is checked for its documented type: a shape is a
list of non-negative integers, a statistic a float; anything else is read as missing
(None / NaN), as the rest of the reader does (diagnose/rundir/_coerce.py), so a
damaged line never reaches a rule as a wrong type.
"""
from __future__ import annotations

import math
from typing import Any

import pandas as pd

from diagnose.rundir import schema
from diagnose.rundir._coerce import as_float, as_int

LOSS_CALLS_COLUMNS = ("step", "fn", "input_shape", "input_dtype", "target_shape", "target_dtype",
                      "classes", "pred_min", "pred_max", "row_sum_err", "input_op")
"""Columns of `RunTables.loss_calls`: one row per recorded loss call, in file order.
Shapes are tuples of ints (None when not a tensor); `classes` and the three prediction
statistics are only set for `cross_entropy` / `nll_loss` (NaN otherwise); `input_op` is
the autograd node that made the prediction (`SigmoidBackward0`; None when not recorded)."""

RNN_CALLS_COLUMNS = ("step", "module", "index", "name", "batch_first", "input_shape", "packed",
                     "loader_batch_size")
"""Columns of `RunTables.rnn_calls`: one row per recorded LSTM/GRU/RNN forward. `index`
numbers the recurrent modules in the order first seen; `packed` is True for a
PackedSequence input (no `input_shape`); `loader_batch_size` is the training
DataLoader's `batch_size` at that step (None when unknown)."""


def _empty(columns: tuple[str, ...]) -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series(dtype=object) for c in columns})


def empty_loss_calls() -> pd.DataFrame:
    """An empty loss-call table with its columns."""
    return _empty(LOSS_CALLS_COLUMNS)


def empty_rnn_calls() -> pd.DataFrame:
    """An empty RNN-call table with its columns."""
    return _empty(RNN_CALLS_COLUMNS)


def _int(value: Any) -> int | None:
    """An integral number within +-2**53 (the reader's limit), else None."""
    return as_int(value)


def _float(value: Any) -> float:
    """A number, or the writer's spelling of a non-finite one ("nan", "inf", "-inf"); else NaN."""
    if value in ("nan", "inf", "-inf"):
        return float(value)
    return as_float(value)


def _shape(value: Any) -> tuple[int, ...] | None:
    if not isinstance(value, list) or len(value) > 16:
        return None
    dims = tuple(_int(v) for v in value)
    return dims if all(d is not None and d >= 0 for d in dims) else None


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def loss_calls_table(records: list[dict[str, Any]]) -> pd.DataFrame:
    """The `loss_call` events as a table (see LOSS_CALLS_COLUMNS)."""
    rows = [(_int(r.get("step")), _str(r.get("fn")), _shape(r.get("input_shape")), _str(r.get("input_dtype")),
             _shape(r.get("target_shape")), _str(r.get("target_dtype")), _int(r.get("classes")),
             _float(r.get("pred_min")), _float(r.get("pred_max")), _float(r.get("row_sum_err")),
             _str(r.get("input_op")))
            for r in records if r.get("kind") == schema.EVENT_LOSS_CALL]
    rows = [row for row in rows if row[0] is not None and row[1] is not None]
    if not rows:
        return empty_loss_calls()
    frame = pd.DataFrame(rows, columns=list(LOSS_CALLS_COLUMNS))
    frame["step"] = frame["step"].astype("int64")
    frame["classes"] = frame["classes"].astype("Int64")
    return frame


def rnn_calls_table(records: list[dict[str, Any]]) -> pd.DataFrame:
    """The `rnn_call` events as a table (see RNN_CALLS_COLUMNS)."""
    rows = [(_int(r.get("step")), _str(r.get("module")), _int(r.get("index")), _str(r.get("name")) or "",
             r.get("batch_first") if isinstance(r.get("batch_first"), bool) else None,
             _shape(r.get("input_shape")), r.get("packed") is True, _int(r.get("loader_batch_size")))
            for r in records if r.get("kind") == schema.EVENT_RNN_CALL]
    rows = [row for row in rows if row[0] is not None and row[2] is not None and row[4] is not None]
    if not rows:
        return empty_rnn_calls()
    frame = pd.DataFrame(rows, columns=list(RNN_CALLS_COLUMNS))
    frame["step"] = frame["step"].astype("int64")
    frame["index"] = frame["index"].astype("int64")
    frame["loader_batch_size"] = frame["loader_batch_size"].astype("Int64")
    return frame
