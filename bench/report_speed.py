"""Speed and peak memory of `diagnose report` on big synthetic run directories.

Writes a run directory of STEPS steps x 200 parameter tensors in the real format
(`diagnose.rundir.synthetic`, fp16 GradScaler fields, every-step per-parameter norms),
then times `diagnose report --format json` (and `--html`) as a whole process with
/usr/bin/time-style peak RSS from `resource`. Results go to docs/benchmarks.md.

    python bench/report_speed.py --steps 10000 100000 1000000 [--html]
"""
from __future__ import annotations

import argparse
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from diagnose.rundir.synthetic import write_synthetic_run


def timed(cmd: list[str]) -> tuple[float, float]:
    """Wall seconds and peak RSS (MB) of a child process."""
    start = time.perf_counter()
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    proc = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wall = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    if proc.returncode not in (0, 1):
        raise SystemExit(f"{' '.join(cmd)} failed: {proc.stderr.strip()[-500:]}")
    return wall, max(peak, before) / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--params", type=int, default=200)
    parser.add_argument("--html", action="store_true", help="also time --html")
    args = parser.parse_args()
    print("| steps | params | run dir MB | write s | report --format json s | peak MB |"
          + (" html s | html peak MB | html MB |" if args.html else ""))
    print("| --- | --- | --- | --- | --- | --- |" + (" --- | --- | --- |" if args.html else ""))
    for steps in args.steps:
        tmp = Path(tempfile.mkdtemp(prefix="diagnose-speed-"))
        run_dir = tmp / "run"
        t0 = time.perf_counter()
        write_synthetic_run(run_dir, steps=steps, params=args.params, amp=True,
                            param_every=25, chunk_rows=256)
        write_s = time.perf_counter() - t0
        size_mb = sum(f.stat().st_size for f in run_dir.rglob("*") if f.is_file()) / 1e6
        json_s, json_mb = timed([sys.executable, "-m", "diagnose.cli", "report", str(run_dir),
                                 "--format", "json", "--fail-on", "error"])
        row = f"| {steps:,} | {args.params} | {size_mb:.0f} | {write_s:.1f} | {json_s:.2f} | {json_mb:.0f} |"
        if args.html:
            html = tmp / "r.html"
            html_s, html_mb = timed([sys.executable, "-m", "diagnose.cli", "report", str(run_dir),
                                     "--format", "json", f"--html={html}"])
            row += f" {html_s:.2f} | {html_mb:.0f} | {html.stat().st_size / 1e6:.1f} |"
        print(row, flush=True)
        shutil.rmtree(tmp)


if __name__ == "__main__":
    main()
