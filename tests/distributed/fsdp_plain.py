"""A plain FSDP2 script (gloo, CPU) with no diagnose in it, for `diagnose run
--nproc-per-node 2 fsdp_plain.py -- TRUTH.json` (the zero-code mode). Rank 0 writes the
true global gradient norms per step (full_tensor(): a collective of the script's own)."""
import json
import sys

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from torch.distributed.device_mesh import init_device_mesh

try:
    from torch.distributed.fsdp import fully_shard
except ImportError:  # torch < 2.6
    from torch.distributed._composable.fsdp import fully_shard

dist.init_process_group("gloo")
torch.set_num_threads(1)
torch.manual_seed(0)
mesh = init_device_mesh("cpu", (dist.get_world_size(),))
model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 7))
for layer in model:
    if isinstance(layer, nn.Linear):
        fully_shard(layer, mesh=mesh)
fully_shard(model, mesh=mesh)
optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
torch.manual_seed(1 + dist.get_rank())
truth = []
for _ in range(10):
    x = torch.randn(32, 8)
    optimizer.zero_grad()
    F.cross_entropy(model(x), (x[:, 0] > 0).long()).backward()
    truth.append([float(p.grad.full_tensor().norm()) for p in model.parameters()])
    optimizer.step()
if dist.get_rank() == 0:
    with open(sys.argv[1], "w") as f:
        json.dump(truth, f)
dist.destroy_process_group()
