"""Names and version of the run-directory format (see docs/run-directory.md).

Everything that writes or reads a run directory takes its file names and the schema
version from here, so the two halves cannot drift apart.
"""
from __future__ import annotations

SCHEMA_VERSION = 1
"""The version this diagnose writes; readers accept 1..SCHEMA_VERSION."""

META_FILE = "meta.jsonl"
PARAMS_FILE = "params.jsonl"
STEPS_FILE = "steps.jsonl"
EVENTS_FILE = "events.jsonl"
GRAD_NORMS_FILE = "grad_norms.arrow"
PARAM_NORMS_FILE = "param_norms.arrow"
UPDATE_NORMS_FILE = "update_norms.arrow"
"""‖Δw‖ per parameter on sampled steps (the optimizer step's update; diagnose/recorder/updates.py)."""
REPORT_FILE = "report.html"
PROFILE_DIR = "profile"
"""Folder in `rankK/` holding torch.profiler traces (`rankK.<ns>.pt.trace.json.gz`), if profiled."""

RANK_DIR_PREFIX = "rank"

NO_GRAD_SENTINEL = -1.0
"""Value of a grad_norms.arrow cell whose parameter had no gradient at that step (`.grad`
was None). A real norm is never negative; the reader turns it into NaN."""

STATUS_RUNNING = "running"
STATUS_FINISHED = "finished"
STATUS_INTERRUPTED = "interrupted"
STATUS_CRASHED = "crashed"
STATUSES = (STATUS_RUNNING, STATUS_FINISHED, STATUS_INTERRUPTED, STATUS_CRASHED)

# Flags of a `modelN.forward[...]` call token.
FLAG_TRAINING = "T"
FLAG_EVAL = "E"
FLAG_GRAD = "G"
FLAG_NO_GRAD = "N"
FLAG_INFERENCE = "I"
FLAG_BACKPROP = "B"

EVENT_LOSS_CALL = "loss_call"
"""events.jsonl kind: a loss function's call on a sampled step (recorder/contracts.py)."""
EVENT_RNN_CALL = "rnn_call"
"""events.jsonl kind: an nn.LSTM/GRU/RNN forward on a sampled step (recorder/contracts.py)."""
EVENT_EVAL_DROPOUT = "eval_dropout"
"""events.jsonl kind: a functional dropout that ignores eval mode (`F.dropout` without
`training=`) ran inside a forward of a watched model in eval mode (recorder/contracts.py)."""

PHASE_TOKEN_PREFIX = "phase:"
"""A `phase:NAME` token in a `calls` list marks where a phase (`train`, `val`, `test`) begins."""
DEFAULT_PHASE = "train"
BATCH_TOKEN = "batch"
"""A `batch` token in a `calls` list marks where a training batch arrived from a watched loader
(`Monitor.loader` outside an evaluation phase, the zero-code mode's training DataLoader); like
`phase:NAME` it is a marker, not a call: the reader counts them in the call table's `batch`
column."""


def rank_dir_name(rank: int) -> str:
    """Folder name of one rank's files inside a run directory."""
    return f"{RANK_DIR_PREFIX}{rank}"


def param_column(index: int) -> str:
    """Arrow column name of parameter `index`."""
    return f"p{index}"
