"""A plain DDP script (gloo, CPU) with no diagnose in it, for `diagnose run --nproc-per-node`."""
import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel as DDP

dist.init_process_group("gloo")
torch.manual_seed(dist.get_rank())
model = DDP(nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2)))
optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
for _ in range(12):
    x = torch.randn(32, 8)
    optimizer.zero_grad()
    F.cross_entropy(model(x), (x[:, 0] > 0).long()).backward()
    optimizer.step()
dist.destroy_process_group()
