"""Bytes per step of a run directory, by number of parameter tensors.

Trains an MLP with N parameter tensors (N/2 Linear layers) for STEPS steps under the
Monitor (every-step per-parameter gradient norms, fp16 + GradScaler on CPU, clipping,
OneCycleLR) and reports each file's size per step. Results: docs/benchmarks.md.

    python bench/rundir_size.py [--steps 1000] [--tensors 10 100 200 1000]
"""
from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

import torch

from diagnose import Monitor


def measure(n_tensors: int, steps: int) -> dict[str, float]:
    torch.manual_seed(0)
    layers = []
    for _ in range(n_tensors // 2):
        layers += [torch.nn.Linear(16, 16), torch.nn.ReLU()]
    model = torch.nn.Sequential(*layers)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1e-4, total_steps=steps)
    scaler = torch.amp.GradScaler("cpu")
    x = torch.randn(8, 16)
    run_dir = Path(tempfile.mkdtemp()) / "run"
    with Monitor(run_dir, model=model, optimizer=opt, scheduler=sched, scaler=scaler):
        for _ in range(steps):
            opt.zero_grad()
            with torch.autocast("cpu", dtype=torch.float16):
                loss = model(x).pow(2).mean()
            scaler.scale(loss).backward()
            scaler.unscale_(opt)
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            scaler.step(opt)
            scaler.update()
            sched.step()
    sizes = {f.name: f.stat().st_size / steps for f in (run_dir / "rank0").iterdir()}
    shutil.rmtree(run_dir.parent)
    sizes["total"] = sum(sizes.values())
    return sizes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--tensors", type=int, nargs="+", default=[10, 100, 200, 1000])
    args = parser.parse_args()
    files = ["steps.jsonl", "events.jsonl", "grad_norms.arrow", "param_norms.arrow",
             "params.jsonl", "meta.jsonl", "total"]
    print("| tensors | " + " | ".join(files) + " |")
    print("|" + " --- |" * (len(files) + 1))
    for n in args.tensors:
        sizes = measure(n, args.steps)
        print(f"| {n} | " + " | ".join(f"{sizes.get(f, 0):.0f}" for f in files) + " |")


if __name__ == "__main__":
    main()
