"""Healthy: a SimCLR-style contrastive loop. Each batch is augmented twice (noise and
random masking), both views go through the same encoder + projector, and the NT-Xent loss
is a cross-entropy over cosine similarities / temperature. LARS-free: SGD + cosine
schedule stepped per batch."""
import torch
import torch.nn.functional as F

torch.manual_seed(0)
data = torch.randn(512, 20)
encoder = torch.nn.Sequential(torch.nn.Linear(20, 64), torch.nn.BatchNorm1d(64),
                              torch.nn.ReLU(), torch.nn.Linear(64, 32))
projector = torch.nn.Sequential(torch.nn.ReLU(), torch.nn.Linear(32, 16))
params = list(encoder.parameters()) + list(projector.parameters())
optimizer = torch.optim.SGD(params, lr=0.1, momentum=0.9, weight_decay=1e-4)
batch_size, epochs = 64, 3
n_batches = len(data) // batch_size
scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs * n_batches)


def augment(x):
    keep = (torch.rand_like(x) > 0.2).float()
    return x * keep + 0.1 * torch.randn_like(x)


def nt_xent(z1, z2, temperature=0.5):
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    sim = z @ z.t() / temperature
    n = z1.shape[0]
    sim.fill_diagonal_(float("-inf"))
    targets = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)])
    return F.cross_entropy(sim, targets)


for epoch in range(epochs):
    perm = torch.randperm(len(data))
    running = 0.0
    for b in range(n_batches):
        x = data[perm[b * batch_size:(b + 1) * batch_size]]
        v1, v2 = augment(x), augment(x)
        loss = nt_xent(projector(encoder(v1)), projector(encoder(v2)))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        scheduler.step()
        running += loss.item()
    print(f"epoch {epoch} nt-xent {running / n_batches:.4f}")
