"""An LR range test before training, as torch-lr-finder or fastai's lr_find do it: the LR
grows by 25% a step until the loss has blown up to 4x its best, then the model's and the
optimizer's starting states are restored and the model is trained at the LR chosen from the
test. Healthy: the blow-up is the test's purpose, and the loop throws it away."""
import copy

import torch
import torch.nn as nn

torch.set_num_threads(1)
torch.manual_seed(0)
X = torch.randn(512, 10)
w = torch.randn(10, 1)
Y = X @ w + 0.1 * torch.randn(512, 1)
model = nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 1))
opt = torch.optim.SGD(model.parameters(), lr=1e-4)
start_model, start_opt = copy.deepcopy(model.state_dict()), copy.deepcopy(opt.state_dict())

lr, history = 1e-4, []
for i in range(60):
    for group in opt.param_groups:
        group["lr"] = lr
    idx = torch.randint(0, 512, (32,))
    loss = nn.functional.mse_loss(model(X[idx]), Y[idx])
    opt.zero_grad()
    loss.backward()
    opt.step()
    history.append((lr, loss.item()))
    lr *= 1.25
    if i > 10 and loss.item() > 4 * min(v for _, v in history):
        break
best_lr = min(history, key=lambda h: h[1])[0] / 10
print(f"range test: {len(history)} steps, chosen lr {best_lr:.3g}")

model.load_state_dict(start_model)
opt.load_state_dict(start_opt)
for group in opt.param_groups:
    group["lr"] = best_lr
for epoch in range(6):
    for b in range(0, 512, 32):
        loss = nn.functional.mse_loss(model(X[b:b + 32]), Y[b:b + 32])
        opt.zero_grad()
        loss.backward()
        opt.step()
    print(f"epoch {epoch}: loss {loss.item():.4f}")
