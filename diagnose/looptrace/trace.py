"""`LoopTrace`: record a block of training code, then assert on its structure.

    with LoopTrace(run_dir, model, opt, scheduler=sched, scaler=scaler) as trace:
        train_one_epoch(model, loader, opt, sched, scaler, max_steps=3)
    trace.assert_step_order()

Recording is the recorder's own (`Recorder` with the objects given, or the zero-code
`Session` that discovers them when none are given) writing a run directory, which is then
read back with `read_run`: the assertions see exactly what `diagnose report` would.
This module records and reads; the assertions are in `assertions.py`.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from diagnose.looptrace.assertions import Assertions
from diagnose.recorder.recorder import Recorder, RecorderOptions
from diagnose.rules import run_rules
from diagnose.rules._base import Finding
from diagnose.rules.loop._callindex import CallIndex
from diagnose.rundir import schema
from diagnose.rundir.reader import RunDirError, read_run
from diagnose.rundir.tables import Run, RunTables


class TraceError(RuntimeError):
    """The trace was used wrongly (read before its block ended, entered twice, ...)."""


@dataclass
class TracedObjects:
    """What to watch; all empty means "discover what the block creates and uses"."""

    models: list = field(default_factory=list)
    optimizers: list = field(default_factory=list)
    schedulers: list = field(default_factory=list)
    scalers: list = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return not (self.models or self.optimizers or self.schedulers or self.scalers)


def classify(objects: tuple, named: dict[str, Any]) -> TracedObjects:
    """Sort positional objects by type, add the named ones (`model=`, `optimizers=[...]`, ...).

    Raises:
        TypeError: an object that is none of the four kinds, or an unknown keyword.
    """
    out = TracedObjects()
    kinds = {"model": out.models, "optimizer": out.optimizers, "scheduler": out.schedulers,
             "scaler": out.scalers}
    for key, value in named.items():
        kind = key[:-1] if key.endswith("s") and key[:-1] in kinds else key
        if kind not in kinds:
            raise TypeError(f"loop_trace() got an unexpected keyword argument {key!r}; "
                            "use model=, optimizer=, scheduler=, scaler= (or models=, optimizers=, ...)")
        values = value if key != kind and isinstance(value, (list, tuple)) else [value]
        kinds[kind].extend(v for v in values if v is not None)
    for obj in _flatten(objects):
        kind = _kind(obj)
        if kind is None:
            raise TypeError(f"loop_trace() cannot trace a {type(obj).__name__}: pass models (nn.Module), "
                            "optimizers, LR schedulers and GradScalers")
        kinds[kind].append(obj)
    return out


def _flatten(objects) -> Iterator[Any]:
    for obj in objects:
        if isinstance(obj, (list, tuple)):
            yield from _flatten(obj)
        elif obj is not None:
            yield obj


def _kind(obj: Any) -> str | None:
    if isinstance(obj, torch.nn.Module):
        return "model"
    if isinstance(obj, torch.optim.Optimizer):
        return "optimizer"
    if isinstance(obj, (torch.optim.lr_scheduler.LRScheduler, torch.optim.lr_scheduler.ReduceLROnPlateau)):
        return "scheduler"
    if all(hasattr(obj, a) for a in ("scale", "unscale_", "update", "step", "is_enabled")):
        return "scaler"  # torch.amp.GradScaler and the older torch.cuda.amp / torch.cpu.amp ones
    return None


def trace_options() -> RecorderOptions:
    """Everything every step: a trace is a few steps, so the cost does not matter."""
    return RecorderOptions(grad_every=1, param_every=1, echo_nonfinite=False)


class LoopTrace(Assertions):
    """Records one `with` block into `run_dir`; afterwards, read it and assert on it.

    Args:
        run_dir: where the run directory is written (replaced if it holds one).
        *objects: models, optimizers, LR schedulers and GradScalers to watch, in any
            order (also `model=`, `optimizer=`, `scheduler=`, `scaler=`, and `models=`,
            ... for several). With none, the block's objects are discovered as in
            `diagnose run script.py` (the zero-code mode).
        label: what is traced (the test's node id), stored with the run.
    """

    def __init__(self, run_dir: str | Path, *objects: Any, label: str = "", **named: Any) -> None:
        self.run_dir = Path(run_dir)
        self._objects = classify(objects, named)
        self._label = label
        self._recorder: Recorder | None = None
        self._session: Any = None
        self._state = "new"
        self._run: Run | None = None
        self._read_error: str | None = None
        self.modes_at_exit: dict[str, bool] = {}
        """`modelN` -> whether it was in training mode when the block ended."""
        self.legend = ""
        """`model0 = Net, opt0 = SGD, ...`: what the names in call tokens stand for."""

    @property
    def discovered(self) -> bool:
        """True when nothing was passed in and the objects were discovered (zero-code mode)."""
        return self._objects.empty

    # ---- recording ----------------------------------------------------------------------
    def __enter__(self) -> LoopTrace:
        if self._state != "new":
            raise TraceError("a trace records one block; call loop_trace(...) again for another")
        config = {"loop_trace": self._label} if self._label else {}
        command = ["pytest", self._label] if self._label else None
        if self.discovered:
            from diagnose.zerocode.session import Session

            self._session = Session(self.run_dir, options=trace_options(), overwrite=True, config=config)
            self._recorder = self._session.rec
            self._session.install()
        else:
            self._recorder = Recorder(self.run_dir, options=trace_options(), overwrite=True, config=config,
                                      command=command)
            o = self._objects
            self._recorder.watch(models=o.models, optimizers=o.optimizers, schedulers=o.schedulers,
                                 scalers=o.scalers)
        self._state = "recording"
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        self.stop(exc)
        return False

    def stop(self, exc: BaseException | None = None) -> None:
        """End the recording (the `with` block does it): remove every hook, read the run."""
        if self._state != "recording":
            return
        self._state = "stopped"
        rec = self._recorder
        assert rec is not None
        status, error = schema.STATUS_FINISHED, None
        if exc is not None:
            from diagnose.monitor import record_exception

            record_exception(rec, exc)
            interrupted = isinstance(exc, (KeyboardInterrupt, SystemExit))
            status = schema.STATUS_INTERRUPTED if interrupted else schema.STATUS_CRASHED
            error = f"{type(exc).__name__}: {exc}"
        try:
            if self._session is not None:
                self._session.close(status, error)
            else:
                rec.close(status, error)
        finally:
            # after closing: the zero-code session settles which modules are models then
            self.modes_at_exit = {f"model{i}": bool(m.training) for i, m in enumerate(rec.models)}
            self.legend = _legend(rec)
            try:
                self._run = read_run(self.run_dir)
            except RunDirError as err:
                self._read_error = str(err)

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Mark a phase, e.g. `with trace.phase("val"): evaluate(...)`: forwards inside are
        evaluation whatever their mode (without marks, only forwards in eval mode or under
        no_grad after an optimizer step count as evaluation)."""
        if self._state != "recording" or self._recorder is None:
            raise TraceError("trace.phase() is for inside the `with loop_trace(...)` block")
        self._recorder.phase_token(name)
        try:
            yield
        finally:
            self._recorder.phase_token(schema.DEFAULT_PHASE)

    # ---- reading -------------------------------------------------------------------------
    @property
    def run(self) -> Run:
        """The whole recorded run (`Run`: one `RunTables` per rank)."""
        if self._state == "new":
            raise TraceError("nothing recorded yet: use the trace as `with loop_trace(...) as trace:`")
        if self._state == "recording":
            raise TraceError("the trace is still recording: call its assertions after the `with` block")
        if self._run is None:
            raise TraceError(f"the recording could not be read: {self._read_error}")
        return self._run

    @property
    def tables(self) -> RunTables:
        """The recorded tables (this process's rank)."""
        return self.run.first

    @property
    def calls(self) -> pd.DataFrame:
        """One row per recorded call, in order: `step`, `seq`, `obj` (`opt0`, `model0`, ...),
        `method`, `training` / `grad` / `backprop` (forwards), `phase`, `token`."""
        return self.tables.calls

    @property
    def steps(self) -> pd.DataFrame:
        """One row per optimizer step, indexed by step: `loss`, `lr_0`..., `scale`,
        `skipped` (GradScaler skipped it), `grad_norm`, `clip_norm`, `micro_batches`, ..."""
        return self.tables.steps

    @property
    def skipped_steps(self) -> list[int]:
        """Steps whose optimizer step GradScaler skipped (Inf/NaN gradients)."""
        steps = self.steps
        return [int(s) for s in steps.index[steps["skipped"].fillna(False).astype(bool)]] if len(steps) else []

    def sequence(self, step: int) -> list[str]:
        """The calls of `step` as recorded tokens (repeats as `token*N`), e.g.
        `["opt0.zero_grad", "model0.forward[TGB]", "backward", "opt0.step"]`."""
        index = CallIndex.of(self.tables)
        rows = index.rows_of_step(int(step))
        return index.sequence(int(rows[0]), limit=10 ** 9) if len(rows) else []

    def findings(self, select: str | list[str] | None = None, ignore: str | list[str] | None = None) -> list[Finding]:
        """The catalogue's findings on the recording, as `diagnose report` computes them."""
        found, _notes = run_rules(self.run, _names(select), _names(ignore))
        return found


def _names(value: str | list[str] | tuple[str, ...] | None) -> list[str] | None:
    if value is None:
        return None
    return [value] if isinstance(value, str) else list(value)


def _legend(rec: Recorder) -> str:
    parts = [f"model{i} = {type(m).__name__}" for i, m in enumerate(rec.models)]
    parts += [f"opt{i} = {type(o).__name__}" for i, o in enumerate(rec.optimizers)]
    parts += [f"sched{i} = {type(s).__name__}" for i, s in enumerate(rec.schedulers)]
    parts += [f"scaler{i} = {type(s).__name__}" for i, s in enumerate(rec.scalers)]
    return ", ".join(parts)
