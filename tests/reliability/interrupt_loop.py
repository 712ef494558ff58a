"""A tiny `with Monitor(...)` loop that signals itself at one exact point (run as a script).

    python tests/reliability/interrupt_loop.py OUT_DIR SCENARIO [SCENARIO ...]

Each scenario trains 40 steps into OUT_DIR/SCENARIO and, at step 5, sends SIGINT or
SIGTERM to its own process from a place chosen so that the handler runs there:
- `del-sigint`, `del-sigterm`: inside a `__del__` (Python prints "Exception ignored"
  and drops the KeyboardInterrupt/SystemExit: the swallowed case),
- `weakref-sigint`: inside a weakref callback (swallowed too),
- `gen-sigint`: inside a generator's `finally` while the generator is garbage-collected,
- `step-sigint`: in the loop body (the ordinary case),
- `caught-sigint`: in the loop body, caught by the loop on purpose, which then trains on
  (the recorder must leave that alone).
A `-unguarded` suffix turns the re-delivery (diagnose/recorder/interrupts.py) off for that
scenario, to show what happens without it: `del-sigint-unguarded` trains to the end.
Prints one JSON line per scenario: the exception that left the loop, the steps the loop
finished, the meta.jsonl status, the status line's `steps` and the step records on disk.
"""
from __future__ import annotations

import gc
import json
import os
import signal
import sys
import weakref
from pathlib import Path

import torch
import torch.nn.functional as F

STEPS = 40
SIGNAL_AT = 5


def _send(sig: int) -> None:
    os.kill(os.getpid(), sig)
    for _ in range(1000):  # a backward jump: the interpreter runs the Python handler here
        pass


class _SignalOnDel:
    def __init__(self, sig: int) -> None:
        self.sig = sig

    def __del__(self) -> None:
        _send(self.sig)


class _Referent:
    pass


def _finalised_generator():
    try:
        yield 1
    finally:
        _send(signal.SIGINT)


def _signal_point(scenario: str) -> None:
    """At step SIGNAL_AT: make the signal arrive where `scenario` says."""
    if scenario.startswith("del-"):
        _SignalOnDel(signal.SIGTERM if scenario.endswith("sigterm") else signal.SIGINT)  # dropped at once
    elif scenario == "weakref-sigint":
        referent = _Referent()
        keep = weakref.ref(referent, lambda _ref: _send(signal.SIGINT))  # noqa: F841
        del referent
    elif scenario == "gen-sigint":
        gen = _finalised_generator()
        next(gen)
        cycle = [gen]
        cycle.append(cycle)  # only the cycle collector finalises it
        del gen, cycle
        gc.collect()
    elif scenario in ("step-sigint", "caught-sigint"):
        _send(signal.SIGINT)


def run(out: Path, scenario: str) -> dict:
    from diagnose import Monitor
    from diagnose.recorder import interrupts

    redeliver = interrupts.redeliver
    if scenario.endswith("-unguarded"):
        interrupts.redeliver = lambda: None
    try:
        return _run(out, scenario.removesuffix("-unguarded")) | {"scenario": scenario}
    finally:
        interrupts.redeliver = redeliver


def _run(out: Path, scenario: str) -> dict:
    from diagnose import Monitor

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    data = [(torch.randn(8, 6), torch.randint(0, 3, (8,))) for _ in range(STEPS)]
    done, raised = 0, None
    try:
        with Monitor(out, model=model, optimizer=opt) as monitor:
            for step, (x, y) in enumerate(monitor.loader(data)):
                opt.zero_grad()
                F.cross_entropy(model(x), y).backward()
                opt.step()
                if step == SIGNAL_AT:
                    try:
                        _signal_point(scenario)
                    except KeyboardInterrupt:
                        if scenario != "caught-sigint":
                            raise
                done += 1
    except (KeyboardInterrupt, SystemExit) as exc:
        raised = type(exc).__name__
    status = [r for r in _lines(out / "rank0" / "meta.jsonl") if r.get("type") == "status"][-1]
    return {"scenario": scenario, "raised": raised, "done": done, "status": status.get("status"),
            "status_steps": status.get("steps"), "records": len(_lines(out / "rank0" / "steps.jsonl"))}


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def main(argv: list[str]) -> None:
    torch.set_num_threads(1)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # whatever the parent set
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # the Monitor installs its own
    sys.unraisablehook = lambda unraisable: None  # keep the output to the JSON lines
    out = Path(argv[0])
    for scenario in argv[1:]:
        print(json.dumps(run(out / scenario, scenario)), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
