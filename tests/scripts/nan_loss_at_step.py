"""Bug: a corrupted sample (NaN features) reaches the model at step 8; with no GradScaler
to skip the step, the NaN gradients poison the weights and every later loss is NaN."""
import torch
import torch.nn as nn
import torch.nn.functional as F

torch.manual_seed(0)
x = torch.randn(512, 8)
y = (x.sum(1) > 0).long()
x[8 * 16 + 3, 2] = float("nan")  # one bad value in the batch of step 8
model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2))
optimizer = torch.optim.SGD(model.parameters(), lr=0.05)

for step, i in enumerate(range(0, 512, 16)):  # 32 steps: weight norms are sampled at 25
    optimizer.zero_grad()
    loss = F.cross_entropy(model(x[i:i + 16]), y[i:i + 16])
    loss.backward()
    optimizer.step()
    print(f"step {step} loss {loss.item()}")
