"""Per-step CPU time and involuntary context switches (`cpu_time_s`, `involuntary_switches`):
they cover the same interval as `step_time_s`, so a slow step can be told apart — more work
(CPU time up) from waiting or from other processes taking the CPU (CPU time flat)."""
from __future__ import annotations

import resource
import time

import torch
import torch.nn.functional as F

from diagnose import Monitor
from diagnose.rundir.reader import read_run

BUSY, IDLE = 4, 7


def _process_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _train(run_dir):
    """12 steps; step BUSY burns 60 ms of CPU time, step IDLE waits 60 ms without any."""
    torch.set_num_threads(1)  # no worker threads spinning while the main one waits
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    cpu_before = _process_cpu_s()
    with Monitor(run_dir, model=model, optimizer=opt):
        for i in range(12):
            opt.zero_grad()
            F.cross_entropy(model(torch.randn(8, 6)), torch.randint(0, 3, (8,))).backward()
            if i == BUSY:  # counted in CPU time, however loaded the machine is
                start = _process_cpu_s()
                while _process_cpu_s() - start < 0.06:
                    pass
            if i == IDLE:
                time.sleep(0.06)
            opt.step()
    return _process_cpu_s() - cpu_before


def test_cpu_time_is_recorded_per_step_and_tells_work_from_waiting(tmp_path):
    spent = _train(tmp_path / "run")
    steps = read_run(tmp_path / "run").first.steps
    cpu = steps["cpu_time_s"]
    assert len(steps) == 12 and (cpu >= 0).all() and (steps["involuntary_switches"] >= 0).all()
    assert cpu.sum() <= spent + 0.01  # a share of the process's CPU time, never more
    assert cpu[BUSY] >= 0.06 and steps["step_time_s"][BUSY] >= 0.06  # more work: both up
    assert steps["step_time_s"][IDLE] >= 0.06 and cpu[IDLE] < 0.03  # waiting: wall time only
