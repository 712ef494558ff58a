"""Bug: a backbone and a head are separate modules trained by one optimizer built from
both parameter lists; the loop clears gradients with `head.zero_grad()` (the author
thought of the head as "the model"), so the backbone's gradients accumulate forever."""
import itertools

import torch
from torch import nn

torch.set_num_threads(1)
torch.manual_seed(59)

backbone = nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 32), nn.ReLU())
head = nn.Linear(32, 1)
opt = torch.optim.SGD(itertools.chain(backbone.parameters(), head.parameters()), lr=1e-3, momentum=0.9)

X = torch.randn(3000, 20)
y = X[:, :5].sum(1, keepdim=True) + 0.1 * torch.randn(3000, 1)
for step in range(60):
    idx = torch.randint(0, 3000, (64,))
    pred = head(backbone(X[idx]))
    loss = nn.functional.mse_loss(pred, y[idx])
    head.zero_grad()                          # BUG: backbone.zero_grad() (or opt.zero_grad()) missing
    loss.backward()
    opt.step()
    if step % 10 == 0:
        print(step, round(loss.item(), 4))
