"""A plain training script (no diagnose import) that runs out of memory twice, simulated
on CPU: at step 3 in backward, caught by the loop, which skips the batch (a common
pattern); at step 7 in forward, uncaught (the script dies with exit code 1).

The error is torch's own `torch.OutOfMemoryError` with the message CUDA gives, raised
from a custom autograd Function, so it travels the same way a real one does.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

MESSAGE = ("CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of 79.15 GiB "
           "of which 1.06 GiB is free. Of the allocated memory 75.10 GiB is allocated by PyTorch.")


class Attention(torch.autograd.Function):
    """Stands for a layer whose memory grows with the batch: too big at some batches."""

    @staticmethod
    def forward(ctx, x, fail_forward, fail_backward):
        if fail_forward:
            raise torch.OutOfMemoryError(MESSAGE)
        ctx.fail_backward = fail_backward
        return x * 1.0

    @staticmethod
    def backward(ctx, grad):
        if ctx.fail_backward:
            raise torch.OutOfMemoryError(MESSAGE)
        return grad, None, None


def train():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 3))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    for i in range(10):
        x, y = torch.randn(16, 8), torch.randint(0, 3, (16,))
        optimizer.zero_grad()
        out = Attention.apply(model(x), i == 7, i == 3)
        try:
            F.cross_entropy(out, y).backward()
        except torch.OutOfMemoryError:
            print(f"batch {i}: out of memory, skipped")
            optimizer.zero_grad()
            continue
        optimizer.step()


if __name__ == "__main__":
    train()
