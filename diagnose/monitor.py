"""`Monitor`: instrument a hand-written training loop in two or three lines.

Example:
    ```python
    from diagnose import Monitor

    with Monitor("runs/exp1", model=model, optimizer=opt, scheduler=sched, scaler=scaler) as mon:
        for epoch in range(epochs):
            mon.epoch(epoch)
            for x, y in mon.loader(train_loader):      # measures data-wait time
                ...                                    # your loop, unchanged
            with mon.phase("val"):
                val_loss = evaluate(model, val_loader)
            mon.log_metrics("val", epoch=epoch, val_loss=val_loss)
    ```
    Then `diagnose report runs/exp1`.

Everything else is learned from hooks: the loss from `backward()` (unscaled through
`scaler.scale`), gradient norms at the optimizer step, the call order of zero_grad,
backward, unscale_, clipping, step, update and scheduler.step, and the model's mode and
grad state at each forward pass.
"""
from __future__ import annotations

import signal
import threading
import time
import traceback
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Iterator

import torch

from diagnose.profiling.window import ProfileWindow
from diagnose.recorder import oom
from diagnose.recorder.recorder import Recorder, RecorderOptions
from diagnose.rundir import schema


class Monitor:
    """Records a training loop into a run directory.

    Args:
        run_dir: where to write; one `rankK/` folder per process is created inside.
        model, optimizer, scheduler, scaler: the objects to watch (each optional);
            `models=`, `optimizers=`, `schedulers=`, `scalers=` take several.
        config: any JSON-able dict stored with the run (hyper-parameters).
        grad_every: per-parameter gradient norms every N optimizer steps.
        param_every: per-parameter weight norms every N optimizer steps.
        overwrite: replace a run already recorded in `run_dir` (refused otherwise).
        profile: torch.profiler over a bounded window of steps into `rankK/profile/`:
            True (steps 7-11: wait 5, warm up 2, record 5), `"WAIT,WARMUP,ACTIVE"`, a
            3-tuple or a `ProfileWindow`; `diagnose report` then adds a profile section
            (docs/profiling.md).

    Raises:
        RunDirExistsError: `run_dir` already holds a run and `overwrite` is False.
        ValueError: `grad_every` or `param_every` below 1, or a malformed `profile`.
    """

    def __init__(self, run_dir: str | Path, *, model: torch.nn.Module | None = None,
                 optimizer: torch.optim.Optimizer | None = None, scheduler: Any = None,
                 scaler: Any = None, models: Iterable = (), optimizers: Iterable = (),
                 schedulers: Iterable = (), scalers: Iterable = (), config: dict | None = None,
                 grad_every: int = 1, param_every: int = 25, overwrite: bool = False,
                 command: list[str] | None = None, profile: Any = None) -> None:
        options = RecorderOptions(grad_every=grad_every, param_every=param_every,
                                  profile=ProfileWindow.coerce(profile))
        self.run_dir = Path(run_dir)
        self.recorder = Recorder(self.run_dir, config=config, options=options,
                                 overwrite=overwrite, command=command)
        self.recorder.watch(model, optimizer, scheduler, scaler, models=tuple(models),
                            optimizers=tuple(optimizers), schedulers=tuple(schedulers),
                            scalers=tuple(scalers))
        self._previous_sigterm: Any = None
        self._phase = schema.DEFAULT_PHASE

    # ---- objects and markers ------------------------------------------------------------
    def watch(self, model=None, optimizer=None, scheduler=None, scaler=None, **many) -> None:
        """Watch more objects, e.g. a scheduler created after the Monitor."""
        self.recorder.watch(model, optimizer, scheduler, scaler, **many)

    def epoch(self, epoch: int) -> None:
        """Mark the start of an epoch; following steps are tagged with it."""
        self.recorder.set_epoch(int(epoch))

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Mark an evaluation (or other) phase; the previous phase is restored after."""
        self.recorder.phase_token(name)
        previous, self._phase = self._phase, name
        try:
            yield
        finally:
            self._phase = previous
            self.recorder.phase_token("train")

    def loader(self, iterable: Iterable) -> Iterator:
        """Iterate `iterable`, timing how long each batch takes to arrive (data wait).

        Training batches (fetched outside `phase(...)` with autograd on) are also checked
        for NaN/Inf in their floating-point tensors (rule `nonfinite-inputs`)."""
        iterator = iter(iterable)
        clock = time.perf_counter
        while True:
            start = clock()
            try:
                batch = next(iterator)
            except StopIteration:
                return
            self.recorder.data_wait(clock() - start)
            self.recorder._safe(self.recorder.contracts.guarded, "on_batch", iterable)  # its batch_size
            if self._phase == schema.DEFAULT_PHASE:
                self.recorder._safe(self.recorder.on_batch, batch)
            yield batch

    def log_metrics(self, phase: str = "val", *, epoch: int | None = None,
                    **metrics: float) -> None:
        """Record evaluation metrics, e.g. `log_metrics("val", epoch=3, val_loss=0.41)`."""
        clean = {k: float(v) for k, v in metrics.items()}
        self.recorder.event("metrics", phase=phase,
                            epoch=self.recorder.epoch if epoch is None else epoch,
                            metrics=clean)

    def log_checkpoint(self, path: str | Path, keys: Iterable[str] = ()) -> None:
        """Record that a checkpoint was written, with the top-level keys it holds."""
        self.recorder.event("checkpoint", path=str(path), keys=sorted(map(str, keys)))

    def log_event(self, kind: str, **data: Any) -> None:
        """Record any other discrete event."""
        self.recorder.event(kind, **data)

    # ---- lifetime -------------------------------------------------------------------------
    def close(self, status: str = schema.STATUS_FINISHED, error: str | None = None) -> None:
        """Flush and detach every hook. Safe to call twice."""
        self._restore_sigterm()
        self.recorder.close(status, error)

    def __enter__(self) -> "Monitor":
        if threading.current_thread() is threading.main_thread():
            try:
                if signal.getsignal(signal.SIGTERM) in (signal.SIG_DFL, None):
                    self._previous_sigterm = signal.signal(signal.SIGTERM, _sigterm_to_exit)
            except (ValueError, OSError):
                self._previous_sigterm = None
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is None:
            self.close(schema.STATUS_FINISHED)
            return False
        record_exception(self.recorder, exc)
        interrupted = issubclass(exc_type, (KeyboardInterrupt, SystemExit))
        self.close(schema.STATUS_INTERRUPTED if interrupted else schema.STATUS_CRASHED,
                   error=f"{exc_type.__name__}: {exc}")
        return False

    def _restore_sigterm(self) -> None:
        if self._previous_sigterm is not None:
            try:
                signal.signal(signal.SIGTERM, self._previous_sigterm)
            except (ValueError, OSError):
                pass
            self._previous_sigterm = None


def _sigterm_to_exit(signum, frame) -> None:
    """SIGTERM unwinds the loop like Ctrl-C, so `with Monitor` flushes and marks it."""
    raise SystemExit(128 + signum)


def record_exception(recorder: Recorder, exc: BaseException) -> None:
    """Write an exception event, and an `oom` event with the memory state for an
    out-of-memory error (diagnose/recorder/oom.py; unless backward already recorded it)."""
    text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__, limit=20))
    recorder.event("exception", type=type(exc).__name__, message=str(exc)[:2000],
                   traceback=text[-8000:])
    if oom.is_oom(exc):
        try:
            recorder.on_oom(exc, "the training loop")
        except Exception:  # noqa: BLE001 - the user's error is what matters here
            pass
