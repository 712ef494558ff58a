"""Healthy: matrix factorisation for implicit feedback. User and item embeddings are
sparse (nn.Embedding(sparse=True)) and trained by SparseAdam; the small dense MLP on top
is trained by Adam: two optimizers over one model, stepped together; BCE with logits on
(N,) scores and (N,) float labels; negative sampling draws new random items each step."""
import torch
import torch.nn as nn

torch.manual_seed(0)
USERS, ITEMS, DIM = 24, 32, 8
true_u, true_i = torch.randn(USERS, 4), torch.randn(ITEMS, 4)
liked = (true_u @ true_i.t()) > 1.0


class MF(nn.Module):
    def __init__(self):
        super().__init__()
        self.user = nn.Embedding(USERS, DIM, sparse=True)
        self.item = nn.Embedding(ITEMS, DIM, sparse=True)
        self.mlp = nn.Sequential(nn.Linear(2 * DIM, 32), nn.ReLU(), nn.Linear(32, 1))

    def forward(self, u, i):
        return self.mlp(torch.cat([self.user(u), self.item(i)], -1)).squeeze(-1)


model = MF()
sparse_opt = torch.optim.SparseAdam(list(model.user.parameters()) + list(model.item.parameters()), lr=0.05)
dense_opt = torch.optim.Adam(model.mlp.parameters(), lr=0.01)
loss_fn = nn.BCEWithLogitsLoss()
pos_u, pos_i = liked.nonzero(as_tuple=True)
for step in range(60):
    idx = torch.randint(0, len(pos_u), (64,))
    u = torch.cat([pos_u[idx], pos_u[idx]])
    i = torch.cat([pos_i[idx], torch.randint(0, ITEMS, (64,))])
    y = liked[u, i].float()
    loss = loss_fn(model(u, i), y)
    sparse_opt.zero_grad()
    dense_opt.zero_grad()
    loss.backward()
    sparse_opt.step()
    dense_opt.step()
    if step % 10 == 9:
        print(f"step {step + 1} bce {loss.item():.4f}")
