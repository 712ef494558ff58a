"""The recorder as the zero-code mode uses it: models learned late, phases inferred.

Differences from the `Monitor`'s recorder, all additive:
- the parameter table waits for `freeze_params()` (called once the models are known, at
  the first optimizer step) instead of freezing at the first recorded call;
- calls of modules not yet known to be models are recorded as *pending* tokens and named
  (or dropped: a loss module, a frozen teacher) when the models are resolved;
- `phase:val` / `phase:train` tokens are inferred when a step's calls are written
  (`phases.py`);
- a step's calls are written one step late: a forward's `B` flag is set when a backward
  reaches its output, and that can be in the next step (a GAN's generator forward runs
  in the discriminator's step and is backpropagated in its own); written at once, it
  would look like an evaluation forward;
- long stretches without optimizer steps (an evaluation-only script) are written out
  every `_CALLS_FLUSH` calls instead of piling up in memory.
"""
from __future__ import annotations

from typing import Any, Callable

import torch

from diagnose.recorder.recorder import Recorder, _run_length, batch_size, forward_flags
from diagnose.rundir import schema
from diagnose.zerocode import phases

_CALLS_FLUSH = 10_000


class ZeroCodeRecorder(Recorder):
    """A `Recorder` fed by the zero-code session instead of per-instance hooks."""

    def __init__(self, run_dir, **kwargs: Any) -> None:
        super().__init__(run_dir, defer_params=True, **kwargs)
        self._pending: list[tuple[list, torch.nn.Module, str, int, int]] = []
        self._phase = phases.TRAIN
        self._held: list[tuple[int, list]] = []
        self._final = False

    # ---- calls of modules not yet resolved ----------------------------------------------
    def pending_forward(self, module: torch.nn.Module, args: tuple) -> None:
        """A top-level forward of a module that may turn out to be a model."""
        training = module.training
        grad = torch.is_grad_enabled()
        if training and grad:
            self._open_if_stepped()
        token = self._token("?", forward_flags(training))
        samples, tokens = batch_size(args) if (training and grad) else (0, 0)
        self._pending.append((token, module, "forward", samples, tokens))
        self._last_forward = token
        self.forward_depth += 1

    def pending_call(self, module: torch.nn.Module, kind: str, opens_step: bool) -> None:
        """`train`, `eval` or `zero_grad` of a module that may turn out to be a model."""
        if opens_step:
            self._open_if_stepped()
        self._pending.append((self._token("?"), module, kind, 0, 0))

    def settle_pending(self, index_of: Callable[[torch.nn.Module], int | None]) -> None:
        """Name the pending calls of modules that are models; drop the others."""
        drop: set[int] = set()
        for token, module, kind, samples, tokens in self._pending:
            index = index_of(module)
            if index is None:
                drop.add(id(token))
                continue
            token[0] = f"model{index}.{kind}"
            if index == 0:
                self._cur.samples += samples
                self._cur.tokens += tokens
        self._pending = []
        if drop:
            self._calls = [t for t in self._calls if id(t) not in drop]

    # ---- calls the Monitor's recorder handles in closures -----------------------------
    def on_scaler_update(self, name: str) -> None:
        self._token(f"{name}.update")
        self._unscaled.clear()

    # ---- writing ------------------------------------------------------------------------
    def _token(self, name: str, flags: str | None = None) -> list:
        if self._frozen and len(self._calls) >= _CALLS_FLUSH:
            self._write_calls()
        return super()._token(name, flags)

    def _write_calls(self) -> None:
        """Hold this step's calls; write the previous step's (all of them when closing)."""
        if self._calls:
            self._held.append((self.step, self._calls))
            self._calls = []
        keep = 0 if self._final else 1
        while len(self._held) > keep:
            step, calls = self._held.pop(0)
            calls, self._phase = phases.insert_phases(calls, self._phase)
            tokens = _run_length([name if not flags else f"{name}[{flags}]"
                                  for name, flags in calls])
            self.writer.line(schema.EVENTS_FILE, {"kind": "calls", "step": step,
                                                  "calls": tokens})

    def close(self, status: str = schema.STATUS_FINISHED, error: str | None = None) -> None:
        self._final = True
        super().close(status, error)
