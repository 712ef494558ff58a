"""A small VAE on 2-D-ish synthetic data with delayed KL annealing: a plain autoencoder
for the first 40 steps (beta = 0), then beta ramps to 1 over 30 steps, so the total loss
*rises* for a while on purpose (the KL term is switched on) before it settles. Adam, no
scheduler. Healthy."""
import torch
import torch.nn as nn
import torch.nn.functional as F

torch.set_num_threads(1)
torch.manual_seed(3)

# data: points on a noisy ring embedded in 16 dims
t = torch.rand(2048) * 6.283
ring = torch.stack([t.cos(), t.sin()], 1)
proj = torch.randn(2, 16)
data = ring @ proj + 0.05 * torch.randn(2048, 16)


class VAE(nn.Module):
    def __init__(self, d=16, z=2, h=64):
        super().__init__()
        self.enc = nn.Sequential(nn.Linear(d, h), nn.ReLU(), nn.Linear(h, 2 * z))
        self.dec = nn.Sequential(nn.Linear(z, h), nn.ReLU(), nn.Linear(h, d))

    def forward(self, x):
        mu, logvar = self.enc(x).chunk(2, dim=-1)
        zs = mu + torch.randn_like(mu) * (0.5 * logvar).exp()
        return self.dec(zs), mu, logvar


vae = VAE()
opt = torch.optim.Adam(vae.parameters(), lr=2e-3)
steps, delay, warm = 120, 40, 30
for step in range(steps):
    x = data[torch.randint(0, len(data), (64,))]
    recon, mu, logvar = vae(x)
    rec = F.mse_loss(recon, x, reduction="sum") / len(x)
    kl = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp()) / len(x)
    beta = min(1.0, max(0.0, (step - delay) / warm))
    loss = rec + beta * kl
    opt.zero_grad()
    loss.backward()
    opt.step()
    if step % 20 == 0:
        print(f"step {step:3d} loss {loss.item():.3f} rec {rec.item():.3f} kl {kl.item():.3f} beta {beta:.2f}")
