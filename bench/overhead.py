"""Recorder overhead: the same training step bare, under diagnose, and under peers' tools.

Interleaved rounds (every variant once per round, in a rotating order), per-round mean
step time over `--steps` timed steps after `--warmup`, then the median and spread over
rounds. Ratios are against the bare loop's median. Variants:

- bare: the loop alone.
- loss-item: `loss.item()` every step (what most loops do for logging).
- diagnose: `Monitor` with every-step per-parameter gradient norms, loss scale, NaN checks,
  memory and throughput.
- diagnose-zerocode: the zero-code recorder (what `diagnose run script.py` attaches).
- lightning-grad-norm: Lightning's `grad_norm(model, 2)` each step, values read to floats
  (the real function when lightning is installed, else a copy of its body).
- norm-item: a per-parameter `p.grad.norm().item()` loop.
- grad-histograms: per-parameter gradient hooks that histogram every gradient and copy it
  to the host (what `wandb.watch(log="gradients")` does on a logging step).
- profiler: torch.profiler recording CPU (+CUDA) activity all the time.

    python bench/overhead.py --model default           # CPU, the reference loop's CNN
    python bench/overhead.py --model mlp200            # CPU, MLP with 200 parameter tensors
    python bench/overhead.py --model gpt2 --batch 8 --seq 1024   # GPU
    python bench/overhead.py ... --plot steps.png      # per-step time distribution (CUDA events)
    python bench/overhead.py ... --recorder-time       # host time inside the Monitor, per handler
    python bench/overhead.py ... --host-profile diagnose   # cProfile of the host side
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import tempfile
import time
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import torch
import torch.nn as nn
import torch.nn.functional as F

# ---- models -----------------------------------------------------------------------------


class Block(nn.Module):
    def __init__(self, d: int, heads: int):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.qkv, self.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.fc, self.out = nn.Linear(d, 4 * d), nn.Linear(4 * d, d)
        self.heads = heads

    def forward(self, x):
        b, t, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(d, dim=2)
        q, k, v = (z.view(b, t, self.heads, d // self.heads).transpose(1, 2) for z in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(y.transpose(1, 2).reshape(b, t, d))
        return x + self.out(F.gelu(self.fc(self.ln2(x))))


class GPT(nn.Module):
    """GPT-2-small-like: 12 layers, d=768, 12 heads, vocab 50304 (124M parameters)."""

    def __init__(self, layers=12, d=768, heads=12, vocab=50304, seq=1024):
        super().__init__()
        self.wte, self.wpe = nn.Embedding(vocab, d), nn.Embedding(seq, d)
        self.blocks = nn.ModuleList(Block(d, heads) for _ in range(layers))
        self.ln = nn.LayerNorm(d)
        self.head = nn.Linear(d, vocab, bias=False)
        self.head.weight = self.wte.weight

    def forward(self, idx):
        x = self.wte(idx) + self.wpe(torch.arange(idx.shape[1], device=idx.device))
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln(x))


@dataclass
class Setup:
    model: nn.Module
    batch: Callable[[], tuple[torch.Tensor, torch.Tensor]]
    loss_fn: Callable
    amp_dtype: torch.dtype | None
    scaler: bool
    device: torch.device


def build(name: str, device: torch.device, batch: int, seq: int) -> Setup:
    torch.manual_seed(0)
    if name == "gpt2":
        model = GPT(seq=max(seq, 1024)).to(device)
        x = torch.randint(0, 50304, (batch, seq), device=device)
        y = torch.randint(0, 50304, (batch, seq), device=device)
        return Setup(model, lambda: (x, y),
                     lambda out, t: F.cross_entropy(out.view(-1, out.shape[-1]), t.view(-1)),
                     torch.float16 if device.type == "cuda" else torch.bfloat16,
                     device.type == "cuda", device)
    if name == "mlp200":
        layers = []
        for _ in range(100):
            layers += [nn.Linear(64, 64), nn.ReLU()]
        model = nn.Sequential(*layers, nn.Linear(64, 10)).to(device)  # 202 tensors
        x, y = torch.randn(batch, 64, device=device), torch.randint(0, 10, (batch,), device=device)
        return Setup(model, lambda: (x, y), F.cross_entropy, None, False, device)
    if name == "default":
        from reference_loop.model import SmallCNN

        model = SmallCNN(num_classes=10).to(device) if _takes_classes() else SmallCNN().to(device)
        x = torch.randn(batch, 3, 16, 16, device=device)
        y = torch.randint(0, 10, (batch,), device=device)
        return Setup(model, lambda: (x, y), F.cross_entropy, None, False, device)
    raise SystemExit(f"unknown model {name}")


def _takes_classes() -> bool:
    import inspect

    from reference_loop.model import SmallCNN

    return "num_classes" in inspect.signature(SmallCNN).parameters


# ---- variants -----------------------------------------------------------------------------


def lightning_grad_norm(module: nn.Module, norm_type: float = 2.0) -> dict[str, float]:
    try:
        from lightning.pytorch.utilities import grad_norm
    except ImportError:
        grad_norm = None
    if grad_norm is None:
        try:
            from pytorch_lightning.utilities import grad_norm
        except ImportError:
            grad_norm = None
    if grad_norm is None:
        # lightning.pytorch.utilities.grads.grad_norm, copied (Apache-2.0)
        def grad_norm(module, norm_type):
            norms = {f"grad_{norm_type}_norm/{name}": p.grad.data.norm(norm_type)
                     for name, p in module.named_parameters() if p.grad is not None}
            if norms:
                total = torch.tensor(list(norms.values())).norm(norm_type)
                norms[f"grad_{norm_type}_norm_total"] = total
            return norms
    return {k: float(v) for k, v in grad_norm(module, norm_type).items()}


@contextmanager
def variant_context(name: str, setup: Setup, opt, sched, scaler, tmp: Path) -> Iterator[Callable]:
    """Installs variant `name`; yields a per-step callback (after the optimizer step)."""
    model = setup.model
    noop = lambda loss: None  # noqa: E731
    if name in ("bare",):
        yield noop
    elif name == "loss-item":
        yield lambda loss: loss.item()
    elif name == "diagnose":
        from diagnose import Monitor

        with Monitor(tmp / f"run-{time.monotonic_ns()}", model=model, optimizer=opt,
                     scheduler=sched, scaler=scaler):
            yield noop
    elif name == "diagnose-zerocode":
        # What `diagnose run script.py` attaches: class-level wrappers and global hooks that
        # adopt the optimizer, scheduler, scaler and model at their first calls.
        from diagnose.recorder.recorder import RecorderOptions
        from diagnose.zerocode.session import Session

        session = Session(tmp / f"zc-{time.monotonic_ns()}", options=RecorderOptions())
        session.install()
        try:
            yield noop
        finally:
            session.close("finished")
    elif name == "lightning-grad-norm":
        yield lambda loss: lightning_grad_norm(model, 2)
    elif name == "norm-item":
        def per_param(loss):
            for p in model.parameters():
                if p.grad is not None:
                    p.grad.norm().item()
        yield per_param
    elif name == "grad-histograms":
        def histogram(grad):
            g = grad.detach().float()  # fp16 GradScaler steps can hold inf: wandb drops those
            torch.histc(g[torch.isfinite(g)], bins=64).cpu()  # returns None: grad unchanged

        handles = [p.register_hook(histogram) for p in model.parameters() if p.requires_grad]
        try:
            yield noop
        finally:
            for h in handles:
                h.remove()
    elif name == "profiler":
        from torch.profiler import ProfilerActivity, profile

        acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if setup.device.type == "cuda" else [])
        with profile(activities=acts):
            yield noop
    else:
        raise SystemExit(f"unknown variant {name}")


def step_fn(setup: Setup, opt, sched, scaler):
    model = setup.model

    def step(after: Callable) -> None:
        x, y = setup.batch()
        opt.zero_grad(set_to_none=True)
        with torch.autocast(setup.device.type, dtype=setup.amp_dtype or torch.bfloat16,
                            enabled=setup.amp_dtype is not None):
            loss = setup.loss_fn(model(x), y)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.unscale_(opt)
        else:
            loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        if scaler is not None:
            scaler.step(opt)
            scaler.update()
        else:
            opt.step()
        sched.step()
        after(loss)

    return step


class StepMarks:
    """Per-step times without a sync inside the timed steps: CUDA events recorded after
    each step on the GPU (read once the round is over), the host clock on the CPU."""

    def __init__(self, device: torch.device, steps: int) -> None:
        self.cuda = device.type == "cuda"
        if self.cuda:
            self.events = [torch.cuda.Event(enable_timing=True) for _ in range(steps + 1)]
            self.events[0].record()
        else:
            self.stamps = [time.perf_counter()] + [0.0] * steps

    def mark(self, i: int) -> None:
        if self.cuda:
            self.events[i + 1].record()
        else:
            self.stamps[i + 1] = time.perf_counter()

    def durations(self) -> list[float]:
        """Seconds per step (call after a sync)."""
        if self.cuda:
            return [a.elapsed_time(b) / 1e3 for a, b in zip(self.events, self.events[1:])]
        return [b - a for a, b in zip(self.stamps, self.stamps[1:])]


def plot_steps(per_step: dict[str, list[float]], path: Path, title: str) -> None:
    """Box plot of the per-step times of each variant (ms), outliers shown."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [n for n, v in per_step.items() if v]
    fig, ax = plt.subplots(figsize=(8, 0.5 + 0.45 * len(names)))
    data = [[v * 1e3 for v in per_step[n]] for n in names]
    style = {"whis": (1, 99), "flierprops": {"markersize": 2, "alpha": 0.4}}
    try:
        ax.boxplot(data, orientation="horizontal", **style)
    except TypeError:  # matplotlib < 3.10
        ax.boxplot(data, vert=False, **style)
    ax.set_yticks(range(1, len(names) + 1), names)
    ax.invert_yaxis()
    ax.set_xlabel("step time, ms (box: quartiles; whiskers: 1st-99th percentile)")
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _quartiles(sorted_values: list[float]) -> tuple[float, float]:
    if len(sorted_values) < 4:
        return sorted_values[0], sorted_values[-1]
    q = statistics.quantiles(sorted_values, n=4)
    return q[0], q[2]


