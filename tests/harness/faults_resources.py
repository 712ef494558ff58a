"""Faulty training loops for the resource rules (memory-leak, dataloader-bottleneck,
throughput-drop), each fault written at least two ways, plus near-misses that must stay
silent (a cache that fills once, a sequence-length curriculum, a backbone unfrozen mid-run).

Every loop records through `Monitor` into `run_dir` and returns it. They run on CPU in a
second or two. Loops that time things set torch to one intra-op thread for their duration
(and restore it): with two threads on a busy two-core machine torch's threads spin-wait
for each other and a step's time swings 100-fold, which would bury the fault under noise.

`FAULTS[name].record(run_dir, seed)` records one; `.rule` is the rule it must trigger (None
for a near miss: a loop that looks like a fault and is not), `.at` the step the fault
starts at when it starts mid-run. `bench/false_alarms.py` records them all.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import gc
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from diagnose import Monitor

from tests.harness.scenarios import shuffled_batches as _batches
from tests.harness.threads import one_torch_thread




def release_freed_memory() -> None:
    """Free what earlier code in this process left behind (`gc.collect()`: objects in
    reference cycles) and give freed memory back to the OS (glibc's `malloc_trim`; a no-op
    elsewhere), so a leak measured by RSS starts from a process like a fresh one. Without
    it a leak first refills freed memory and RSS stays flat.
    """
    gc.collect()
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
        if libc is not None and hasattr(libc, "malloc_trim"):
            libc.malloc_trim(0)
    except OSError:
        pass


def _blobs(n: int, dim: int, classes: int, gen: torch.Generator):
    centers = torch.randn(classes, dim, generator=gen) * 2.0
    y = torch.randint(0, classes, (n,), generator=gen)
    return centers[y] + torch.randn(n, dim, generator=gen), y


def _images(n: int, gen: torch.Generator):
    """Images whose class is a bright quadrant: a CNN learns them in a few dozen steps."""
    y = torch.randint(0, 4, (n,), generator=gen)
    x = torch.randn(n, 3, 16, 16, generator=gen) * 0.5
    for c in range(4):
        r, q = divmod(c, 2)
        x[y == c, :, r * 8:(r + 1) * 8, q * 8:(q + 1) * 8] += 1.5
    return x, y


def _mlp(dim: int, hidden: int, out: int) -> nn.Module:
    return nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                         nn.Linear(hidden, out))


# ---- memory-leak --------------------------------------------------------------------------


def leak_running_loss_retain_graph(run_dir: Path, seed: int = 0, steps: int = 100) -> Path:
    """`running = running + loss` after `loss.backward(retain_graph=True)`: every step's
    autograd graph, with the activations it saved, stays alive (~1.5 MiB a step here)."""
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    x, y = _blobs(128 * steps, 64, 10, gen)
    model = nn.Sequential(nn.Linear(64, 1024), nn.GELU(), nn.LayerNorm(1024), nn.Linear(1024, 10))
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    running = torch.zeros(())
    release_freed_memory()  # after building the data: its temporaries are freed memory too
    with one_torch_thread(), Monitor(run_dir, model=model, optimizer=opt) as mon:
        mon.epoch(0)
        for xb, yb in mon.loader(_batches(x, y, 128, gen)):
            opt.zero_grad()
            loss = F.cross_entropy(model(xb), yb)
            loss.backward(retain_graph=True)  # "fixes" an error elsewhere; keeps the graph
            opt.step()
            running = running + loss  # the leak: should be loss.item() or loss.detach()
    return Path(run_dir)


def leak_metric_with_grad(run_dir: Path, seed: int = 0, steps: int = 100) -> Path:
    """A CNN loop that also tracks a held-out batch's loss every step, computed with
    autograd on and kept as a tensor: a graph no backward ever frees, every step."""
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    x, y = _images(32 * steps, gen)
    hx, hy = _images(32, gen)
    model = nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 32, 3, padding=1),
                          nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 4))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    held_out = []
    release_freed_memory()  # after building the data: its temporaries are freed memory too
    with one_torch_thread(), Monitor(run_dir, model=model, optimizer=opt) as mon:
        mon.epoch(0)
        for xb, yb in mon.loader(_batches(x, y, 32, gen)):
            opt.zero_grad()
            F.cross_entropy(model(xb), yb).backward()
            opt.step()
            held_out.append(F.cross_entropy(model(hx), hy))  # the leak: no torch.no_grad()
    return Path(run_dir)


def leak_kept_batches(run_dir: Path, seed: int = 0, steps: int = 100) -> Path:
    """Every batch is kept in a Python list (a debugging "replay buffer" never emptied):
    memory grows by the batch's size (1 MiB) each step, with no autograd graph involved."""
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    x, y = _blobs(32 * steps, 8192, 4, gen)
    model = nn.Sequential(nn.Linear(8192, 128), nn.ReLU(), nn.Linear(128, 4))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    seen = []
    release_freed_memory()  # after building the data: its temporaries are freed memory too
    with one_torch_thread(), Monitor(run_dir, model=model, optimizer=opt) as mon:
        for epoch in range(2):
            mon.epoch(epoch)
            for xb, yb in mon.loader(_batches(x, y, 32, gen)):
                seen.append(xb.clone())  # the leak
                opt.zero_grad()
                F.cross_entropy(model(xb), yb).backward()
                opt.step()
    return Path(run_dir)


