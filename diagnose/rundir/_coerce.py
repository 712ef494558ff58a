"""Coerce the fields of a damaged run directory to the types the format documents.

A field of the wrong type (a list where a number belongs, a string step, an integer past
int64) must not reach the rules as it is: pandas would raise on the first comparison, or
worse, compare strings. Each function here keeps the values of the documented type, reads
every other value as missing (NaN, NA, None), and adds one note per field naming how many
values it dropped, so nothing is skipped silently.

Found by bench/fuzz_reader.py (docs/reliability.md): before this module, 37 of 10,000
mutated run directories ended in an internal error, all from wrong-typed fields.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

INT_LIMIT = 2**53
"""Integers (steps, indices, counts) beyond this are not believable and not exact as
floats: read as missing."""

_ONE_OF = {int: "an integer", float: "a number", str: "a string", list: "a list", dict: "an object",
           bool: "true or false"}


def is_number(value: Any) -> bool:
    """A JSON number (bool is not one, although Python says it is an int)."""
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))


def as_float(value: Any) -> float:
    """`value` as a float, NaN when it is not a number (or too large for a float)."""
    if not is_number(value):
        return math.nan
    try:
        return float(value)
    except OverflowError:
        return math.nan


def as_int(value: Any) -> int | None:
    """`value` as an int when it is an integral number within +-INT_LIMIT, else None."""
    if isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_)):
        return int(value) if -INT_LIMIT <= value <= INT_LIMIT else None
    if isinstance(value, (float, np.floating)) and math.isfinite(value) and float(value).is_integer() \
            and abs(value) <= INT_LIMIT:
        return int(value)
    return None


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA


def note_dropped(notes: list[str], label: str, field: str, count: int, expected: str) -> None:
    """One note: `count` values of `field` were not `expected` and are read as missing."""
    if count:
        notes.append(f"{label}: {count} value(s) of '{field}' are not {expected}; read as missing")


def numeric_series(series: pd.Series, label: str, notes: list[str], *, known: bool = True) -> pd.Series | None:
    """A float (or int) Series for a numeric field; wrong-typed values become NaN, with a note.

    `known=False` (a field the format does not document): converted only if it holds at
    least one number, so an unknown text field from a newer writer stays as it is (None).
    """
    if pd.api.types.is_bool_dtype(series.dtype):
        if not known:
            return None
        note_dropped(notes, label, str(series.name), int(series.notna().sum()), "numbers")
        return pd.Series(np.nan, index=series.index, name=series.name)
    if pd.api.types.is_numeric_dtype(series.dtype):
        return series
    values = series.to_numpy(dtype=object)
    numbers = np.fromiter((is_number(v) for v in values), dtype=bool, count=len(values))
    if not known and not numbers.any():
        return None
    floats = np.array([as_float(v) for v in values], dtype=float)
    lost = np.isnan(floats) & ~np.fromiter((_missing(v) for v in values), dtype=bool, count=len(values))
    note_dropped(notes, label, str(series.name), int(np.count_nonzero(lost)), "numbers")
    return pd.Series(floats, index=series.index, name=series.name)


def int_array(values: list[Any], label: str, field: str, notes: list[str]) -> pd.arrays.IntegerArray:
    """A nullable Int64 array: integral numbers kept, anything else NA (noted)."""
    ints = [as_int(v) for v in values]
    note_dropped(notes, label, field, sum(1 for v, i in zip(values, ints) if i is None and not _missing(v)),
                 "integers")
    return pd.array(ints, dtype="Int64")


def int_lists(series: pd.Series, label: str, notes: list[str]) -> pd.Series:
    """A column of lists of integers (such as `nonfinite_grads`): a value that is not such
    a list becomes None; non-integers inside a list are dropped. Noted."""
    out, bad = [], 0
    for value in series.to_numpy(dtype=object):
        if isinstance(value, list):
            ints = [as_int(v) for v in value]
            kept = [i for i in ints if i is not None and i >= 0]
            bad += len(kept) != len(value)
            out.append(kept)
        else:
            bad += not _missing(value)
            out.append(None)
    note_dropped(notes, label, str(series.name), bad, "lists of parameter indices")
    return pd.Series(out, index=series.index, name=series.name, dtype=object)


def typed_fields(record: dict[str, Any], types: dict[str, type | tuple[type, ...]], label: str,
                 notes: list[str]) -> dict[str, Any]:
    """A copy of `record` without the fields in `types` whose value has another type
    (None is always allowed); one note per dropped field."""
    out = dict(record)
    for key, expected in types.items():
        value = out.get(key)
        if value is None:
            continue
        wanted = expected if isinstance(expected, tuple) else (expected,)
        ok = _has_type(value, wanted)
        if not ok:
            del out[key]
            names = " or ".join(_ONE_OF.get(t, t.__name__) for t in wanted)
            notes.append(f"{label}: '{key}' is not {names} (got {_ONE_OF.get(type(value), type(value).__name__)}); "
                         "ignored")
    return out


def _has_type(value: Any, wanted: tuple[type, ...]) -> bool:
    if isinstance(value, bool):
        return bool in wanted
    if is_number(value):
        return float in wanted or (int in wanted and as_int(value) is not None)
    return isinstance(value, tuple(t for t in wanted if t not in (int, float, bool)))


def typed_records(records: list[dict[str, Any]], types: dict[str, type | tuple[type, ...]], label: str,
                  notes: list[str]) -> list[dict[str, Any]]:
    """`typed_fields` over many records, with one note per field (a count), not per record."""
    scratch: list[str] = []
    out = [typed_fields(r, types, label, scratch) for r in records]
    counts: dict[str, int] = {}
    for note in scratch:
        key = note.split("'")[1]
        counts[key] = counts.get(key, 0) + 1
    for key, count in counts.items():
        wanted = types[key] if isinstance(types[key], tuple) else (types[key],)
        note_dropped(notes, label, key, count, " or ".join(_ONE_OF.get(t, t.__name__) for t in wanted))
    return out
