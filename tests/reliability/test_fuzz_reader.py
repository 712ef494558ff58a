"""Fuzz `diagnose report DIR --format json` with damaged run directories (hypothesis).

The mutations are bench/fuzz_reader.py's (which runs 10,000 cases). The property: exit 0
or 1 with no rule failed on a value the reader let through, or exit 2 with one `Error:`
line that is not an internal error; never a traceback. Regression cases below: each
failure the fuzzer found, as a fixed input.
"""
from __future__ import annotations

import importlib.util
import json
import random
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

_BENCH = Path(__file__).resolve().parents[2] / "bench" / "fuzz_reader.py"
_spec = importlib.util.spec_from_file_location("fuzz_reader", _BENCH)
fuzz = importlib.util.module_from_spec(_spec)
sys.modules["fuzz_reader"] = fuzz
_spec.loader.exec_module(fuzz)

from diagnose.rundir.reader import read_run  # noqa: E402

OPS = list(fuzz.OPS)


@pytest.fixture(scope="module")
def bases(tmp_path_factory):
    return fuzz.make_bases(tmp_path_factory.mktemp("bases"))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(base=st.sampled_from(fuzz.BASES), seed=st.integers(0, 2**32),
       mutations=st.lists(st.tuples(st.sampled_from(OPS), st.sampled_from(fuzz.FILES)), min_size=1, max_size=3))
def test_report_never_crashes_on_a_damaged_run(bases, tmp_path_factory, base, seed, mutations):
    target = tmp_path_factory.mktemp("case") / "run"
    shutil.copytree(bases[base], target)
    rng = random.Random(seed)
    done = [fuzz.mutate(rng, target, op, name) for op, name in mutations]
    failure = fuzz.check_report(target)
    shutil.rmtree(target.parent, ignore_errors=True)
    assert failure is None, f"{base}: {'; '.join(done)}: {failure}"


def test_a_line_that_is_null_does_not_crash_pyarrow(bases, tmp_path):
    """pyarrow's JSON reader segfaults on a steps.jsonl that starts with `null` (found by the fuzzer)."""
    target = tmp_path / "run"
    shutil.copytree(bases["healthy"], target)
    (target / "rank0" / "steps.jsonl").write_bytes(b"null\n")
    assert fuzz.check_report(target) is None


def test_invalid_utf8_in_a_key_is_not_an_internal_error(bases, tmp_path):
    target = tmp_path / "run"
    shutil.copytree(bases["healthy"], target)
    steps = target / "rank0" / "steps.jsonl"
    steps.write_bytes(steps.read_bytes().replace(b'"loss"', b'"lo\x80ss"', 1))
    assert fuzz.check_report(target) is None


# ---- wrong-typed fields: each kind the fuzzer found, read as missing with a note ----------
def _set_field(path: Path, select, key: str, value) -> None:
    """Set `key` to `value` in the first record of a JSON Lines file for which `select` holds."""
    lines = path.read_text(encoding="utf-8").splitlines()
    for i, line in enumerate(lines):
        record = json.loads(line)
        if select(record):
            record[key] = value
            lines[i] = json.dumps(record)
            break
    else:
        raise AssertionError(f"no record to change in {path}")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def _step5(r):
    return r.get("step") == 5


WRONG_TYPES = [  # file, which record, field, value, the note's field name
    ("steps.jsonl", _step5, "loss", [1, "a"], "loss"),
    ("steps.jsonl", _step5, "loss", {"a": [None]}, "loss"),
    ("steps.jsonl", _step5, "loss", True, "loss"),
    ("steps.jsonl", _step5, "step_time_s", "x", "step_time_s"),
    ("steps.jsonl", _step5, "samples", [], "samples"),
    ("steps.jsonl", _step5, "t_s", {}, "t_s"),
    ("steps.jsonl", _step5, "clip_norm", [1], "clip_norm"),
    ("steps.jsonl", _step5, "lr", ["x"], "lr"),
    ("steps.jsonl", _step5, "nonfinite_grads", "x", "nonfinite_grads"),
    ("params.jsonl", lambda r: r.get("index") == 1, "optimizer", 3.5, "optimizer"),
    ("params.jsonl", lambda r: r.get("index") == 1, "numel", 1e308, "numel"),
    ("params.jsonl", lambda r: r.get("index") == 1, "name", {"a": 1}, "name"),
    ("meta.jsonl", lambda r: r.get("type") == "start", "world_size", "x", "world_size"),
    ("meta.jsonl", lambda r: r.get("type") == "start", "started_at", [], "started_at"),
    ("meta.jsonl", lambda r: r.get("type") == "objects", "optimizers", "x", "optimizers"),
    ("meta.jsonl", lambda r: r.get("type") == "objects", "schedulers", [3], "schedulers"),
]


@pytest.mark.parametrize("file_name, select, key, value, field", WRONG_TYPES,
                         ids=[f"{w[0]}-{w[2]}-{type(w[3]).__name__}" for w in WRONG_TYPES])
def test_a_wrong_typed_field_is_read_as_missing_with_a_note(bases, tmp_path, file_name, select, key, value, field):
    target = tmp_path / "run"
    shutil.copytree(bases["healthy"], target)
    _set_field(target / "rank0" / file_name, select, key, value)
    assert fuzz.check_report(target) is None
    run = read_run(target)
    assert any(f"'{field}'" in note for note in run.notes), run.notes
    steps = run.first.steps
    assert list(steps.index) == list(range(30))  # every step kept
    if file_name == "steps.jsonl" and field in steps.columns:
        column = steps[field]
        if field != "nonfinite_grads":
            assert column.dtype.kind == "f" and np.isnan(column[5]) and column.drop(index=5).notna().all()


@pytest.mark.parametrize("step", ["x", 2**63, 1.5, -(2**70), None, [3]])
def test_a_step_that_is_not_an_integer_drops_only_its_record(bases, tmp_path, step):
    target = tmp_path / "run"
    shutil.copytree(bases["healthy"], target)
    _set_field(target / "rank0" / "steps.jsonl", _step5, "step", step)
    assert fuzz.check_report(target) is None
    run = read_run(target)
    assert list(run.first.steps.index) == [s for s in range(30) if s != 5]
    assert any("'step' is not an integer" in note for note in run.notes), run.notes


@pytest.mark.parametrize("step", [2**70, 1e300, "x"])
def test_an_event_step_out_of_range_is_missing(bases, tmp_path, step):
    target = tmp_path / "run"
    shutil.copytree(bases["healthy"], target)
    _set_field(target / "rank0" / "events.jsonl", lambda r: r.get("kind") == "calls" and r.get("step") == 3, "step", step)
    assert fuzz.check_report(target) is None
    _set_field(target / "rank0" / "events.jsonl", lambda r: r.get("kind") == "epoch", "step", step)
    assert fuzz.check_report(target) is None
    assert read_run(target).first.events["step"].isna().sum() == 1
