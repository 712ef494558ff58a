"""Metric learning on variable-length token sequences: nn.Embedding(padding_idx=0) + a
batch-first LSTM whose last real hidden state (picked by length) is the embedding, trained
with nn.TripletMarginLoss(margin=0.5) on (anchor, positive, negative) triples. Many
triples are already separated, so the loss is exactly 0 on a good share of the later
batches. RMSprop. Healthy."""
import torch
from torch import nn

torch.set_num_threads(1)
torch.manual_seed(0)
g = torch.Generator().manual_seed(11)

N_CLASSES, VOCAB, MAXLEN = 6, 30, 14


def sample(cls, n):
    """Sequences of class `cls`: tokens mostly from its own band of the vocabulary."""
    lens = torch.randint(4, MAXLEN + 1, (n,), generator=g)
    ids = torch.zeros(n, MAXLEN, dtype=torch.long)
    for i, L in enumerate(lens.tolist()):
        own = 1 + cls * 4 + torch.randint(0, 4, (L,), generator=g)
        noise = torch.randint(1, VOCAB, (L,), generator=g)
        keep = torch.rand(L, generator=g) < 0.7
        ids[i, :L] = torch.where(keep, own, noise)
    return ids, lens


class Encoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(VOCAB, 16, padding_idx=0)
        self.rnn = nn.LSTM(16, 32, batch_first=True)
        self.out = nn.Linear(32, 16)

    def forward(self, ids, lens):
        h, _ = self.rnn(self.emb(ids))
        last = h[torch.arange(len(ids)), lens - 1]
        return nn.functional.normalize(self.out(last), dim=-1)


enc = Encoder()
opt = torch.optim.RMSprop(enc.parameters(), lr=3e-3)
crit = nn.TripletMarginLoss(margin=0.5)
zeros = 0
for it in range(60):
    a_cls = torch.randint(0, N_CLASSES, (1,), generator=g).item()
    n_cls = (a_cls + 1 + torch.randint(0, N_CLASSES - 1, (1,), generator=g).item()) % N_CLASSES
    anc, pos, neg = sample(a_cls, 24), sample(a_cls, 24), sample(n_cls, 24)
    loss = crit(enc(*anc), enc(*pos), enc(*neg))
    opt.zero_grad()
    loss.backward()
    opt.step()
    zeros += loss.item() == 0.0
    if it % 10 == 0:
        print(f"it {it} triplet {loss.item():.4f}")
print(f"batches with zero loss: {zeros}")
