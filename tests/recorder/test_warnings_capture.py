"""Warnings become `warning` events in Monitor runs too, at the user's line, and still reach
the user's handler; the handler is restored when the last recorder closes."""
from __future__ import annotations

import inspect
import warnings
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from diagnose import Monitor
from diagnose.rules.data import framework_warning
from diagnose.rundir.reader import read_run


def _loop(run_dir: Path) -> int:
    """Scheduler stepped before the optimizer (torch warns with stacklevel=2 through the
    recorder's wrapper of scheduler.step), then a target-size warning every step."""
    torch.manual_seed(0)
    model = nn.Linear(4, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.StepLR(opt, 1)
    x, y = torch.randn(8, 4), torch.randn(8)
    with Monitor(run_dir, model=model, optimizer=opt, scheduler=sched):
        for _ in range(3):
            opt.zero_grad()
            sched.step()  # SCHED_LINE
            F.mse_loss(model(x), y).backward()  # MSE_LINE
            opt.step()
    return 0


def _line(marker: str) -> int:
    lines, start = inspect.getsourcelines(_loop)
    return start + next(i for i, text in enumerate(lines) if marker in text)


def test_monitor_records_warnings_at_the_users_line(tmp_path: Path) -> None:
    with warnings.catch_warnings(record=True) as shown:
        warnings.simplefilter("always")
        _loop(tmp_path / "run")
    run = read_run(tmp_path / "run").first
    events = run.events_of("warning")
    here = str(Path(__file__).resolve())
    sched = [d for d in events["data"] if "lr_scheduler.step()" in d["message"]]
    mse = [d for d in events["data"] if "target size" in d["message"]]
    assert len(mse) == 3 and len(sched) >= 1
    assert (sched[0]["filename"], sched[0]["lineno"]) == (here, _line("SCHED_LINE"))
    assert (mse[0]["filename"], mse[0]["lineno"]) == (here, _line("MSE_LINE"))
    # forwarded to the handler in place before the Monitor, with the corrected location
    seen = [(w.filename, w.lineno) for w in shown if "lr_scheduler.step()" in str(w.message)]
    assert seen and seen[0] == (here, _line("SCHED_LINE"))
    assert sum("target size" in str(w.message) for w in shown) == 3
    findings = {f.evidence["message"][:20]: f for f in framework_warning.check(run)}
    assert len(findings) == 2
    assert [f.evidence["first_step"] for f in findings.values() if "target" in f.evidence["message"]] == [0]


def test_handler_restored_and_a_later_handler_kept(tmp_path: Path) -> None:
    before = warnings.showwarning
    _loop(tmp_path / "a")
    assert warnings.showwarning is before

    def mine(*args, **kwargs):
        return None

    mon = Monitor(tmp_path / "b", model=nn.Linear(2, 2))
    warnings.showwarning = mine  # installed after ours (e.g. logging.captureWarnings)
    try:
        mon.close()
        assert warnings.showwarning is mine
    finally:
        warnings.showwarning = before
