"""The tables a run directory reads into: `RunTables` (one rank) and `Run` (all ranks).

Rules read these and nothing else. Every table always exists with its documented columns
(empty when nothing was recorded), so a rule can index columns without checking first;
`has()` says whether something was actually recorded.

Conventions, for rule authors:
- `steps` is indexed by `step`. A column that was `null` on every line ("not recorded",
  e.g. `scale` without a GradScaler, CUDA memory on CPU) is absent. JSON `"nan"`/`"inf"`/
  `"-inf"` strings are floats. A `null` on some lines is NaN too, so NaN means "non-finite
  or not recorded" there: use `micro_batches > 0` for the loss, and the Arrow tables
  (`grad_norms`, `grad_nonfinite`) for gradients, which tell the two apart.
- List fields (`nonfinite_grads`) hold Python lists, None where absent.
- `grad_norms` / `param_norms` are indexed by step; their columns are the integer
  parameter indices (`params.index`), so `params.loc[grad_norms.columns, "name"]` names them.
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import pandas as pd

from diagnose.rundir._contracts import empty_loss_calls, empty_rnn_calls

PARAMS_COLUMNS = (
    "name", "shape", "numel", "dtype", "module", "module_type", "requires_grad", "optimizer", "group",
    "backward_rank",
)
"""Columns of `RunTables.params` (indexed by the parameter `index`)."""

CALLS_COLUMNS = ("step", "seq", "obj", "method", "training", "grad", "inference", "backprop", "phase", "batch",
                 "token")
"""Columns of `RunTables.calls`: one row per call token, in call order (`seq`)."""

EVENTS_COLUMNS = ("kind", "step", "t_s", "data")
"""Columns of `RunTables.events`: every events.jsonl record except `calls`."""

METRICS_COLUMNS = ("step", "epoch", "phase", "name", "value")
"""Columns of `RunTables.metrics`: one row per value of a `metrics` event."""


def _frame(columns: tuple[str, ...], index_name: str | None = None) -> pd.DataFrame:
    frame = pd.DataFrame({c: pd.Series(dtype=object) for c in columns})
    if index_name is not None:
        frame.index = pd.Index([], dtype="int64", name=index_name)
    return frame


def empty_params() -> pd.DataFrame:
    """An empty parameter table with its columns."""
    return _frame(PARAMS_COLUMNS, "index")


def empty_steps() -> pd.DataFrame:
    """An empty step table (index `step`, only the always-derived column)."""
    frame = _frame(("skipped",), "step")
    return frame.astype({"skipped": bool})


def empty_series() -> pd.DataFrame:
    """An empty per-step x per-parameter table (grad_norms, param_norms)."""
    return pd.DataFrame(index=pd.Index([], dtype="int64", name="step"), dtype=float)


def empty_calls() -> pd.DataFrame:
    """An empty call table with its columns."""
    return _frame(CALLS_COLUMNS)


def empty_events() -> pd.DataFrame:
    """An empty event table with its columns."""
    return _frame(EVENTS_COLUMNS)


def empty_metrics() -> pd.DataFrame:
    """An empty metrics table with its columns."""
    return _frame(METRICS_COLUMNS)


@dataclass
class RunTables:
    """Everything recorded by one rank, as tables. See the module docstring for conventions.

    Attributes:
        rank: the rank number (the N of `rankN/`).
        path: the rank's folder (None for tables built in memory).
        meta: the start record merged with the final status record (`status`, `at`,
            `error`); a `running` status whose process is gone reads as `crashed`.
        objects: what the recorder was attached to: `models`, `optimizers`,
            `schedulers`, `scalers` (lists of dicts with an `index`).
        params: one row per parameter tensor, indexed by `index`; `backward_rank` is
            the position in the first backward pass (NA when unknown).
        steps: one row per optimizer step, indexed by `step`: the steps.jsonl fields,
            `lr_0`, `lr_1`, ... per param group, and derived `skipped` (bool),
            `samples_per_s`, `tokens_per_s`.
        grad_norms: float, index `step`, one column per parameter index; NaN where the
            parameter had no gradient or the norm is NaN (see `grad_nonfinite`).
        grad_nonfinite: bool, same shape: the gradient norm was NaN or Inf.
        param_norms: float, index `step` (sampled steps), one column per parameter index;
            NaN where the weights are NaN, or where the parameter was not in the table yet
            (a model adopted later in the run; see `param_nonfinite`).
        param_nonfinite: bool, same shape when read from a run directory (empty otherwise:
            then every NaN/Inf in `param_norms` is a real one): the weight norm was NaN or Inf.
        update_norms: float, index `step` (sampled steps), one column per trainable
            parameter index: the norm of the optimizer step's change ‖w_before - w_after‖;
            with `param_norms` of the same step it gives the update ratio ‖Δw‖/‖w‖.
        calls: one row per call: `step`, `seq` (global order), `obj` (`opt0`, `model0`,
            `scaler0`, `sched0`, or `""` for `backward`/`clip_grad_norm_`), `method`,
            `training`/`grad`/`backprop` (nullable bool, forward passes only),
            `inference` (bool), `phase` (`train` unless a `phase:NAME` token said
            otherwise), `batch` (int: how many training batches had arrived from a
            watched loader before the call, `batch` markers; 0 throughout when none
            was watched), `token` (as recorded).
        events: `kind`, `step`, `t_s`, `data` (dict of the record's other fields).
        metrics: long format: `step`, `epoch`, `phase`, `name`, `value` (float).
        loss_calls: loss-function calls on sampled steps (`loss_call` events): `step`, `fn`,
            shapes and dtypes, prediction statistics (diagnose/rundir/_contracts.py).
        rnn_calls: LSTM/GRU/RNN forwards on sampled steps (`rnn_call` events): `step`,
            `module`, `index`, `name`, `batch_first`, `input_shape`, `packed`, `loader_batch_size`.
        profile: the torch.profiler trace's summary (`diagnose.profiling.summary.ProfileSummary`)
            when the rank was profiled, else None; `has("profile")` is True only when it parsed.
    """

    rank: int = 0
    path: Path | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    objects: dict[str, Any] = field(default_factory=dict)
    params: pd.DataFrame = field(default_factory=empty_params)
    steps: pd.DataFrame = field(default_factory=empty_steps)
    grad_norms: pd.DataFrame = field(default_factory=empty_series)
    grad_nonfinite: pd.DataFrame = field(default_factory=empty_series)
    param_norms: pd.DataFrame = field(default_factory=empty_series)
    param_nonfinite: pd.DataFrame = field(default_factory=empty_series)
    update_norms: pd.DataFrame = field(default_factory=empty_series)
    calls: pd.DataFrame = field(default_factory=empty_calls)
    events: pd.DataFrame = field(default_factory=empty_events)
    metrics: pd.DataFrame = field(default_factory=empty_metrics)
    loss_calls: pd.DataFrame = field(default_factory=empty_loss_calls)
    rnn_calls: pd.DataFrame = field(default_factory=empty_rnn_calls)
    profile: Any = None

    def missing(self, *names: str) -> list[str]:
        """The names among `names` that hold nothing. A name is a table (`"steps"`) or a
        table and column (`"steps.scale"`, `"objects.schedulers"`): the column exists
        and the table has rows, or the dict key holds something."""
        return [name for name in names if not self._holds(name)]

    def has(self, *names: str) -> bool:
        """True when every one of `names` was recorded (see `missing`)."""
        return not self.missing(*names)

    def events_of(self, kind: str) -> pd.DataFrame:
        """The events of one `kind` (e.g. `"checkpoint"`), in file order."""
        return self.events[self.events["kind"] == kind]

    def _holds(self, name: str) -> bool:
        table_name, _, column = name.partition(".")
        if table_name not in TABLE_NAMES:
            raise ValueError(f"unknown table {table_name!r}; tables are {', '.join(TABLE_NAMES)}")
        table = getattr(self, table_name)
        if table is None or not isinstance(table, (dict, pd.DataFrame)):  # the profile summary
            return table is not None and table.ok and (not column or bool(getattr(table, column, None)))
        if isinstance(table, dict):
            return bool(table.get(column)) if column else bool(table)
        if table.empty:
            return False
        return column in table.columns if column else True


TABLE_NAMES = tuple(f.name for f in fields(RunTables) if f.name not in ("rank", "path"))
"""Names a rule may list in REQUIRES (optionally with `.column`)."""


@dataclass
class Run:
    """A whole run directory: one `RunTables` per rank and what the reader skipped.

    Attributes:
        path: the run directory (the parent, when a `rankN/` folder was given).
        ranks: tables per rank number, in rank order.
        notes: one line per thing skipped or assumed (torn last line, truncated stream,
            unreadable file, status inferred), prefixed with the file it concerns.
    """

    path: Path
    ranks: dict[int, RunTables] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def world_size(self) -> int:
        """Number of ranks read."""
        return len(self.ranks)

    @property
    def first(self) -> RunTables:
        """The lowest rank's tables (rank 0 normally): what a run-level summary shows."""
        return self.ranks[min(self.ranks)]
