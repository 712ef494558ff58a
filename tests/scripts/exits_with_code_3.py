"""Exits early on purpose: after 5 steps the loss is "too high", sys.exit(3)."""
import sys

import torch
import torch.nn as nn

torch.manual_seed(0)
model = nn.Linear(6, 1)
optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
for step in range(100):
    x = torch.randn(16, 6)
    loss = ((model(x) - x.sum(1, keepdim=True)) ** 2).mean()
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    if step == 4:
        print("loss did not go below threshold; giving up", file=sys.stderr)
        sys.exit(3)
