"""Healthy: MLP classifier, AdamW, OneCycleLR stepped per batch, gradient clipping,
validation each epoch in eval() mode under no_grad, train() restored after."""
import argparse

import torch
import torch.nn as nn
import torch.nn.functional as F

parser = argparse.ArgumentParser()
parser.add_argument("--epochs", type=int, default=3)
parser.add_argument("--lr", type=float, default=3e-3)
args = parser.parse_args()

torch.manual_seed(0)
centers = torch.randn(4, 10) * 2
y_all = torch.randint(0, 4, (512,))
x_all = centers[y_all] + torch.randn(512, 10)
x_train, y_train, x_val, y_val = x_all[:384], y_all[:384], x_all[384:], y_all[384:]

model = nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Dropout(0.1), nn.Linear(32, 4))
optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01)
batch = 32
steps_per_epoch = len(x_train) // batch
scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=args.lr,
                                                total_steps=args.epochs * steps_per_epoch)

for epoch in range(args.epochs):
    model.train()
    order = torch.randperm(len(x_train))
    for i in range(steps_per_epoch):
        idx = order[i * batch:(i + 1) * batch]
        optimizer.zero_grad()
        loss = F.cross_entropy(model(x_train[idx]), y_train[idx])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        print(f"loss {loss.item()!r}")
    model.eval()
    with torch.no_grad():
        val_loss = sum(F.cross_entropy(model(x_val[j:j + 64]), y_val[j:j + 64]).item()
                       for j in range(0, len(x_val), 64)) / 2
    print(f"epoch {epoch} val_loss {val_loss:.4f}")
