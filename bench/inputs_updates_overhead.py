"""What the batch finite checks (`nonfinite-inputs`) and the sampled update norms
(`update-ratio`) add to a `Monitor`ed training step.

Two variants of the same loop, both under `Monitor` and fed through `mon.loader` with
batches on the CPU (as a DataLoader delivers them; the step moves them to the device):
- `without`: `Recorder.on_batch` and `UpdateSampler.before` patched to do nothing;
- `with`: as shipped (a check of every batch, a weight copy every `param_every` steps).
Interleaved rounds (both variants once per round, alternating order), per-round mean step
time, median over rounds; then the parts alone: one batch check, and one sampled step's
copy + subtraction + norms (amortised over `param_every`).

    python bench/inputs_updates_overhead.py --model default            # CPU, reference CNN
    python bench/inputs_updates_overhead.py --model mlp200 --clock cpu # CPU, 202 tensors
    python bench/inputs_updates_overhead.py --model gpt2 --batch 8 --seq 1024   # GPU
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from bench.overhead import build, sync  # noqa: E402
from diagnose import Monitor  # noqa: E402
from diagnose.recorder import inputs, updates  # noqa: E402
from diagnose.recorder.recorder import Recorder  # noqa: E402


@contextmanager
def features_off():
    on_batch, before = Recorder.on_batch, updates.UpdateSampler.before
    Recorder.on_batch = lambda self, batch, key=None: None
    updates.UpdateSampler.before = lambda self, params: None
    try:
        yield
    finally:
        Recorder.on_batch, updates.UpdateSampler.before = on_batch, before


CLOCK = time.perf_counter


def run_round(setup, variant: str, steps: int, warmup: int, param_every: int, tmp: Path) -> float:
    model = setup.model
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=setup.device.type == "cuda")
    scaler = torch.amp.GradScaler(setup.device.type) if setup.scaler else None
    x, y = setup.batch()
    host = (x.cpu().pin_memory() if setup.device.type == "cuda" else x.cpu(),
            y.cpu().pin_memory() if setup.device.type == "cuda" else y.cpu())
    ctx = features_off() if variant == "without" else contextmanager(lambda: (yield))()
    with ctx, Monitor(tmp / f"{variant}-{time.monotonic_ns()}", model=model, optimizer=opt, scaler=scaler,
                      param_every=param_every) as mon:
        times = []
        start = None
        for i, (xb, yb) in enumerate(mon.loader(host for _ in range(warmup + steps))):
            if i == warmup:
                sync(setup.device)
                start = CLOCK()
            xb, yb = xb.to(setup.device, non_blocking=True), yb.to(setup.device, non_blocking=True)
            opt.zero_grad(set_to_none=True)
            with torch.autocast(setup.device.type, dtype=setup.amp_dtype or torch.bfloat16,
                                enabled=setup.amp_dtype is not None):
                loss = setup.loss_fn(model(xb), yb)
            if scaler is not None:
                scaler.scale(loss).backward()
                scaler.step(opt)
                scaler.update()
            else:
                loss.backward()
                opt.step()
        sync(setup.device)
        times.append((CLOCK() - start) / steps)
    return times[0]


def parts(setup, param_every: int, repeats: int = 20) -> None:
    x, y = setup.batch()
    batch = (x.cpu(), y.cpu())
    checks = inputs.InputChecks()
    start = time.perf_counter()
    for _ in range(repeats):
        checks.add(batch)
        checks.take()
    check_ms = (time.perf_counter() - start) / repeats * 1e3
    params = [p for p in setup.model.parameters()]
    sampler = updates.UpdateSampler()
    sync(setup.device)
    start = time.perf_counter()
    for _ in range(repeats):
        sampler.before(params)
        moved = sampler.after(params)
        if moved is not None:
            moved[1].cpu()
    sync(setup.device)
    copy_ms = (time.perf_counter() - start) / repeats * 1e3
    nbytes = sum(p.numel() * p.element_size() for p in params)
    print(f"batch check (CPU tensors, {sum(t.numel() for t in batch if t.is_floating_point()):,} floats): "
          f"{check_ms:.3f} ms per batch")
    print(f"update norms on a sampled step ({len(params)} tensors, {nbytes / 2**20:.1f} MiB copied): "
          f"{copy_ms:.3f} ms, {copy_ms / param_every:.3f} ms per step amortised over param_every={param_every}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="default", choices=["default", "mlp200", "gpt2"])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--seq", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--param-every", type=int, default=25)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                        help="cpu: the process's CPU time (on a shared CPU-only host, less noisy than wall)")
    args = parser.parse_args()
    global CLOCK
    CLOCK = time.process_time if args.clock == "cpu" else time.perf_counter
    torch.set_num_threads(args.threads)
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device)
    setup = build(args.model, device, args.batch, args.seq)
    tmp = Path(tempfile.mkdtemp(prefix="diagnose-iu-"))
    results: dict[str, list[float]] = {"without": [], "with": []}
    for r in range(args.rounds):
        order = ("without", "with") if r % 2 == 0 else ("with", "without")
        for variant in order:
            results[variant].append(run_round(setup, variant, args.steps, args.warmup, args.param_every, tmp))
    base = statistics.median(results["without"])
    print(f"{args.model} on {device}, batch {args.batch}, {args.rounds} rounds x {args.steps} steps, "
          f"param_every={args.param_every}, {args.threads} thread(s), {args.clock} clock")
    for variant, values in results.items():
        med = statistics.median(values)
        print(f"  Monitor {variant:7s} batch checks + update norms: median {med * 1e3:.3f} ms/step "
              f"({med / base:.3f}x; rounds {min(values) / base:.3f}-{max(values) / base:.3f})")
    parts(setup, args.param_every)


if __name__ == "__main__":
    main()
