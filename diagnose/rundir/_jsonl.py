"""Read JSON Lines files of a run directory, tolerating what a crash leaves behind.

A crash can tear the last line; a broken writer can leave an unreadable line in the
middle. Both are skipped with a note, never an error. Non-finite numbers, written as
the strings "nan", "inf", "-inf" (JSON has no literal for them), come back as floats.

Two paths: `read_records`/`parse_records` (json, faithful dicts, for irregular records)
and `read_frame` (pyarrow's multithreaded JSON reader, ~10x faster than json on the big
regular steps.jsonl), which falls back to the first when pyarrow refuses the file.
"""
from __future__ import annotations

import io
import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pa_json

from diagnose.rundir._coerce import as_float, is_number, note_dropped

# A "nan"/"inf"/"-inf" string in value position (a key is followed by ':', so it never
# matches). Both json and pyarrow read the NaN/Infinity literals it becomes.
_NONFINITE_STRING = re.compile(rb'"(nan|inf|-inf)"(?=\s*[,\]}])')
_LITERALS = {b"nan": b"NaN", b"inf": b"Infinity", b"-inf": b"-Infinity"}


def _nonfinite_literals(data: bytes) -> bytes:
    if b'"nan"' not in data and b'inf"' not in data:
        return data  # the common case: no scan
    return _NONFINITE_STRING.sub(lambda m: _LITERALS[m.group(1)], data)


def read_lines(path: Path, label: str, notes: list[str]) -> bytes:
    """The file's complete lines, NaN strings turned into literals. A last line without
    its newline is kept only if it parses; otherwise it is torn and noted."""
    data = path.read_bytes()
    if not data.isascii():  # rare (the writer escapes non-ASCII); no copy in the common case
        try:
            data.decode("utf-8")
        except UnicodeDecodeError:
            data = data.decode("utf-8", errors="replace").encode("utf-8")  # U+FFFD; such a line
            # is skipped with a note, or kept with the replacement character in a string
    cut = data.rfind(b"\n") + 1
    body, tail = data[:cut], data[cut:]
    if tail.strip():
        try:
            json.loads(_nonfinite_literals(tail))
            body += tail + b"\n"
        except ValueError:
            notes.append(f"{label}: last line is incomplete (torn by a crash?); skipped")
    return _nonfinite_literals(body)


def partition_lines(body: bytes, prefix: bytes) -> tuple[bytes, bytes]:
    """Split complete lines into those that start with `prefix` and the others, in order."""
    matching, other = [], []
    for line in body.split(b"\n"):
        (matching if line.startswith(prefix) else other).append(line)
    return b"\n".join(matching), b"\n".join(other)


def parse_records(body: bytes, label: str, notes: list[str]) -> list[dict[str, Any]]:
    """Parse complete lines; a line that is not a JSON object is skipped with a note."""
    try:  # one C call for the whole file is much faster than one per line
        records = json.loads(b"[" + b",".join(line for line in body.split(b"\n") if line.strip()) + b"]")
        if all(isinstance(r, dict) for r in records):
            return records
    except ValueError:
        pass
    records, bad = [], 0
    for line in body.split(b"\n"):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            record = None
        if isinstance(record, dict):
            records.append(record)
        else:
            bad += 1
    if bad:
        notes.append(f"{label}: {bad} unreadable line(s) skipped")
    return records


def read_records(path: Path, label: str, notes: list[str]) -> list[dict[str, Any]]:
    """Every readable record of a JSON Lines file, in file order; problems go to `notes`."""
    return parse_records(read_lines(path, label, notes), label, notes)


