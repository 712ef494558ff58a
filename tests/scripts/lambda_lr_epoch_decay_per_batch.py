"""Bug: `LambdaLR(lambda epoch: 0.9 ** epoch)` is meant per epoch (10% decay an epoch) but
`scheduler.step()` sits inside the batch loop of a 25-batch epoch: the LR falls 14x per
epoch instead of 1.1x, is below 1e-6 of its start from the sixth epoch on, and the last
half of the 12 epochs trains nothing."""
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

torch.set_num_threads(1)
torch.manual_seed(79)

X = torch.randn(800, 10)
y = X @ torch.randn(10, 1) + 0.1 * torch.randn(800, 1)
loader = DataLoader(TensorDataset(X, y), batch_size=32, shuffle=True)
model = nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 1))
opt = torch.optim.SGD(model.parameters(), lr=0.05)
scheduler = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda=lambda epoch: 0.9 ** epoch)

for epoch in range(12):
    for xb, yb in loader:
        opt.zero_grad()
        loss = nn.functional.mse_loss(model(xb), yb)
        loss.backward()
        opt.step()
        scheduler.step()                      # BUG: meant once per epoch
    print(f"epoch {epoch} loss {loss.item():.4f} lr {scheduler.get_last_lr()[0]:.2e}")
