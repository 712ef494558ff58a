"""Profiler traces: a bounded torch.profiler window while training, a summary at report time.

- `window.ProfileWindow`: which steps to profile (`--profile-steps WAIT,WARMUP,ACTIVE`).
- `capture.StepProfiler`: the recorder's side; torch.profiler with a schedule and
  `tensorboard_trace_handler`, writing `rankK/profile/rankK.<ns>.pt.trace.json.gz`.
- `load.load_profile`: the reader's side; torch-tb-profiler's own parser (a library
  call, no parser of ours) turned into a `summary.ProfileSummary` for rules and reports.

docs/profiling.md says what is captured, what it costs and how to open the traces.
"""
