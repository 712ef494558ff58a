"""Healthy: domain-adversarial training (DANN) with a gradient reversal layer written as a
custom autograd.Function. A feature extractor feeds a label classifier (source domain
only) and, through the reversal, a domain classifier (both domains); the reversal weight
ramps up with the usual 2/(1+exp(-10p)) - 1 schedule, so the domain loss *rises* toward
log(2) as the features become domain-invariant: the total loss is not monotone."""
import math

import torch
import torch.nn.functional as F
from torch import nn

torch.set_num_threads(1)
torch.manual_seed(83)


class GradReverse(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, lam):
        ctx.lam = lam
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return -ctx.lam * grad, None


class DANN(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Linear(10, 48), nn.ReLU(), nn.Linear(48, 24), nn.ReLU())
        self.label = nn.Linear(24, 2)
        self.domain = nn.Sequential(nn.Linear(24, 24), nn.ReLU(), nn.Linear(24, 2))

    def forward(self, x, lam):
        h = self.features(x)
        return self.label(h), self.domain(GradReverse.apply(h, lam))


w = torch.randn(10)
source_x = torch.randn(1500, 10)
source_y = (source_x @ w > 0).long()
target_x = torch.randn(1500, 10) * 1.3 + 0.5          # shifted target domain, unlabelled

model = DANN()
opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
steps = 120
for step in range(steps):
    p = step / steps
    lam = 2 / (1 + math.exp(-10 * p)) - 1
    for g in opt.param_groups:
        g["lr"] = 0.05 / (1 + 10 * p) ** 0.75
    i = torch.randint(0, 1500, (32,))
    j = torch.randint(0, 1500, (32,))
    x = torch.cat([source_x[i], target_x[j]])
    domain = torch.cat([torch.zeros(32), torch.ones(32)]).long()
    class_logits, domain_logits = model(x, lam)
    loss = F.cross_entropy(class_logits[:32], source_y[i]) + F.cross_entropy(domain_logits, domain)
    opt.zero_grad()
    loss.backward()
    opt.step()
    if step % 20 == 0:
        print(f"step {step} lambda {lam:.2f} loss {loss.item():.3f} source acc "
              f"{(class_logits[:32].argmax(1) == source_y[i]).float().mean().item():.2f}")
