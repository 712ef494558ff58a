"""Crash safety: kill `diagnose run` at random points and check what the run directory keeps.

Each trial starts `diagnose run` as a subprocess, on the reference loop (a tiny config: ~1 ms
steps) or, in the zero-code mode, on the plain script bench/crash_script.py (`--mode`), waits
for a point in the run to show on disk (`POINTS`: the first step flushed, or the first or
third epoch's checkpoint written), sleeps a random time (fixed seed), sends a signal and
checks the directory with `read_run`:

- SIGKILL: the reader reads it, reports status `crashed` (the pid is gone), steps.jsonl
  holds steps 0..k with no gap and no repeat, the grad-norm series holds steps 0..m with no gap, and the records lost are those of the last flush interval:
  `lost_s` = kill time - wall time of the last recorded step, `lost_records` = `lost_s`
  divided by the median step time.
- SIGTERM, SIGINT: status `interrupted` (meta.jsonl's last status line), the status line's
  `steps` equals the step records on disk, or one fewer (the step the signal cut short
  has its record too: a clean flush), steps 0..k with no gap; the reference loop also
  leaves checkpoints/interrupted.pt (reference_loop/stop.py), loadable with
  weights_only=True, holding exactly the status line's `steps`.

    python bench/crash_trials.py --trials 60        # prints the figures, exit 1 on a failure

tests/reliability/test_crash.py runs a few trials of the same code.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TINY_CONFIG = """\
train_samples = 256
val_samples = 64
batch_size = 8
width = 4
epochs = 1000
num_threads = 1
"""
FLUSH_INTERVAL_S = 1.0
POINTS = {  # what must exist in the run directory before the (random) wait and the signal
    "first-step": "rank0/steps.jsonl",
    "first-checkpoint": "checkpoints/epoch000.pt",
    "third-checkpoint": "checkpoints/epoch002.pt",
}


@dataclass
class Trial:
    seed: int
    sig: str
    delay_s: float
    point: str = "first-step"
    steps: int = 0
    lost_s: float | None = 0.0
    """Kill time minus the wall time of the last step on disk; None with no step on disk."""
    lost_records: int = 0
    failure: str | None = None


def start_run(out: Path, config: Path, mode: str = "reference") -> subprocess.Popen:
    """`diagnose run` of the reference loop (`mode="reference"`) or, in the zero-code mode,
    of the plain script bench/crash_script.py (`mode="script"`, checkpoints in
    OUT/checkpoints like the reference loop's)."""
    # SIGINT as in a terminal even when this script was started in the background: a
    # non-interactive shell's `cmd &` ignores SIGINT, the child inherits that, and Python
    # then installs no KeyboardInterrupt handler (every SIGINT trial would read as "lost").
    launcher = ("import runpy, signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
                "sys.argv[0] = 'diagnose'; runpy.run_module('diagnose.cli', run_name='__main__')")
    cmd = [sys.executable, "-c", launcher, "run", "--out", str(out), "--no-report"]
    if mode == "script":
        cmd += [str(ROOT / "bench" / "crash_script.py"), "--", "--ckpt", str(out / "checkpoints")]
    else:
        cmd += ["--config", str(config), "--steps", "1000000"]
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    with open(_stderr_file(out), "wb") as stderr:  # kept: "Exception ignored in ..." tells where
        return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=stderr)


def _stderr_file(out: Path) -> Path:
    return out.parent / f"{out.name}.stderr"


def _wait_for(proc: subprocess.Popen, path: Path, limit_s: float = 120.0) -> bool:
    """Until `path` exists and is not empty (that point of the run is on disk)."""
    end = time.monotonic() + limit_s
    while time.monotonic() < end and proc.poll() is None:
        if path.is_file() and path.stat().st_size > 0:
            return True
        time.sleep(0.02)
    return False


def run_trial(workdir: Path, seed: int, sig: signal.Signals, max_delay_s: float = 2.0,
              point: str = "first-step", mode: str = "reference") -> Trial:
    """One trial; `Trial.failure` says what broke (None: all checks held)."""
    from diagnose.rundir.reader import RunDirError, read_run

    rng = random.Random(seed)
    trial = Trial(seed=seed, sig=sig.name, delay_s=round(rng.uniform(0.0, max_delay_s), 3), point=point)
    out = workdir / f"trial{seed}-{sig.name}-{point}" if mode == "reference" else \
        workdir / f"trial{seed}-{sig.name}-{point}-{mode}"
    config = workdir / "tiny.toml"
    config.write_text(TINY_CONFIG)
    proc = start_run(out, config, mode)
    try:
        if not _wait_for(proc, out / POINTS[point]):
            trial.failure = f"run did not reach {point} (exit {proc.poll()})"
            return trial
        time.sleep(trial.delay_s)
        sent_at = time.time()
        proc.send_signal(sig)
        try:
            proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            ignored = [line for line in _stderr_file(out).read_text(errors="replace").splitlines()
                       if "Exception ignored" in line]
            trial.failure = f"still running 120 s after {sig.name} (the signal was lost) {ignored[:1]}"
            return trial
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    try:
        run = read_run(out)
    except RunDirError as exc:
        trial.failure = f"read_run refused it: {exc}"
        return trial
    tables = run.ranks[0]
    steps = list(tables.steps.index)
    trial.steps = len(steps)
    if steps != list(range(len(steps))):
        trial.failure = f"steps.jsonl is not 0..k without gaps: {_gaps(steps)}"
        return trial
    grads = list(tables.grad_norms.index)
    if grads != list(range(len(grads))):  # each file keeps its own prefix: an Arrow chunk
        # (256 rows) can reach the disk before steps.jsonl's last flush interval does
        trial.failure = f"grad_norms.arrow is not steps 0..m without gaps ({len(grads)} rows)"
        return trial
    status = tables.meta.get("status")
    if sig == signal.SIGKILL:
        if status != "crashed":
            trial.failure = f"status {status!r}, expected 'crashed'"
            return trial
        if not steps:  # killed before steps.jsonl's first flush: the time since the start
            trial.lost_s = None  # counts the start-up too, not a measure of what was lost
            return trial
        started = tables.meta.get("started_at", sent_at)
        last = started + float(tables.steps["t_s"].iloc[-1])
        trial.lost_s = round(max(sent_at - last, 0.0), 3)
        step_s = float(tables.steps["step_time_s"].median())
        trial.lost_records = int(trial.lost_s / step_s) if step_s > 0 else 0
        return trial
    last_status = _last_status(out / "rank0" / "meta.jsonl")
    if last_status.get("status") != "interrupted":
        trial.failure = f"meta.jsonl's last status line is {last_status!r}, expected 'interrupted'"
    elif isinstance(last_status.get("steps"), int) and len(steps) not in (last_status["steps"], last_status["steps"] + 1):
        # a clean flush: every finished step is on disk (+1: the step the signal cut short)
        trial.failure = f"status says {last_status.get('steps')} steps, steps.jsonl holds {len(steps)}"
    elif mode == "reference":
        trial.failure = _check_interrupted_checkpoint(out / "checkpoints" / "interrupted.pt", last_status)
    return trial


