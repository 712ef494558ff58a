"""Healthy: a DDPM-style denoiser on 2-D points (two moons, made by hand). Each batch draws
random timesteps, so the noise-prediction MSE is very noisy step to step; the model is
an MLP with a sinusoidal time embedding; an EMA copy is kept with `torch.lerp_` and used
to sample at the end."""
import copy
import math

import torch
from torch import nn

torch.set_num_threads(1)
torch.manual_seed(11)


def two_moons(n):
    t = torch.rand(n) * math.pi
    upper = torch.rand(n) < 0.5
    x = torch.where(upper, torch.cos(t), 1 - torch.cos(t))
    y = torch.where(upper, torch.sin(t), 0.5 - torch.sin(t))
    return torch.stack([x, y], 1) + 0.05 * torch.randn(n, 2)


T = 100
betas = torch.linspace(1e-4, 0.02, T)
alpha_bar = torch.cumprod(1 - betas, 0)


def time_embedding(t, dim=16):
    freqs = torch.exp(-math.log(1000) * torch.arange(dim // 2) / (dim // 2))
    angles = t[:, None].float() * freqs[None]
    return torch.cat([angles.sin(), angles.cos()], 1)


class Denoiser(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(2 + 16, 128), nn.SiLU(), nn.Linear(128, 128), nn.SiLU(),
                                 nn.Linear(128, 2))

    def forward(self, x, t):
        return self.net(torch.cat([x, time_embedding(t)], 1))


model = Denoiser()
ema = copy.deepcopy(model).requires_grad_(False)
opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.0)
data = two_moons(4096)

for it in range(150):
    x0 = data[torch.randint(0, len(data), (128,))]
    t = torch.randint(0, T, (128,))
    noise = torch.randn_like(x0)
    ab = alpha_bar[t][:, None]
    xt = ab.sqrt() * x0 + (1 - ab).sqrt() * noise
    loss = nn.functional.mse_loss(model(xt, t), noise)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    with torch.no_grad():
        for pe, pm in zip(ema.parameters(), model.parameters()):
            pe.lerp_(pm, 0.05)
    if it % 25 == 0:
        print(f"it {it} loss {loss.item():.4f}")

with torch.no_grad():                  # ancestral sampling from the EMA weights
    x = torch.randn(256, 2)
    for step in reversed(range(T)):
        t = torch.full((256,), step)
        eps = ema(x, t)
        x = (x - betas[step] / (1 - alpha_bar[step]).sqrt() * eps) / (1 - betas[step]).sqrt()
        if step > 0:
            x = x + betas[step].sqrt() * torch.randn_like(x)
print("sample mean", x.mean(0).tolist())
