"""Healthy: a tiny GAN on 2-D points. Two models, two optimizers (Adam), two StepLR
schedulers; the discriminator sees the generator's output detached."""
import torch
import torch.nn as nn
import torch.nn.functional as F

torch.manual_seed(0)
generator = nn.Sequential(nn.Linear(4, 32), nn.ReLU(), nn.Linear(32, 2))
discriminator = nn.Sequential(nn.Linear(2, 32), nn.LeakyReLU(0.2), nn.Linear(32, 1))
opt_g = torch.optim.Adam(generator.parameters(), lr=1e-3, betas=(0.5, 0.999))
opt_d = torch.optim.Adam(discriminator.parameters(), lr=1e-3, betas=(0.5, 0.999))
sched_g = torch.optim.lr_scheduler.StepLR(opt_g, step_size=10, gamma=0.5)
sched_d = torch.optim.lr_scheduler.StepLR(opt_d, step_size=10, gamma=0.5)

for step in range(20):
    real = torch.randn(32, 2) * 0.5 + torch.tensor([2.0, -1.0])
    fake = generator(torch.randn(32, 4))

    opt_d.zero_grad()
    d_loss = (F.binary_cross_entropy_with_logits(discriminator(real), torch.ones(32, 1))
              + F.binary_cross_entropy_with_logits(discriminator(fake.detach()),
                                                   torch.zeros(32, 1)))
    d_loss.backward()
    opt_d.step()

    opt_g.zero_grad()
    g_loss = F.binary_cross_entropy_with_logits(discriminator(fake), torch.ones(32, 1))
    g_loss.backward()
    opt_g.step()
    sched_d.step()
    sched_g.step()
print(f"d_loss {d_loss.item():.4f} g_loss {g_loss.item():.4f}")
