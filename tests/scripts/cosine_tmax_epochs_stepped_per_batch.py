"""Bug: CosineAnnealingLR configured with T_max = number of epochs (10) but stepped after
every batch (20 per epoch): the LR reaches its minimum (0) after 10 batches, climbs back,
and keeps oscillating with a period of 20 batches for the whole run instead of decaying
once."""
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

torch.set_num_threads(1)
torch.manual_seed(33)

EPOCHS = 3
X = torch.randn(640, 12)
y = (X[:, 0] - X[:, 1] > 0).long()
loader = DataLoader(TensorDataset(X, y), batch_size=32, shuffle=True)
model = nn.Sequential(nn.Linear(12, 48), nn.ReLU(), nn.Linear(48, 2))
opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=10)   # meant: 10 epochs

for epoch in range(EPOCHS):
    for xb, yb in loader:
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(xb), yb)
        loss.backward()
        opt.step()
        sched.step()                                  # BUG: per batch
    print(epoch, loss.item(), sched.get_last_lr())