def _check_interrupted_checkpoint(path: Path, last_status: dict) -> str | None:
    """The reference loop stops at a step boundary and leaves checkpoints/interrupted.pt,
    loadable with weights_only=True, of exactly the steps the run made."""
    from reference_loop import checkpoint

    if not path.is_file():
        return f"no {path.name} after the signal"
    try:
        state = checkpoint.load(path)
    except Exception as exc:  # noqa: BLE001 - any failure to load is the finding
        return f"{path.name} does not load: {type(exc).__name__}: {exc}"
    if state.get("step") != last_status.get("steps"):
        return f"{path.name} holds step {state.get('step')}, the run made {last_status.get('steps')}"
    return None


def _last_status(meta: Path) -> dict:
    last: dict = {}
    for line in meta.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and record.get("type") == "status":
            last = record
    return last


def _gaps(steps: list[int]) -> str:
    wrong = [(a, b) for a, b in zip(steps, steps[1:]) if b != a + 1]
    return f"first {steps[:1]}, breaks {wrong[:5]}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=60,
                        help="SIGKILL trials (plus 1 SIGTERM and 1 SIGINT per 10), spread over the POINTS")
    parser.add_argument("--interrupts", type=int, default=None,
                        help="SIGTERM and SIGINT trials, each (default: one per 10 SIGKILL trials).")
    parser.add_argument("--max-delay", type=float, default=3.0, help="Longest random wait before the signal, s.")
    parser.add_argument("--jobs", type=int, default=1, help="Trials run side by side.")
    parser.add_argument("--mode", choices=("reference", "script", "both"), default="both",
                        help="The reference loop, the zero-code mode on bench/crash_script.py, or alternating.")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/diagnose-crash-trials"))
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    points = list(POINTS)
    plan = [(seed, signal.SIGKILL, points[seed % len(points)]) for seed in range(args.trials)]
    interrupts = args.interrupts if args.interrupts is not None else max(args.trials // 10, 1)
    plan += [(1000 + i, s, points[i % len(points)]) for i in range(interrupts)
             for s in (signal.SIGTERM, signal.SIGINT)]
    trials = []

    def mode_of(seed: int) -> str:
        return args.mode if args.mode != "both" else ("reference", "script")[seed % 2]

    def one(entry: tuple) -> Trial:
        return run_trial(args.workdir, entry[0], entry[1], args.max_delay, entry[2], mode_of(entry[0]))

    with ThreadPoolExecutor(args.jobs) as pool:
        done = list(pool.map(one, plan))
    for (seed, sig, point), trial in zip(plan, done):
        trials.append(trial)
        print(f"{trial.sig:8s} seed {seed:4d} {mode_of(seed):9s} {point:16s} delay {trial.delay_s:5.2f}s steps {trial.steps:6d} "
              f"lost {'  n/a' if trial.lost_s is None else f'{trial.lost_s:5.3f}'}s ~{trial.lost_records} records  "
              f"{trial.failure or 'ok'}", flush=True)
    kills = [t for t in trials if t.sig == "SIGKILL" and t.failure is None and t.lost_s is not None]
    failures = [t for t in trials if t.failure]
    print(f"\ntrials: {len(trials)} ({sum(t.sig == 'SIGKILL' for t in trials)} SIGKILL, "
          f"{sum(t.sig != 'SIGKILL' for t in trials)} SIGTERM/SIGINT)")
    if kills:
        print(f"SIGKILL with steps on disk: {len(kills)}, max lost {max(t.lost_s for t in kills):.3f} s "
              f"(flush interval {FLUSH_INTERVAL_S} s), "
              f"max ~{max(t.lost_records for t in kills)} records, "
              f"over the interval: {sum(t.lost_s > FLUSH_INTERVAL_S + 0.25 for t in kills)}")
    print(f"failures: {len(failures)}")
    for t in failures:
        print(f"  {t.sig} seed {t.seed}: {t.failure}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
