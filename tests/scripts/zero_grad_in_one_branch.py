"""Bug: multi-task training alternating two heads. Only the classification branch calls
optimizer.zero_grad(); the regression branch forgets it, so its step also applies the
previous step's (classification) gradients, summed with its own."""
import torch
import torch.nn as nn
import torch.nn.functional as F

torch.manual_seed(0)
x = torch.randn(480, 10)
y_cls = (x[:, 0] > 0).long()
y_reg = x[:, 1:2] * 2.0

trunk = nn.Sequential(nn.Linear(10, 32), nn.Tanh())
cls_head, reg_head = nn.Linear(32, 2), nn.Linear(32, 1)
model = nn.ModuleDict({"trunk": trunk, "cls": cls_head, "reg": reg_head})
optimizer = torch.optim.SGD(model.parameters(), lr=0.05)

for step, i in enumerate(range(0, 480, 16)):
    xb = x[i:i + 16]
    if step % 2 == 0:
        optimizer.zero_grad()
        loss = F.cross_entropy(model["cls"](model["trunk"](xb)), y_cls[i:i + 16])
    else:
        # BUG: no zero_grad here
        loss = F.mse_loss(model["reg"](model["trunk"](xb)), y_reg[i:i + 16])
    loss.backward()
    optimizer.step()
print(f"last loss {loss.item():.4f}")
