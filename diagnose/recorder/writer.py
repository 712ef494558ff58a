"""Buffered, crash-tolerant writer for one rank's run-directory files.

The training thread only appends Python objects to an in-memory deque (no lock, no
wake-up: an append costs a few hundred nanoseconds); a daemon thread wakes every
`flush_interval_s`, serialises what is pending (JSON Lines, Arrow IPC record batches) and
flushes. Waking it once per record instead made every record a thread hand-off of the
GIL, measurable on a launch-bound GPU step. A SIGKILL loses at most the records of the
last flush interval, and a torn last line is the worst a crash can leave behind; meta
lines (a handful per run) and checkpoint, exception and out-of-memory events wake the
thread at once, so the pid is on disk early and a checkpoint's steps are on disk with it.

Any I/O failure (disk full, directory removed, permissions) switches the writer
off with one warning: the user's training goes on, and the status records say the
record is incomplete. So that they can still be written on a full disk, the writer
keeps `RESERVE_BYTES` in a hidden file from the start and frees them when it fails (a
real full disk tested on a tiny tmpfs: tests/reliability/test_disk_full.py).
"""
from __future__ import annotations

import json
import math
import os
import threading
import time
import warnings
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from diagnose.rundir import schema

RESERVE_FILE = ".diagnose-reserve"
RESERVE_BYTES = 16 * 1024
"""Room kept for meta.jsonl's last lines (the `incomplete` and final `status` records,
~300 bytes each) on a disk that fills up during the run; removed when the writer closes."""

_WAKE_EVENTS = frozenset({"checkpoint", "exception", "oom"})
"""Events written at once (with everything queued before them): a checkpoint on disk then
comes with the record of the steps it holds, and a crash's cause reaches the disk early."""
_STOP = object()
_FLUSH = object()
_RESIZE = object()


def _clean(value: Any) -> Any:
    """Make a record JSON-safe: non-finite floats become "nan"/"inf"/"-inf"."""
    if isinstance(value, float):
        if math.isfinite(value):
            return value
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if isinstance(value, (np.floating,)):
        return _clean(float(value))
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (str, int, bool)) or value is None:
        return value
    return str(value)


def dumps(record: dict) -> str:
    """One JSON line for `record` (non-finite floats as strings, unknown objects as str)."""
    try:  # the common case, all in C: plain finite values
        return json.dumps(record, separators=(",", ":"), allow_nan=False)
    except (ValueError, TypeError):  # NaN/Inf, numpy scalars, other objects
        return json.dumps(_clean(record), separators=(",", ":"), allow_nan=False)


@dataclass
class _Matrix:
    """Pending rows of one Arrow file: steps and float32 vectors."""

    path: Path
    columns: int
    steps: list
    rows: list
    sink: Any = None
    writer: Any = None


