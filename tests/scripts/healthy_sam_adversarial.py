"""Healthy: SAM (sharpness-aware minimisation, written as davda54/sam) with FGSM adversarial
examples. Each batch gets three backward passes and two of them are cleared before the
optimizer steps: the attack's (for the input gradient, cleared by `model.zero_grad()`),
then SAM's first step (`first_step(zero_grad=True)`), then the second, which the base SGD
steps on. All three use the same batch: nothing is discarded."""
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset


class SAM(torch.optim.Optimizer):
    def __init__(self, params, base_optimizer, rho=0.05, **kwargs):
        super().__init__(params, dict(rho=rho, **kwargs))
        self.base_optimizer = base_optimizer(self.param_groups, **kwargs)
        self.param_groups = self.base_optimizer.param_groups

    @torch.no_grad()
    def first_step(self, zero_grad=False):
        norm = torch.norm(torch.stack([p.grad.norm(2) for g in self.param_groups
                                       for p in g["params"] if p.grad is not None]), 2)
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                e_w = p.grad * group["rho"] / (norm + 1e-12)
                p.add_(e_w)
                self.state[p]["e_w"] = e_w
        if zero_grad:
            self.zero_grad()

    @torch.no_grad()
    def second_step(self, zero_grad=False):
        for group in self.param_groups:
            for p in group["params"]:
                if "e_w" in self.state[p]:
                    p.sub_(self.state[p]["e_w"])
        self.base_optimizer.step()
        if zero_grad:
            self.zero_grad()


torch.manual_seed(0)
x = torch.randn(512, 10)
y = (x[:, :3].sum(1) > 0).long()
loader = DataLoader(TensorDataset(x, y), batch_size=32, shuffle=True)
model = nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 2))
optimizer = SAM(model.parameters(), torch.optim.SGD, lr=0.05, momentum=0.9)

for epoch in range(3):
    for xb, yb in loader:
        xb = xb.clone().requires_grad_(True)
        F.cross_entropy(model(xb), yb).backward()          # FGSM: the input gradient
        x_adv = (xb + 0.05 * xb.grad.sign()).detach()
        model.zero_grad()
        inputs, targets = torch.cat([xb.detach(), x_adv]), torch.cat([yb, yb])
        F.cross_entropy(model(inputs), targets).backward()
        optimizer.first_step(zero_grad=True)
        F.cross_entropy(model(inputs), targets).backward()
        optimizer.second_step(zero_grad=True)
    model.eval()
    with torch.no_grad():
        acc = (model(x).argmax(1) == y).float().mean().item()
    model.train()
    print(f"epoch {epoch}: acc {acc:.3f}")
