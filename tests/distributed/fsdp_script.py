"""A tiny FSDP2 (`fully_shard`) model trained on 2 gloo/CPU ranks, recorded with `Monitor`,
for the distributed tests. Launch with torchrun:

    python -m torch.distributed.run --nproc-per-node 2 --standalone \
        tests/distributed/fsdp_script.py RUN_DIR [--device cuda]

`--device cuda` runs on NCCL, one GPU per rank (tests/gpu/test_distributed_gpu.py).

Besides the run directory, rank 0 writes RUN_DIR/truth.json: the true global gradient
norms (all-gathered with `full_tensor()`, outside the recorder) that the report must
reconstruct from the ranks' local shard norms.
"""
import argparse
import json
import os
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

try:
    from torch.distributed.fsdp import fully_shard
except ImportError:  # torch < 2.6
    from torch.distributed._composable.fsdp import fully_shard
from torch.distributed.device_mesh import init_device_mesh

from diagnose import Monitor

parser = argparse.ArgumentParser()
parser.add_argument("run_dir")
parser.add_argument("--steps", type=int, default=8)
parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
args = parser.parse_args()

if args.device == "cuda":
    torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
dist.init_process_group("nccl" if args.device == "cuda" else "gloo")
rank = dist.get_rank()
device = torch.device(args.device, torch.cuda.current_device()) if args.device == "cuda" else torch.device("cpu")
torch.set_num_threads(1)
torch.manual_seed(0)
mesh = init_device_mesh(args.device, (dist.get_world_size(),))
# 7 output rows: sharded 4 + 3 along dim 0, so the shards differ in size.
model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 7)).to(device)
for layer in model:
    if isinstance(layer, nn.Linear):
        fully_shard(layer, mesh=mesh)
fully_shard(model, mesh=mesh)
optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
torch.manual_seed(1 + rank)

truth = {"grad_norm": [], "param_grad_norms": []}


def full_weights() -> list[torch.Tensor]:
    return [p.detach().full_tensor().clone() for p in model.parameters()]
with Monitor(args.run_dir, model=model, optimizer=optimizer) as mon:
    for step in range(args.steps):
        x = torch.randn(32, 8, device=device)
        optimizer.zero_grad()
        F.cross_entropy(model(x), (x[:, 0] > 0).long() * 3).backward()
        # The truth, for the test only: full_tensor() is a collective diagnose never runs.
        truth["param_grad_norms"].append([float(p.grad.full_tensor().norm()) for p in model.parameters()])
        total = torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
        truth["grad_norm"].append(float(total.full_tensor() if hasattr(total, "full_tensor") else total))
        before = full_weights() if step == 0 else None
        optimizer.step()
        if step == 0:  # the step the recorder samples weights and updates on (param_every)
            after = full_weights()
            truth["param_norms_0"] = [float(w.norm()) for w in after]
            truth["update_norms_0"] = [float((a - b).norm()) for a, b in zip(after, before)]
if rank == 0:
    Path(args.run_dir, "truth.json").write_text(json.dumps(truth))
dist.barrier()
dist.destroy_process_group()
