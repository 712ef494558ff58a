"""Crashes: a data bug raises at step 6 (an uncaught exception: traceback, exit code 1)."""
import torch
import torch.nn as nn
import torch.nn.functional as F


def load_batch(i):
    if i == 6:
        raise RuntimeError(f"corrupt record in shard 3 (batch {i})")
    return torch.randn(16, 8), torch.randint(0, 3, (16,))


def train():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 3))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    for i in range(10):
        x, y = load_batch(i)
        optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        optimizer.step()


if __name__ == "__main__":
    train()
