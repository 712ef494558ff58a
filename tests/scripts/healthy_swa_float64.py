"""Healthy: stochastic weight averaging in float64. A double-precision MLP (model.double())
trained with SGD under CosineAnnealingLR (T_max=6, so it never reaches 0) for 4 epochs, then SWALR takes over for 2 epochs
while an AveragedModel collects the weights; update_bn recomputes the BatchNorm statistics
of the average at the end, and the SWA model is evaluated."""
import torch
from torch import nn
from torch.optim.swa_utils import SWALR, AveragedModel, update_bn
from torch.utils.data import DataLoader, TensorDataset

torch.manual_seed(0)
X = torch.randn(480, 8, dtype=torch.float64)
y = (X[:, :2].prod(1) > 0).long()
train = DataLoader(TensorDataset(X[:384], y[:384]), batch_size=32, shuffle=True)
model = nn.Sequential(nn.Linear(8, 64), nn.BatchNorm1d(64), nn.ReLU(), nn.Linear(64, 2)).double()
opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True)
cosine = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=6)
swa_model, swa_start = AveragedModel(model), 4
swa_sched = SWALR(opt, swa_lr=0.02, anneal_epochs=1)
loss_fn = nn.CrossEntropyLoss()

for epoch in range(6):
    model.train()
    running = 0.0
    for xb, yb in train:
        opt.zero_grad()
        loss = loss_fn(model(xb), yb)
        loss.backward()
        opt.step()
        running += loss.item() / len(train)
    if epoch >= swa_start:
        swa_model.update_parameters(model)
        swa_sched.step()
    else:
        cosine.step()
    print(f"epoch {epoch} loss {running:.4f} lr {opt.param_groups[0]['lr']:.4f}")

update_bn(train, swa_model)
swa_model.eval()
with torch.no_grad():
    acc = (swa_model(X[384:]).argmax(1) == y[384:]).double().mean()
print(f"swa accuracy {acc.item():.3f}")
