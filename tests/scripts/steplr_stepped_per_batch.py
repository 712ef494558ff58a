"""Bug: StepLR is configured in epochs (decay x0.1 every 3 epochs over 6 epochs) but
scheduler.step() sits inside the batch loop, so the LR decays every 3 *batches* and is
below 1e-9 of its start after the first epoch: training stops early on."""
import torch
import torch.nn as nn

torch.manual_seed(0)
inputs = torch.randn(400, 6)
targets = inputs @ torch.randn(6, 1) + 0.1

net = nn.Sequential(nn.Linear(6, 32), nn.ReLU(), nn.Linear(32, 1))
optimizer = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=3, gamma=0.1)
loss_fn = nn.MSELoss()

for epoch in range(6):
    for b in range(0, 400, 40):
        optimizer.zero_grad()
        loss = loss_fn(net(inputs[b:b + 40]), targets[b:b + 40])
        loss.backward()
        optimizer.step()
        scheduler.step()  # BUG: StepLR(step_size=3) meant epochs
    print(f"epoch {epoch} loss {loss.item():.4f} lr {scheduler.get_last_lr()[0]:.2e}")