def host_profile(variant: str, setup: Setup, opt, sched, scaler, step, steps: int) -> None:
    """Host time to issue one step (the device runs behind), bare and under `variant`.

    On a GPU whose step is host-bound this is what an instrument costs; the cProfile
    of the variant (sorted by own time) says where.
    """
    import cProfile
    import io
    import pstats

    tmp = Path(tempfile.mkdtemp(prefix="diagnose-host-"))

    def issue(after: Callable, n: int) -> float:
        sync(setup.device)
        start = time.perf_counter()
        for _ in range(n):
            step(after)
        elapsed = time.perf_counter() - start
        sync(setup.device)
        return elapsed / n

    result: dict[str, list[float]] = {"bare": [], variant: []}
    for _ in range(5):
        for name in ("bare", variant):
            with variant_context(name, setup, opt, sched, scaler, tmp) as after:
                issue(after, 3)
                result[name].append(issue(after, steps))
    for name, values in result.items():
        print(f"host ms per step, {name}: median {statistics.median(values) * 1e3:.3f} "
              f"{[round(v * 1e3, 2) for v in values]}")
    with variant_context(variant, setup, opt, sched, scaler, tmp) as after:
        issue(after, 3)
        profiler = cProfile.Profile()
        profiler.enable()
        issue(after, steps)
        profiler.disable()
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(40)
    print(out.getvalue()[:9000])