class RunWriter:
    """Writes one rank's files; every public method is cheap and never raises."""

    def __init__(self, rank_dir: Path, n_params: int = 0, flush_interval_s: float = 1.0,
                 arrow_chunk_rows: int = 256, arrow_interval_s: float = 30.0) -> None:
        self.rank_dir = Path(rank_dir)
        self.flush_interval_s = flush_interval_s
        self.arrow_chunk_rows = arrow_chunk_rows
        self.arrow_interval_s = arrow_interval_s
        self.failed: str | None = None
        self._warned = False
        self._warn_lock = threading.Lock()
        self._pending: deque = deque()
        self._wake = threading.Event()
        self._files: dict[str, Any] = {}
        self._matrices: dict[str, _Matrix] = {}
        self._n_params = n_params
        self._columns = n_params
        """The writer thread's column count (changed in queue order by `_RESIZE`)."""
        self._last_arrow_flush = time.monotonic()
        self._thread = threading.Thread(target=self._loop, name="diagnose-writer", daemon=True)
        try:
            self.rank_dir.mkdir(parents=True, exist_ok=True)
            with open(self.rank_dir / RESERVE_FILE, "wb") as reserve:
                reserve.write(bytes(RESERVE_BYTES))
        except OSError as exc:
            self._fail(exc)
        self._thread.start()

    # ---- called from the training thread -------------------------------------------
    def line(self, file_name: str, record: dict) -> None:
        """Queue one JSON line for `file_name` (meta, params, steps or events). After a
        failure only meta.jsonl lines are still tried (the final status)."""
        if self.failed is None or file_name == schema.META_FILE:
            self._pending.append((file_name, record))
            if file_name == schema.META_FILE or (file_name == schema.EVENTS_FILE
                                                 and record.get("kind") in _WAKE_EVENTS):
                self._wake.set()

    def matrix_row(self, file_name: str, step: int, values: np.ndarray) -> None:
        """Queue one float32 row (one value per parameter) for an Arrow file."""
        if self.failed is None:
            self._pending.append((file_name, (step, values)))

    def set_param_count(self, n_params: int) -> None:
        """Set the number of parameter columns of the rows queued from now on. When the
        parameter table grows during a run (a model or optimizer adopted late), each Arrow
        file ends its stream and starts a new one of the wider schema in the same file:
        the file is then a sequence of streams (docs/run-directory.md)."""
        if n_params != self._n_params:
            self._n_params = n_params
            self._pending.append((_RESIZE, n_params))

    def flush(self, timeout_s: float = 10.0) -> None:
        """Write everything queued so far (blocks until done or `timeout_s`)."""
        done = threading.Event()
        self._pending.append((_FLUSH, done))
        self._wake.set()
        if self._thread.is_alive():
            done.wait(timeout_s)

    def close(self, timeout_s: float = 30.0) -> None:
        """Flush, close every file and stop the thread."""
        self._pending.append((_STOP, None))
        self._wake.set()
        self._thread.join(timeout_s)

    # ---- the writer thread -----------------------------------------------------------
    def _loop(self) -> None:
        while True:
            self._wake.wait(self.flush_interval_s)
            self._wake.clear()
            while self._pending:
                kind, payload = self._pending.popleft()
                if kind is _STOP:
                    self._flush_files(arrow_force=True)
                    self._close_files()
                    return
                if kind is _FLUSH:
                    self._flush_files(arrow_force=True)
                    payload.set()
                    continue
                if kind is _RESIZE:
                    self._resize(payload)
                    continue
                if self.failed is not None:
                    if kind == schema.META_FILE:
                        self._append_meta(payload)  # the final status, best effort
                    continue
                try:
                    if isinstance(payload, tuple):
                        self._add_row(kind, *payload)
                    else:
                        self._handle(kind).write(dumps(payload) + "\n")
                except Exception as exc:  # noqa: BLE001 - a recorder fault must never escape
                    self._fail(exc)
            self._flush_files(arrow_force=False)

    def _handle(self, file_name: str):
        handle = self._files.get(file_name)
        if handle is None:
            handle = open(self.rank_dir / file_name, "a", encoding="utf-8")
            self._files[file_name] = handle
        return handle

    def _resize(self, columns: int) -> None:
        """Rows from now on have `columns` columns: pending rows are written at the old
        width and each open stream is ended (the next batch starts a new one)."""
        self._columns = columns
        if self.failed is not None:
            return
        try:
            for matrix in self._matrices.values():
                if matrix.columns != columns:
                    self._write_batch(matrix)
                    if matrix.writer is not None:
                        matrix.writer.close()  # the end-of-stream marker; the file stays open
                        matrix.writer = None
                    matrix.columns = columns
        except Exception as exc:  # noqa: BLE001
            self._fail(exc)

    def _add_row(self, file_name: str, step: int, values: np.ndarray) -> None:
        matrix = self._matrices.get(file_name)
        if matrix is None:
            matrix = _Matrix(self.rank_dir / file_name, self._columns, [], [])
            self._matrices[file_name] = matrix
        matrix.steps.append(step)
        matrix.rows.append(values)
        if len(matrix.rows) >= self.arrow_chunk_rows:
            self._write_batch(matrix)

    def _write_batch(self, matrix: _Matrix) -> None:
        import pyarrow as pa

        if not matrix.rows:
            return
        # a row shorter than the table would leave its last columns unset: "no gradient"
        # in grad_norms, no value elsewhere (the recorder writes every row of a step closed
        # before the table grew ahead of the wider ones, so rows come at the full width)
        fill = schema.NO_GRAD_SENTINEL if matrix.path.name == schema.GRAD_NORMS_FILE else np.nan
        block = np.full((len(matrix.rows), matrix.columns), fill, dtype=np.float32)
        for i, row in enumerate(matrix.rows):
            n = min(len(row), matrix.columns)
            block[i, :n] = row[:n]
        arrays = [pa.array(np.asarray(matrix.steps, dtype=np.int64))]
        arrays += [pa.array(block[:, j]) for j in range(matrix.columns)]
        names = ["step"] + [schema.param_column(j) for j in range(matrix.columns)]
        batch = pa.RecordBatch.from_arrays(arrays, names=names)
        if matrix.writer is None:
            if matrix.sink is None:
                matrix.sink = open(matrix.path, "ab")
            matrix.writer = pa.ipc.new_stream(matrix.sink, batch.schema)
        matrix.writer.write_batch(batch)
        matrix.sink.flush()
        matrix.steps.clear()
        matrix.rows.clear()

    def _flush_files(self, arrow_force: bool) -> None:
        if self.failed is not None:
            return
        try:
            for handle in self._files.values():
                handle.flush()
            now = time.monotonic()
            if arrow_force or now - self._last_arrow_flush >= self.arrow_interval_s:
                for matrix in self._matrices.values():
                    self._write_batch(matrix)
                self._last_arrow_flush = now
        except Exception as exc:  # noqa: BLE001
            self._fail(exc)

    def _close_files(self) -> None:
        for matrix in self._matrices.values():
            try:
                if matrix.writer is not None:
                    matrix.writer.close()
                if matrix.sink is not None:
                    matrix.sink.close()
            except Exception:  # noqa: BLE001
                pass
        for handle in self._files.values():
            try:
                handle.close()
            except Exception:  # noqa: BLE001
                pass
        self._free_reserve()

    def warn_once(self, message: str) -> None:
        """Warn that the record is incomplete: once per run, whoever notices first (the
        writer on an I/O error, the recorder on a fault of its own)."""
        with self._warn_lock:
            if self._warned:
                return
            self._warned = True
        warnings.warn(message, RuntimeWarning, stacklevel=3)

    def _fail(self, exc: BaseException) -> None:
        if self.failed is None:
            self.failed = f"{type(exc).__name__}: {exc}"
            self.warn_once(f"diagnose: could not write the run directory {self.rank_dir} ({self.failed}); "
                           "training continues, the record is incomplete")
            self._free_reserve()  # room for the lines below on a full disk
            self._append_meta({"type": "incomplete", "error": self.failed, "at": time.time()})

    def _free_reserve(self) -> None:
        try:
            (self.rank_dir / RESERVE_FILE).unlink()
        except OSError:
            pass

    def _append_meta(self, record: dict) -> None:
        """Append one meta.jsonl line outside the buffered handles (best effort)."""
        handle = self._files.pop(schema.META_FILE, None)
        if handle is not None:  # what it buffered goes first, or is dropped
            try:
                handle.close()
            except Exception:  # noqa: BLE001
                pass
        try:
            with open(self.rank_dir / schema.META_FILE, "a", encoding="utf-8") as meta:
                meta.write(dumps(record) + "\n")
        except Exception:  # noqa: BLE001
            pass


def pid_is_alive(pid: int) -> bool:
    """Whether a process with this pid exists on this host."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OSError:
        return False
    return True
