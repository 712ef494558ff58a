"""Read the per-step x per-parameter norm series (grad_norms.arrow, param_norms.arrow).

An Arrow IPC stream: `step: int64`, then one float32 column `p{index}` per parameter,
written in record batches. A crash can cut the stream anywhere: every complete record
batch before the cut is kept, and the loss is noted.
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


def _read_batches(path: Path, label: str, notes: list[str]) -> pa.Table | None:
    """Every complete record batch of the stream, or None if not even the schema is whole."""
    with pa.memory_map(str(path)) as source:
        try:
            reader = pa.ipc.open_stream(source)
        except (pa.ArrowException, OSError):
            notes.append(f"{label}: no complete Arrow stream header (empty or cut before the first chunk); skipped")
            return None
        batches = []
        while True:
            try:
                batches.append(reader.read_next_batch())
            except StopIteration:
                break
            except (pa.ArrowException, OSError):
                rows = sum(b.num_rows for b in batches)
                notes.append(
                    f"{label}: stream cut after {len(batches)} complete chunk(s) ({rows} rows); the rest was skipped"
                )
                break
        # Copy out of the memory map so the file can be closed (and deleted) afterwards.
        return pa.Table.from_batches(batches, schema=reader.schema).combine_chunks()


def _empty() -> pd.DataFrame:
    return pd.DataFrame(index=pd.Index([], dtype="int64", name="step"), dtype=float)


def read_norms(path: Path, label: str, notes: list[str], *, no_grad_sentinel: bool = False) -> NormTables:
    """The series as float64 DataFrames: index `step` (sorted, unique), columns the
    integer parameter indices, values as recorded (NaN and Inf are real values).

    With `no_grad_sentinel`, the NO_GRAD_SENTINEL value ("this parameter had no gradient")
    becomes NaN, and `nonfinite` marks the norms that were NaN or Inf.
    """
    table = _read_batches(path, label, notes)
    if table is None or "step" not in table.column_names:
        if table is not None:
            notes.append(f"{label}: no 'step' column; skipped")
        return NormTables(_empty(), _empty().astype(bool))
    columns = [(int(m.group(1)), name) for name in table.column_names if (m := _PARAM_COLUMN.fullmatch(name))]
    # Fortran order: column j is contiguous, so filling it is one pass, and pandas keeps
    # the array as its (params x steps) block without another copy (copy=False below).
    values = np.empty((table.num_rows, len(columns)), dtype=np.float64, order="F")
    for j, (_, name) in enumerate(columns):
        values[:, j] = table.column(name).to_numpy()
    nonfinite = ~np.isfinite(values)
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
