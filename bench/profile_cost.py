"""What profiling costs: the same training run with `Monitor(profile=...)` and without.

Each round runs STEPS steps twice, once with a profile window (wait W, warm up 2, record
5) and once without (the order alternates between rounds), timing every step (with a
device sync at its end on CUDA, in both variants). Reported, as medians over rounds:

- steps outside the window (before it and after it): profiled / unprofiled time;
- the warm-up and recorded steps of the window: the same ratio (the profiler is on);
- the step where the trace is collected and written (the first step after the window);
- the whole run's extra time, the trace's size, and how long `diagnose report` takes to
  parse it (torch-tb-profiler, `load_profile`).

Each on two clocks: wall time, and the training thread's CPU time (`time.thread_time`),
which other processes on a shared machine disturb much less (on a GPU it leaves out the
time the host waits for the device).

    python3 bench/profile_cost.py                                   # CPU, reference CNN
    python3 bench/profile_cost.py --model gpt2 --batch 8 --seq 1024 # on a GPU
    python3 bench/profile_cost.py --micro     # operators before, while waiting, after the window
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from overhead import build, step_fn, sync  # noqa: E402

from diagnose import Monitor  # noqa: E402
from diagnose.profiling.load import load_profile, trace_files  # noqa: E402


def one_run(args, device, profile, run_dir: Path) -> tuple[list[float], list[float]]:
    setup = build(args.model, device, args.batch, args.seq)
    opt = torch.optim.AdamW(setup.model.parameters(), lr=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1e-4, total_steps=args.steps + 1)
    scaler = torch.amp.GradScaler(device.type) if setup.scaler else None
    step = step_fn(setup, opt, sched, scaler)
    times, cpu = [], []
    with Monitor(run_dir, model=setup.model, optimizer=opt, scheduler=sched, scaler=scaler, profile=profile):
        for _ in range(args.steps):
            start, start_cpu = time.perf_counter(), time.thread_time()
            step(lambda loss: None)
            sync(device)
            times.append(time.perf_counter() - start)
            cpu.append(time.thread_time() - start_cpu)
    return times, cpu


def micro() -> None:
    """Do operators cost more while the profiler waits for its window, or after it was
    stopped? 20,000 small ops, thread CPU time, median of 7 (--micro)."""
    from torch.profiler import ProfilerActivity, profile, schedule

    a = torch.randn(16)

    def bench() -> float:
        runs = []
        for _ in range(7):
            start = time.thread_time()
            for _ in range(20000):
                torch.add(a, a)
            runs.append(time.thread_time() - start)
        return statistics.median(runs)

    before = bench()
    prof = profile(activities=[ProfilerActivity.CPU], schedule=schedule(wait=1, warmup=1, active=2, repeat=1),
                   on_trace_ready=lambda p: None)
    prof.start()
    waiting = bench()
    for _ in range(4):
        for _ in range(100):
            torch.add(a, a)
        prof.step()
    prof.stop()
    after = bench()
    print(f"20,000 ops: before {before * 1e3:.1f} ms, profiler waiting {waiting / before:.3f}x, "
          f"after its window {after / before:.3f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--micro", action="store_true", help="only the idle/after-window operator check")
    parser.add_argument("--model", default="default", help="default (reference CNN), mlp200, gpt2")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--wait", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.micro:
        micro()
        return
    device = torch.device(args.device)
    window = (args.wait, 2, 5)
    warm = range(args.wait, args.wait + 2)
    active = range(args.wait + 2, args.wait + 7)
    export = args.wait + 7  # the trace is collected at the step boundary that opens this step
    outside = [i for i in range(3, args.steps) if i < args.wait or i > export]
    clocks = ("wall", "cpu")
    ratios = {(c, k): [] for c in clocks for k in ("outside", "warmup", "active", "export_s", "run_extra_s")}
    sizes, parse_s = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            order = [True, False] if r % 2 == 0 else [False, True]
            result = {}
            for profiled in order:
                run_dir = Path(tmp) / f"r{r}-{profiled}"
                result[profiled] = one_run(args, device, window if profiled else None, run_dir)
            for c, clock in enumerate(clocks):
                on, off = result[True][c], result[False][c]

                def ratio(idx):
                    return statistics.median(on[i] for i in idx) / statistics.median(off[i] for i in idx)

                ratios[clock, "outside"].append(ratio(outside))
                ratios[clock, "warmup"].append(ratio(warm))
                ratios[clock, "active"].append(ratio(active))
                ratios[clock, "export_s"].append(on[export] - statistics.median(off[i] for i in outside))
                ratios[clock, "run_extra_s"].append(sum(on) - sum(off))
            [trace] = trace_files(Path(tmp) / f"r{r}-True" / "rank0" / "profile")
            sizes.append(trace.stat().st_size)
            start = time.perf_counter()
            summary = load_profile(trace.parent)
            parse_s.append(time.perf_counter() - start)
            assert summary.ok, summary.message
    name = torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu"
    print(f"{args.model} batch {args.batch} on {name}, torch {torch.__version__}, {args.steps} steps, "
          f"window wait {args.wait} warmup 2 active 5, {args.rounds} rounds (medians, min-max)")
    for (clock, key), values in ratios.items():
        unit = "x" if not key.endswith("_s") else " s"
        print(f"  {clock:4s} {key:12s} {statistics.median(values):.3f}{unit}  ({min(values):.3f}-{max(values):.3f})")
    print(f"  trace size   {statistics.median(sizes) / 1e3:.0f} KB gzipped")
    print(f"  report parse {statistics.median(parse_s):.2f} s (torch-tb-profiler, first call includes its import)")


if __name__ == "__main__":
    main()
