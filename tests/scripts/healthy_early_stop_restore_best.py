"""Healthy: train with patience 1; when validation stops improving, roll back to the best
weights (`load_state_dict` of a deep-copied state) and the optimizer's state, halve the
LR and carry on ("restore and decay"), at most twice; the best model is evaluated on
a test split at the end."""
import copy

import torch
from torch import nn

torch.set_num_threads(1)
torch.manual_seed(47)

X = torch.randn(900, 10)
y = torch.sin(X[:, 0] * 2) + X[:, 1] * X[:, 2] + 0.2 * torch.randn(900)
Xtr, ytr, Xva, yva, Xte, yte = X[:600], y[:600], X[600:750], y[600:750], X[750:], y[750:]

model = nn.Sequential(nn.Linear(10, 64), nn.ReLU(), nn.Dropout(0.2), nn.Linear(64, 1))
opt = torch.optim.Adam(model.parameters(), lr=2e-2)


def evaluate(xs, ys):
    model.eval()
    with torch.no_grad():
        out = nn.functional.mse_loss(model(xs).squeeze(1), ys).item()
    model.train()
    return out


best, best_state, patience, bad, restores = float("inf"), None, 1, 0, 0
for epoch in range(14):
    perm = torch.randperm(600)
    for i in range(0, 600, 50):
        idx = perm[i:i + 50]
        loss = nn.functional.mse_loss(model(Xtr[idx]).squeeze(1), ytr[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    val = evaluate(Xva, yva)
    if val < best - 1e-4:
        best, bad = val, 0
        best_state = copy.deepcopy(model.state_dict()), copy.deepcopy(opt.state_dict())
    else:
        bad += 1
        if bad >= patience and restores < 2:
            model.load_state_dict(best_state[0])
            opt.load_state_dict(best_state[1])
            for g in opt.param_groups:
                g["lr"] = opt.param_groups[0]["lr"] * 0.5 ** (restores + 1)
            restores, bad = restores + 1, 0
            print(f"epoch {epoch}: restored best (val {best:.4f}), lr {opt.param_groups[0]['lr']:.1e}")
    print(f"epoch {epoch} train {loss.item():.4f} val {val:.4f}")

model.load_state_dict(best_state[0])
print("test mse", evaluate(Xte, yte))
