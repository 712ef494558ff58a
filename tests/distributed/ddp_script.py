"""A small plain DDP training script (gloo, CPU) recorded with `Monitor`, for the
distributed tests. Launch with torchrun:

    python -m torch.distributed.run --nproc-per-node 2 --standalone \
        tests/distributed/ddp_script.py RUN_DIR [--fault slow-data|desync|crash]

Faults (all on rank 1):
- slow-data: each batch takes 30 ms longer to arrive (the others wait for it in backward);
- desync: an Inf in one gradient after the all-reduce at step 4 (only rank 1's GradScaler
  skips it and halves its scale), no optimizer steps after step 10 (rank 1 keeps joining
  the all-reduce, so nobody hangs), and an exception after the last step (its status is
  `crashed`; the ranks meet at a barrier first, so rank 0 always finishes).
"""
import argparse
import sys
import time

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel as DDP

from diagnose import Monitor

parser = argparse.ArgumentParser()
parser.add_argument("run_dir")
parser.add_argument("--fault", choices=("none", "slow-data", "desync"), default="none")
parser.add_argument("--steps", type=int, default=16)
args = parser.parse_args()

dist.init_process_group("gloo")
rank = dist.get_rank()
torch.manual_seed(rank)
torch.set_num_threads(1)
model = DDP(nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2)))
optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)


def batches():
    for _ in range(args.steps):
        if args.fault == "slow-data" and rank == 1:
            time.sleep(0.03)
        x = torch.randn(32, 8)
        yield x, (x[:, 0] > 0).long()


def train(mon: Monitor) -> None:
    desync = args.fault == "desync" and rank == 1
    for i, (x, y) in enumerate(mon.loader(batches())):
        optimizer.zero_grad()
        loss = F.cross_entropy(model(x), y)
        scaler.scale(loss).backward()
        if desync and i == 4:
            next(model.parameters()).grad[0, 0] = float("inf")
        if desync and i > 10:
            continue
        scaler.step(optimizer)
        scaler.update()
    if desync:
        raise RuntimeError("rank 1 fails after training")


crashed = False
try:
    with Monitor(args.run_dir, model=model, optimizer=optimizer, scaler=scaler) as monitor:
        train(monitor)
except RuntimeError:
    crashed = True
dist.barrier()  # every rank has closed its Monitor before any exits
dist.destroy_process_group()
sys.exit(1 if crashed else 0)
