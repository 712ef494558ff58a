"""A deep residual-free MLP with BatchNorm trained with `torch.utils.checkpoint.checkpoint_sequential`
(the old reentrant implementation, use_reentrant=True): the model's own forward is never
called during training, its segments run under no_grad and are recomputed in backward.
The input requires grad (reentrant checkpointing needs it). Evaluation calls the model
normally, in eval mode under no_grad. Healthy."""
import torch
from torch import nn
from torch.utils.checkpoint import checkpoint_sequential

torch.set_num_threads(1)
torch.manual_seed(14)

layers = []
for _ in range(6):
    layers += [nn.Linear(32, 32), nn.BatchNorm1d(32), nn.GELU()]
model = nn.Sequential(*layers, nn.Linear(32, 4))
opt = torch.optim.AdamW(model.parameters(), lr=2e-3)

W = torch.randn(32, 4)
Xv = torch.randn(256, 32)
Yv = (Xv @ W).argmax(1)
for epoch in range(3):
    model.train()
    for _ in range(12):
        x = torch.randn(64, 32).requires_grad_()
        y = (x.detach() @ W).argmax(1)
        out = checkpoint_sequential(model, 3, x, use_reentrant=True)
        loss = nn.functional.cross_entropy(out, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        acc = (model(Xv).argmax(1) == Yv).float().mean().item()
    print(f"epoch {epoch} loss {loss.item():.3f} acc {acc:.3f}")
