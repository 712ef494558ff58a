"""read_run on synthetic run directories: the tables, and what a crash leaves behind."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from diagnose.rundir import schema
from diagnose.rundir.reader import RunDirError, read_run
from diagnose.rundir.synthetic import write_synthetic_run
from diagnose.rundir.tables import CALLS_COLUMNS, EVENTS_COLUMNS, METRICS_COLUMNS, PARAMS_COLUMNS


def rank0(run_dir: Path) -> Path:
    return run_dir / "rank0"


def append_line(path: Path, text: str) -> None:
    with path.open("a", encoding="utf-8") as f:
        f.write(text)


@pytest.fixture
def healthy(tmp_path: Path) -> Path:
    return write_synthetic_run(tmp_path / "run", steps=120, params=6, steps_per_epoch=50, param_every=10,
                               chunk_rows=32)


# ---- the tables of a healthy run ------------------------------------------------------------
def test_healthy_run_reads_every_table_without_notes(healthy: Path) -> None:
    run = read_run(healthy)
    assert run.notes == []
    assert list(run.ranks) == [0]
    t = run.ranks[0]
    assert t.meta["status"] == "finished" and t.meta["schema_version"] == 1 and t.meta["device"] == "cpu"
    assert "type" not in t.meta
    assert len(t.steps) == 120 and t.steps.index.name == "step"
    assert t.steps.index.tolist() == list(range(120))
    assert t.grad_norms.shape == (120, 6) and t.grad_nonfinite.shape == (120, 6)
    assert t.grad_norms.columns.tolist() == list(range(6))
    assert t.param_norms.index.tolist() == list(range(0, 120, 10))
    assert t.has("meta", "objects", "params", "steps", "grad_norms", "param_norms", "calls", "events", "metrics")


def test_steps_columns_lr_expansion_and_derived_rates(healthy: Path) -> None:
    steps = read_run(healthy).ranks[0].steps
    assert "lr" not in steps.columns
    assert steps["lr_0"].dtype == np.float64 and steps["lr_1"].dtype == np.float64
    assert steps.loc[0, "lr_0"] == pytest.approx(3e-4 / 12)
    assert not steps["skipped"].any() and steps["skipped"].dtype == bool
    expected = steps["samples"] / steps["step_time_s"]
    np.testing.assert_allclose(steps["samples_per_s"], expected)
    np.testing.assert_allclose(steps["tokens_per_s"], steps["tokens"] / steps["step_time_s"])


def test_columns_null_on_every_line_are_absent(healthy: Path) -> None:
    tables = read_run(healthy).ranks[0]
    for column in ("mem_alloc_bytes", "mem_reserved_bytes", "mem_peak_bytes", "scale", "scale_after"):
        assert column not in tables.steps.columns
    assert not tables.has("steps.scale")
    assert tables.missing("steps.scale", "steps.loss", "objects.scalers") == ["steps.scale", "objects.scalers"]


def test_amp_run_records_scale_and_skipped_steps(tmp_path: Path) -> None:
    loss = [1.0] * 20
    loss[5] = math.inf
    loss[6] = math.nan
    t = read_run(write_synthetic_run(tmp_path / "run", steps=20, params=3, amp=True, loss=loss)).ranks[0]
    assert t.has("steps.scale", "objects.scalers")
    assert t.steps["skipped"].tolist() == [i in (5, 6) for i in range(20)]
    assert t.steps.loc[5, "loss"] == math.inf and math.isnan(t.steps.loc[6, "loss"])


def test_params_table_and_backward_rank(healthy: Path) -> None:
    params = read_run(healthy).ranks[0].params
    assert params.index.name == "index" and params.index.tolist() == list(range(6))
    assert list(params.columns[: len(PARAMS_COLUMNS)]) == list(PARAMS_COLUMNS)
    assert params.loc[1, "name"] == "layers.0.bias" and params.loc[0, "shape"] == [64, 64]
    # The synthetic backward order is last parameter first.
    assert params["backward_rank"].tolist() == [5, 4, 3, 2, 1, 0]
    assert params["group"].tolist() == [0, 1, 0, 1, 0, 1]


def test_calls_table_phases_and_flags(healthy: Path) -> None:
    calls = read_run(healthy).ranks[0].calls
    assert list(calls.columns) == list(CALLS_COLUMNS)
    assert calls["seq"].tolist() == list(range(len(calls)))
    first = calls[calls["step"] == 0]
    assert first["token"].tolist() == ["opt0.zero_grad", "model0.forward[TGB]", "backward", "clip_grad_norm_",
                                       "opt0.step", "sched0.step"]
    assert first["obj"].tolist() == ["opt0", "model0", "", "", "opt0", "sched0"]
    forward = first.iloc[1]
    assert (forward["method"], forward["training"], forward["grad"], forward["backprop"]) == ("forward", True, True, True)
    assert first.iloc[0]["training"] is pd.NA and first.iloc[0]["inference"] == np.False_
    # Epoch ends (steps 49, 99, 119) hold an evaluation phase between phase:val and phase:train.
    val = calls[calls["phase"] == "val"]
    assert sorted(set(val["step"])) == [49, 99, 119]
    assert set(val["token"]) == {"model0.eval", "model0.forward[EN]", "model0.train"}
    assert not val.loc[val["method"] == "forward", "training"].any()
    assert (calls.loc[calls["step"] == 50, "phase"] == "train").all()
    assert not calls["method"].astype(str).str.startswith("phase").any()


def test_events_and_metrics(healthy: Path) -> None:
    t = read_run(healthy).ranks[0]
    assert list(t.events.columns) == list(EVENTS_COLUMNS)
    assert "calls" not in set(t.events["kind"])
    checkpoints = t.events_of("checkpoint")
    assert checkpoints["step"].tolist() == [49, 99, 119]
    assert checkpoints.iloc[0]["data"]["keys"] == ["model", "optimizer", "scheduler", "step"]
    assert list(t.metrics.columns) == list(METRICS_COLUMNS)
    val_loss = t.metrics[t.metrics["name"] == "val_loss"]
    assert val_loss["step"].tolist() == [49, 99, 119] and (val_loss["phase"] == "val").all()
    assert val_loss["value"].dtype == np.float64


def test_several_ranks(tmp_path: Path) -> None:
    run = read_run(write_synthetic_run(tmp_path / "run", steps=10, params=2, ranks=3))
    assert list(run.ranks) == [0, 1, 2] and run.world_size == 3
    assert [t.rank for t in run.ranks.values()] == [0, 1, 2]
    assert run.first.rank == 0


# ---- JSON Lines: non-finite strings, torn and broken lines -------------------------------------
def test_nonfinite_strings_become_floats_in_every_json_file(tmp_path: Path) -> None:
    run_dir = write_synthetic_run(tmp_path / "run", steps=5, params=2)
    append_line(rank0(run_dir) / schema.EVENTS_FILE, json.dumps(
        {"kind": "metrics", "step": 4, "phase": "val", "epoch": 0, "metrics": {"val_loss": "-inf"}}) + "\n")
    steps_file = rank0(run_dir) / schema.STEPS_FILE
    lines = steps_file.read_text().splitlines()
    record = json.loads(lines[2])
    record.update(loss="nan", grad_norm="inf")
    lines[2] = json.dumps(record)
    steps_file.write_text("\n".join(lines) + "\n")
    t = read_run(run_dir).ranks[0]
    assert math.isnan(t.steps.loc[2, "loss"]) and t.steps.loc[2, "grad_norm"] == math.inf
    assert t.steps["loss"].dtype == np.float64
    assert t.metrics["value"].iloc[-1] == -math.inf


@pytest.mark.parametrize("name", [schema.STEPS_FILE, schema.EVENTS_FILE, schema.META_FILE, schema.PARAMS_FILE])
def test_torn_last_line_is_skipped_with_a_note(tmp_path: Path, name: str) -> None:
    run_dir = write_synthetic_run(tmp_path / "run", steps=30, params=3)
    before = read_run(run_dir).ranks[0]
    append_line(rank0(run_dir) / name, '{"step": 30, "loss": 0.5, "kind": "calls", "calls": ["opt0.ze')
    run = read_run(run_dir)
    assert run.notes == [f"rank0/{name}: last line is incomplete (torn by a crash?); skipped"]
    after = run.ranks[0]
    pd.testing.assert_frame_equal(after.steps, before.steps)
    pd.testing.assert_frame_equal(after.calls, before.calls)
    pd.testing.assert_frame_equal(after.params, before.params)
    assert after.meta == before.meta


def test_complete_last_line_without_newline_is_kept(tmp_path: Path) -> None:
    run_dir = write_synthetic_run(tmp_path / "run", steps=3, params=2)
    steps_file = rank0(run_dir) / schema.STEPS_FILE
    steps_file.write_text(steps_file.read_text().rstrip("\n"))
    run = read_run(run_dir)
    assert run.notes == [] and len(run.ranks[0].steps) == 3


def test_unreadable_middle_line_is_skipped_and_the_slow_path_matches_the_fast_one(tmp_path: Path) -> None:
    loss = [1.0] * 40
    loss[20] = math.nan  # gives the list field nonfinite_grads on one line
    run_dir = write_synthetic_run(tmp_path / "run", steps=40, params=3, amp=True, loss=loss)
    fast = read_run(run_dir).ranks[0]
    assert fast.steps.loc[20, "nonfinite_grads"] == [2, 1, 0] and fast.steps.loc[19, "nonfinite_grads"] is None
    for name in (schema.STEPS_FILE, schema.EVENTS_FILE):
        path = rank0(run_dir) / name
        lines = path.read_text().splitlines()
        path.write_text("\n".join(lines[:10] + ["{not json", "[1, 2]"] + lines[10:]) + "\n")
    run = read_run(run_dir)
    assert run.notes == ["rank0/events.jsonl: 2 unreadable line(s) skipped",
                         "rank0/steps.jsonl: 2 unreadable line(s) skipped"]
    slow = run.ranks[0]
    pd.testing.assert_frame_equal(slow.steps, fast.steps, check_dtype=False, check_like=True)
    pd.testing.assert_frame_equal(slow.calls, fast.calls)


def test_calls_written_with_spaces_read_the_same(tmp_path: Path) -> None:
    run_dir = write_synthetic_run(tmp_path / "run", steps=60, params=2)
    compact = read_run(run_dir).ranks[0].calls
    path = rank0(run_dir) / schema.EVENTS_FILE
    path.write_text("".join(json.dumps(json.loads(line)) + "\n" for line in path.read_text().splitlines()))
    pd.testing.assert_frame_equal(read_run(run_dir).ranks[0].calls, compact)


def test_run_length_encoded_tokens_expand(tmp_path: Path) -> None:
    run_dir = write_synthetic_run(tmp_path / "run", steps=2, params=2)
    path = rank0(run_dir) / schema.EVENTS_FILE
    append_line(path, json.dumps({"kind": "calls", "step": 2, "calls": [
        "phase:test", "model0.forward[EI]*3", "phase:train", "backward"]}, separators=(",", ":")) + "\n")
    calls = read_run(run_dir).ranks[0].calls
    last = calls[calls["step"] == 2]
    assert last["token"].tolist() == ["model0.forward[EI]"] * 3 + ["backward"]
    assert last["phase"].tolist() == ["test"] * 3 + ["train"]
    assert last["inference"].tolist() == [True, True, True, False]
    assert last["grad"].tolist()[:3] == [False] * 3 and last["backprop"].tolist()[:3] == [False] * 3
    assert last["seq"].is_monotonic_increasing


def test_repeated_steps_keep_the_last(tmp_path: Path) -> None:
    run_dir = write_synthetic_run(tmp_path / "run", steps=3, params=2)
    append_line(rank0(run_dir) / schema.STEPS_FILE, json.dumps({"step": 1, "loss": 9.0}) + "\n")
    run = read_run(run_dir)
    assert run.notes == ["rank0/steps.jsonl: 1 repeated step(s); kept the last of each"]
    assert run.ranks[0].steps.loc[1, "loss"] == 9.0 and len(run.ranks[0].steps) == 3


# ---- Arrow streams -----------------------------------------------------------------------------
def test_truncated_arrow_stream_keeps_every_complete_chunk(tmp_path: Path) -> None:
    run_dir = write_synthetic_run(tmp_path / "run", steps=100, params=4, chunk_rows=25)
    path = rank0(run_dir) / schema.GRAD_NORMS_FILE
    full = read_run(run_dir).ranks[0].grad_norms
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 2 // 3])  # inside the third chunk
    run = read_run(run_dir)
    cut = run.ranks[0].grad_norms
    assert run.notes == ["rank0/grad_norms.arrow: stream cut after 2 complete chunk(s) (50 rows); the rest was skipped"]
    pd.testing.assert_frame_equal(cut, full.iloc[:50])
    assert run.ranks[0].grad_nonfinite.shape == (50, 4)


def test_arrow_stream_without_end_marker_reads_whole(tmp_path: Path) -> None:
    run_dir = write_synthetic_run(tmp_path / "run", steps=50, params=2, chunk_rows=10)
    path = rank0(run_dir) / schema.GRAD_NORMS_FILE
    path.write_bytes(path.read_bytes()[:-8])  # the 8-byte end-of-stream marker a crash never writes
    run = read_run(run_dir)
    assert run.notes == [] and len(run.ranks[0].grad_norms) == 50


@pytest.mark.parametrize("size", [0, 20])
def test_arrow_stream_cut_in_its_header_gives_an_empty_table(tmp_path: Path, size: int) -> None:
    run_dir = write_synthetic_run(tmp_path / "run", steps=5, params=2)
    path = rank0(run_dir) / schema.PARAM_NORMS_FILE
    path.write_bytes(path.read_bytes()[:size])
    run = read_run(run_dir)
    assert run.notes == ["rank0/param_norms.arrow: no complete Arrow stream header (empty or cut before the "
                         "first chunk); skipped"]
    assert run.ranks[0].param_norms.empty and not run.ranks[0].has("param_norms")


def test_no_gradient_sentinel_and_nonfinite_norms(tmp_path: Path) -> None:
    run_dir = write_synthetic_run(tmp_path / "run", steps=3, params=3)
    values = np.array([[0.5, schema.NO_GRAD_SENTINEL, np.nan], [np.inf, 0.25, 1.0]], dtype=np.float32)
    table = pa.table({"step": pa.array([7, 8], pa.int64()),
                      **{schema.param_column(j): pa.array(values[:, j]) for j in range(3)}})
    with pa.OSFile(str(rank0(run_dir) / schema.GRAD_NORMS_FILE), "wb") as sink, \
            pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    t = read_run(run_dir).ranks[0]
    assert t.grad_norms.index.tolist() == [7, 8]
    assert t.grad_norms.loc[7, 0] == 0.5 and math.isnan(t.grad_norms.loc[7, 1]) and math.isnan(t.grad_norms.loc[7, 2])
    assert t.grad_norms.loc[8, 0] == math.inf
    assert t.grad_nonfinite.to_numpy().tolist() == [[False, False, True], [True, False, False]]


# ---- missing files, status ---------------------------------------------------------------------
def test_missing_optional_files_give_empty_tables_with_their_columns(tmp_path: Path) -> None:
    run_dir = write_synthetic_run(tmp_path / "run", steps=5, params=2)
    for name in (schema.PARAMS_FILE, schema.STEPS_FILE, schema.EVENTS_FILE, schema.GRAD_NORMS_FILE,
                 schema.PARAM_NORMS_FILE):
        (rank0(run_dir) / name).unlink()
    run = read_run(run_dir)
    t = run.ranks[0]
    assert run.notes == []
    assert t.missing("params", "steps", "grad_norms", "param_norms", "calls", "events", "metrics") == [
        "params", "steps", "grad_norms", "param_norms", "calls", "events", "metrics"]
    assert list(t.calls.columns) == list(CALLS_COLUMNS) and list(t.events.columns) == list(EVENTS_COLUMNS)
    assert "skipped" in t.steps.columns and t.steps.index.name == "step"
    assert t.events_of("checkpoint").empty


def test_missing_meta_is_noted(tmp_path: Path) -> None:
    run_dir = write_synthetic_run(tmp_path / "run", steps=5, params=2)
    (rank0(run_dir) / schema.META_FILE).unlink()
    run = read_run(run_dir)
    assert run.notes == ["rank0/meta.jsonl: missing"]
    assert len(run.ranks[0].steps) == 5


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


@pytest.mark.skipif(os.name != "posix", reason="process liveness is checked on POSIX only")
def test_running_status_of_a_gone_process_reads_as_crashed(tmp_path: Path) -> None:
    run = read_run(write_synthetic_run(tmp_path / "run", steps=5, params=2, status="running", pid=_dead_pid()))
    assert run.ranks[0].meta["status"] == "crashed"
    assert len(run.notes) == 1 and "is gone; reading it as crashed" in run.notes[0]


def test_running_status_of_a_live_process_stays_running(tmp_path: Path) -> None:
    run = read_run(write_synthetic_run(tmp_path / "run", steps=5, params=2, status="running"))
    assert run.ranks[0].meta["status"] == "running" and run.notes == []


def test_running_status_on_another_host_is_not_guessed(tmp_path: Path) -> None:
    run_dir = write_synthetic_run(tmp_path / "run", steps=5, params=2, status="running", pid=_dead_pid())
    meta = rank0(run_dir) / schema.META_FILE
    meta.write_text(meta.read_text().replace('"host":"', '"host":"elsewhere-'))
    assert read_run(run_dir).ranks[0].meta["status"] == "running"


def test_last_status_wins_and_carries_its_error(tmp_path: Path) -> None:
    t = read_run(write_synthetic_run(tmp_path / "run", steps=5, params=2, status="crashed")).ranks[0]
    assert t.meta["status"] == "crashed" and t.meta["error"] == "RuntimeError: synthetic crash"


def test_objects_records_merge_by_index(tmp_path: Path) -> None:
    run_dir = write_synthetic_run(tmp_path / "run", steps=5, params=2)
    append_line(rank0(run_dir) / schema.META_FILE, json.dumps({
        "type": "objects", "models": [{"index": 1, "class": "EMA"}],
        "schedulers": [{"index": 0, "class": "StepLR", "step_size": 10}]}) + "\n")
    objects = read_run(run_dir).ranks[0].objects
    assert [m["class"] for m in objects["models"]] == ["MLP", "EMA"]
    assert objects["schedulers"] == [{"index": 0, "class": "StepLR", "step_size": 10}]
    assert objects["optimizers"][0]["class"] == "AdamW"


# ---- paths and versions ------------------------------------------------------------------------
def test_rank_folder_given_directly(tmp_path: Path) -> None:
    run_dir = write_synthetic_run(tmp_path / "run", steps=5, params=2, ranks=2)
    run = read_run(run_dir / "rank1")
    assert list(run.ranks) == [1] and run.path == run_dir
    assert len(run.ranks[1].steps) == 5


def test_future_schema_version_is_refused(tmp_path: Path) -> None:
    run_dir = write_synthetic_run(tmp_path / "run", steps=3, params=2)
    meta = rank0(run_dir) / schema.META_FILE
    meta.write_text(meta.read_text().replace('"schema_version":1', f'"schema_version":{schema.SCHEMA_VERSION + 1}'))
    with pytest.raises(RunDirError) as caught:
        read_run(run_dir)
    assert str(caught.value) == (f"run directory uses schema version {schema.SCHEMA_VERSION + 1}; this diagnose "
                                 f"reads up to {schema.SCHEMA_VERSION} — upgrade diagnose")


@pytest.mark.parametrize("make, message", [
    (lambda p: p, "no such directory"),
    (lambda p: (p.mkdir(), p)[1], "not a run directory"),
    (lambda p: (p.write_text("x"), p)[1], "not a directory"),
    (lambda p: (p.joinpath("rank0").mkdir(parents=True), p)[1], "no rank folder holds any run files"),
])
def test_paths_that_are_not_run_directories(tmp_path: Path, make, message: str) -> None:
    path = make(tmp_path / "thing")
    with pytest.raises(RunDirError, match=message) as caught:
        read_run(path)
    assert "\n" not in str(caught.value)


def test_a_file_that_cannot_be_read_is_a_note(tmp_path: Path) -> None:
    run_dir = write_synthetic_run(tmp_path / "run", steps=3, params=2)
    steps_file = rank0(run_dir) / schema.STEPS_FILE
    steps_file.unlink()
    steps_file.mkdir()  # is_file() is False: reads as missing, not as a crash
    (rank0(run_dir) / schema.PARAMS_FILE).write_bytes(b"\xff\xfe garbage\n")
    run = read_run(run_dir)
    assert run.ranks[0].steps.empty
    assert run.notes == ["rank0/params.jsonl: 1 unreadable line(s) skipped"]