def recorder_time(setup: Setup, opt, sched, scaler, step, steps: int) -> None:
    """Host time spent inside the Monitor's handlers per step (every hook and wrapper
    routes its work through `Recorder._safe`), against the bare step's time.

    An absolute figure that other tenants' noise barely moves: on a host-bound step it is
    what the recorder adds, whatever the round-to-round spread of the step itself.
    """
    from diagnose.recorder.recorder import Recorder

    tmp = Path(tempfile.mkdtemp(prefix="diagnose-rtime-"))
    spent = [0.0, 0]
    by_handler: dict[str, float] = {}
    original = Recorder._safe

    def timed(self, fn, *args):
        start = time.perf_counter()
        try:
            return original(self, fn, *args)
        finally:
            elapsed = time.perf_counter() - start
            spent[0] += elapsed
            spent[1] += 1
            name = getattr(fn, "__name__", "?")
            by_handler[name] = by_handler.get(name, 0.0) + elapsed

    inner = _time_inner_calls()
    rows = []
    for _ in range(5):
        with variant_context("bare", setup, opt, sched, scaler, tmp) as after:
            for _ in range(5):
                step(after)
            sync(setup.device)
            start = time.perf_counter()
            for _ in range(steps):
                step(after)
            sync(setup.device)
            bare = (time.perf_counter() - start) / steps
        Recorder._safe = timed
        try:
            with variant_context("diagnose", setup, opt, sched, scaler, tmp) as after:
                for _ in range(5):
                    step(after)
                spent[:] = [0.0, 0]
                by_handler.clear()
                inner.clear()
                for _ in range(steps):
                    step(after)
                sync(setup.device)
                rows.append((bare, spent[0] / steps, spent[1] / steps))
        finally:
            Recorder._safe = original
    for bare, inside, calls in rows:
        print(f"bare step {bare * 1e3:.2f} ms; inside the Monitor's handlers {inside * 1e6:.0f} us "
              f"per step ({calls:.0f} calls) = {inside / bare:.2%} of the bare step")
    print(f"median: {statistics.median(r[1] for r in rows) * 1e6:.0f} us per step, "
          f"{statistics.median(r[1] / r[0] for r in rows):.2%} of the bare step")
    print("last round, us per step by handler: " + ", ".join(
        f"{name} {t / steps * 1e6:.0f}" for name, t in sorted(by_handler.items(), key=lambda kv: -kv[1])))
    print("last round, us per step inside them (nested: a part's time is also in its caller's): "
          + ", ".join(f"{name} {t / steps * 1e6:.0f}"
                      for name, t in sorted(inner.items(), key=lambda kv: -kv[1])))


