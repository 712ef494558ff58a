"""Tiny real training runs with profiling on, for the profiling tests (CPU, a few seconds).

`train(run_dir, ...)` trains a small MLP through the Monitor on a DataLoader; a
`collate_sleep_s` makes the loader slow (the dataloader-bottleneck case). Steps are
counted as the recorder counts them, so a window (2, 1, 3) traces steps 3, 4 and 5.
"""
from __future__ import annotations

import gzip
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from diagnose import Monitor

WINDOW = (2, 1, 3)
TRACED = [3, 4, 5]


def model_and_data(seed: int = 0, samples: int = 16 * 20):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.ReLU(), torch.nn.Linear(64, 4))
    data = TensorDataset(torch.randn(samples, 32), torch.randint(0, 4, (samples,)))
    return model, data


def train(run_dir: Path | None, *, steps: int = 10, profile=WINDOW, collate_sleep_s: float = 0.0,
          seed: int = 0) -> torch.nn.Module:
    """Train `steps` steps (recorded into run_dir unless None) and return the model."""
    torch.set_num_threads(1)
    model, data = model_and_data(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)

    def collate(items):
        if collate_sleep_s:
            time.sleep(collate_sleep_s)
        return torch.utils.data.default_collate(items)

    loader = DataLoader(data, batch_size=16, shuffle=False, collate_fn=collate)
    mon = Monitor(run_dir, model=model, optimizer=opt, profile=profile) if run_dir else None
    batches = mon.loader(loader) if mon else loader
    for i, (x, y) in enumerate(batches):
        if i == steps:
            break
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()
    if mon:
        mon.close()
    return model


def trace_of(run_dir: Path, rank: int = 0) -> Path:
    """The one trace file of a rank."""
    files = sorted((run_dir / f"rank{rank}" / "profile").glob("*.pt.trace.json*"))
    assert len(files) == 1, files
    return files[0]


def read_trace(path: Path) -> dict:
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as f:
        return json.load(f)


def write_trace(path: Path, trace: dict) -> None:
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "wt", encoding="utf-8") as f:
        json.dump(trace, f)


def profiler_steps(trace: dict) -> list[int]:
    """The `ProfilerStep#N` numbers on the host timeline of a raw trace."""
    return sorted({int(e["name"].split("#")[1]) for e in trace["traceEvents"]
                   if str(e.get("name", "")).startswith("ProfilerStep#") and e.get("cat") != "gpu_user_annotation"})
