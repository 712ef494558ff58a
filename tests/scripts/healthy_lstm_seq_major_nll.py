"""Healthy: a character LSTM language model with batch_first=False fed sequence-major
(seq, batch) batches (pad_sequence's default layout, variable lengths), log_softmax +
nn.NLLLoss, and an auxiliary nn.BCELoss on sigmoid outputs with matching (N, 1) shapes."""
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils.rnn import pad_sequence
from torch.utils.data import DataLoader

VOCAB, PAD = 11, 11


class CharLSTM(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(VOCAB + 1, 16, padding_idx=PAD)
        self.lstm = nn.LSTM(16, 32)          # batch_first=False: (seq, batch, features)
        self.head = nn.Linear(32, VOCAB)
        self.is_long = nn.Linear(32, 1)

    def forward(self, tokens):               # tokens: (seq, batch)
        out, (h, _) = self.lstm(self.emb(tokens))
        return F.log_softmax(self.head(out), dim=-1), torch.sigmoid(self.is_long(h[-1]))


def collate(batch):
    seqs = [s for s, _ in batch]
    long = torch.tensor([[float(len(s) > 15)] for s in seqs])          # (batch, 1)
    return pad_sequence(seqs, padding_value=PAD), pad_sequence([t for _, t in batch], padding_value=-100), long


torch.manual_seed(0)
starts = torch.randint(0, VOCAB, (256,))
lengths = torch.randint(8, 24, (256,))
data = []
for s, n in zip(starts.tolist(), lengths.tolist()):
    seq = (s + torch.arange(n + 1)) % VOCAB
    data.append((seq[:-1], seq[1:]))
train = DataLoader(data, batch_size=16, shuffle=True, collate_fn=collate)

model = CharLSTM()
nll, bce = nn.NLLLoss(ignore_index=-100), nn.BCELoss()
optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
for epoch in range(2):
    for tokens, targets, long in train:
        optimizer.zero_grad()
        logp, p_long = model(tokens)
        loss = nll(logp.reshape(-1, VOCAB), targets.reshape(-1)) + 0.1 * bce(p_long, long)
        loss.backward()
        optimizer.step()
    print(f"epoch {epoch} loss {loss.item():.4f}")