def cache_fills_once(run_dir: Path, seed: int = 0) -> Path:
    """Near miss: a Dataset caches every decoded item the first time it is read, so memory
    grows through the first epoch and then stays flat. Bounded: not a leak."""

    class Cached(Dataset):
        def __init__(self, n: int, gen: torch.Generator):
            self.y = torch.randint(0, 4, (n,), generator=gen)
            self.seeds = torch.randint(0, 2**31, (n,), generator=gen).tolist()
            self.cache: dict[int, torch.Tensor] = {}

        def __len__(self) -> int:
            return len(self.y)

        def __getitem__(self, i: int):
            if i not in self.cache:  # "decode" once, keep it
                g = torch.Generator().manual_seed(self.seeds[i])
                self.cache[i] = torch.randn(3, 32, 32, generator=g) + self.y[i]
            return self.cache[i], self.y[i]

    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    data = Cached(2048, gen)
    loader = DataLoader(data, batch_size=64, shuffle=True, generator=gen)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 32), nn.ReLU(), nn.Linear(32, 4))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    release_freed_memory()  # after building the data: its temporaries are freed memory too
    with one_torch_thread(), Monitor(run_dir, model=model, optimizer=opt) as mon:
        for epoch in range(4):
            mon.epoch(epoch)
            for xb, yb in mon.loader(loader):
                opt.zero_grad()
                F.cross_entropy(model(xb), yb).backward()
                opt.step()
    return Path(run_dir)


# ---- dataloader-bottleneck ----------------------------------------------------------------


class _SlowItems(Dataset):
    """A dataset whose items take `delay_s` each to "decode" (a sleep stands for the work)."""

    def __init__(self, n: int, dim: int, delay_s: float, gen: torch.Generator):
        self.x, self.y = _blobs(n, dim, 3, gen)
        self.delay_s = delay_s

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int):
        if self.delay_s:
            time.sleep(self.delay_s)
        return self.x[i], self.y[i]


def _train_on(loader, run_dir: Path, dim: int, epochs: int = 1) -> Path:
    model = _mlp(dim, 32, 3)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    with one_torch_thread(), Monitor(run_dir, model=model, optimizer=opt) as mon:
        for epoch in range(epochs):
            mon.epoch(epoch)
            for xb, yb in mon.loader(loader):
                opt.zero_grad()
                F.cross_entropy(model(xb), yb).backward()
                opt.step()
    return Path(run_dir)


def slow_getitem(run_dir: Path, seed: int = 0, steps: int = 40) -> Path:
    """`Dataset.__getitem__` sleeps 1 ms per item (16 per batch) in the main process
    (`num_workers=0`): the step waits ~16 ms for data and computes for ~1 ms."""
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    data = _SlowItems(16 * steps, 16, 0.001, gen)
    return _train_on(DataLoader(data, batch_size=16, shuffle=True, generator=gen), run_dir, 16)


