"""A plain training script for the zero-code crash trials (bench/crash_trials.py --mode script).

No diagnose import: `diagnose run bench/crash_script.py -- --ckpt DIR` records it unchanged.
An MLP on 256 fixed samples, batch 8 (32 steps an epoch, ~1 ms each), validation under
no_grad each epoch, then a checkpoint `DIR/epochNNN.pt` (torch.save, full state), for
a very long time: the trial ends it with a signal.
"""
import argparse
import os

import torch
import torch.nn as nn
import torch.nn.functional as F

parser = argparse.ArgumentParser()
parser.add_argument("--ckpt", required=True)
parser.add_argument("--epochs", type=int, default=100_000)
args = parser.parse_args()
os.makedirs(args.ckpt, exist_ok=True)
torch.set_num_threads(1)
torch.manual_seed(0)
x_all, y_all = torch.randn(320, 16), torch.randint(0, 4, (320,))
x_train, y_train, x_val, y_val = x_all[:256], y_all[:256], x_all[256:], y_all[256:]
model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))
optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
for epoch in range(args.epochs):
    model.train()
    order = torch.randperm(256)
    for i in range(32):
        idx = order[i * 8:(i + 1) * 8]
        optimizer.zero_grad()
        F.cross_entropy(model(x_train[idx]), y_train[idx]).backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():
        val_loss = F.cross_entropy(model(x_val), y_val).item()
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch},
               os.path.join(args.ckpt, f"epoch{epoch:03d}.pt"))
