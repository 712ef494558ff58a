"""Read the per-step x per-parameter norm series (grad_norms.arrow, param_norms.arrow).

An Arrow IPC stream: `step: int64`, then one float32 column `p{index}` per parameter,
written in record batches; when the parameter table grew during the run, further streams
of the wider schema follow in the same file. A crash can cut the last stream anywhere:
every complete record batch before the cut is kept, and the loss is noted.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd
import pyarrow as pa

from diagnose.rundir.schema import NO_GRAD_SENTINEL

_PARAM_COLUMN = re.compile(r"p(\d+)")


class NormTables(NamedTuple):
    """A norm series and where it was non-finite (same index and columns)."""

    norms: pd.DataFrame
    nonfinite: pd.DataFrame


def _read_batches(path: Path, label: str, notes: list[str]) -> list[pa.Table] | None:
    """Every complete record batch of each stream in the file, one table per stream (the
    file holds several when the parameter table grew during the run), or None if not even
    the first stream's schema is whole."""
    tables: list[pa.Table] = []
    with pa.memory_map(str(path)) as source:
        size = source.size()
        while not tables or source.tell() < size:
            try:
                reader = pa.ipc.open_stream(source)
            except (pa.ArrowException, OSError):
                if not tables:
                    notes.append(f"{label}: no complete Arrow stream header (empty or cut before the first chunk); skipped")
                    return None
                notes.append(f"{label}: stream {len(tables) + 1} cut before its first chunk; the rest was skipped")
                break
            batches = []
            cut = False
            while True:
                try:
                    batches.append(reader.read_next_batch())
                except StopIteration:
                    break
                except (pa.ArrowException, OSError):
                    rows = sum(b.num_rows for b in batches)
                    notes.append(f"{label}: stream cut after {len(batches)} complete chunk(s) "
                                 f"({rows} rows); the rest was skipped")
                    cut = True
                    break
            # Copy out of the memory map so the file can be closed (and deleted) afterwards.
            tables.append(pa.Table.from_batches(batches, schema=reader.schema).combine_chunks())
            if cut:
                break
    return tables


def _widen(tables: list[pa.Table], fill: float) -> tuple[pa.Table, dict[str, np.ndarray]]:
    """The streams of a file as one table: every stream's columns, in parameter order; a
    column a stream lacks (a parameter added to the table after it) holds `fill` there:
    the no-gradient sentinel in grad_norms.arrow, NaN (no value) in the others. Also, per
    such column, which rows were filled (absent, not non-finite)."""
    names = ["step"] + sorted({n for t in tables for n in t.column_names if _PARAM_COLUMN.fullmatch(n)},
                              key=lambda n: int(n[1:]))
    aligned = []
    absent: dict[str, list[np.ndarray]] = {n: [] for n in names[1:]}
    for table in tables:
        columns = []
        for n in names:
            there = n in table.column_names
            columns.append(table.column(n) if there
                           else pa.array(np.full(table.num_rows, fill, dtype=np.float32)))
            if n != "step":
                absent[n].append(np.full(table.num_rows, not there))
        aligned.append(pa.Table.from_arrays(columns, names=names))
    masks = {n: np.concatenate(parts) for n, parts in absent.items() if any(p.any() for p in parts)}
    return pa.concat_tables(aligned).combine_chunks(), masks


def _empty() -> pd.DataFrame:
    return pd.DataFrame(index=pd.Index([], dtype="int64", name="step"), dtype=float)


def read_norms(path: Path, label: str, notes: list[str], *, no_grad_sentinel: bool = False) -> NormTables:
    """The series as float64 DataFrames: index `step` (sorted, unique), columns the
    integer parameter indices, values as recorded (NaN and Inf are real values).

    With `no_grad_sentinel`, the NO_GRAD_SENTINEL value ("this parameter had no gradient")
    becomes NaN, and `nonfinite` marks the norms that were NaN or Inf.
    """
    tables = _read_batches(path, label, notes)
    if tables is None or any("step" not in t.column_names for t in tables):
        if tables is not None:
            notes.append(f"{label}: no 'step' column; skipped")
        return NormTables(_empty(), _empty().astype(bool))
    table, absent = (tables[0], {}) if len(tables) == 1 else \
        _widen(tables, NO_GRAD_SENTINEL if no_grad_sentinel else np.nan)
    columns = [(int(m.group(1)), name) for name in table.column_names if (m := _PARAM_COLUMN.fullmatch(name))]
    # Fortran order: column j is contiguous, so filling it is one pass, and pandas keeps
    # the array as its (params x steps) block without another copy (copy=False below).
    values = np.empty((table.num_rows, len(columns)), dtype=np.float64, order="F")
    for j, (_, name) in enumerate(columns):
        values[:, j] = table.column(name).to_numpy()
    nonfinite = ~np.isfinite(values)
    for j, (_, name) in enumerate(columns):  # not in the table yet: no value, not a NaN
        if name in absent:
            nonfinite[:, j] &= ~absent[name]
    if no_grad_sentinel:
        values[values == NO_GRAD_SENTINEL] = np.nan
    index = pd.Index(table.column("step").to_numpy(), name="step")
    names = pd.Index([i for i, _ in columns], dtype="int64")
    frames = NormTables(
        pd.DataFrame(values, index=index, columns=names, copy=False),
        pd.DataFrame(nonfinite, index=index, columns=names, copy=False),
    )
    if not index.is_unique:
        notes.append(f"{label}: {int(index.duplicated().sum())} repeated step row(s); kept the last of each")
        keep = ~index.duplicated(keep="last")
        frames = NormTables(frames.norms[keep], frames.nonfinite[keep])
    if not frames.norms.index.is_monotonic_increasing:
        frames = NormTables(frames.norms.sort_index(), frames.nonfinite.sort_index())
    return frames
