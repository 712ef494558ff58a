"""A Ctrl-C or SIGTERM that lands where Python swallows exceptions still stops the run.

A signal handler runs wherever the main thread is; inside a `__del__`, a weakref callback
or a generator being finalised, its KeyboardInterrupt/SystemExit is "ignored" by Python
and the loop trains on (the SIGINT bench/crash_trials.py once lost). `interrupt_loop.py`
makes the signal arrive at exactly such a point (no timing involved: the process signals
itself there) and reports what the loop and the run directory did; all scenarios run in
one subprocess, so the signals never reach pytest. Then the reference loop's own handling
(reference_loop/stop.py): the signal is acted on at the next step boundary, with a
checkpoint; bench/crash_trials.py checks that checkpoint after real signals.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

_SCRIPT = Path(__file__).with_name("interrupt_loop.py")
_ROOT = _SCRIPT.parents[2]
SWALLOWED = ["del-sigint", "del-sigterm", "weakref-sigint", "gen-sigint"]
SCENARIOS = [*SWALLOWED, "step-sigint", "caught-sigint", "del-sigint-unguarded"]
SIGNAL_AT, STEPS = 5, 40


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> dict[str, dict]:
    out = tmp_path_factory.mktemp("interrupts")
    env = dict(os.environ, PYTHONPATH=str(_ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, str(_SCRIPT), str(out), *SCENARIOS], capture_output=True, text=True,
                          env=env, cwd=_ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    return {r["scenario"]: r for r in lines}


def test_without_the_guard_a_swallowed_interrupt_is_lost(results):
    """The failure the guard exists for: the loop trains to the end and says `finished`."""
    r = results["del-sigint-unguarded"]
    assert (r["raised"], r["done"], r["status"]) == (None, STEPS, "finished")


@pytest.mark.parametrize("scenario", SWALLOWED)
def test_a_swallowed_interrupt_stops_the_loop_at_the_next_recorder_call(results, scenario):
    r = results[scenario]
    assert r["raised"] == ("SystemExit" if scenario.endswith("sigterm") else "KeyboardInterrupt")
    assert r["done"] == SIGNAL_AT + 1  # the step it landed in finished; the next never began
    assert r["status"] == "interrupted"
    assert r["records"] == r["status_steps"] == SIGNAL_AT + 1  # flushed: every step on disk


def test_an_ordinary_interrupt_is_unchanged(results):
    r = results["step-sigint"]
    assert (r["raised"], r["done"], r["status"]) == ("KeyboardInterrupt", SIGNAL_AT, "interrupted")
    assert r["records"] == r["status_steps"] == SIGNAL_AT + 1


def test_an_interrupt_the_loop_catches_on_purpose_is_left_alone(results):
    r = results["caught-sigint"]
    assert (r["raised"], r["done"], r["status"], r["records"]) == (None, STEPS, "finished", STEPS)


# ---- the reference loop: stop at a step boundary, with a checkpoint (reference_loop/stop.py) --
def _user_handler(signum, frame):  # a handler a user installed: must stay in charge
    pass


def test_graceful_stop_acts_at_the_step_boundary_then_raises_what_the_signal_would():
    import signal as sig

    from reference_loop.stop import GracefulStop

    before = sig.getsignal(sig.SIGINT), sig.getsignal(sig.SIGTERM)
    saved = []
    with GracefulStop() as stop:
        assert sig.getsignal(sig.SIGINT) == stop._handle
        stop.check(lambda: saved.append("early"))  # no signal yet: nothing
        stop._handle(sig.SIGTERM, None)  # as the signal module would call it
        assert saved == []  # nothing happens before the loop reaches its boundary
        with pytest.raises(SystemExit) as exited:
            stop.check(lambda: saved.append("checkpoint"))
    assert exited.value.code == 128 + sig.SIGTERM and saved == ["checkpoint"]
    assert (sig.getsignal(sig.SIGINT), sig.getsignal(sig.SIGTERM)) == before  # restored


def test_a_second_signal_stops_at_once():
    import signal as sig

    from reference_loop.stop import GracefulStop

    with GracefulStop() as stop:
        stop._handle(sig.SIGINT, None)
        with pytest.raises(KeyboardInterrupt):
            stop._handle(sig.SIGINT, None)


def test_a_handler_the_user_set_stays_in_charge():
    import signal as sig

    from reference_loop.stop import GracefulStop

    previous = sig.signal(sig.SIGTERM, _user_handler)
    try:
        with GracefulStop():
            assert sig.getsignal(sig.SIGTERM) is _user_handler
    finally:
        sig.signal(sig.SIGTERM, previous)