def read_frame(path: Path, label: str, notes: list[str], *, expand: tuple[str, ...] = ()) -> pd.DataFrame:
    """A JSON Lines file of flat records as a DataFrame, one column per field.

    A field that is `null` on every line ("not recorded") has no column. A list field
    named in `expand` (such as `lr`) becomes float columns `lr_0`, `lr_1`, ... (NaN where
    a list is shorter); other lists stay Python lists in an object column.
    """
    body = read_lines(path, label, notes)
    if not body.strip():
        return pd.DataFrame()
    lines = body.count(b"\n") + (not body.endswith(b"\n"))
    if body.count(b"\n{") + body.startswith(b"{") != lines:  # a line that is not an object:
        return _frame_from_records(parse_records(body, label, notes), expand, label, notes)  # pyarrow may crash on it
    try:
        table = pa_json.read_json(io.BytesIO(body))
        table.column_names  # noqa: B018 - pyarrow keeps invalid UTF-8 in a key; naming it raises
    except (pa.ArrowException, UnicodeDecodeError):
        return _frame_from_records(parse_records(body, label, notes), expand, label, notes)
    try:
        return _frame_from_table(table, expand)
    except (pa.ArrowException, TypeError, ValueError, OverflowError):  # a field pyarrow typed that
        return _frame_from_records(parse_records(body, label, notes), expand, label, notes)  # will not convert


def _frame_from_table(table: pa.Table, expand: tuple[str, ...]) -> pd.DataFrame:
    recorded = [name for name, column in zip(table.column_names, table.columns) if column.null_count < len(column)]
    table = table.select(recorded)
    frame = table.select([n for n in recorded if n not in expand]).to_pandas()
    for name, column in zip(table.column_names, table.columns):
        if name in expand:
            frame = frame.join(_expand_arrow(name, column.combine_chunks()))
        elif pa.types.is_list(column.type) or pa.types.is_large_list(column.type):
            frame[name] = pd.Series(column.to_pylist(), index=frame.index, dtype=object)  # lists, as json gives
    return frame


def _expand_arrow(name: str, column: pa.Array) -> pd.DataFrame:
    if not pa.types.is_list(column.type) and not pa.types.is_large_list(column.type):
        return pd.DataFrame({f"{name}_0": pc.cast(column, pa.float64(), safe=False).to_numpy(zero_copy_only=False)})
    lengths = pc.fill_null(pc.list_value_length(column), 0).to_numpy()
    values = pc.cast(pc.list_flatten(column), pa.float64()).to_numpy(zero_copy_only=False)
    return _scatter(name, lengths, values)


def _scatter(name: str, lengths: np.ndarray, values: np.ndarray) -> pd.DataFrame:
    """Ragged rows (`lengths[i]` values each, concatenated in `values`) as a NaN-padded table."""
    width = int(lengths.max()) if len(lengths) else 0
    out = np.full((len(lengths), width), np.nan)
    rows = np.repeat(np.arange(len(lengths)), lengths)
    starts = np.repeat(np.cumsum(lengths) - lengths, lengths)
    out[rows, np.arange(len(values)) - starts] = values
    return pd.DataFrame(out, columns=[f"{name}_{i}" for i in range(width)])


def _frame_from_records(records: list[dict[str, Any]], expand: tuple[str, ...], label: str,
                        notes: list[str]) -> pd.DataFrame:
    recorded: dict[str, None] = {}
    for record in records:
        for key, value in record.items():
            if value is not None:
                recorded[key] = None
    frame = pd.DataFrame.from_records(records, columns=[k for k in recorded if k not in expand])
    for name in frame.columns:  # a field absent from a line is None, as pyarrow gives it
        if frame[name].dtype == object:
            frame[name] = frame[name].where(frame[name].notna(), None)
    for name in expand:
        if name in recorded:
            lists = [r.get(name) if isinstance(r.get(name), list) else [r.get(name)] for r in records]
            values = [v for row in lists for v in row]
            flat = np.array([as_float(v) for v in values], dtype=float)  # NaN if not a number
            note_dropped(notes, label, name, sum(v is not None and not is_number(v) for v in values), "numbers")
            frame = frame.join(_scatter(name, np.array([len(row) for row in lists], dtype=np.int64), flat))
    return frame
