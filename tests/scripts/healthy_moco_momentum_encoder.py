"""Healthy: MoCo-style contrastive learning. The query encoder is trained; the key encoder
(BatchNorm inside) is a momentum copy updated under no_grad and run under no_grad in
*train* mode, as in the MoCo reference code (its BatchNorm uses batch statistics); a
queue of past keys supplies the negatives."""
import copy

import torch
import torch.nn.functional as F
from torch import nn

torch.set_num_threads(1)
torch.manual_seed(41)


def augment(x):
    return x + 0.2 * torch.randn_like(x) * (torch.rand(x.shape[0], 1) + 0.5)


encoder_q = nn.Sequential(nn.Linear(24, 64), nn.BatchNorm1d(64), nn.ReLU(), nn.Linear(64, 16))
encoder_k = copy.deepcopy(encoder_q)
for p in encoder_k.parameters():
    p.requires_grad = False
opt = torch.optim.SGD(encoder_q.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4)

centers = torch.randn(10, 24) * 2
data = centers[torch.randint(0, 10, (4000,))] + 0.3 * torch.randn(4000, 24)
queue = F.normalize(torch.randn(512, 16), dim=1)
m, tau = 0.99, 0.2

for step in range(80):
    x = data[torch.randint(0, len(data), (64,))]
    q = F.normalize(encoder_q(augment(x)), dim=1)
    with torch.no_grad():
        for pk, pq in zip(encoder_k.parameters(), encoder_q.parameters()):
            pk.mul_(m).add_(pq.detach(), alpha=1 - m)
        k = F.normalize(encoder_k(augment(x)), dim=1)
    logits = torch.cat([(q * k).sum(1, keepdim=True), q @ queue.t()], 1) / tau
    loss = F.cross_entropy(logits, torch.zeros(64, dtype=torch.long))
    opt.zero_grad()
    loss.backward()
    opt.step()
    queue = torch.cat([k, queue[:-64]])
    if step % 20 == 0:
        print(f"step {step} loss {loss.item():.3f}")
