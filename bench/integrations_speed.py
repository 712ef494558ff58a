"""Speed of the TensorBoard bridges: `diagnose export --tensorboard` and `diagnose report LOGDIR`.

For each size, writes a synthetic run directory (STEPS steps x PARAMS parameter tensors,
fp16 GradScaler fields, every-step per-parameter norms), exports it to TensorBoard event
files (`diagnose export`, through SummaryWriter), and reports on the event files
(`diagnose report LOGDIR --format json`, through tensorboard's EventAccumulator), each as
a whole process; then reports on the same scalars written the way a training loop writes
them, one `add_scalar` (one event) per value (`report1`). Prints scalars, seconds, and
scalars per second. Results go to docs/integrations.md.

    python bench/integrations_speed.py --steps 1000 10000 --params 20
"""
from __future__ import annotations

import argparse
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from diagnose.rundir.synthetic import write_synthetic_run


def _timed(cmd: list[str]) -> tuple[float, str]:
    start = time.perf_counter()
    proc = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if proc.returncode not in (0, 1):
        raise SystemExit(f"{' '.join(cmd)} failed: {proc.stderr.strip()}")
    return time.perf_counter() - start, proc.stderr


def _write_per_value(run: Path, out: Path) -> None:
    """The same scalars as a user's loop writes them: one `add_scalar` (one event) per value."""
    from torch.utils.tensorboard import SummaryWriter

    from diagnose.integrations.export import scalar_series
    from diagnose.rundir.reader import read_run

    writer = SummaryWriter(str(out), max_queue=1000)
    for tag, values in scalar_series(read_run(run).first).items():
        for step, value in zip(values.index, values.to_numpy(dtype="float64")):
            writer.add_scalar(tag, float(value), int(step))
    writer.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--params", type=int, default=20)
    args = parser.parse_args()
    print(f"{'steps':>8} {'params':>6} {'scalars':>10} {'export s':>9} {'report s':>9} {'report1 s':>12} "
          f"{'export/s':>10} {'report/s':>10} {'report1/s':>12}")
    for steps in args.steps:
        root = Path(tempfile.mkdtemp(prefix="diagnose-tb-bench-"))
        try:
            run = write_synthetic_run(root / "run", steps=steps, params=args.params, amp=True)
            export_s, err = _timed(["diagnose", "export", str(run), "--tensorboard", str(root / "tb")])
            scalars = int(err.split("wrote ")[1].split(" scalars")[0].replace(",", ""))
            report_s, _ = _timed(["diagnose", "report", str(root / "tb"), "--format", "json"])
            _write_per_value(run, root / "tb_per_value")
            per_value_s, _ = _timed(["diagnose", "report", str(root / "tb_per_value"), "--format", "json"])
            print(f"{steps:>8} {args.params:>6} {scalars:>10,} {export_s:>9.2f} {report_s:>9.2f} "
                  f"{per_value_s:>12.2f} {scalars / export_s:>10,.0f} {scalars / report_s:>10,.0f} "
                  f"{scalars / per_value_s:>12,.0f}")
        finally:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