_INNER_CALLS = {
    "diagnose.recorder.recorder": ["Recorder._close_step", "Recorder._drain", "Recorder._finalize",
                                   "Recorder._at_optimizer_step", "Recorder._norms_from_clip",
                                   "Recorder._write_calls", "batch_size"],
    "diagnose.recorder.numerics": ["HostCopier.pack", "InFlight.values", "grad_norms"],
    "diagnose.recorder.inputs": ["InputChecks.take", "InputChecks.add_forward_inputs"],
    "diagnose.recorder.updates": ["UpdateSampler.before", "UpdateSampler.after"],
    "diagnose.recorder.system": ["cuda_memory", "rss_bytes", "cpu_usage"],
    "diagnose.recorder.writer": ["RunWriter.line", "RunWriter.matrix_row"],
}


def _time_inner_calls() -> dict[str, float]:
    """Wrap the recorder's main inner functions with a clock (for `--recorder-time`): the
    returned dict accumulates seconds per function. Wrapped for the rest of the process."""
    import importlib

    spent: dict[str, float] = {}

    def timed(label: str, fn: Callable) -> Callable:
        def wrapper(*args, **kwargs):
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                spent[label] = spent.get(label, 0.0) + time.perf_counter() - start
        return wrapper

    for module_name, names in _INNER_CALLS.items():
        module = importlib.import_module(module_name)
        for dotted in names:
            owner_name, _, attr = dotted.rpartition(".")
            owner = getattr(module, owner_name) if owner_name else module
            original = getattr(owner, attr, None)
            if original is not None:
                setattr(owner, attr, timed(dotted, original))
    return spent


