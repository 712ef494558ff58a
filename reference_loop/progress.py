"""Training progress: a rich bar on a terminal, plain periodic lines anywhere else.

Independent of the loop (only step counts and numbers go in), so `diagnose run` and any
other loop can use it:

    with StepProgress(total_steps=300) as bar:
        for step in range(300):
            ...
            bar.update(step + 1, samples=64, loss=loss_value)   # loss: float or None
        bar.print("epoch 0: val_loss 0.41")

On a terminal it draws description, bar, step/total, loss, samples/s and ETA. When the
console is not a terminal (CI logs, a pipe, `diagnose run > log`), it prints one line every
`every` steps and at the last step instead, so logs stay readable and small.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn


def _fmt_duration(seconds: float) -> str:
    seconds = int(round(max(seconds, 0)))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class StepProgress:
    """Step progress with loss, throughput and ETA.

    Args:
        total_steps: steps expected (the bar's length; the ETA's basis).
        enabled: False makes every method a no-op (quiet runs, tests).
        console: where to draw; default a rich Console on `file`.
        file: stream for the default console (stdout unless given; `diagnose run
            --format json` passes stderr so stdout stays one JSON document).
        every: plain mode: print a line every this many steps.
        description: label in front of the bar / lines.
        force_plain: use plain lines even on a terminal.
        start_step: steps already done (a resumed run): the bar starts there and the ETA
            counts only what is left.
    """

    def __init__(self, total_steps: int, *, enabled: bool = True, console: Console | None = None,
                 file: TextIO | None = None, every: int = 20, description: str = "train",
                 force_plain: bool = False, start_step: int = 0):
        if total_steps < 0 or every < 1:
            raise ValueError(f"need total_steps >= 0 and every >= 1; got {total_steps}, {every}")
        self.total, self.enabled, self.every, self.description = total_steps, enabled, every, description
        self.console = console or Console(file=file or sys.stdout, highlight=False)
        self.plain = force_plain or not self.console.is_terminal
        self._progress: Progress | None = None
        self._task = None
        self._t0 = self._samples = 0.0
        self._start_step = start_step
        self._last_loss: float | None = None
        self._last_printed = -1

    def __enter__(self) -> StepProgress:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> StepProgress:
        """Begin timing (and drawing, on a terminal)."""
        self._t0, self._samples = time.perf_counter(), 0.0
        start_step = self._start_step
        if self.enabled and not self.plain:
            self._progress = Progress(
                TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                TextColumn("loss {task.fields[loss]}"), TextColumn("{task.fields[rate]} samples/s"),
                TextColumn("eta"), TimeRemainingColumn(),
                console=self.console, transient=False,
            )
            self._progress.start()
            self._task = self._progress.add_task(self.description, total=self.total, completed=start_step,
                                                 loss="-", rate="-")
        return self

    def stop(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None

    def rate(self) -> float:
        """Samples per second since start."""
        elapsed = time.perf_counter() - self._t0
        return self._samples / elapsed if elapsed > 0 else 0.0

    def eta_s(self, step: int) -> float | None:
        done = step - self._start_step
        if done <= 0:
            return None
        return (time.perf_counter() - self._t0) / done * max(self.total - step, 0)

    def update(self, step: int, *, samples: int = 0, loss: float | None = None) -> None:
        """Record that `step` steps are done, `samples` more samples seen; `loss` if known."""
        if not self.enabled:
            return
        self._samples += samples
        if loss is not None:
            self._last_loss = loss
        if self._progress is not None:
            fields = {"rate": f"{self.rate():,.0f}"}
            if loss is not None:
                fields["loss"] = f"{loss:.4f}"
            self._progress.update(self._task, completed=step, **fields)
        elif step != self._last_printed and (step % self.every == 0 or step == self.total):
            self._last_printed = step
            self.console.print(self.line(step), markup=False)

    def line(self, step: int) -> str:
        """The plain-mode line for `step`."""
        loss = "-" if self._last_loss is None else f"{self._last_loss:.4f}"
        eta = self.eta_s(step)
        return (f"{self.description} step {step}/{self.total}  loss {loss}  "
                f"{self.rate():,.0f} samples/s  eta {'-' if eta is None else _fmt_duration(eta)}")

    def print(self, message: str) -> None:
        """A message above the bar (or a plain line)."""
        if self.enabled:
            self.console.print(message, markup=False, highlight=False)
