"""Healthy: WGAN-GP on a 2-D ring of Gaussians. Five critic steps per generator step, a
gradient penalty computed with torch.autograd.grad(create_graph=True), RMSprop-free Adam
(betas 0.5, 0.9), and a critic loss that is negative and grows in magnitude while the
critic learns (an estimate of the Wasserstein distance, not an error). The generator has
BatchNorm (DCGAN style) and stays in train mode; its samples for the critic steps are
drawn under no_grad (training forwards, not an evaluation)."""
import math

import torch
from torch import autograd, nn

torch.manual_seed(0)


def sample_real(n):
    k = torch.randint(0, 8, (n,)).float()
    centers = torch.stack([torch.cos(k * math.pi / 4), torch.sin(k * math.pi / 4)], 1) * 2
    return centers + 0.05 * torch.randn(n, 2)


G = nn.Sequential(nn.Linear(8, 64), nn.BatchNorm1d(64), nn.ReLU(), nn.Linear(64, 64), nn.BatchNorm1d(64),
                  nn.ReLU(), nn.Linear(64, 2))
D = nn.Sequential(nn.Linear(2, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 1))
opt_G = torch.optim.Adam(G.parameters(), lr=1e-3, betas=(0.5, 0.9))
opt_D = torch.optim.Adam(D.parameters(), lr=1e-3, betas=(0.5, 0.9))
N_CRITIC, LAMBDA, BS = 5, 0.1, 64


def gradient_penalty(real, fake):
    eps = torch.rand(real.size(0), 1)
    mixed = (eps * real + (1 - eps) * fake).requires_grad_(True)
    grads, = autograd.grad(D(mixed).sum(), mixed, create_graph=True)
    return ((grads.norm(2, dim=1) - 1) ** 2).mean()


for gen_iter in range(12):
    for _ in range(N_CRITIC):
        real = sample_real(BS)
        with torch.no_grad():
            fake = G(torch.randn(BS, 8))
        d_loss = D(fake).mean() - D(real).mean() + LAMBDA * gradient_penalty(real, fake)
        opt_D.zero_grad()
        d_loss.backward()
        opt_D.step()
    for p in D.parameters():
        p.requires_grad_(False)  # the generator step does not need the critic's gradients
    g_loss = -D(G(torch.randn(BS, 8))).mean()
    opt_G.zero_grad()
    g_loss.backward()
    opt_G.step()
    for p in D.parameters():
        p.requires_grad_(True)
    if gen_iter % 4 == 3:
        print(f"iter {gen_iter + 1}: critic {d_loss.item():.3f} generator {g_loss.item():.3f}")
