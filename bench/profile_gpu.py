"""Capture real CUDA profiler traces through diagnose and trim them into test data.

Two cases, each a GPT-2-like model (bench/overhead.py's, 4 layers) trained through
`Monitor(..., profile=(5, 2, 3))`, so the trace is exactly what `diagnose run --profile`
writes:

- gpu_busy: batch 16 x 256 tokens, data already on the GPU, fp16 + GradScaler, fused
  AdamW: the GPU should be busy (low-gpu-utilization silent);
- gpu_starved: batch 2 x 256, batches from an in-process DataLoader whose collate sleeps
  30 ms: the GPU should idle (low-gpu-utilization fires, naming data loading).

Each trace is trimmed (instant events and flow arrows dropped: nothing in
torch-tb-profiler's breakdown reads them) and written gzipped to
`OUT/<case>/rank0.<ns>.pt.trace.json.gz`, the layout `load_profile` reads; then it is
parsed, and what the report will say is printed (utilization, breakdown, what had to
be adapted), so one run of this script also checks the GPU path.

    python3 bench/profile_gpu.py --out tests/data/profile      # on a CUDA machine

The traces in tests/data/profile/ came from this script on an H200 (torch 2.13, trimmed
to 250 and 230 KB): gpu_busy 60% GPU utilization (kernels 60%, CPU exec 23% of a 24.7 ms
step), gpu_starved 6% (data loading 52% of a 58.4 ms step).
    python3 -m pytest -q -p no:xdist tests/profiling/test_gpu_trace.py
"""
from __future__ import annotations

import argparse
import gzip
import json
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from overhead import GPT  # noqa: E402

from diagnose import Monitor  # noqa: E402
from diagnose.profiling.load import load_profile  # noqa: E402
from diagnose.rules.resources import low_gpu_utilization  # noqa: E402
from diagnose.rundir.tables import RunTables  # noqa: E402

WINDOW = (5, 2, 3)
DROPPED = {"cpu_instant_event", "ac2g", "python_function"}


def _batches(case: str, device: torch.device, steps: int, seq: int):
    vocab = 50304
    if case == "gpu_busy":
        x = torch.randint(0, vocab, (16, seq), device=device)
        y = torch.randint(0, vocab, (16, seq), device=device)
        for _ in range(steps):
            yield x, y
        return
    data = torch.utils.data.TensorDataset(torch.randint(0, vocab, (2 * steps, seq)),
                                          torch.randint(0, vocab, (2 * steps, seq)))

    def slow_collate(items):
        time.sleep(0.03)
        return torch.utils.data.default_collate(items)

    for x, y in torch.utils.data.DataLoader(data, batch_size=2, collate_fn=slow_collate):
        yield x.to(device, non_blocking=True), y.to(device, non_blocking=True)


def capture(case: str, run_dir: Path, layers: int, seq: int) -> Path:
    device = torch.device("cuda")
    torch.manual_seed(0)
    model = GPT(layers=layers, seq=seq).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    scaler = torch.amp.GradScaler("cuda")
    steps = sum(WINDOW) + 2
    with Monitor(run_dir, model=model, optimizer=opt, scaler=scaler, profile=WINDOW) as mon:
        batches = _batches(case, device, steps, seq)
        for x, y in (mon.loader(batches) if case == "gpu_starved" else batches):
            opt.zero_grad(set_to_none=True)
            with torch.autocast("cuda", dtype=torch.float16):
                out = model(x)
                loss = F.cross_entropy(out.view(-1, out.shape[-1]), y.view(-1))
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
    torch.cuda.synchronize()
    [trace] = sorted((run_dir / "rank0" / "profile").glob("*.pt.trace.json*"))
    return trace


def trim(trace: Path, out_dir: Path) -> Path:
    with gzip.open(trace, "rt", encoding="utf-8") as f:
        data = json.load(f)
    before = len(data["traceEvents"])
    data["traceEvents"] = [e for e in data["traceEvents"] if e.get("cat") not in DROPPED]
    out_dir.mkdir(parents=True, exist_ok=True)
    for old in out_dir.glob("*.pt.trace.json*"):
        old.unlink()
    target = out_dir / trace.name
    with gzip.open(target, "wt", encoding="utf-8", compresslevel=9) as f:
        json.dump(data, f, separators=(",", ":"))
    print(f"  {before} events -> {len(data['traceEvents'])}; {trace.stat().st_size / 1e3:.0f} KB -> "
          f"{target.stat().st_size / 1e3:.0f} KB: {target}")
    return target


def show(out_dir: Path) -> None:
    profile = load_profile(out_dir)
    print(f"  status {profile.status} {profile.message}; steps {[s.step for s in profile.steps]}")
    print(f"  mean step {profile.mean_ms.get('total', 0):.2f} ms; shares "
          + ", ".join(f"{p} {profile.mean_share(p):.1%}" for p in profile.mean_ms if p != "total"))
    for gpu in profile.gpus:
        print(f"  GPU {gpu.device} {gpu.name}: utilization {gpu.utilization:.1%}, SM eff {gpu.sm_efficiency}, "
              f"occupancy {gpu.occupancy}")
    print(f"  adapted: {profile.adapted}")
    print(f"  top kernels: {[(k.name[:50], round(k.total_ms, 2)) for k in profile.top_kernels[:3]]}")
    print(f"  top ops: {[(o.name, o.device_self_ms) for o in profile.top_operators[:3]]}")
    print(f"  recommendations: {profile.recommendations}")
    if profile.ok:
        findings = low_gpu_utilization.check(RunTables(profile=profile))
        print(f"  low-gpu-utilization: {[(f.severity.label, f.title) for f in findings] or 'silent'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("tests/data/profile"))
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--seq", type=int, default=256)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("needs a CUDA device")
    print(f"torch {torch.__version__}, {torch.cuda.get_device_name(0)}")
    with tempfile.TemporaryDirectory() as tmp:
        for case in ("gpu_busy", "gpu_starved"):
            print(case)
            trace = capture(case, Path(tmp) / case, args.layers, args.seq)
            show(trim(trace, args.out / case).parent)


if __name__ == "__main__":
    main()