def slow_collate(run_dir: Path, seed: int = 0, steps: int = 40) -> Path:
    """The DataLoader's `collate_fn` sleeps 15 ms per batch (an expensive augmentation on
    the whole batch), two epochs."""
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    data = _SlowItems(32 * steps // 2, 16, 0.0, gen)

    def collate(items):
        time.sleep(0.015)
        return torch.utils.data.default_collate(items)

    loader = DataLoader(data, batch_size=32, shuffle=True, generator=gen, collate_fn=collate)
    return _train_on(loader, run_dir, 16, epochs=2)


def ref_dataloader_bottleneck(run_dir: Path, seed: int = 0) -> Path:
    """The reference loop's `--inject dataloader-bottleneck`, made small: a narrow CNN on
    16-image batches (a few ms a step) and a collate that sleeps 30 ms, one epoch (less
    image noise and a higher LR, so that 24 steps learn something and only the loader is
    at fault)."""
    from reference_loop.config import TrainConfig
    from reference_loop.train import train

    previous = torch.get_num_threads()
    cfg = TrainConfig(inject=["dataloader-bottleneck"], seed=seed, train_samples=384, val_samples=64,
                      batch_size=16, width=8, epochs=1, checkpoint_every=0, slow_data_s=0.03,
                      image_noise=1.0, lr=1e-2, num_threads=1, device="cpu")
    try:
        train(cfg, run_dir, progress=False)
    finally:
        torch.set_num_threads(previous)
    return Path(run_dir)


# ---- throughput-drop ----------------------------------------------------------------------


def sleep_after_step(run_dir: Path, seed: int = 0, steps: int = 130, drop_at: int = 60,
                     sleep_s: float = 0.02) -> Path:
    """From step `drop_at` on, every step also makes a blocking call (a sleep stands for a
    synchronous upload of metrics or a checkpoint written every step)."""
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    x, y = _blobs(32 * steps, 16, 4, gen)
    model = _mlp(16, 64, 4)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    with one_torch_thread(), Monitor(run_dir, model=model, optimizer=opt) as mon:
        mon.epoch(0)
        for step, (xb, yb) in enumerate(mon.loader(_batches(x, y, 32, gen))):
            opt.zero_grad()
            F.cross_entropy(model(xb), yb).backward()
            opt.step()
            if step >= drop_at:
                time.sleep(sleep_s)  # the drop
    return Path(run_dir)


def model_grows(run_dir: Path, seed: int = 0, steps: int = 130, drop_at: int = 60) -> Path:
    """At step `drop_at` the model grows: 24 wide blocks are appended to it (a
    "progressive" option switched on by mistake), created after the Monitor attached, so
    nothing in the record names them; each step now costs ~10x more. The steps before are
    a few milliseconds already (not sub-millisecond): on a machine other processes load
    all along, a sub-millisecond step is rarely preempted and a long one often, which made
    the grown model's steps look like contention that began at the drop."""
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    x, y = _blobs(128 * steps, 64, 4, gen)
    model = nn.Sequential(nn.Linear(64, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU())
    head = nn.Linear(512, 4)
    net = nn.Sequential(model, head)
    opt = torch.optim.SGD(net.parameters(), lr=0.02, momentum=0.9)
    with one_torch_thread(), Monitor(run_dir, model=net, optimizer=opt) as mon:
        mon.epoch(0)
        for step, (xb, yb) in enumerate(mon.loader(_batches(x, y, 128, gen))):
            if step == drop_at:  # the drop
                for _ in range(24):
                    block = nn.Linear(512, 512)
                    with torch.no_grad():  # identity: the function (and the loss) does not change
                        block.weight.copy_(torch.eye(512))
                        block.bias.zero_()
                    model.append(block)
                    model.append(nn.ReLU())
                    opt.add_param_group({"params": block.parameters()})
            opt.zero_grad()
            F.cross_entropy(net(xb), yb).backward()
            opt.step()
    return Path(run_dir)


def extra_forwards_after_step(run_dir: Path, seed: int = 0, steps: int = 130, drop_at: int = 60) -> Path:
    """From step `drop_at` on, every step also evaluates a large held-out batch (a metric
    meant to run once an epoch, placed inside the batch loop)."""
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    x, y = _blobs(32 * steps, 32, 4, gen)
    hx, _ = _blobs(8192, 32, 4, gen)
    model = _mlp(32, 128, 4)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    with one_torch_thread(), Monitor(run_dir, model=model, optimizer=opt) as mon:
        mon.epoch(0)
        for step, (xb, yb) in enumerate(mon.loader(_batches(x, y, 32, gen))):
            opt.zero_grad()
            F.cross_entropy(model(xb), yb).backward()
            opt.step()
            if step >= drop_at:
                with torch.no_grad():
                    model(hx).softmax(-1).max(-1)  # the drop: 256x a batch, every step
    return Path(run_dir)


def unfreeze_backbone(run_dir: Path, seed: int = 0, steps: int = 120, at: int = 60) -> Path:
    """Near miss: the backbone is frozen for the first `at` steps, then unfrozen (a normal
    fine-tuning schedule): steps get slower because the backbone now trains too."""
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    x, y = _blobs(32 * steps, 64, 4, gen)
    backbone = nn.Sequential(nn.Linear(64, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU(),
                             nn.Linear(512, 512), nn.ReLU())
    model = nn.Sequential(backbone, nn.Linear(512, 4))
    for p in backbone.parameters():
        p.requires_grad_(False)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    with one_torch_thread(), Monitor(run_dir, model=model, optimizer=opt) as mon:
        mon.epoch(0)
        for step, (xb, yb) in enumerate(mon.loader(_batches(x, y, 32, gen))):
            if step == at:
                for p in backbone.parameters():
                    p.requires_grad_(True)
            opt.zero_grad()
            F.cross_entropy(model(xb), yb).backward()
            opt.step()
    return Path(run_dir)


def sequence_curriculum(run_dir: Path, seed: int = 0, steps: int = 120) -> Path:
    """Near miss: a sequence-length curriculum (16 tokens, then 128 from mid-run): samples/s
    falls 8-fold but tokens/s does not, and tokens are what the model processes."""
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    vocab = 32
    model = nn.Sequential(nn.Embedding(vocab, 64), nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, vocab))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    with one_torch_thread(), Monitor(run_dir, model=model, optimizer=opt) as mon:
        mon.epoch(0)
        for step in range(steps):
            length = 16 if step < steps // 2 else 128
            seq = torch.randint(0, vocab, (32, length + 1), generator=gen)
            opt.zero_grad()
            logits = model(seq[:, :-1])
            F.cross_entropy(logits.reshape(-1, vocab), seq[:, 1:].reshape(-1)).backward()
            opt.step()
    return Path(run_dir)


@dataclass(frozen=True)
class Fault:
    record: Callable[[Path, int], Path]
    """`record(run_dir, seed)` trains the loop into run_dir and returns it."""
    rule: str | None
    """The rule it must trigger; None for a near miss (no resource rule may warn)."""
    at: int | None = None
    """The first step where the fault shows, when it starts mid-run."""


FAULTS: dict[str, Fault] = {
    "leak_running_loss_retain_graph": Fault(leak_running_loss_retain_graph, "memory-leak"),
    "leak_metric_with_grad": Fault(leak_metric_with_grad, "memory-leak"),
    "leak_kept_batches": Fault(leak_kept_batches, "memory-leak"),
    "cache_fills_once": Fault(cache_fills_once, None),
    "slow_getitem": Fault(slow_getitem, "dataloader-bottleneck"),
    "slow_collate": Fault(slow_collate, "dataloader-bottleneck"),
    "ref_dataloader_bottleneck": Fault(ref_dataloader_bottleneck, "dataloader-bottleneck"),
    "sleep_after_step": Fault(sleep_after_step, "throughput-drop", 61),
    "model_grows": Fault(model_grows, "throughput-drop", 60),
    "extra_forwards_after_step": Fault(extra_forwards_after_step, "throughput-drop", 61),
    "unfreeze_backbone": Fault(unfreeze_backbone, None),
    "sequence_curriculum": Fault(sequence_curriculum, None),
}
"""Every faulty (or near-miss) loop by name."""


def record_fault(name: str, run_dir: Path, seed: int = 0) -> Path:
    """Record fault (or near miss) `name` into `run_dir` and return it."""
    return FAULTS[name].record(Path(run_dir), seed)
