"""Fuzz `diagnose report DIR --format json` with damaged run directories (hypothesis).

The mutations are bench/fuzz_reader.py's (which runs 10,000 cases). The property: exit 0
or 1, or exit 2 with one `Error:` line that is not an internal error; never a traceback.
Field-type mutations (`wrong_type`, `extra_field`) still find internal errors in the
reader and report: docs/reliability.md lists them; they are left out here until fixed.
"""
from __future__ import annotations

import importlib.util
import random
import shutil
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

_BENCH = Path(__file__).resolve().parents[2] / "bench" / "fuzz_reader.py"
_spec = importlib.util.spec_from_file_location("fuzz_reader", _BENCH)
fuzz = importlib.util.module_from_spec(_spec)
sys.modules["fuzz_reader"] = fuzz
_spec.loader.exec_module(fuzz)

OPS = [op for op in fuzz.OPS if op not in ("wrong_type", "extra_field")]


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
