"""Per-step overhead of the zero-code recorder: `python loop.py` (bare) vs
`python -m diagnose.zerocode loop.py` (zerocode), and the same loop under
`Monitor` (monitor: the recorder every mode shares), interleaved repeats, medians.

    python bench/zerocode_overhead.py [--repeats 7] [--steps 300] [--device cpu|cuda]

The loop (written to a temporary folder, plain PyTorch; it imports diagnose only in
the monitor mode) times its own steps after a warm-up and writes the median step time;
process start-up (imports, recorder start and flush) is reported separately as wall time.
It also reports the process CPU time per timed step (all threads, the recorder's writer
thread included), which other load on the machine barely disturbs.
Workloads: a tiny MLP (the worst case: its steps are so short that any per-call Python
cost shows) and a small transformer LM (4 layers, d=128, 8x64 tokens).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

LOOP = '''
import json, sys, time
import torch, torch.nn as nn, torch.nn.functional as F
torch.manual_seed(0)
torch.set_num_threads(1)
workload, steps, device, out, mode = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
if workload == "mlp":
    model = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(),
                          nn.Linear(64, 10)).to(device)
    make = lambda: (torch.randn(64, 32, device=device), torch.randint(0, 10, (64,), device=device))
else:
    layer = nn.TransformerEncoderLayer(128, 4, 256, dropout=0.1, batch_first=True)
    body = nn.TransformerEncoder(layer, 4, enable_nested_tensor=False)
    model = nn.Sequential(nn.Embedding(256, 128), body, nn.LayerNorm(128),
                          nn.Linear(128, 256)).to(device)
    make = lambda: (torch.randint(0, 256, (8, 64), device=device),
                    torch.randint(0, 256, (8 * 64,), device=device))
opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps + 50)
monitor = None
if mode == "monitor":
    from diagnose import Monitor
    monitor = Monitor(out + ".run", model=model, optimizer=opt, scheduler=sched)
times = []
cpu_start = None
for i in range(steps + 50):
    if i == 50:
        cpu_start = time.process_time()
    x, y = make()
    if device == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    opt.zero_grad(set_to_none=True)
    logits = model(x)
    loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    sched.step()
    if device == "cuda":
        torch.cuda.synchronize()
    times.append(time.perf_counter() - t)
cpu_per_step = (time.process_time() - cpu_start) / steps  # all threads: the writer's too
if monitor is not None:
    monitor.close()
times = sorted(times[50:])
json.dump({"median_step_s": times[len(times) // 2], "cpu_step_s": cpu_per_step}, open(out, "w"))
'''


MODES = ("bare", "monitor", "zerocode")


def _once(loop: Path, workload: str, steps: int, device: str, mode: str,
          tmp: Path, i: int) -> tuple[float, float, float]:
    out = tmp / f"{workload}-{mode}-{i}.json"
    cmd = [sys.executable]
    if mode == "zerocode":
        cmd += ["-m", "diagnose.zerocode", "--out", str(tmp / f"run-{workload}-{i}")]
    cmd += [str(loop), workload, str(steps), device, str(out), mode]
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    start = time.perf_counter()
    subprocess.run(cmd, check=True, env=env, cwd=tmp, capture_output=True)
    wall = time.perf_counter() - start
    result = json.loads(out.read_text())
    return result["median_step_s"], wall, result["cpu_step_s"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--workloads", default="mlp,transformer")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        loop = tmp / "loop.py"
        loop.write_text(textwrap.dedent(LOOP))
        results = {}
        for workload in args.workloads.split(","):
            step: dict[str, list] = {m: [] for m in MODES}
            wall: dict[str, list] = {m: [] for m in MODES}
            cpu: dict[str, list] = {m: [] for m in MODES}
            for i in range(args.repeats):  # interleaved: bare, monitor, zerocode, bare, ...
                for mode in MODES:
                    s, w, c = _once(loop, workload, args.steps, args.device, mode, tmp, i)
                    step[mode].append(s)
                    wall[mode].append(w)
                    cpu[mode].append(c)
            med = {m: statistics.median(step[m]) for m in MODES}
            cpu_med = {m: statistics.median(cpu[m]) for m in MODES}
            result = {"bare_step_ms": round(med["bare"] * 1e3, 4),
                      "bare_cpu_ms_per_step": round(cpu_med["bare"] * 1e3, 4)}
            for mode in ("monitor", "zerocode"):
                pairs = [r / b for b, r in zip(step["bare"], step[mode])]
                result[mode] = {
                    "step_ms": round(med[mode] * 1e3, 4),
                    "ratio": round(med[mode] / med["bare"], 4),
                    "median_pair_ratio": round(statistics.median(pairs), 4),
                    "overhead_us_per_step": round((med[mode] - med["bare"]) * 1e6, 1),
                    "cpu_ms_per_step": round(cpu_med[mode] * 1e3, 4),
                    "cpu_ratio": round(cpu_med[mode] / cpu_med["bare"], 4)}
            result["wall_s"] = {m: round(statistics.median(wall[m]), 2) for m in MODES}
            results[workload] = result
            print(workload, json.dumps(result), flush=True)
        print(json.dumps({"device": args.device, "repeats": args.repeats,
                          "steps": args.steps, "results": results}))


if __name__ == "__main__":
    main()
