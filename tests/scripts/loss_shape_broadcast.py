"""Buggy: a regression model's (N, 1) output against an (N,) target in F.mse_loss: the
loss broadcasts to (N, N) and the model learns the mean of the targets (torch warns)."""
import torch
import torch.nn as nn
import torch.nn.functional as F

torch.manual_seed(0)
x = torch.randn(320, 6)
y = x @ torch.randn(6) + 0.1 * torch.randn(320)   # (N,)

model = nn.Sequential(nn.Linear(6, 32), nn.Tanh(), nn.Linear(32, 1))   # (N, 1)
optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)

for epoch in range(2):
    perm = torch.randperm(len(x))
    for i in range(0, len(x), 32):
        idx = perm[i:i + 32]
        optimizer.zero_grad()
        loss = F.mse_loss(model(x[idx]), y[idx])
        loss.backward()
        optimizer.step()
    print(f"epoch {epoch} loss {loss.item():.4f}")
