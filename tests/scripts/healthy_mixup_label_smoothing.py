"""CIFAR-style recipe on synthetic quadrant images: mixup (lambda ~ Beta(0.4, 0.4)) with a
label-smoothing cross entropy (`nn.CrossEntropyLoss(label_smoothing=0.1)` applied to both
targets), SGD + nesterov, a linear warm-up then cosine decay written as one LambdaLR
stepped every batch, and a test pass under inference_mode. The training loss stays high
(mixup + smoothing floor), which is expected. Healthy."""
import math

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from synthetic_data import quadrant_images

torch.set_num_threads(1)
torch.manual_seed(1)
rng = np.random.default_rng(1)

train_loader = DataLoader(quadrant_images(512, seed=1), batch_size=64, shuffle=True, drop_last=True)
test_loader = DataLoader(quadrant_images(128, seed=2), batch_size=128)

net = nn.Sequential(
    nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
    nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
    nn.Flatten(), nn.Linear(32, 4))
criterion = nn.CrossEntropyLoss(label_smoothing=0.1)
optimizer = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4)
epochs, warmup = 4, 8
total = epochs * len(train_loader)


def lr_lambda(i):
    if i < warmup:
        return (i + 1) / warmup
    return 0.5 * (1 + math.cos(math.pi * (i - warmup) / (total - warmup)))


scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda)

for epoch in range(epochs):
    net.train()
    for x, y in train_loader:
        lam = float(rng.beta(0.4, 0.4))
        index = torch.randperm(x.size(0))
        mixed = lam * x + (1 - lam) * x[index]
        out = net(mixed)
        loss = lam * criterion(out, y) + (1 - lam) * criterion(out, y[index])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        scheduler.step()
    net.eval()
    with torch.inference_mode():
        correct = sum((net(x).argmax(1) == y).sum().item() for x, y in test_loader)
    print(f"epoch {epoch} loss {loss.item():.3f} test_acc {correct / 128:.3f}")
