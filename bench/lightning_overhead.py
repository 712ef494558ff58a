"""Per-step cost of `DiagnoseCallback` on a Lightning `Trainer`, against the same fit without
it and with Lightning's own `grad_norm` logged every step (the usual way to watch norms).

    python bench/lightning_overhead.py [--device cpu|cuda] [--steps 300] [--repeats 5]
        [--workload mlp|transformer] [--precision 32-true|bf16-mixed|16-mixed]

Each configuration fits the same model from the same seed in this process, interleaved,
`--repeats` times. A timing callback synchronises the device after a warm-up of 30 steps
and at the end, and divides by the steps in between (so asynchronous CUDA work is
counted where it ends, not where it is queued). Prints the median wall and process CPU
time per step (CPU time, all threads, barely moves with other load on the machine) and
their ratios to the bare fit. Workloads: a tiny MLP (the worst case for any per-call Python
cost: its steps are a few hundred microseconds) and a small transformer LM (4 layers,
d=256, batch 16 x 128 tokens; on CPU keep --steps low).
"""
from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
import warnings

import torch
import torch.nn as nn
import torch.nn.functional as F

import lightning as L
from lightning.pytorch.utilities import grad_norm

from diagnose.integrations.lightning import DiagnoseCallback

WARMUP = 30


class Timer(L.Callback):
    """Seconds per training step between step WARMUP and the last one."""

    def __init__(self, device: str) -> None:
        self.device, self.start, self.end, self.steps = device, None, None, 0
        self.cpu_start = self.cpu_end = 0.0

    def _sync(self) -> None:
        if self.device == "cuda":
            torch.cuda.synchronize()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == WARMUP:
            self._sync()
            self.start, self.steps = time.perf_counter(), 0
            self.cpu_start = time.process_time()
        if self.start is not None:
            self.steps += 1

    def on_train_end(self, trainer, pl_module) -> None:
        self._sync()
        self.end = time.perf_counter()
        self.cpu_end = time.process_time()

    @property
    def per_step(self) -> tuple[float, float]:
        """Wall seconds and process CPU seconds (all threads) per step."""
        steps = max(self.steps, 1)
        return (self.end - self.start) / steps, (self.cpu_end - self.cpu_start) / steps


class Module(L.LightningModule):
    def __init__(self, workload: str, log_norms: bool) -> None:
        super().__init__()
        self.workload, self.log_norms = workload, log_norms
        if workload == "mlp":
            self.net = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
        else:
            self.embed = nn.Embedding(1024, 256)
            layer = nn.TransformerEncoderLayer(256, 4, 1024, batch_first=True, norm_first=True)
            self.net = nn.TransformerEncoder(layer, 4)
            self.head = nn.Linear(256, 1024)

    def training_step(self, batch, batch_idx):
        x, y = batch
        if self.workload == "mlp":
            return F.cross_entropy(self.net(x), y)
        logits = self.head(self.net(self.embed(x)))
        return F.cross_entropy(logits.flatten(0, 1), y.flatten())

    def on_before_optimizer_step(self, optimizer):
        if self.log_norms:
            self.log_dict(grad_norm(self, norm_type=2))

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=1e-3)


def _data(workload: str, steps: int):
    gen = torch.Generator().manual_seed(0)
    if workload == "mlp":
        x, y = torch.randn(64 * steps, 32, generator=gen), torch.randint(0, 10, (64 * steps,), generator=gen)
        return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=64)
    x = torch.randint(0, 1024, (16 * steps, 128), generator=gen)
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, x.roll(-1, 1)), batch_size=16)


def fit(mode: str, args) -> tuple[float, float]:
    torch.manual_seed(0)
    timer = Timer(args.device)
    callbacks = [timer]
    tmp = tempfile.mkdtemp(prefix="diagnose-lightning-bench-")
    if mode == "diagnose":
        callbacks.append(DiagnoseCallback(f"{tmp}/run"))
    trainer = L.Trainer(max_steps=args.steps, accelerator=args.device, devices=1, precision=args.precision,
                        logger=L.pytorch.loggers.CSVLogger(tmp) if mode == "grad_norm" else False,
                        log_every_n_steps=1, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, callbacks=callbacks)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(Module(args.workload, log_norms=mode == "grad_norm"), _data(args.workload, args.steps))
    shutil.rmtree(tmp, ignore_errors=True)
    return timer.per_step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--workload", choices=["mlp", "transformer"], default="mlp")
    parser.add_argument("--precision", default="32-true")
    args = parser.parse_args()
    if args.device == "cpu":
        torch.set_num_threads(1)
    modes = ("bare", "diagnose", "grad_norm")
    wall: dict[str, list[float]] = {m: [] for m in modes}
    cpu: dict[str, list[float]] = {m: [] for m in modes}
    for _ in range(args.repeats):
        for mode in modes:
            w, c = fit(mode, args)
            wall[mode].append(w)
            cpu[mode].append(c)
    bare_wall, bare_cpu = statistics.median(wall["bare"]), statistics.median(cpu["bare"])
    print(f"{args.workload} on {args.device} ({args.precision}), {args.steps} steps x {args.repeats} repeats; "
          "median wall and process-CPU ms per step")
    for mode in modes:
        w, c = statistics.median(wall[mode]), statistics.median(cpu[mode])
        print(f"  {mode:<10} wall {w * 1e3:8.3f} ({w / bare_wall:5.2f}x)   cpu {c * 1e3:8.3f} ({c / bare_cpu:5.2f}x)"
              f"   wall runs: {', '.join(f'{t * 1e3:.3f}' for t in wall[mode])}")


if __name__ == "__main__":
    main()
