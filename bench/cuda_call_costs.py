"""Host time of the CUDA calls the recorder makes per step, measured inside a real loop.

Runs the GPT-2-small-like step of bench/overhead.py at batch 2 x 256 (fp16 + GradScaler,
fused AdamW) and, after each step, times single calls with the clock: the stream lookup,
`cat` of the step's parts, the pinned non-blocking copy, an event record and query, the
allocator counters, a scale clone, and a fused `torch._foreach_copy_` of the same parts
into a staging buffer (the alternative to `cat` that was tried and reverted). The calls
run right after a training step, with the caches it left, as the recorder's do. Prints
the median over 50 steps. Needs CUDA.

    python3 bench/cuda_call_costs.py
"""
from __future__ import annotations

import resource
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import overhead  # noqa: E402 - the benchmark's model and step


def main() -> None:
    if not torch.cuda.is_available():
        raise SystemExit("needs a CUDA device")
    dev = torch.device("cuda")
    setup = overhead.build("gpt2", dev, 2, 256)
    opt = torch.optim.AdamW(setup.model.parameters(), lr=1e-4, fused=True)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1e-4, total_steps=10_000)
    scaler = torch.amp.GradScaler("cuda")
    step = overhead.step_fn(setup, opt, sched, scaler)
    losses: list[torch.Tensor] = []
    params = list(setup.model.parameters())
    norms = torch.stack(torch._foreach_norm(params, 2))
    staging = torch.empty(3 + norms.numel(), device=dev)
    views = [staging[0:1].view(()), staging[1:2].view(()), staging[2:3].view(()),
             staging[3:].view([norms.numel()])]
    host = torch.empty(staging.numel(), pin_memory=True)
    event = torch.cuda.Event()
    stream = torch.cuda.current_stream(dev)
    times: dict[str, list[int]] = {}

    def timed(name, fn):
        start = time.perf_counter_ns()
        fn()
        times.setdefault(name, []).append(time.perf_counter_ns() - start)

    for i in range(60):
        step(losses.append)
        loss, scale = losses.pop().detach(), scaler._scale
        timed("torch.cuda.current_stream(device)", lambda: torch.cuda.current_stream(dev))
        timed("torch._C._cuda_getCurrentStream", lambda: torch._C._cuda_getCurrentStream(0))
        timed("a view (host[:n])", lambda: host[: staging.numel()])
        timed("loss.reshape(1)", lambda: loss.reshape(1))
        timed("cat of 4 parts", lambda: torch.cat([loss.reshape(1), scale.reshape(1), loss.reshape(1), norms]))
        timed("_foreach_copy_ of 4 parts", lambda: torch._foreach_copy_(views, [loss, scale, loss, norms]))
        timed("pinned non-blocking copy", lambda: host.copy_(staging, non_blocking=True))
        timed("Event() + record()", lambda: torch.cuda.Event().record())
        timed("event.record(stream)", lambda: event.record(stream))
        timed("event.query()", event.query)
        timed("_cuda_memoryStats", lambda: torch._C._cuda_memoryStats(0))
        timed("scale.clone()", scale.clone)
        timed("getrusage", lambda: resource.getrusage(resource.RUSAGE_SELF))
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}: host us per call, "
          "median of 50 steps")
    for name, values in times.items():
        print(f"  {name:36s} {statistics.median(values[10:]) / 1000:7.1f}")


if __name__ == "__main__":
    main()
