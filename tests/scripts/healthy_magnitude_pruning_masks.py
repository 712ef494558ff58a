"""Healthy: iterative magnitude pruning with torch.nn.utils.prune. A CNN is trained,
then 30% of each conv/linear weight is pruned (L1, unstructured) every epoch and training
continues: pruned weights are held at zero by the mask (weight = weight_orig * mask), so
their gradients through the mask are exactly zero — by design. prune.remove at the end."""
import torch
from torch import nn
from torch.nn.utils import prune
from torch.utils.data import DataLoader, TensorDataset

torch.set_num_threads(1)
torch.manual_seed(23)

images = torch.randn(768, 1, 12, 12)
labels = (images[:, 0, 3:9, 3:9].mean((1, 2)) > 0).long() + (images[:, 0, :, :6].mean((1, 2)) > 0).long()
train = DataLoader(TensorDataset(images[:640], labels[:640]), batch_size=32, shuffle=True)
val = DataLoader(TensorDataset(images[640:], labels[640:]), batch_size=128)

net = nn.Sequential(
    nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
    nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
    nn.Linear(16, 3))
prunable = [(m, "weight") for m in net if isinstance(m, (nn.Conv2d, nn.Linear))]
opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)

for epoch in range(5):
    if epoch >= 1:
        for module, name in prunable:
            prune.l1_unstructured(module, name, amount=0.3)
    net.train()
    for x, y in train:
        opt.zero_grad()
        loss = nn.functional.cross_entropy(net(x), y)
        loss.backward()
        opt.step()
    net.eval()
    with torch.no_grad():
        acc = sum((net(x).argmax(1) == y).sum().item() for x, y in val) / 128
    zeros = sum((m.weight == 0).sum().item() for m, _ in prunable)
    total = sum(m.weight.numel() for m, _ in prunable)
    print(f"epoch {epoch} loss {loss.item():.3f} val acc {acc:.2f} sparsity {zeros / total:.2f}")

for module, name in prunable:
    prune.remove(module, name)