def main() -> None:
    parser = argparse.ArgumentParser(description="Recorder overhead benchmark")
    parser.add_argument("--model", default="default", choices=["default", "mlp200", "gpt2"])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--seq", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--variants", default="bare,loss-item,diagnose,diagnose-zerocode,"
                        "lightning-grad-norm,norm-item,grad-histograms,profiler")
    parser.add_argument("--json", type=Path, help="also write the raw results here")
    parser.add_argument("--plot", type=Path, help="write the per-step time distribution of "
                        "each variant (a PNG) here")
    parser.add_argument("--clock", choices=["wall", "process"], default="wall",
                        help="process: CPU time of this process (all its threads, the recorder's "
                             "writer included), for CPU runs on a machine other processes load")
    parser.add_argument("--threads", type=int, help="torch.set_num_threads (CPU runs)")
    parser.add_argument("--host-profile", metavar="VARIANT",
                        help="instead of the benchmark: the host time per step (no sync inside "
                             "the timed steps) bare and under VARIANT, and a cProfile of VARIANT")
    parser.add_argument("--recorder-time", action="store_true",
                        help="instead of the benchmark: host time inside the Monitor's handlers "
                             "per step, against the bare step")
    args = parser.parse_args()
    device = torch.device("cuda" if (args.device == "auto" and torch.cuda.is_available())
                          else ("cpu" if args.device == "auto" else args.device))
    if args.threads:
        torch.set_num_threads(args.threads)
    clock = time.process_time if args.clock == "process" else time.perf_counter
    setup = build(args.model, device, args.batch, args.seq)
    fused = {"fused": True} if device.type == "cuda" else {}
    opt = torch.optim.AdamW(setup.model.parameters(), lr=1e-4, **fused)
    total = (args.rounds * 20 + 5) * (args.steps + args.warmup)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1e-4, total_steps=total)
    scaler = torch.amp.GradScaler(device.type) if setup.scaler else None
    step = step_fn(setup, opt, sched, scaler)
    if args.recorder_time:
        recorder_time(setup, opt, sched, scaler, step, args.steps)
        return
    if args.host_profile:
        host_profile(args.host_profile, setup, opt, sched, scaler, step, args.steps)
        return
    variants = [v for v in args.variants.split(",") if v]
    times: dict[str, list[float]] = {v: [] for v in variants}
    per_step: dict[str, list[float]] = {v: [] for v in variants}
    tmp = Path(tempfile.mkdtemp(prefix="diagnose-bench-"))
    for r in range(args.rounds):
        order = variants[r % len(variants):] + variants[: r % len(variants)]
        for name in order:
            try:
                with variant_context(name, setup, opt, sched, scaler, tmp) as after:
                    for _ in range(args.warmup):
                        step(after)
                    sync(device)
                    marks = StepMarks(device, args.steps)
                    start = clock()
                    for i in range(args.steps):
                        step(after)
                        marks.mark(i)
                    sync(device)
                    times[name].append((clock() - start) / args.steps)
                    per_step[name] += marks.durations()
            except (ImportError, ModuleNotFoundError, AttributeError) as exc:
                print(f"skipping {name}: {exc}")
                variants.remove(name)
                times.pop(name, None)
    bare = statistics.median(times["bare"])
    rows = []
    for name, values in times.items():
        med = statistics.median(values)
        # Paired: each round's time over the same round's bare time. Slow drifts of the
        # machine (clocks, other tenants) cancel, so this resolves smaller differences.
        paired = sorted(v / b for v, b in zip(values, times["bare"]))
        q1, q3 = _quartiles(paired)
        rows.append({"variant": name, "median_ms": med * 1e3, "min_ms": min(values) * 1e3,
                     "max_ms": max(values) * 1e3, "ratio": med / bare,
                     "ratio_lo": min(values) / bare, "ratio_hi": max(values) / bare,
                     "paired": statistics.median(paired), "paired_q1": q1, "paired_q3": q3})
    name = torch.cuda.get_device_name() if device.type == "cuda" else platform.processor() or "cpu"
    print(f"\n{args.model} batch={args.batch} seq={args.seq} on {name}, torch {torch.__version__}, "
          f"{args.rounds} rounds x {args.steps} steps, {os.cpu_count()} CPUs, {args.clock} clock, "
          f"{torch.get_num_threads()} torch threads")
    print("| variant | median step (ms) | ratio to bare | spread (min–max ratio) "
          "| paired ratio: median [q1–q3] |")
    print("| --- | --- | --- | --- | --- |")
    for row in rows:
        print(f"| {row['variant']} | {row['median_ms']:.2f} | {row['ratio']:.3f}x | "
              f"{row['ratio_lo']:.3f}–{row['ratio_hi']:.3f} | "
              f"{row['paired']:.3f}x [{row['paired_q1']:.3f}–{row['paired_q3']:.3f}] |")
    for variant, values in per_step.items():
        values = sorted(values)
        if values:
            q1, q3 = _quartiles(values)
            print(f"per-step {variant}: median {statistics.median(values) * 1e3:.2f} ms "
                  f"[q1-q3 {q1 * 1e3:.2f}-{q3 * 1e3:.2f}], p99 "
                  f"{values[min(len(values) - 1, int(0.99 * len(values)))] * 1e3:.2f} ms, "
                  f"{len(values)} steps")
    if args.json:
        args.json.write_text(json.dumps({"model": args.model, "device": name, "rows": rows,
                                         "raw_s": times, "per_step_s": per_step}, indent=1))
    if args.plot:
        plot_steps(per_step, args.plot, f"{args.model} batch {args.batch}"
                   + (f" seq {args.seq}" if args.model == "gpt2" else "") + f" on {name}")


if __name__ == "__main__":
    main()
