"""The recorder's side of profiling: torch.profiler over a bounded window of steps.

The recorder calls `step()` at every step boundary (where steps.jsonl's step number goes
up), so torch.profiler's `ProfilerStep#N` spans are the recorder's step N. The trace is
written by torch's own `tensorboard_trace_handler` (gzipped Chrome trace JSON, the
format TensorBoard's profiler plugin, Perfetto and Holistic Trace Analysis all read) to
`rankK/profile/rankK.<ns>.pt.trace.json.gz`. After the window the profiler is stopped
and dropped: later steps pay nothing. A run that ends inside the window still gets the
steps it recorded (`stop()` writes them).

What it costs is measured in docs/profiling.md; the only device synchronisation is
torch's own, when the window's trace is collected (once).
"""
from __future__ import annotations

import warnings
from pathlib import Path

import torch

from diagnose.profiling.window import ProfileWindow


class StepProfiler:
    """torch.profiler for one process, stepped by the recorder.

    Args:
        out_dir: where the trace goes (`rankK/profile/`), created when it is written.
        window: which steps to record.
        worker: the trace's worker name (`rankK`): TensorBoard lists workers by it.
    """

    def __init__(self, out_dir: Path, window: ProfileWindow, worker: str) -> None:
        from torch.profiler import ProfilerActivity, profile, schedule, tensorboard_trace_handler

        self.window = window
        self.out_dir = Path(out_dir)
        activities = [ProfilerActivity.CPU]
        if torch.cuda.is_available():
            activities.append(ProfilerActivity.CUDA)
        with warnings.catch_warnings():  # "won't be using warmup": the user asked for 0
            warnings.simplefilter("ignore")
            when = schedule(wait=window.wait, warmup=window.warmup, active=window.active, repeat=1)
        self._steps = 0
        self._prof = profile(activities=activities, schedule=when,
                             on_trace_ready=tensorboard_trace_handler(str(self.out_dir), worker_name=worker,
                                                                      use_gzip=True))
        self._prof.start()

    @property
    def running(self) -> bool:
        """False once the window is written (or the profiler was stopped)."""
        return self._prof is not None

    def step(self) -> None:
        """A step boundary: step N ends, step N+1 begins."""
        if self._prof is None:
            return
        self._steps += 1
        self._prof.step()
        if self._steps >= self.window.total:  # the trace was written by this step()
            self.stop()

    def stop(self) -> None:
        """Stop now; a window still recording is written with the steps it holds."""
        prof, self._prof = self._prof, None
        if prof is not None:
            prof.stop()
