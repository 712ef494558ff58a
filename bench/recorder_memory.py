"""The recorder's memory cost: host RSS (and CUDA memory where present), bare vs Monitor.

For models with about 10, 100 and 1000 parameter tensors (an MLP of n/2 Linear layers,
width 32), each variant runs in its own fresh process: `--steps` training steps with
clipping, AdamW and OneCycleLR. Reported per variant: the peak RSS, the RSS growth from
step 50 to the end (a recorder that kept records in memory would grow here), and on CUDA
the peak allocated device memory; plus the run directory's bytes per step. The RSS is
taken at step 50, half-way (after the first Arrow chunk of 256 rows made the writer import
pyarrow: a one-time ~70 MB) and at the end, so a one-time cost and a growth tell apart.

    python bench/recorder_memory.py                   # CPU, 10/100/1000 tensors
    python bench/recorder_memory.py --device cuda
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = r"""
import json, os, resource, sys, torch
from pathlib import Path
torch.set_num_threads(1)
torch.manual_seed(0)
tensors, steps, variant, device, run_dir = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
sys.path.insert(0, os.getcwd())
from diagnose.recorder.system import rss_bytes
layers = [torch.nn.Linear(32, 32) for _ in range(max(1, tensors // 2))]
model = torch.nn.Sequential(*layers).to(device)
opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1e-4, total_steps=steps + 1)
x = torch.randn(64, 32, device=device)
monitor = None
if variant == "diagnose":
    from diagnose import Monitor
    monitor = Monitor(run_dir, model=model, optimizer=opt, scheduler=sched)
rss_50 = None
import time
start = time.perf_counter()
for step in range(steps):
    opt.zero_grad(set_to_none=True)
    loss = model(x).pow(2).mean()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    sched.step()
    if step == 50:
        rss_50 = rss_bytes()
    if step == steps // 2:  # after the first Arrow chunk (256 rows) loaded pyarrow
        rss_half = rss_bytes()
if device == "cuda":
    torch.cuda.synchronize()
loop_s = time.perf_counter() - start
rss_end = rss_bytes()
if monitor is not None:
    monitor.close()
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
cuda_peak = torch.cuda.max_memory_allocated() if device == "cuda" else None
print(json.dumps({"peak_rss": peak, "rss_50": rss_50, "rss_half": rss_half, "rss_end": rss_end, "cuda_peak": cuda_peak,
                  "params": sum(1 for _ in model.parameters()), "loop_s": loop_s}))
"""


def run(tensors: int, steps: int, variant: str, device: str, run_dir: Path) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, str(tensors), str(steps), variant, device,
                          str(run_dir)], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[1])
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tensors", default="10,100,1000")
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    mb = 1 / 2**20
    print(f"{args.steps} steps, device {args.device}, {os.cpu_count()} CPUs")
    print("| tensors | variant | peak RSS MB | RSS step 50 → half, MB | RSS half → end, MB "
          "| CUDA peak MB | run dir bytes/step | ms/step |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for tensors in (int(t) for t in args.tensors.split(",")):
        for variant in ("bare", "diagnose"):
            with tempfile.TemporaryDirectory() as tmp:
                run_dir = Path(tmp) / "run"
                r = run(tensors, args.steps, variant, args.device, run_dir)
                size = sum(f.stat().st_size for f in run_dir.rglob("*") if f.is_file()) \
                    if run_dir.exists() else 0
            cuda = f"{r['cuda_peak'] * mb:.1f}" if r["cuda_peak"] is not None else ""
            per_step = f"{size / args.steps:,.0f}" if size else ""
            print(f"| {r['params']} | {variant} | {r['peak_rss'] * mb:.1f} | "
                  f"{(r['rss_half'] - r['rss_50']) * mb:+.1f} | {(r['rss_end'] - r['rss_half']) * mb:+.1f} | "
                  f"{cuda} | {per_step} | {r['loop_s'] / args.steps * 1e3:.2f} |", flush=True)


if __name__ == "__main__":
    main()
