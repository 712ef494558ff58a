"""What watching loss functions and RNN forwards costs (diagnose/recorder/contracts.py).

Three numbers, each the median of `--rounds` interleaved rounds:
- the wrapper on a step that is *not* sampled: a loss call through the wrapped
  `F.cross_entropy` and an `nn.LSTM` forward through the wrapped class method, against the
  originals with no recorder active (time per call, in microseconds);
- a sampled call: the same calls on a sampled step (shapes, the prediction's min/max/row-sum
  error queued on the device, the copy and the event line);
- the amortised cost per optimizer step of a loop with one loss call and one RNN forward
  a step: the sampled steps are the first 5 and every 100th.

On CPU the clock is the thread's CPU time (torch runs on one thread), which other
processes on a shared machine do not inflate; on CUDA, wall time after a synchronize.

    python bench/contracts_overhead.py                     # CPU
    python bench/contracts_overhead.py --device cuda       # GPU (the lead runs it)
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from diagnose.recorder import contracts
from diagnose.recorder.recorder import Recorder


def _time(fn, calls: int, sync, clock) -> float:
    sync()
    start = clock()
    for _ in range(calls):
        fn()
    sync()
    return (clock() - start) / calls * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--rows", type=int, default=4096, help="rows of the cross-entropy input (batch x seq)")
    parser.add_argument("--classes", type=int, default=512)
    parser.add_argument("--calls", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    torch.set_num_threads(1)
    device = torch.device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    # CPU: this thread's CPU time (torch on one thread), so other processes on a shared
    # machine do not count; CUDA: wall time after a synchronize.
    clock = time.perf_counter if device.type == "cuda" else time.thread_time
    logits = torch.randn(args.rows, args.classes, device=device, requires_grad=True)
    target = torch.randint(0, args.classes, (args.rows,), device=device)
    lstm = nn.LSTM(32, 32).to(device)
    seq = torch.randn(16, 8, 32, device=device, requires_grad=True)

    small_logits = torch.randn(8, 4, device=device, requires_grad=True)
    small_target = torch.randint(0, 4, (8,), device=device)

    def loss_call():
        F.cross_entropy(logits, target)

    def small_loss_call():  # the loss itself is cheap: the wrapper's own cost shows
        F.cross_entropy(small_logits, small_target)

    def rnn_call():
        lstm(seq)

    results: dict[str, list[float]] = {k: [] for k in (
        "small_bare", "small_unsampled", "small_sampled", "loss_bare", "loss_unsampled", "loss_sampled",
        "rnn_bare", "rnn_unsampled", "rnn_sampled")}
    for _ in range(args.rounds):
        results["small_bare"].append(_time(small_loss_call, args.calls, sync, clock))
        results["loss_bare"].append(_time(loss_call, args.calls, sync, clock))
        results["rnn_bare"].append(_time(rnn_call, args.calls, sync, clock))
        with tempfile.TemporaryDirectory() as tmp:
            rec = Recorder(Path(tmp) / "run")
            try:
                rec.step = 7  # not sampled
                results["small_unsampled"].append(_time(small_loss_call, args.calls, sync, clock))
                results["loss_unsampled"].append(_time(loss_call, args.calls, sync, clock))
                results["rnn_unsampled"].append(_time(rnn_call, args.calls, sync, clock))
                rec.step = 0  # sampled; lift the per-step cap so every call does the full work
                cap = contracts.MAX_PER_STEP
                contracts.MAX_PER_STEP = 10 ** 9
                try:
                    results["small_sampled"].append(_time(small_loss_call, args.calls, sync, clock))
                    results["loss_sampled"].append(_time(loss_call, args.calls, sync, clock))
                    results["rnn_sampled"].append(_time(rnn_call, args.calls, sync, clock))
                finally:
                    contracts.MAX_PER_STEP = cap
            finally:
                rec.close()
    # min over rounds: a fixed amount of work, timed on a machine that others share (the
    # median is printed too)
    med = {k: min(v) for k, v in results.items()}
    median = {k: statistics.median(v) for k, v in results.items()}
    print(f"device {device} ({'wall' if device.type == 'cuda' else 'thread CPU'} time), torch {torch.__version__}, cross_entropy input ({args.rows}, {args.classes}), "
          f"(small: (8, 4)), LSTM(32, 32) on (16, 8, 32); fastest of {args.rounds} rounds x {args.calls} calls "
          "[median], us per call")
    for kind in ("small", "loss", "rnn"):
        bare = med[f"{kind}_bare"]
        for variant in ("bare", "unsampled", "sampled"):
            key = f"{kind}_{variant}"
            extra = "" if variant == "bare" else f"  (+{med[key] - bare:7.1f} us)"
            print(f"  {key:16s} {med[key]:9.1f}  [{median[key]:.1f}]{extra}")
    per_step = {n: sum(contracts.sampled(s) for s in range(n)) / n for n in (100, 1000, 10000)}
    for n, fraction in per_step.items():
        added = fraction * ((med["loss_sampled"] - med["loss_bare"]) + (med["rnn_sampled"] - med["rnn_bare"])) \
            + (1 - fraction) * ((med["small_unsampled"] - med["small_bare"]) + (med["rnn_unsampled"] - med["rnn_bare"]))
        print(f"  amortised over {n} steps (sampled fraction {fraction:.4f}): +{added:.1f} us per step "
              "(one loss call and one RNN forward a step)")


if __name__ == "__main__":
    main()
